"""Quality against cost for every sampler: Inception KID ± std and FID per sampler and step count,
beside the real-vs-real floor, with seconds per image. Prints figures; writes a JSON table and a plot.

    python benchmarks/bench_samplers.py --pretrained flowers32 --data-root ../shared/data --threads 2 \\
        --out docs/sampler_kid.json --figure docs/sampler_kid.png

The settings (``--settings``; ``sampler-steps``, comma-separated):

- ``ddpm-1000``: Ho et al.'s ancestral sampler, one call per timestep (the reference);
- ``ddpm-250``: the same ancestral sampler on 250 evenly respaced timesteps (Nichol & Dhariwal 2021),
  which is DDIM with η = 1;
- ``ddim-K`` (η = 0) and ``dpmpp-K`` (DPM-Solver++(2M)) at K = 5, 10, 20, 50 calls.

Every setting samples the same seeds (batch b of 250 starts from seed b), so differences come from
the sampler, not from luck. ``--n`` samples per setting (``--n-ddpm1000`` for the 1000-call
reference, which costs as much as all the others together on a CPU), scored against ``--n-ref``
real Flowers102 images with the offline InceptionV3 features (``pip install "diffusion-utils[eval]"``);
the floor is as many other real images as each setting has samples. The protocol, reference set and
real-feature cache are those of ``bench_quality.py``, so the figures compare with its table.

The JSON (``--out``) is rewritten after every setting, and a setting already in it with the same
``--n`` is not sampled again, so a long run can be stopped and continued. Seconds per image come from
a separate pass over ``--time-n`` images per setting (``--time-only`` redoes just that pass): run it
with nothing else on the machine, since a second process sharing the cores inflates every figure.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from bench_guidance import recorded_command
from bench_recipes import add_model_arguments, model_to_score, real_features, score
from diffusion_utils import fewest_calls_matching, load_dataset, plot_sampler_curve, sample
from diffusion_utils.evaluation.metrics import InceptionFeatures, extract_features
from diffusion_utils.plumbing.pixels import draw_in_batches

DEFAULT_SETTINGS = ("ddpm-1000,ddpm-250,ddim-5,ddim-10,ddim-20,ddim-50,"
                    "dpmpp-5,dpmpp-10,dpmpp-20,dpmpp-50")
BATCH = 250  # images per seeded batch: batch b starts from seed b in every setting


def sampler_options(setting: str, n_steps: int) -> dict:
    """The :func:`~diffusion_utils.sample` options of ``setting`` (e.g. ``"ddpm-250"``, ``"dpmpp-10"``)."""
    name, _, steps = setting.rpartition("-")
    steps = int(steps)
    if name == "ddpm":  # all T steps: Algorithm 2; fewer: the ancestral sampler on respaced steps
        return {"sampler": "ddpm"} if steps == n_steps else {"sampler": "ddim", "steps": steps, "eta": 1.0}
    if name in ("ddim", "dpmpp"):
        return {"sampler": name, "steps": steps}
    raise SystemExit(f"error: unknown setting {setting!r}; use ddpm-K, ddim-K or dpmpp-K")


def draw(model, schedule, options: dict, n: int) -> torch.Tensor:
    """``n`` samples as uint8, batch b of :data:`BATCH` seeded b."""
    return draw_in_batches(lambda start, size: sample(model, schedule, size, progress=False, **options,
                                                      generator=torch.Generator().manual_seed(start // BATCH)),
                           n, BATCH)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser)
    parser.add_argument("--data-root", default=None, help="folder holding flowers-102/ (torchvision layout)")
    parser.add_argument("--settings", default=DEFAULT_SETTINGS, help="comma-separated sampler-steps")
    parser.add_argument("--n", type=int, default=1000, help="samples per setting")
    parser.add_argument("--n-ddpm1000", type=int, default=500, help="samples of the 1000-call reference")
    parser.add_argument("--n-ref", type=int, default=2000, help="real reference images")
    parser.add_argument("--time-n", type=int, default=50, help="images per setting in the timing pass")
    parser.add_argument("--time-only", action="store_true", help="only redo the timing pass")
    parser.add_argument("--features-cache", default="runs/recipes", help="folder for the real-image features")
    parser.add_argument("--out", default="docs/sampler_kid.json", help="the JSON table")
    parser.add_argument("--figure", default=None, help="also plot KID against network calls here (PNG)")
    args = parser.parse_args()
    model, schedule, config = model_to_score(args)
    settings = args.settings.split(",")
    options = {s: sampler_options(s, schedule.n_steps) for s in settings}
    out = Path(args.out)
    table = json.loads(out.read_text()) if out.exists() else {}
    header = {"weights": args.pretrained or args.checkpoint, "n_ref": args.n_ref, "img_size": config.img_size,
              "features": "InceptionV3 (offline)"}
    if {k: table.get(k) for k in header} != header:
        table = {}
    rows = {row["setting"]: row for row in table.get("rows", [])}
    table.update(header, command=recorded_command(sys.argv), torch=torch.__version__)

    def save() -> None:
        table["rows"] = [rows[s] for s in sorted(rows, key=lambda s: (rows[s]["sampler"], rows[s]["steps"]))]
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(table, indent=1) + "\n")

    if not args.time_only:
        dataset = load_dataset("flowers102", config.img_size, root=args.data_root, progress=False)
        order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(1234))
        cache = Path(args.features_cache)
        cache.mkdir(parents=True, exist_ok=True)
        suffix = "" if config.img_size == 32 else f"_{config.img_size}px"
        real = real_features(dataset.images[order], args.n_ref, max(args.n, args.n_ddpm1000),
                             cache / f"real_features_{args.n_ref}{suffix}.pt")
        extractor = InceptionFeatures()
        for setting in settings:
            n = args.n_ddpm1000 if options[setting] == {"sampler": "ddpm"} else args.n
            table.setdefault("floors", {})[str(n)] = score("real floor", real["floor"][:n], real["ref"])
            if rows.get(setting, {}).get("n") == n:
                continue
            generated = draw(model, schedule, options[setting], n)
            row = score(setting, extract_features(generated, extractor), real["ref"])
            name, _, steps = setting.rpartition("-")
            rows[setting] = {"setting": setting, "sampler": name, "steps": int(steps), "n": n, **row,
                             "seconds_per_image": rows.get(setting, {}).get("seconds_per_image")}
            save()
            print(f"{setting:<18s} KID {row['kid']:.4f} ± {row['kid_std']:.4f}   FID {row['fid']:6.1f}", flush=True)

    for setting in settings:  # the timing pass: a few images per setting, nothing else running
        if setting not in rows:
            continue
        draw(model, schedule, options[setting], 2)  # warm-up
        t0 = time.perf_counter()
        draw(model, schedule, options[setting], args.time_n)
        rows[setting]["seconds_per_image"] = (time.perf_counter() - t0) / args.time_n
        print(f"{setting:<18s} {rows[setting]['seconds_per_image']:.4f} s/image", flush=True)
    table["timing"] = (f"{args.time_n} images per setting in one batch, torch {torch.__version__}, "
                       f"{torch.get_num_threads()} threads")
    save()
    report(table, args.figure)


def report(table: dict, figure: str | None) -> None:
    """Print the table and the one-sentence answer; plot KID against calls if ``figure``."""
    print(f"{table['weights']} at {table['img_size']} px vs {table['n_ref']} real images, {table['features']}; "
          f"timing: {table.get('timing')}")
    for n, floor in sorted(table.get("floors", {}).items()):
        print(f"{'real floor (n = ' + n + ')':<22s} KID {floor['kid']:.4f} ± {floor['kid_std']:.4f}   "
              f"FID {floor['fid']:6.1f}")
    for row in table["rows"]:
        cost = f"{row['seconds_per_image']:8.4f} s/image" if row.get("seconds_per_image") else ""
        print(f"{row['setting']:<22s} KID {row['kid']:.4f} ± {row['kid_std']:.4f}   FID {row['fid']:6.1f}   "
              f"n {row['n']:5d}  {cost}")
    if any(r["setting"] == "ddpm-1000" for r in table["rows"]):
        fewest = fewest_calls_matching(table["rows"])
        print("Within DDPM-1000's KID ± std: " + "; ".join(
            f"{sampler} at {calls} calls" if calls else f"{sampler} at none of the tested counts"
            for sampler, calls in fewest.items()) + ".")
    if figure:
        plot_sampler_curve(table, figure)
        print(f"figure written to {figure}")


if __name__ == "__main__":
    main()
