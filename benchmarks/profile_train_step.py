"""Where a training step's time goes on this machine: torch.profiler over the package's own
``train_step``, grouped by kind of work. Prints figures; asserts nothing.

    python benchmarks/profile_train_step.py --preset quick --steps 20

Each operator's self CPU time (what it spent, not counting operators it called) is summed into one
of: convolutions (forward and backward, the layers that hold nearly all the FLOPs), attention and
linear layers (matrix products), normalisation (GroupNorm), activations and element-wise arithmetic
(SiLU, adds, multiplies, the loss), the optimiser (AdamW), the EMA, and the rest. The last lines say
what that means for speed: how fast the convolutions run against this CPU's attainable FLOP/s
(``cpu_peak.py``), and how much faster the step could be if everything else took no time at all. Run
it alone: a second process on the cores changes every share.
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile

from cpu_peak import conv_flops as attainable_conv_flops
from diffusion_utils import TrainConfig
from diffusion_utils.training import TrainState, train_step

# Substrings of operator names, checked in this order; the first that matches names the kind.
KINDS = (
    ("convolution", ("convolution", "conv2d", "mkldnn_conv")),
    ("attention and linear (matrix products)", ("addmm", "bmm", "aten::mm", "matmul", "linear", "attention", "baddbmm")),
    ("GroupNorm", ("group_norm", "native_group_norm")),
    ("optimiser (AdamW) and EMA (foreach ops)", ("_foreach", "lerp", "optimizer")),
    ("activations and element-wise", ("silu", "add", "mul", "sub", "div", "pow", "sqrt", "mse", "sum", "mean",
                                      "clamp", "exp", "sin", "cos", "cat", "where", "neg", "copy_", "fill_", "zero_")),
)


def kind_of(name: str) -> str:
    lowered = name.lower()
    for kind, needles in KINDS:
        if any(n in lowered for n in needles):
            return kind
    return "the rest (reshapes, indexing, allocation, Python)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="quick")
    parser.add_argument("--steps", type=int, default=20, help="profiled training steps (after 5 untimed ones)")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    config = TrainConfig.preset(args.preset, device="cpu")
    state = TrainState(config, torch.device("cpu"))
    x0 = torch.rand(config.batch_size, 3, config.img_size, config.img_size) * 2 - 1
    for _ in range(5):
        train_step(state, x0)
    with profile(activities=[ProfilerActivity.CPU], with_flops=True, record_shapes=True) as prof:
        for _ in range(args.steps):
            train_step(state, x0)
    events = prof.key_averages()
    per_kind, conv_flops = defaultdict(float), 0.0
    for event in events:
        per_kind[kind_of(event.key)] += event.self_cpu_time_total / 1e3 / args.steps  # ms per step
        if kind_of(event.key) == "convolution":
            conv_flops += (event.flops or 0) / args.steps
    total = sum(per_kind.values())
    print(f"{args.preset} preset, batch {config.batch_size} at {config.img_size} px, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}: {total:.1f} ms of operator time per step ({config.batch_size / total * 1e3:.1f} "
          f"images/s under the profiler)")
    for kind, ms in sorted(per_kind.items(), key=lambda kv: -kv[1]):
        print(f"  {kind:<52s} {ms:7.1f} ms  {ms / total:6.1%}")
    print("top operators by self time (ms per step):")
    for event in sorted(events, key=lambda e: -e.self_cpu_time_total)[:12]:
        print(f"  {event.key:<44s} {event.self_cpu_time_total / 1e3 / args.steps:7.2f}")
    peak = attainable_conv_flops(torch.float32)
    conv_ms = per_kind["convolution"]
    if conv_flops:  # the profiler counts forward convolutions' FLOPs; backward is about twice that
        achieved = 3 * conv_flops / (conv_ms / 1e3) / 1e9
        print(f"convolutions: {achieved:.0f} GFLOP/s (forward FLOPs counted, backward taken as 2×) against "
              f"{peak / 1e9:.0f} GFLOP/s attainable for a 3×3 convolution on these threads ({achieved * 1e9 / peak:.0%})")
    print(f"if everything but the convolutions took no time, a step would be {total / conv_ms:.2f}× faster")


if __name__ == "__main__":
    main()
