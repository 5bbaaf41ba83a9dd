"""Is it copying? The memorisation test of the shipped models, against every local Flowers102 photo.

    python benchmarks/bench_memorisation.py --data-root DIR --out-dir runs/memorisation --threads 1
    python benchmarks/bench_memorisation.py --data-root DIR --out-dir runs/memorisation --threads 1 \\
        --stages flowers32-inception

Each stage samples a model (its images cached in ``--out-dir``) and runs
:func:`~diffusion_utils.memorisation_test` of the samples against the photos it trained on:

- ``flowers32``: the shipped 32 px model, unconditional, DPM-Solver++ with 20 steps, ``--n`` samples,
  in pixel space at 32 px; ``flowers32-guided``: the same, each sample asking for the species of a
  random photo (the real species frequencies) with classifier-free guidance w = 3;
- ``cascade`` and ``cascade-guided``: flowers32 then sr64 (``sample_cascade``, DPM-Solver++ with 20 steps
  in both stages, sr64 at its default condition noise), ``--n-cascade`` samples, in pixel space at 64 px;
- ``flowers32-inception``: the ``flowers32`` samples again, in InceptionV3's feature space. Embedding the
  photos is the slow part (about a quarter of a second per image on one CPU thread); their features are
  cached in ``--out-dir`` every 256 images, so a stopped run continues where it stopped.

Both models trained on every Flowers102 photo (8 189; the ones present locally are used), so no photo is
held out: the yardstick is leave-one-out — each photo's distance to its nearest other photo (see
diffusion_utils/evaluation/memorisation.py for why that is fair). The JSON (``--json``) is rewritten after every
stage, and a stage already in it with the same settings is not run again. ``--figures`` gets, per model,
the two distance distributions with the verdict and the samples closest to a photo beside their two
nearest photos (``memorisation_{name}.png``, ``memorisation_neighbours_{name}.png``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from bench_guidance import recorded_command
from cpu_peak import cpu_flags
from diffusion_utils import (load_dataset, load_pretrained, memorisation_test, nearest_neighbours, plot_memorisation,
                             plot_nearest_neighbours, sample, sample_cascade)
from diffusion_utils.data.flowers102 import FLOWERS102_SIZE
from diffusion_utils.evaluation.metrics import InceptionFeatures, extract_features
from diffusion_utils.plumbing.pixels import draw_in_batches

BATCH = 250  # images per seeded batch: batch b starts from seed + b
GUIDANCE = 3.0  # the guidance scale the sr64 card's cascade was measured with
N_SHOWN = 10  # samples in the neighbours figure: the ones closest to a photo
FEATURE_CHUNK = 256  # photos embedded between two saves of the feature cache
OUTPUT_FLAGS = ("--out-dir", "--json", "--figures")
STAGES = ("flowers32", "flowers32-guided", "cascade", "cascade-guided", "flowers32-inception")


def machine() -> str:
    """This CPU in words, e.g. ``2-core AMD EPYC without native bf16``."""
    name = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")), "unknown CPU") if Path("/proc/cpuinfo").exists() else "unknown CPU"
    native = cpu_flags() & {"avx512_bf16", "amx_bf16"}
    return f"{os.cpu_count()}-core {name}" + ("" if native else " without native bf16")


def without_output_paths(argv: list[str]) -> list[str]:
    """``argv`` without ``--out-dir``, ``--json`` and ``--figures`` and their folders: where the caches
    and results are written is no setting of the measurement, and no reader needs this machine's folders."""
    words = []
    for w in argv:
        if words and words[-1] in OUTPUT_FLAGS:
            words.pop()
        elif not w.startswith(tuple(f"{flag}=" for flag in OUTPUT_FLAGS)):
            words.append(w)
    return words


