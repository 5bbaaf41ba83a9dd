"""Which 32 px training recipe gives the best flowers for the same CPU time? Prints a table.

    python benchmarks/bench_recipes.py --data-root ../shared/data --minutes 6 --threads 1 \\
        --out runs/recipes

Each recipe is the ``quick`` preset's network with a few settings changed, trained on all the
Flowers102 images at 32 px for the same CPU time (``--minutes``), then judged on ``--n`` samples
(DPM-Solver++, 20 steps, from its EMA weights) by KID ± std and FID on standard InceptionV3
features (:class:`~diffusion_utils.evaluation.metrics.InceptionFeatures`, offline: ``pip install
"diffusion-utils[eval]"``) against ``--n-ref`` real images. The first line of the table is the
floor: ``--n`` *other* real images scored the same way — no model can beat it at this n.

Equal CPU time is counted in images, so that other work on the machine cannot tilt the table:
``--minutes`` × ``--reference-speed`` (the quick network's images/s measured alone) images for the
quick network, scaled for a recipe with another network or batch size by the ratio of the two
throughputs, measured back to back. Every recipe trains with the same seed and data order; only
the named settings differ. Results go
to ``OUT/<recipe>/result.json`` and a finished recipe is not re-run, so the script can be stopped
and restarted. Real-image features are cached in ``OUT``. FID depends on n (biased); compare FIDs
only within one table. KID is unbiased: its std says how far apart two means must be to differ.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import torch

from diffusion_utils import TrainConfig, load_dataset, load_model, load_pretrained, sample, save_grid, to_uint8
from diffusion_utils.plumbing.checkpoint import save_checkpoint
from diffusion_utils.data.data import epoch_batches
from diffusion_utils.evaluation.metrics import InceptionFeatures, compute_fid, compute_kid, extract_features
from diffusion_utils.training import TrainState, train_step

# Recipe name → changes to the quick preset as it is now (batch 16, lr 2e-3, power-function EMA).
# "quick (before)" is the preset this table replaced (batch 64, lr 1e-3); the "batch 64" rows are
# variations of it, measured at the 4-minute budget before the preset changed.
OLD_QUICK = dict(batch_size=64, lr=1e-3)
RECIPES: dict[str, dict] = {
    "quick (before)": OLD_QUICK,
    "batch 64 + min-SNR": dict(OLD_QUICK, loss_weighting="min_snr"),
    "batch 64 + lr 2e-3": dict(OLD_QUICK, lr=2e-3),
    "batch 32": dict(batch_size=32, lr=1e-3),
    "batch 16 + lr 2e-3": dict(),  # the quick preset now
    "min-SNR": dict(loss_weighting="min_snr"),
    "v + min-SNR": dict(prediction="v", loss_weighting="min_snr"),
    "cosine": dict(schedule="cosine"),
    "wider (48 ch)": dict(base_channels=48),
    "batch 8 + lr 2e-3": dict(batch_size=8),
    # A longer average: the EMA's tail grows to ~n/4 of the n steps (γ = 3), capped at 1 000 steps.
    "longer EMA": dict(ema_gamma=3.0, ema_decay=0.999),
    "lr cosine decay": dict(lr_decay="cosine"),
}


def train_for(config: TrainConfig, images: torch.Tensor, n_images: int) -> tuple[TrainState, float]:
    """Train from scratch until ``n_images`` have been seen; returns (state, wall seconds)."""
    state = TrainState(config, torch.device("cpu"))
    state.total_steps = -(-n_images // config.batch_size)  # the lr decay's horizon
    state.model.train()
    start = time.perf_counter()
    while True:
        for x0 in epoch_batches(images, config.batch_size, state.data_rng):
            train_step(state, x0)
            if state.step * config.batch_size >= n_images:
                return state, time.perf_counter() - start
        state.epoch += 1


def throughput(config: TrainConfig, images: torch.Tensor, steps: int = 6) -> float:
    """Training images per second of ``config``'s network here and now (after 2 warm-up steps)."""
    state = TrainState(config, torch.device("cpu"))
    state.total_steps = steps + 2
    batches = epoch_batches(images, config.batch_size, state.data_rng)
    for _ in range(2):
        train_step(state, next(batches))
    start = time.perf_counter()
    for _ in range(steps):
        train_step(state, next(batches))
    return steps * config.batch_size / (time.perf_counter() - start)


