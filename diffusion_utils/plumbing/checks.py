"""The checks that the config, the network, the samplers and the data share.

Each turns a value a user gave (a count, a number, a sampler and its steps, an image size, a
device name) into the value the code uses, or raises a one-line :class:`ConfigError` that names
the setting and says what it may be. :class:`~diffusion_utils.TrainConfig` runs them when a config
is built; :class:`~diffusion_utils.UNet`, :func:`~diffusion_utils.sample` and
:func:`~diffusion_utils.load_dataset` run the same ones on their own arguments, so a mistake reads
the same wherever it is made.
"""

from __future__ import annotations

import math
import numbers

import torch

from .errors import ConfigError

SAMPLERS = ("ddpm", "ddim", "dpmpp", "euler", "heun")  # the first three diffusion's, the last two flow's
FLOW_SAMPLERS = ("euler", "heun")
# Upper bounds of the sizes: far above any sensible run, low enough that a typo (a step count in
# the billions) is refused up front instead of trying to allocate terabytes.
MAX_SIZES = {"img_size": 1024, "n_steps": 100_000, "base_channels": 1024, "num_res_blocks": 16,
             "time_emb_dim": 8192, "batch_size": 65_536, "num_epochs": 1_000_000, "sample_every": 1_000_000,
             "sample_grid_n": 1024}
MAX_SEED = 2 ** 32 - 1


def is_int(value) -> bool:
    """An int or a numpy integer; not a bool (True is an int to Python, but never a count)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def shown(value) -> str:
    """A value and its type, as a refusal quotes it: ``'32' (type str)``."""
    return f"{value!r} (type {type(value).__name__})"


def as_int(name: str, value, low: int | None = None, high: int | None = None) -> int:
    """``value`` as a Python int if it is an integer (numpy integers too, bools not) in
    [``low``, ``high``] (None: unbounded); else a one-line :class:`ConfigError` naming ``name``
    and the allowed range."""
    if low is not None and high is not None:
        allowed = f"an integer in [{low}, {high}]"
    elif low is not None:
        allowed = f"an integer >= {low}"
    else:
        allowed = "an integer" if high is None else f"an integer <= {high}"
    if not is_int(value):
        raise ConfigError(f"{name} must be {allowed}; got {shown(value)}")
    if (low is not None and value < low) or (high is not None and value > high):
        raise ConfigError(f"{name} must be {allowed}; got {value}")
    return int(value)


def as_float(name: str, value) -> float:
    """``value`` as a finite Python float (ints and numpy numbers too, bools not), else a
    :class:`ConfigError` naming ``name``."""
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        raise ConfigError(f"{name} must be a finite number; got {shown(value)}")
    if not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number; got {value}")
    return float(value)


def check_halvable(img_size: int, levels: int) -> None:
    """Raise :class:`ConfigError` unless a UNet with ``levels`` resolution levels can halve
    ``img_size`` ``levels − 1`` times."""
    halvings = levels - 1
    if img_size % (2 ** halvings) != 0:
        raise ConfigError(f"img_size must be divisible by {2 ** halvings} so the UNet can halve "
                          f"it {halvings} times; got {img_size}")


def default_steps(sampler: str, n_steps: int) -> int:
    """Network calls per image when none are given: all T for DDPM, 50 for DDIM/DPM-Solver++."""
    return n_steps if sampler == "ddpm" else min(50, n_steps)


def check_sampler_steps(sampler: str, steps: int | None, n_steps: int, name: str = "steps") -> int:
    """The network calls ``sampler`` makes over ``n_steps`` timesteps: ``steps``, or its default
    (:func:`default_steps`) when None. A one-line :class:`ConfigError` naming ``name`` for an
    unknown sampler, a count outside [1, n_steps], or DDPM with fewer than all n_steps (the
    ancestral sampler cannot skip a step; DDIM and DPM-Solver++ can)."""
    if sampler not in SAMPLERS:
        raise ConfigError(f"sampler must be one of {SAMPLERS}; got {sampler!r}")
    if steps is None:
        return default_steps(sampler, n_steps)
    steps = as_int(name, steps, 1, n_steps)
    if sampler == "ddpm" and steps != n_steps:
        raise ConfigError(f"{name} must be {n_steps} for the ddpm sampler, which takes every step; got {steps} "
                          f"(use sampler ddim or dpmpp for fewer)")
    return steps


def is_device_name(name: str) -> bool:
    """True for the device names a config accepts: auto, cpu, cuda, cuda:N, mps."""
    return isinstance(name, str) and (name in ("auto", "cpu", "cuda", "mps")
                                      or (name.startswith("cuda:") and name[5:].isdigit()))


def resolve_device(name: str = "auto") -> torch.device:
    """``"auto"`` → CUDA if available, else Apple's MPS, else CPU; anything else as given, checked
    to exist on this machine."""
    if name != "auto":
        device = torch.device(name)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError("device 'cuda' was asked for but no CUDA GPU is available; "
                              "use device='auto' or 'cpu'")
        if device.type == "mps" and not torch.backends.mps.is_available():
            raise ConfigError("device 'mps' was asked for but MPS is not available; "
                              "use device='auto' or 'cpu'")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


__all__ = ["SAMPLERS", "FLOW_SAMPLERS", "MAX_SIZES", "MAX_SEED", "is_int", "shown", "as_int", "as_float",
           "check_halvable", "default_steps", "check_sampler_steps", "is_device_name", "resolve_device"]
