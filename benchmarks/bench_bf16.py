"""Does bfloat16 autocast change what the quick preset learns? Its loss curve in float32 and in bf16, two seeds each.

    python benchmarks/bench_bf16.py --data-root DIR --threads 1 --out OUT    # prints a table; writes OUT/bf16.json

The ``quick`` preset (its 2 048-photo subset at 32 px, batch 16, 20 480 images), unconditional, trained
four times: seeds 0 and 1, each in float32 (``bf16=False``) and in bfloat16 autocast (``bf16=True``).
The seed changes the initial weights, the data order and the noise, so the two float32 seeds say how
far apart two equally good runs land: bfloat16 is "within noise" when it sits no further from float32
than that.

Two numbers per run: the mean training loss of each epoch (as the run computed it, in its own
arithmetic), and the final EMA network's loss in float32 on a fixed set — 512 of the photos, each
at a fixed t and ε (seed 99) — which compares what the runs learned on one yardstick. Images/s are
each run's own, on whatever else the machine was doing: time speed alone with
``bench_train_sample.py --variants fp32,bf16``. A finished run is saved in OUT and not re-run.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from diffusion_utils import TrainConfig, diffusion_loss, load_dataset
from diffusion_utils.data.batches import batches_per_epoch, epoch_batches
from diffusion_utils.loss import LossSettings
from diffusion_utils.plumbing.pixels import to_model_range
from diffusion_utils.plumbing.precision import cpu_reports_native_bf16
from diffusion_utils.training import TrainState, train_step

EVAL_N, EVAL_SEED = 512, 99


def run(config: TrainConfig, images: torch.Tensor, eval_x0: torch.Tensor, n_images: int) -> dict:
    state = TrainState(config, torch.device("cpu"))
    state.total_steps = n_images // config.batch_size
    per_epoch = batches_per_epoch(len(images), config.batch_size)
    t0 = time.perf_counter()
    while state.step < state.total_steps:
        for x0 in epoch_batches(images, config.batch_size, state.data_rng):
            train_step(state, x0)
            if state.step == state.total_steps:
                break
    seconds = time.perf_counter() - t0
    epochs = [sum(state.losses[i:i + per_epoch]) / len(state.losses[i:i + per_epoch])
              for i in range(0, len(state.losses), per_epoch)]
    ema = state.ema.module.eval()
    with torch.no_grad():  # float32, the same t and ε for every run
        eval_loss = float(diffusion_loss(ema, state.schedule, eval_x0, settings=LossSettings.from_config(config),
                                         generator=torch.Generator().manual_seed(EVAL_SEED)))
    return {"bf16": config.bf16, "seed": config.seed, "autocast": str(state.autocast_dtype),
            "epoch_mean_loss": epochs, "final_ema_loss_float32": eval_loss, "seconds": seconds,
            "images_per_s": state.step * config.batch_size / seconds}


def cpu_name() -> str:
    """The CPU's model name (Linux's /proc/cpuinfo), else what platform says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default=None, help="folder holding flowers-102/ (torchvision layout)")
    parser.add_argument("--out", required=True, help="folder for the runs' results")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--images", type=int, default=20_480, help="training images per run (the quick preset's 10 epochs)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    base = TrainConfig.preset("quick", device="cpu", num_classes=0, data_root=args.data_root)
    images = load_dataset(base.data, base.img_size, root=args.data_root, max_images=base.max_images,
                          seed=base.seed, progress=False).images
    eval_x0 = images[torch.randperm(len(images), generator=torch.Generator().manual_seed(EVAL_SEED))[:EVAL_N]]
    eval_x0 = to_model_range(eval_x0)
    results = []
    for seed in (int(s) for s in args.seeds.split(",")):
        for bf16 in (False, True):
            path = out / f"seed{seed}_{'bf16' if bf16 else 'fp32'}.json"
            if not path.is_file():
                path.write_text(json.dumps(run(base.replace(seed=seed, bf16=bf16), images, eval_x0, args.images), indent=1))
            results.append(json.loads(path.read_text()))
            r = results[-1]
            print(f"seed {seed} {'bf16' if bf16 else 'fp32'}: last epoch loss {r['epoch_mean_loss'][-1]:.5f}, "
                  f"EMA loss (float32, fixed set) {r['final_ema_loss_float32']:.5f}, {r['images_per_s']:.1f} images/s",
                  flush=True)
    summary = {"cpu": cpu_name(), "native_bf16_flag": cpu_reports_native_bf16(),
               "torch": torch.__version__, "threads": args.threads, "images": args.images, "runs": results}
    (out / "bf16.json").write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
