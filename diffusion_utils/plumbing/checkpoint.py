"""Checkpoints: everything needed to resume training exactly, or to sample from a trained model.

A checkpoint is one ``torch.save`` file of plain types and tensors only, so it loads with
``torch.load(path, weights_only=True)`` (no arbitrary code runs when you open someone's file).
It holds the model, its EMA, the optimizer, the step/epoch counters, the config, the loss
history, the per-epoch sample grids and every random-number generator's state. Writes are
atomic: a uniquely named temporary file in the same folder, then ``os.replace``, so a crash or
Ctrl-C mid-write never leaves a half-written checkpoint where the old one was. Reading checks
everything before anything uses it (:func:`load_checkpoint`): a damaged or foreign file is one
line that says what is wrong, never a traceback.
"""

from __future__ import annotations

import os
import pickle
import warnings
from pathlib import Path

import torch

from ..config import TrainConfig
from ..model import UNet
from ..schedule import schedule_for
from .errors import CheckpointError, ConfigError, short_reason
from .files import atomic_write

CHECKPOINT_NAME = "diffusion_unet_pixels.pth"  # the original project's file name
FORMAT = "diffusion_utils/1"
# Fields that fix the network's shape or the meaning of its input t and of its output: a
# checkpoint is useless without them. (A checkpoint saved before ``prediction`` or
# ``num_classes`` existed has neither and loads as "eps" and 0 — what it was trained with; one saved
# before upsamplers existed loads as task "generate" with middle attention; one saved before flow
# matching existed loads as objective "diffusion".)
ARCHITECTURE_FIELDS = ("img_size", "n_steps", "schedule", "beta_start", "beta_end", "base_channels",
                       "channel_mults", "num_res_blocks", "attention_levels", "time_emb_dim", "prediction",
                       "num_classes", "task", "mid_attention", "upsample_mode", "objective")


def ema_weights(state: dict) -> dict:
    """The EMA's weights from a checkpoint dict, named as the UNet names them: ``AveragedModel``
    stores its copy under ``module.`` (plus an ``n_averaged`` counter, which is dropped)."""
    return {k.removeprefix("module."): v for k, v in state["ema"].items() if k.startswith("module.")}


def save_checkpoint(path: str | os.PathLike, state: dict) -> Path:
    """Atomically write ``state`` (a dict of plain types and tensors) to ``path``."""
    return atomic_write(path, lambda file: torch.save({"format": FORMAT, **state}, file))


# The entries of a checkpoint (TrainState.state_dict writes them all) and the type of each.
ENTRIES = {"config": dict, "model": dict, "ema": dict, "optimizer": dict, "step": int, "epoch": int,
           "batch_in_epoch": int, "losses": torch.Tensor, "epoch_grids": dict, "rng": dict}
RNG_ENTRIES = ("data_epoch_start", "noise", "torch")


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """Read and check a checkpoint written by :func:`save_checkpoint` (via :func:`~diffusion_utils.train`).

    The one reader behind ``train --resume``, ``sample``, ``export``, :func:`load_model` and the
    notebooks' loaders. It checks the file's structure (every entry present with the right type),
    parses the config, checks that the weights, the EMA and the optimizer fit the network the
    config describes and that every weight is finite, and reports the first problem as a one-line
    :class:`CheckpointError`. Returns the state with ``state["config"]`` a :class:`TrainConfig`.
    """
    path = Path(os.fspath(path)).expanduser()
    if path.is_dir():
        hint = f"; pass {path / CHECKPOINT_NAME}" if (path / CHECKPOINT_NAME).is_file() else ""
        raise CheckpointError(f"{path} is a folder, not a checkpoint file{hint}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found; train one with "
                              f"'python -m diffusion_utils train' or pass the right --checkpoint")
    state = torch_load(path, "checkpoint", map_location, "re-train or pick another file")
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a diffusion_utils checkpoint (no '{FORMAT}' marker); "
                              f"pick a file written by 'python -m diffusion_utils train'")
    problem = checkpoint_problem(state)
    if problem:
        raise CheckpointError(f"{path} is damaged: {problem}; re-train or pick another checkpoint")
    return state