def samples_of(model, schedule, n: int, batch: int = 250, steps: int = 20, classes: torch.Tensor | None = None,
               guidance_scale: float | None = None) -> torch.Tensor:
    """``n`` DPM-Solver++ (``steps``) samples as uint8, seeded, in batches; with ``classes`` (n,)
    class ids, sample i is of class i, guided with ``guidance_scale``."""
    generator = torch.Generator().manual_seed(0)
    out = [to_uint8(sample(model, schedule, min(batch, n - i), sampler="dpmpp", steps=steps,
                           generator=generator, progress=False,
                           classes=None if classes is None else classes[i:i + batch],
                           guidance_scale=None if classes is None else guidance_scale))
           for i in range(0, n, batch)]
    return torch.cat(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default=None, help="folder holding flowers-102/ (torchvision layout)")
    parser.add_argument("--minutes", type=float, default=5.0,
                        help="training time per recipe, at the quick network's measured throughput")
    parser.add_argument("--reference-speed", type=float, default=54.0,
                        help="the quick network's training images/s on this machine alone (from "
                             "bench_train_sample.py; 54 on the project's 2-core CPU with 2 threads)")
    parser.add_argument("--n", type=int, default=1000, help="samples per recipe (and real floor images)")
    parser.add_argument("--n-ref", type=int, default=2000, help="real reference images")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--recipes", default=",".join(RECIPES), help="comma-separated recipe names")
    parser.add_argument("--raw", default="", help="recipes whose raw (non-EMA) weights are also scored")
    parser.add_argument("--out", default="runs/recipes")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    # FID below 2 048 images is biased (the docstring says how to read it); one warning is enough.
    warnings.filterwarnings("once", message="FID with")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    images = load_dataset("flowers102", 32, root=args.data_root, progress=False).images
    # Reference and floor sets: disjoint random real images (all images are also training data,
    # as in the usual FID protocol).
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(1234))
    real = real_features(images[order], args.n_ref, args.n, out / f"real_features_{args.n_ref}.pt")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {len(images)} training images; "
          f"{args.n} samples vs {args.n_ref} real images")

    results = [score("real floor", real["floor"], real["ref"])]
    for name in [r.strip() for r in args.recipes.split(",") if r.strip()]:
        results += run_recipe(name, images, real, args, out)

    print(f"\n{'recipe':<22s} {'KID':>8s} {'± std':>7s} {'FID':>6s} {'images':>8s} {'train s':>8s} {'img/s':>6s}")
    for r in results:
        seen = f"{r['images_seen']:8d} {r['train_seconds']:8.0f} {r['images_seen'] / r['train_seconds']:6.1f}" \
            if "images_seen" in r else f"{'-':>8s} {'-':>8s} {'-':>6s}"
        print(f"{r['name']:<22s} {r['kid']:8.4f} {r['kid_std']:7.4f} {r['fid']:6.1f} {seen}")


def add_model_arguments(parser: argparse.ArgumentParser, raw_weights: bool = False) -> None:
    """The model a quality benchmark scores: ``--checkpoint`` or ``--pretrained`` (and ``--raw-weights``),
    with ``--threads``."""
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--checkpoint", help="a training checkpoint (its EMA weights are scored)")
    which.add_argument("--pretrained", help="a name load_pretrained knows (e.g. flowers32) or an exported .pt file")
    if raw_weights:
        parser.add_argument("--raw-weights", action="store_true", help="score a checkpoint's raw weights instead")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")


def model_to_score(args: argparse.Namespace):
    """``(model, schedule, config)`` named by :func:`add_model_arguments`' flags, with torch's
    threads set and FID's small-sample warning shown once."""
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("once", message="FID with")
    if args.pretrained:
        return load_pretrained(args.pretrained)
    return load_model(args.checkpoint, use_ema=not getattr(args, "raw_weights", False))


def real_features(shuffled: torch.Tensor, n_ref: int, n_floor: int, cache: Path) -> dict:
    """Inception features of the first ``n_ref`` images (the reference set) and of the next
    ``n_floor`` (the floor set), cached in ``cache`` (which keeps at least 1 000 floor images)."""
    real = torch.load(cache, weights_only=True) if cache.exists() else None
    if real is None or len(real["floor"]) < n_floor:
        extractor, t0 = InceptionFeatures(), time.perf_counter()
        keep = max(n_floor, 1000)
        real = {"ref": extract_features(shuffled[:n_ref], extractor),
                "floor": extract_features(shuffled[n_ref:n_ref + keep], extractor)}
        torch.save(real, cache)
        print(f"real features: {n_ref + keep} images in {time.perf_counter() - t0:.0f} s")
    return {"ref": real["ref"], "floor": real["floor"][:n_floor]}


def score(name: str, generated: torch.Tensor, reference: torch.Tensor) -> dict:
    kid = compute_kid(generated, reference, subset_size=min(len(generated), 1000) // 2, seed=0)
    return {"name": name, "kid": kid.mean, "kid_std": kid.std, "fid": compute_fid(generated, reference)}


def run_recipe(name: str, images: torch.Tensor, real: dict, args, out: Path) -> list[dict]:
    if name not in RECIPES:
        raise SystemExit(f"error: unknown recipe {name!r}; known: {', '.join(RECIPES)}")
    folder = out / name.replace(" ", "_").replace("(", "").replace(")", "").replace("+", "plus")
    result_file = folder / "result.json"
    if result_file.exists():
        return json.loads(result_file.read_text())
    config = TrainConfig.preset("quick", max_images=None, device="cpu", bf16=False, **RECIPES[name])
    # Equal CPU time, made robust to whatever else runs on the machine: every recipe gets the images
    # the quick network trains on in --minutes, scaled by how fast its own network trains (measured
    # back to back with the quick network's, so both see the same machine).
    base = TrainConfig.preset("quick", max_images=None, device="cpu", bf16=False)
    speed_ratio = throughput(config, images) / throughput(base, images) if config.batch_size != base.batch_size \
        or config.base_channels != base.base_channels else 1.0
    budget = int(args.minutes * 60 * args.reference_speed * speed_ratio)
    state, seconds = train_for(config, images, budget)
    save_checkpoint(folder / "checkpoint.pth", state.state_dict(state.data_rng.get_state()))
    extractor = InceptionFeatures()
    rows = []
    models = [("EMA", state.ema.module)] + ([("raw", state.model)] if name in args.raw.split(",") else [])
    for which, model in models:
        t0 = time.perf_counter()
        generated = samples_of(model, state.schedule, args.n)
        sample_seconds = time.perf_counter() - t0
        save_grid(generated[:64], folder / f"samples_{which}.png", nrow=8)
        row = score(name if which == "EMA" else f"{name} (raw)", extract_features(generated, extractor), real["ref"])
        row.update(images_seen=state.step * config.batch_size, steps=state.step, train_seconds=seconds,
                   sample_seconds=sample_seconds, speed_ratio=speed_ratio, overrides=RECIPES[name])
        print(json.dumps(row))
        rows.append(row)
    result_file.write_text(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    main()
