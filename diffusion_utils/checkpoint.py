"""Checkpoints: everything needed to resume training exactly, or to sample from a trained model.

A checkpoint is one ``torch.save`` file of plain types and tensors only, so it loads with
``torch.load(path, weights_only=True)`` (no arbitrary code runs when you open someone's file).
It holds the model, its EMA, the optimizer, the step/epoch counters, the config, the loss
history, the per-epoch sample grids and every random-number generator's state. Writes are
atomic: a temporary file in the same folder, then ``os.replace``, so a crash or Ctrl-C mid-write
never leaves a half-written checkpoint where the old one was.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .config import TrainConfig
from .errors import CheckpointError, ConfigError
from .model import UNet
from .schedule import NoiseSchedule

CHECKPOINT_NAME = "diffusion_unet_pixels.pth"  # the original project's file name
FORMAT = "diffusion_utils/1"
# Fields that fix the network's shape or the meaning of its input t and of its output: a
# checkpoint is useless without them. (A checkpoint saved before ``prediction`` or
# ``num_classes`` existed has neither and loads as "eps" and 0 — what it was trained with.)
ARCHITECTURE_FIELDS = ("img_size", "n_steps", "schedule", "beta_start", "beta_end", "base_channels",
                       "channel_mults", "num_res_blocks", "attention_levels", "time_emb_dim", "prediction",
                       "num_classes")


def save_checkpoint(path: str | os.PathLike, state: dict) -> Path:
    """Atomically write ``state`` (a dict of plain types and tensors) to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        torch.save({"format": FORMAT, **state}, tmp)
        os.replace(tmp, path)
    except BaseException:  # a failed or interrupted write: the old file stays, the temp file goes
        tmp.unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """Read a checkpoint written by :func:`save_checkpoint`; one-line errors for bad files."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found; train one with "
                              f"'python -m diffusion_utils train' or pass the right --checkpoint")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{path} is not a readable checkpoint ({reason[:120]}); "
                              f"re-train or pick another file") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a diffusion_utils checkpoint (no '{FORMAT}' marker); "
                              f"pick a file written by 'python -m diffusion_utils train'")
    try:
        state["config"] = TrainConfig.from_dict(state["config"])
    except (KeyError, TypeError, ConfigError) as err:
        raise CheckpointError(f"{path} holds an invalid config ({err}); re-train") from None
    return state


def check_compatible(saved: TrainConfig, wanted: TrainConfig, path, ignore: tuple[str, ...] = ()) -> None:
    """Raise :class:`CheckpointError` if ``wanted`` describes a different network or schedule
    (fields named in ``ignore`` may differ)."""
    for name in ARCHITECTURE_FIELDS:
        if name in ignore:
            continue
        a, b = getattr(saved, name), getattr(wanted, name)
        if a != b:
            raise CheckpointError(f"checkpoint {path} was trained with {name}={a!r} but the config asks "
                                  f"for {name}={b!r}; use the same settings or a new --out folder")


def load_model(path: str | os.PathLike, device="cpu", use_ema: bool = True):
    """Load a trained model for sampling: returns ``(model, schedule, config)``.

    ``use_ema=True`` gives the exponential moving average of the weights, which samples better
    than the raw weights (Ho et al. used an EMA decay of 0.9999).
    """
    state = load_checkpoint(path)
    config = state["config"]
    model = UNet.from_config(config)
    weights = state["model"]
    if use_ema:
        # AveragedModel stores the copy under "module." plus an "n_averaged" counter.
        weights = {k.removeprefix("module."): v for k, v in state["ema"].items() if k.startswith("module.")}
    try:
        model.load_state_dict(weights)
    except RuntimeError as err:
        raise CheckpointError(f"{path} does not match the network its config describes "
                              f"({str(err).splitlines()[0][:120]}); re-train") from None
    model.to(device).eval()
    return model, NoiseSchedule.from_config(config), config
