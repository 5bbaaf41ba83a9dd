"""Training throughput: the original-style pipeline against the project's, same model, same device.

    python benchmarks/bench_pipeline.py --data-root ../shared/data --preset quick --device cpu
    python benchmarks/bench_pipeline.py --data-root DATA --preset full --device cuda --steps 100

Both train the preset's UNet at its size and batch on the real Flowers102 JPEGs, one after the
other in this process (run it alone: a second PyTorch process on the machine makes the figures
meaningless). Prints images/s for each, their ratio, the model's FLOPs per training image (counted
with ``torch.utils.flop_counter``) and the MFU against the device's peak where it is known.

- **original-style**: what a first DDPM script does (the design this project grew from) — a
  ``DataLoader`` over the JPEG files that opens, decodes, resizes, flips and normalises every
  image every epoch with torchvision transforms; float32; the loop of Algorithm 1 written plainly
  with ``loss.item()`` every step; no EMA, no clipping, no compile.
- **project**: ``load_dataset`` decodes the images once into a uint8 tensor in memory (its
  one-time cost is printed apart), ``epoch_batches`` shuffles and flips there, and
  :func:`~diffusion_utils.training.train_step` does the step (loss, backward, clipping, AdamW,
  the EMA update), with bfloat16 autocast where it pays off (CUDA GPUs with native bf16).
"""

from __future__ import annotations

import argparse
import itertools
import platform
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torch.utils.flop_counter import FlopCounterMode
from torchvision import transforms

from cpu_peak import cpu_peak
from diffusion_utils import NoiseSchedule, TrainConfig, UNet, load_dataset, resolve_device
from diffusion_utils.plumbing.precision import bf16_available
from diffusion_utils.data.data import epoch_batches
from diffusion_utils.training import TrainState, train_step

# Dense peak throughput in TFLOP/s of the dtype the project trains in there (bf16 tensor cores on
# Ampere and newer, fp16 on a T4), from the vendors' data sheets. A name not listed: no MFU.
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L4": 121.0, "A10G": 125.0, "T4": 65.0}


class JpegFiles(Dataset):
    """The original-style dataset: every item opens and decodes a JPEG and runs the transforms."""

    def __init__(self, files: list[Path], img_size: int):
        self.files = files
        self.transform = transforms.Compose([
            transforms.Resize(img_size), transforms.CenterCrop(img_size), transforms.RandomHorizontalFlip(),
            transforms.ToTensor(), transforms.Normalize([0.5] * 3, [0.5] * 3)])  # → [-1, 1]

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> torch.Tensor:
        with Image.open(self.files[i]) as image:
            return self.transform(image.convert("RGB"))


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def original_style(config: TrainConfig, files: list[Path], device: torch.device, steps: int, warmup: int,
                   workers: int) -> float:
    """Images/s of the plain loop over a JPEG DataLoader (float32, ``loss.item()`` every step)."""
    torch.manual_seed(config.seed)
    model = UNet.from_config(config).to(device).train()
    schedule = NoiseSchedule.from_config(config).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr)
    loader = DataLoader(JpegFiles(files, config.img_size), batch_size=config.batch_size, shuffle=True,
                        drop_last=True, num_workers=workers, persistent_workers=workers > 0)
    batches = itertools.chain.from_iterable(itertools.repeat(loader))  # epoch after epoch
    start = None
    for i, x0 in enumerate(itertools.islice(batches, warmup + steps)):
        if i == warmup:
            synchronize(device)
            start = time.perf_counter()
        x0 = x0.to(device)
        t = torch.randint(0, schedule.n_steps, (len(x0),), device=device)
        eps = torch.randn_like(x0)
        loss = F.mse_loss(model(schedule.q_sample(x0, t, eps), t), eps)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        loss.item()
    synchronize(device)
    return steps * config.batch_size / (time.perf_counter() - start)


