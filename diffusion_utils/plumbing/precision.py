"""The dtype the network runs in: float32, or bfloat16 autocast where the hardware has it natively.

Under ``torch.autocast(dtype=torch.bfloat16)`` the convolutions and matrix products run in
bfloat16 (8 bits of mantissa instead of 23) while the loss, the optimiser and the weights stay in
float32. That pays only where the hardware computes bfloat16 natively; elsewhere torch emulates it
at a fraction of the float32 rate (docs/benchmarks.md):

- on a 2-core AMD EPYC whose CPU reports ``avx512_bf16``, the quick preset trained at 1.29× the
  float32 rate in bfloat16;
- on a 2-core Intel Xeon with AVX-512 but no native bfloat16, at 0.35× (34.6 against 100.3
  images/s): torch emulates bfloat16 there at a fifth of the float32 FLOP/s.

So training's ``bf16="auto"`` (:func:`use_bf16`) turns it on for a CUDA GPU with native support and
for a CPU that reports ``avx512_bf16`` or ``amx_bf16`` *and* runs a short probe faster in bfloat16;
``True`` and ``False`` override. The samplers use bfloat16 on native CUDA GPUs only
(:func:`bf16_available`): on the CPU sampling stays in float32, so a seed draws the same images on
every CPU.
"""

from __future__ import annotations

import time
from functools import lru_cache
from pathlib import Path

import torch

NATIVE_CPU_FLAGS = ("avx512_bf16", "amx_bf16")  # the CPU flags of native bfloat16 arithmetic
PROBE_MIN_SPEEDUP = 1.1  # "auto" turns bfloat16 on where the probe runs at least this much faster


def bf16_available(device: torch.device) -> bool:
    """True on a CUDA GPU with native bfloat16 (Ampere or newer, e.g. A100, L4, H100).

    Colab's free T4 and a V100 only emulate bfloat16, which is slower than float32 there, so
    they run in float32. MPS runs in float32; CPUs too unless training's :func:`use_bf16` finds
    native support.
    """
    if torch.device(device).type != "cuda":
        return False
    try:
        return torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:  # torch < 2.3 has no including_emulation and never counted emulation
        return torch.cuda.is_bf16_supported()


def cpu_reports_native_bf16(cpuinfo: str | None = None) -> bool:
    """True where the CPU's flags (Linux's ``/proc/cpuinfo``, or the text ``cpuinfo``) list
    ``avx512_bf16`` or ``amx_bf16``. False where there is no such file (macOS, Windows)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            return any(flag in line.split(":", 1)[-1].split() for flag in NATIVE_CPU_FLAGS)
    return False


def _seconds_per_step(dtype: torch.dtype | None, repeats: int = 3) -> float:
    """The best of ``repeats`` timings of one forward and backward pass of a 3 × 3 convolution,
    (16, 64, 32, 32) → 64 channels — the quick UNet's typical layer — in float32 or under autocast."""
    generator = torch.Generator().manual_seed(0)
    conv = torch.nn.Conv2d(64, 64, 3, padding=1)
    x = torch.randn(16, 64, 32, 32, generator=generator)
    best = float("inf")
    for i in range(repeats + 1):  # the first pass warms up, untimed
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype is not None):
            loss = conv(x).float().square().mean()
        loss.backward()
        if i:
            best = min(best, time.perf_counter() - t0)
    return best


@lru_cache(maxsize=None)
def bf16_pays_on_cpu(threads: int) -> bool:
    """True where the probe (:func:`_seconds_per_step`, about 0.3 s in all) runs at least
    :data:`PROBE_MIN_SPEEDUP` times faster in bfloat16 than in float32 on ``threads`` threads.
    Cached per thread count for the process."""
    return _seconds_per_step(None) >= PROBE_MIN_SPEEDUP * _seconds_per_step(torch.bfloat16)


def use_bf16(setting: bool | str, device: torch.device) -> bool:
    """Whether training runs the network in bfloat16 autocast on ``device``, for the config's
    ``bf16`` setting: ``"auto"`` — a CUDA GPU with native support (:func:`bf16_available`), or a
    CPU that reports it (:func:`cpu_reports_native_bf16`) and is faster with it
    (:func:`bf16_pays_on_cpu`); ``True`` — on, on CUDA and the CPU (MPS stays float32); ``False`` — off."""
    kind = torch.device(device).type
    if setting == "auto":
        if kind == "cuda":
            return bf16_available(device)
        return kind == "cpu" and cpu_reports_native_bf16() and bf16_pays_on_cpu(torch.get_num_threads())
    return bool(setting) and kind in ("cuda", "cpu")


__all__ = ["bf16_available", "cpu_reports_native_bf16", "bf16_pays_on_cpu", "use_bf16"]
