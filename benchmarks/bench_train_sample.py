"""Training throughput and sampling cost for a preset on a device. Prints figures; asserts nothing.

    python benchmarks/bench_train_sample.py --preset quick --device cpu
    python benchmarks/bench_train_sample.py --preset full --device cuda --train-steps 50
    python benchmarks/bench_train_sample.py --preset quick --device cpu --variants fp32,bf16,channels_last,compile
    python benchmarks/bench_train_sample.py --preset quick --device cpu --threads 1

On the CPU each training figure comes with its MFU: achieved FLOP/s (the UNet's forward + backward
FLOPs per image, counted by ``torch.utils.flop_counter``, times images/s) over the attainable FLOP/s
of this CPU in the same dtype on the same threads, measured first by ``cpu_peak.py``.

Training: ``--train-steps`` optimiser steps of the preset's UNet on random images at the preset's
size and batch (data loading is excluded: the dataset is an in-memory tensor, so it costs nothing
measurable), after ``--warmup`` untimed steps. Sampling: one batch of ``--sample-n`` images through
``--sample-calls`` network calls, reported per image and extrapolated to a full sampler run.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from bench_pipeline import flops_per_image
from cpu_peak import cpu_peak
from diffusion_utils import NoiseSchedule, TrainConfig, UNet, count_parameters, resolve_device, sample, upsample
from diffusion_utils.training import TrainState, train_step
from diffusion_utils.plumbing.precision import use_bf16


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def bench_training(config: TrainConfig, device: torch.device, steps: int, warmup: int,
                   variant: str = "default") -> float:
    """Images per second through the package's own training step (:func:`train_step`: the loss of
    Algorithm 1, backward, clipping, AdamW and the EMA update) on random in-memory images.

    ``variant``: ``"default"`` (what ``train`` does on this device), ``"fp32"``, ``"bf16"``
    (bfloat16 autocast forced on, whatever the device), ``"channels_last"`` (the UNet's weights and
    the batch in NHWC memory order, which oneDNN's convolutions prefer) or ``"compile"``
    (``torch.compile``d UNet; its compile time falls in the untimed warm-up steps).
    """
    state = TrainState(config.replace(device=str(device)), device)
    x0 = torch.rand(config.batch_size, 3, config.img_size, config.img_size, device=device) * 2 - 1
    if variant in ("fp32", "bf16"):
        state.autocast_dtype = torch.bfloat16 if variant == "bf16" else None
    elif variant == "channels_last":
        state.model.to(memory_format=torch.channels_last)
        x0 = x0.contiguous(memory_format=torch.channels_last)
    elif variant == "compile":
        state.network = torch.compile(state.model)
    for _ in range(warmup):
        train_step(state, x0)
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        train_step(state, x0)
    synchronize(device)
    return steps * config.batch_size / (time.perf_counter() - start)


def bench_sampling(config: TrainConfig, device: torch.device, n: int, calls: int) -> float:
    """Seconds per image per network call, measured with DDIM (the cost per call is the same for
    every sampler: one forward pass of the batch)."""
    torch.manual_seed(0)
    model = UNet.from_config(config).to(device).eval()
    schedule = NoiseSchedule.from_config(config)
    kwargs = dict(sampler="ddim", generator=torch.Generator().manual_seed(0), bf16=config.bf16, progress=False)
    if model.cond_channels:  # an upsampler: the same calls, given random low-resolution images
        low_res = torch.rand(n, 3, config.low_res_size, config.low_res_size) * 2 - 1
        draw = lambda steps: upsample(model, schedule, low_res, steps=steps, **kwargs)  # noqa: E731
    else:
        draw = lambda steps: sample(model, schedule, n, steps=steps, **kwargs)  # noqa: E731
    draw(2)  # warm-up
    synchronize(device)
    start = time.perf_counter()
    draw(calls)
    synchronize(device)
    return (time.perf_counter() - start) / (n * calls)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=("quick", "full", "sr64"), default="quick")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--train-steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--variants", default="default",
                        help="also time these training variants first: fp32, bf16, compile (comma-separated)")
    parser.add_argument("--sample-n", type=int, default=16)
    parser.add_argument("--sample-calls", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    config = TrainConfig.preset(args.preset)
    device = resolve_device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    print(f"preset {args.preset}: {config.img_size} px, batch {config.batch_size}, "
          f"{count_parameters(UNet.from_config(config)) / 1e6:.2f} M parameters")
    print(f"device: {device} ({name}), torch {torch.__version__}, {torch.get_num_threads()} CPU threads, "
          f"bf16 autocast when training (bf16={config.bf16!r}): {use_bf16(config.bf16, device)}")

    flops = flops_per_image(config, device)
    peaks = {}
    if device.type == "cpu":
        peaks = {"fp32": cpu_peak(torch.float32), "bf16": cpu_peak(torch.bfloat16)}
        print(f"CPU attainable (cpu_peak.py): float32 {peaks['fp32'] / 1e9:.0f} GFLOP/s, bfloat16 "
              f"{peaks['bf16'] / 1e9:.0f} GFLOP/s; the UNet: {flops / 1e9:.2f} GFLOP per training image")

    def mfu(rate: float, variant: str) -> str:
        peak = peaks.get("bf16" if variant == "bf16" else "fp32")
        return f" = {rate * flops / 1e9:.0f} GFLOP/s, MFU {rate * flops / peak:.0%}" if peak else ""

    for variant in args.variants.split(","):
        if variant != "default":
            rate = bench_training(config, device, args.train_steps, args.warmup, variant)
            print(f"training, {variant}: {rate:.1f} images/s{mfu(rate, variant)}")
    images_per_s = bench_training(config, device, args.train_steps, args.warmup)
    steps_per_epoch_full = 8189 // config.batch_size
    n_images = config.max_images or 8189
    epoch_s = (n_images // config.batch_size) * config.batch_size / images_per_s
    print(f"training: {images_per_s:.1f} images/s → {epoch_s:.1f} s per epoch of {n_images} images, "
          f"{epoch_s * config.num_epochs / 60:.1f} min for the preset's {config.num_epochs} epochs "
          f"({steps_per_epoch_full} steps per epoch on all of Flowers102)")

    per_call = bench_sampling(config, device, args.sample_n, args.sample_calls)
    for sampler, calls in (("ddpm", config.n_steps), ("ddim/dpmpp", 50), ("dpmpp", 20)):
        print(f"sampling ({sampler}, {calls} calls, batch {args.sample_n}): {per_call * calls:.3f} s per image")


if __name__ == "__main__":
    main()
