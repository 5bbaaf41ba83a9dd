"""The attainable FLOP/s of this CPU, on the threads training uses: the denominator of a CPU's MFU.

A CPU has no data-sheet "peak" that torch can reach: clock, vector width, turbo and memory all
decide it. So measure the two operations a UNet spends its time in, at the sizes it uses:

- a large float32 (or bfloat16) matrix multiply, 2048 × 2048 — the best case of the BLAS;
- a 3 × 3 convolution forward of the quick UNet's typical shape (batch 16, 64 channels, 16 × 16).

The larger of the two is the roof an MFU is reported against. Run it alone (a second process on
the machine halves every figure)::

    python benchmarks/cpu_peak.py                    # float32 and bfloat16, torch's threads
    python benchmarks/cpu_peak.py --threads 1
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F


def _rate(work, flops: float, repeats: int) -> float:
    """FLOP/s of ``work()`` (which does ``flops`` operations): the best of ``repeats`` timed runs."""
    work()  # warm-up: allocations, kernel selection
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - start)
    return flops / best


def matmul_flops(dtype: torch.dtype = torch.float32, n: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of an n × n matrix multiply in ``dtype`` (2 n³ operations)."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    return _rate(lambda: a @ b, 2.0 * n ** 3, repeats)


def conv_flops(dtype: torch.dtype = torch.float32, batch: int = 16, channels: int = 64, size: int = 16,
               repeats: int = 5) -> float:
    """FLOP/s of a 3 × 3 convolution forward (2 · 9 · C_in · C_out operations per output pixel)."""
    x = torch.randn(batch, channels, size, size).to(dtype)
    w = torch.randn(channels, channels, 3, 3).to(dtype)
    return _rate(lambda: F.conv2d(x, w, padding=1), 2.0 * 9 * channels * channels * batch * size * size, repeats)


def cpu_peak(dtype: torch.dtype = torch.float32) -> float:
    """The attainable FLOP/s in ``dtype`` on ``torch.get_num_threads()`` threads: the larger of the
    matmul's and the convolution's."""
    return max(matmul_flops(dtype), conv_flops(dtype))


def cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none, e.g. macOS)."""
    path = Path("/proc/cpuinfo")
    if not path.exists():
        return set()
    for line in path.read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    native = sorted(cpu_flags() & {"avx512_bf16", "amx_bf16"}) or ["none"]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, kernels {torch.backends.cpu.get_cpu_capability()}, "
          f"native bf16 flags: {', '.join(native)}")
    for dtype in (torch.float32, torch.bfloat16):
        mm, conv = matmul_flops(dtype), conv_flops(dtype)
        print(f"{str(dtype).removeprefix('torch.'):9s} matmul 2048²: {mm / 1e9:7.1f} GFLOP/s   "
              f"conv 3×3 (16, 64, 16, 16): {conv / 1e9:7.1f} GFLOP/s")


if __name__ == "__main__":
    main()