def project(config: TrainConfig, data_root: str, device: torch.device, steps: int, warmup: int) -> tuple[float, float]:
    """(images/s of the package's own training step on the in-memory dataset, seconds to decode it once)."""
    with tempfile.TemporaryDirectory() as empty_cache:  # a first run's cost: nothing cached yet
        start = time.perf_counter()
        dataset = load_dataset("flowers102", config.img_size, root=data_root, progress=False, cache_dir=empty_cache)
        decode_s = time.perf_counter() - start
    state = TrainState(config.replace(device=str(device), num_classes=0), device)
    batches = itertools.chain.from_iterable(
        epoch_batches(dataset.images, config.batch_size, state.data_rng) for _ in itertools.count())
    for i, x0 in enumerate(itertools.islice(batches, warmup + steps)):
        if i == warmup:
            synchronize(device)
            start = time.perf_counter()
        train_step(state, x0)
    synchronize(device)
    return steps * config.batch_size / (time.perf_counter() - start), decode_s


def flops_per_image(config: TrainConfig, device: torch.device) -> float:
    """FLOPs of one training image: the forward and backward pass of the UNet (the optimiser and
    the EMA are a few FLOPs per parameter and left out), counted by ``FlopCounterMode``."""
    model = UNet.from_config(config).to(device)
    size = config.crop_size or config.img_size  # an upsampler trains on crops
    x = torch.randn(config.batch_size, 3, size, size, device=device)
    t = torch.randint(0, config.n_steps, (config.batch_size,), device=device)
    cond = dict(cond=torch.randn_like(x), cond_t=t) if model.cond_channels else {}
    with FlopCounterMode(display=False) as counter:
        model(x, t, **cond).pow(2).mean().backward()
    return counter.get_total_flops() / config.batch_size


def peak_tflops(device: torch.device, given: float | None) -> float | None:
    if given is not None:
        return given
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        return next((peak for key, peak in PEAK_TFLOPS.items() if key in name), None)
    if device.type == "cpu":  # no data sheet: the attainable float32 FLOP/s, measured (cpu_peak.py)
        return cpu_peak(torch.float32) / 1e12
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", required=True, help="the folder that contains flowers-102/jpg")
    parser.add_argument("--preset", choices=("quick", "full"), default="quick")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--steps", type=int, default=30, help="timed optimiser steps per pipeline")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--workers", type=int, default=0,
                        help="DataLoader worker processes of the original-style pipeline (default 0, "
                             "DataLoader's own default)")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="the device's peak TFLOP/s for the MFU (default: known GPUs' data sheets; "
                             "on a CPU, the float32 FLOP/s cpu_peak.py measures)")
    args = parser.parse_args()

    config = TrainConfig.preset(args.preset)
    device = resolve_device(args.device)
    files = sorted(Path(args.data_root, "flowers-102", "jpg").glob("*.jpg"))
    if not files:
        parser.error(f"no JPEGs in {Path(args.data_root, 'flowers-102', 'jpg')}; pass --data-root")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    threads = f", {torch.get_num_threads()} threads" if device.type == "cpu" else ""
    print(f"preset {args.preset}: {config.img_size} px, batch {config.batch_size}, {len(files)} JPEGs; "
          f"device {device} ({name}{threads}), torch {torch.__version__}; {args.steps} steps each")

    flops = flops_per_image(config, device)
    peak = peak_tflops(device, args.peak_tflops)
    original = original_style(config, files, device, args.steps, args.warmup, args.workers)
    ours, decode_s = project(config, args.data_root, device, args.steps, args.warmup)
    autocast = "bf16 autocast" if config.bf16 and bf16_available(device) else "float32"
    print(f"model: {flops / 1e9:.2f} GFLOP per training image (forward + backward)")
    print(f"{'pipeline':<56} {'images/s':>9} {'TFLOP/s':>8} {'MFU':>6}")
    for label, rate in ((f"original-style (JPEG DataLoader, {args.workers} workers, float32)", original),
                        (f"project (in-memory uint8, {autocast})", ours)):
        achieved = rate * flops / 1e12
        mfu = f"{achieved / peak:.1%}" if peak else "n/a"
        print(f"{label:<56} {rate:>9.1f} {achieved:>8.3f} {mfu:>6}")
    print(f"ratio project / original-style: {ours / original:.2f}×; the project decodes the images once, "
          f"in {decode_s:.1f} s")
    if config.num_epochs and device.type == "cuda":
        total = 8189 // config.batch_size * config.batch_size * config.num_epochs
        print(f"the preset's {config.num_epochs} epochs ({total:,} images) would take {total / ours / 3600:.1f} h")


if __name__ == "__main__":
    main()
