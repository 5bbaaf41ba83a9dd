"""Inception KID ± std and FID against the classifier-free guidance scale w: the quality/diversity trade-off.

    python benchmarks/bench_guidance.py --pretrained flowers32 --data-root ../shared/data \\
        --scales 0,1,2,3,5 --n 1000 --features-cache runs/recipes --out docs/guidance_kid.json

For each w, ``--n`` samples (DPM-Solver++, 20 steps, seed 0; the same starting noise for every w)
of a class-conditional model are scored against ``--n-ref`` real Flowers102 images with the offline
InceptionV3 features (``pip install "diffusion-utils[eval]"``). Sample i asks for the species of
real floor image i, so the generated set has the real class frequencies; w = 0 ignores the class
(the unconditional model). The floor is ``--n`` other real images against the same reference set.
The protocol, reference set and real-feature cache are those of ``bench_quality.py`` and
``bench_recipes.py``, so the figures compare with theirs.

The table goes to ``--out`` (JSON, with the command that made it), which notebook 06 shows; it is
rewritten after every scale, and a scale already in it with the same settings is not run again.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import torch

from bench_recipes import add_model_arguments, model_to_score, real_features, samples_of, score
from diffusion_utils import load_dataset
from diffusion_utils.evaluation.metrics import InceptionFeatures, extract_features


def recorded_command(argv: list[str]) -> str:
    """The command line for the table, without this machine's folders: ``--features-cache`` is
    dropped (where a cache lives is no setting of the measurement) and ``--data-root``'s folder
    reads ``DIR``, so readers see neither path."""
    words = []
    for w in argv:
        if words and words[-1] == "--features-cache":
            words.pop()
        elif words and words[-1] == "--data-root":
            words.append("DIR")
        elif w.startswith("--data-root="):
            words.append("--data-root=DIR")
        elif not w.startswith("--features-cache="):
            words.append(w)
    return "python " + " ".join(shlex.quote(w) for w in words)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser)
    parser.add_argument("--data-root", default=None, help="folder holding flowers-102/ (torchvision layout)")
    parser.add_argument("--scales", default="0,1,2,3,5", help="comma-separated guidance scales w")
    parser.add_argument("--n", type=int, default=1000, help="samples per scale (and real floor images)")
    parser.add_argument("--n-ref", type=int, default=2000, help="real reference images")
    parser.add_argument("--steps", type=int, default=20, help="DPM-Solver++ steps")
    parser.add_argument("--features-cache", default="runs/recipes", help="folder for the real-image features")
    parser.add_argument("--out", default="docs/guidance_kid.json", help="the JSON table notebook 06 shows")
    parser.add_argument("--weights-note", default=None,
                        help="how to describe the weights in the table (default: the name or path given)")
    args = parser.parse_args()
    scales = [float(w) for w in args.scales.split(",")]
    model, schedule, config = model_to_score(args)
    if not model.num_classes:
        raise SystemExit("error: this model is unconditional (num_classes 0); guidance needs a "
                         "class-conditional one (train on labelled data)")
    dataset = load_dataset("flowers102", config.img_size, root=args.data_root, progress=False)
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(1234))
    cache = Path(args.features_cache)
    cache.mkdir(parents=True, exist_ok=True)
    suffix = "" if config.img_size == 32 else f"_{config.img_size}px"
    real = real_features(dataset.images[order], args.n_ref, args.n, cache / f"real_features_{args.n_ref}{suffix}.pt")
    classes = dataset.labels[order][args.n_ref:args.n_ref + args.n]  # the floor images' species

    out = Path(args.out)
    settings = {"weights": args.weights_note or args.pretrained or args.checkpoint, "n": args.n,
                "n_ref": args.n_ref, "sampler": f"DPM-Solver++ {args.steps} steps", "img_size": config.img_size,
                "features": "InceptionV3 (offline)"}
    table = json.loads(out.read_text()) if out.exists() else {}
    if {k: table.get(k) for k in settings} != settings:
        table = {}
    rows = {row["guidance_scale"]: row for row in table.get("rows", [])}
    table.update(settings, command=recorded_command(sys.argv),
                 floor=score("real floor", real["floor"], real["ref"]), torch=torch.__version__)
    for w in scales:
        if w in rows:
            continue
        t0 = time.perf_counter()
        generated = samples_of(model, schedule, args.n, steps=args.steps, classes=classes, guidance_scale=w)
        seconds = time.perf_counter() - t0
        row = score(f"w = {w:g}", extract_features(generated, InceptionFeatures()), real["ref"])
        rows[w] = {"guidance_scale": w, **row, "sample_seconds": round(seconds, 1)}
        table["rows"] = [rows[k] for k in sorted(rows)]
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(table, indent=1) + "\n")
        print(f"w = {w:4g}: KID {row['kid']:.4f} ± {row['kid_std']:.4f}   FID {row['fid']:6.1f}   "
              f"({seconds:.0f} s sampling)", flush=True)
    print(f"{args.n} samples per scale ({settings['sampler']}) vs {args.n_ref} real images, "
          f"{config.img_size} px, InceptionV3 features; torch {torch.__version__}, {torch.get_num_threads()} threads")
    floor = table["floor"]
    print(f"{'real floor':<12s} KID {floor['kid']:.4f} ± {floor['kid_std']:.4f}   FID {floor['fid']:6.1f}")
    for row in table["rows"]:
        print(f"w = {row['guidance_scale']:<8g} KID {row['kid']:.4f} ± {row['kid_std']:.4f}   FID {row['fid']:6.1f}")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
