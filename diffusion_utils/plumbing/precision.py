"""The dtype the network runs in: float32, or bfloat16 autocast where the hardware has it natively.

Under ``torch.autocast(dtype=torch.bfloat16)`` the convolutions and matrix products run in
bfloat16 (8 bits of mantissa instead of 23) while the loss, the optimiser and the weights stay in
float32. That pays only where the hardware computes bfloat16 natively; elsewhere torch emulates it
at a fraction of the float32 rate (docs/benchmarks.md).
"""

from __future__ import annotations

import torch


def bf16_available(device: torch.device) -> bool:
    """True on a CUDA GPU with native bfloat16 (Ampere or newer, e.g. A100, L4, H100).

    Colab's free T4 and a V100 only emulate bfloat16, which is slower than float32 there, so
    they train in float32. CPUs and MPS also use float32: on a 2-core Xeon with AVX-512 but no
    native bfloat16 (no avx512_bf16 or amx_bf16 flag), bf16 autocast trained the quick UNet at
    34.6 images/s against 100.3 in float32 with torch 2.14: torch emulates bfloat16 there at a fifth
    of the float32 FLOP/s (``benchmarks/cpu_peak.py``, ``bench_train_sample.py --variants fp32,bf16``;
    docs/benchmarks.md). CPUs with native bfloat16 may gain from it; turn it on there only after
    measuring with that benchmark.
    """
    if torch.device(device).type != "cuda":
        return False
    try:
        return torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:  # torch < 2.3 has no including_emulation and never counted emulation
        return torch.cuda.is_bf16_supported()


__all__ = ["bf16_available"]