def draw(make, n: int, seed: int, cache: Path) -> tuple[torch.Tensor, float | None]:
    """``n`` samples as uint8 from ``make(start, size, generator)`` (samples start … start + size − 1;
    batch b seeded ``seed + b``), cached in ``cache``; returns them and the seconds per image (None
    when they came from the cache)."""
    if cache.exists():
        images = torch.load(cache, weights_only=True)
        if len(images) == n:
            return images, None
    t0 = time.perf_counter()
    images = draw_in_batches(lambda start, size: make(start, size, torch.Generator().manual_seed(seed + start // BATCH)),
                             n, BATCH)
    seconds = (time.perf_counter() - t0) / n
    torch.save(images, cache)
    return images, seconds


def photo_features(photos: torch.Tensor, cache: Path) -> torch.Tensor:
    """InceptionV3 features (N, 2048) of ``photos``, embedded ``FEATURE_CHUNK`` at a time and saved after
    each chunk, so that a stopped run keeps what it had."""
    done = torch.load(cache, weights_only=True) if cache.exists() else torch.zeros(0, 2048, dtype=torch.float64)
    extractor = InceptionFeatures()
    while len(done) < len(photos):
        t0 = time.perf_counter()
        chunk = extract_features(photos[len(done):len(done) + FEATURE_CHUNK], extractor)
        done = torch.cat([done, chunk])
        torch.save(done, cache)
        print(f"  photo features {len(done)}/{len(photos)} ({(time.perf_counter() - t0) / len(chunk):.3f} s/image)",
              flush=True)
    return done


def facts(result, seconds_test: float) -> dict:
    """The numbers of a :class:`~diffusion_utils.MemorisationResult`, as plain JSON values."""
    return {"space": result.space, "extractor": result.extractor, "yardstick": result.yardstick,
            "n_train": result.n_train, "n_samples": len(result.sample_distances),
            "n_yardstick": len(result.held_out_distances),
            "sample_median": result.sample_median, "yardstick_median": result.held_out_median,
            "median_ratio": result.median_ratio, "near_copy_threshold": result.near_copy_threshold,
            "near_copy_rate": result.near_copy_rate, "near_copy_p_value": result.near_copy_p_value,
            "p_value": result.p_value,
            "sample_relative_median": float(np.median(result.sample_relative)),
            "yardstick_relative_median": float(np.median(result.held_out_relative)),
            "relative_p_value": result.relative_p_value, "relative_near_copy_rate": result.relative_near_copy_rate,
            "yardstick_exact_duplicates": int((result.held_out_distances == 0).sum()),
            "samples_min_distance": float(result.sample_distances.min()),
            "finding": result.finding, "verdict": result.verdict, "test_seconds": round(seconds_test, 1)}


def figures(name: str, result, samples: torch.Tensor, photos: torch.Tensor, folder: Path) -> dict:
    """The distributions and the neighbours figure of one pixel-space result; returns their file names."""
    folder.mkdir(parents=True, exist_ok=True)
    closest = torch.as_tensor(result.sample_distances).argsort()[:N_SHOWN]
    found = nearest_neighbours(samples[closest], photos, k=2)
    dist, neigh = folder / f"memorisation_{name}.png", folder / f"memorisation_neighbours_{name}.png"
    plot_memorisation(result, dist)
    fig = plot_nearest_neighbours(samples[closest], photos, found.indices, n=N_SHOWN, distances=found.distances)
    fig.suptitle(f"The {N_SHOWN} of {len(samples)} {name} samples closest to a training photo (top), each above its "
                 f"two nearest training photos", fontsize=10)
    fig.savefig(neigh, dpi=100)
    return {"figure": dist.name, "neighbours_figure": neigh.name,
            "neighbours_shown": f"the {N_SHOWN} of {len(samples)} samples closest to a photo, each above its two "
                                f"nearest photos (pixel distance in [-1, 1])"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", required=True, help="folder holding flowers-102/ (torchvision layout)")
    parser.add_argument("--out-dir", default="runs/memorisation", help="samples and feature caches")
    parser.add_argument("--json", default="docs/memorisation.json", help="the results")
    parser.add_argument("--figures", default="docs", help="folder for the figures")
    parser.add_argument("--stages", default="flowers32,flowers32-guided,cascade,cascade-guided",
                        help=f"comma-separated, of {', '.join(STAGES)}")
    parser.add_argument("--n", type=int, default=500, help="flowers32 samples")
    parser.add_argument("--n-cascade", type=int, default=200, help="cascade samples")
    parser.add_argument("--seed", type=int, default=0, help="batch b of samples starts from seed + b")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    stages = args.stages.split(",")
    if not set(stages) <= set(STAGES):
        raise SystemExit(f"error: unknown stage(s) {sorted(set(stages) - set(STAGES))}; use {', '.join(STAGES)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    out_dir, out = Path(args.out_dir), Path(args.json)
    out_dir.mkdir(parents=True, exist_ok=True)
    table = json.loads(out.read_text()) if out.exists() else {}
    results = table.setdefault("results", {})

    base, schedule, base_config = load_pretrained("flowers32")
    photos = {size: load_dataset("flowers102", size, root=args.data_root, download=False, progress=False)
              for size in (base_config.img_size, 64)}
    present = len(photos[64])
    table.update(
        what="memorisation_test of samples against every local Flowers102 photo, leave-one-out yardstick "
             "(both models trained on every photo, so none is held out)",
        data={"source": "flowers102", "photos_present": present, "photos_in_dataset": FLOWERS102_SIZE,
              "note": f"{present} of the {FLOWERS102_SIZE} Flowers102 photos are present locally; the models "
                      f"trained on all {FLOWERS102_SIZE}, so every local photo is a training image"},
        cpu=machine(), threads=torch.get_num_threads(), torch=torch.__version__,
        timing=f"{torch.get_num_threads()} torch thread(s) on a machine shared with other jobs: the seconds show "
               f"what the stages cost there, not the models' speed")
    table.pop("command", None)  # each stage records the command that ran it

    def save() -> None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(table, indent=1) + "\n")

    labels = photos[64].labels[torch.randperm(present, generator=torch.Generator().manual_seed(1234))]
    sr = None
    for stage in stages:
        guided = stage.endswith("-guided")
        cascade = stage.startswith("cascade")
        n = args.n_cascade if cascade else args.n
        setting = {"model": "flowers32 → sr64" if cascade else "flowers32", "n": n, "seed": args.seed,
                   "sampler": "dpmpp, 20 steps" + (" in both stages" if cascade else ""),
                   "guidance": f"w = {GUIDANCE:g}, each sample asking for the species of a random photo"
                   if guided else "none (unconditional)"}
        if {k: results.get(stage, {}).get(k) for k in setting} == setting:
            print(f"{stage}: already in {out}", flush=True)
            continue
        classes = labels[:n] if guided else None
        if cascade and sr is None:
            sr, _, _ = load_pretrained("sr64")
        size = 64 if cascade else base_config.img_size

        def make(start: int, count: int, generator: torch.Generator) -> torch.Tensor:
            wanted = None if classes is None else classes[start:start + count]
            if cascade:
                return sample_cascade(base, sr, schedule, count, classes=wanted, guidance_scale=GUIDANCE if guided
                                      else None, sampler="dpmpp", steps=20, generator=generator, progress=False)
            return sample(base, schedule, count, sampler="dpmpp", steps=20, classes=wanted,
                          guidance_scale=GUIDANCE if guided else None, generator=generator, progress=False)

        source = stage.removesuffix("-inception")
        samples, seconds = draw(make, n, args.seed, out_dir / f"samples_{source}_{n}_seed{args.seed}.pt")
        if seconds is not None:
            print(f"{stage}: {n} samples, {seconds:.3f} s/image", flush=True)
        # seconds per sample as measured when the samples were drawn (kept from the JSON when they were cached)
        measured = results.get(source, {}).get("seconds_per_sample") if seconds is None else round(seconds, 4)
        row = {**setting, "img_size": size, "seconds_per_sample": measured,
               "command": recorded_command(without_output_paths(sys.argv))}
        t0 = time.perf_counter()
        if stage.endswith("-inception"):
            train = photo_features(photos[size].images, out_dir / f"inception_flowers102_{size}px.pt")
            result = memorisation_test(extract_features(samples, InceptionFeatures()), train, space="features")
        else:
            result = memorisation_test(samples, photos[size].images)
        row.update(facts(result, time.perf_counter() - t0))
        if stage in ("flowers32", "cascade"):
            row.update(figures("flowers32" if stage == "flowers32" else "sr64", result, samples, photos[size].images,
                               Path(args.figures)))
        results[stage] = row
        save()
        print(f"{stage}: {result}", flush=True)
    save()


if __name__ == "__main__":
    main()