def checkpoint_problem(state: dict) -> str | None:
    """What is wrong with a checkpoint's contents (the first thing found, in words), or None.
    Parses ``state["config"]`` into a :class:`TrainConfig` on the way."""
    for name, kind in ENTRIES.items():
        if name not in state:
            return f"it has no '{name}' entry"
        value = state[name]
        if not isinstance(value, kind) or isinstance(value, bool):
            return f"its '{name}' is a {type(value).__name__}, not a {kind.__name__}"
    if min(state["step"], state["epoch"], state["batch_in_epoch"]) < 0:
        return "a step or epoch counter is negative"
    if "precision" not in state and state["config"].get("bf16") is True:
        # Written before the dtype was recorded, when bf16=True meant "on a native-bf16 GPU": today's "auto".
        state["config"] = {**state["config"], "bf16": "auto"}
    try:
        state["config"] = config = TrainConfig.from_dict(state["config"])
    except ConfigError as err:
        return f"it holds an invalid config ({err})"
    with torch.device("meta"):  # the network's shapes, without allocating it
        network = UNet.from_config(config)
    expected = network.state_dict()
    if not all(isinstance(k, str) for k in state["ema"]):
        return "its 'ema' has a key that is not a string"
    for what, weights in (("weights", state["model"]), ("EMA weights", ema_weights(state))):
        problem = weights_problem(weights, expected)
        if problem:
            return f"its {what} do not match the network its config describes ({problem})"
        bad = first_non_finite(weights)
        if bad:
            return f"its {what} hold NaN or infinite values (first: {bad}), so they cannot be sampled or resumed"
    problem = _optimizer_problem(state["optimizer"], [p.shape for p in network.parameters()])
    if problem:
        return f"its optimizer state {problem}"
    rng = state["rng"]
    if not all(isinstance(rng.get(k), torch.Tensor) and rng[k].dtype == torch.uint8 for k in RNG_ENTRIES):
        return f"its 'rng' entry needs the uint8 tensors {', '.join(RNG_ENTRIES)}"
    if not (state["losses"].ndim == 1 and state["losses"].is_floating_point()):
        return "its 'losses' is not a 1-D float tensor"
    if not all(isinstance(k, int) and isinstance(v, torch.Tensor) and v.dtype == torch.uint8
               for k, v in state["epoch_grids"].items()):
        return "its 'epoch_grids' is not a dict of epoch → uint8 images"
    return None


def weights_problem(weights: dict, expected: dict) -> str | None:
    """How ``weights`` (name → tensor) differ from a network's ``expected`` state dict: the first
    missing, unexpected or misshapen entry, or None when they fit."""
    for name, value in weights.items():
        if name not in expected:
            return f"unexpected entry {name!r}"
        if not isinstance(value, torch.Tensor):
            return f"{name} is a {type(value).__name__}, not a tensor"
        if value.shape != expected[name].shape:
            return f"{name} has shape {tuple(value.shape)} where the network has {tuple(expected[name].shape)}"
    missing = next((name for name in expected if name not in weights), None)
    return f"no entry {missing!r}" if missing else None


def first_non_finite(weights: dict) -> str | None:
    """The name of the first floating-point tensor in ``weights`` holding NaN or ±inf, or None."""
    return next((name for name, value in weights.items()
                 if value.is_floating_point() and not torch.isfinite(value).all()), None)


def _optimizer_problem(optimizer: dict, shapes: list) -> str | None:
    """What keeps an AdamW state dict from fitting parameters of ``shapes`` (in order), or None."""
    groups, per_param = optimizer.get("param_groups"), optimizer.get("state")
    if not isinstance(groups, list) or not isinstance(per_param, dict) or not all(
            isinstance(g, dict) and isinstance(g.get("params"), list) for g in groups):
        return "has no 'param_groups' list and 'state' dict"
    ids = [i for g in groups for i in g["params"]]
    if sorted(ids) != list(range(len(shapes))):
        return f"is for {len(ids)} parameters but the network has {len(shapes)}"
    for i, values in per_param.items():
        if i not in ids or not isinstance(values, dict):
            return f"has an entry for unknown parameter {i!r}"
        for name, value in values.items():
            if isinstance(value, torch.Tensor) and value.ndim and value.shape != shapes[i]:
                return f"has {name} of shape {tuple(value.shape)} for a parameter of shape {tuple(shapes[i])}"
    return None


def torch_load(path: Path, what: str, map_location="cpu", fix: str = "") -> object:
    """``torch.load(path, weights_only=True)``, with torch's own warnings silenced and every failure a
    one-line :class:`CheckpointError` that says why in words and ends with ``fix``."""
    try:
        with warnings.catch_warnings():  # e.g. about storages or refused globals: not the user's business
            warnings.simplefilter("ignore")
            return torch.load(path, map_location=map_location, weights_only=True)
    except OSError as err:
        why = f"it cannot be read: {err.strerror or type(err).__name__}"
    except pickle.UnpicklingError as err:
        if "Unsupported global" in str(err):  # weights_only refused a class: loading it could run code
            why = "it holds Python objects, not only tensors and plain values, and opening it could run code"
        else:
            why = "it is truncated or corrupt"
    except Exception as err:
        why = f"it is truncated or corrupt ({short_reason(err)})"
    raise CheckpointError(f"{path} is not a readable {what}: {why}; {fix}")


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
        weights = ema_weights(state)
    model.load_state_dict(weights)  # load_checkpoint checked that they fit
    model.to(device).eval()
    return model, schedule_for(config), config
