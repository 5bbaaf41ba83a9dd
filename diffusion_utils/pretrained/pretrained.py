"""Pretrained weights shipped with the package: sample without training first.

A pretrained file is one ``torch.save`` file of plain types and tensors (it loads with
``torch.load(path, weights_only=True)``)::

    {"format": "diffusion_utils/pretrained/1",
     "config":  TrainConfig.to_dict(),             # the network, the schedule, the sampler
     "weights": {name: float16 tensor},           # the EMA weights, halved in size
     "card":    {"command": …, "kid": …, …}}      # the model card's facts, plain types only

Next to it lies its model card, ``NAME.md``: what it is, how to load it, how it was trained
and how good it is next to the real-data floor. :func:`export_pretrained` writes both from a
training checkpoint; :func:`load_pretrained` loads a shipped name (see :data:`PRETRAINED`) or
a path::

    model, schedule, config = load_pretrained("flowers32")
    images = sample(model, schedule, 16, sampler="dpmpp", steps=20)   # its card says how to sample it

A flow-matching model (``flowers32-flow``) loads the same way; in place of the schedule comes
its :class:`~diffusion_utils.flow.FlowPath`, and it samples with ``sampler="euler"`` or ``"heun"``
(:func:`~diffusion_utils.pretrained.cards.sampling_defaults` gives any model's default sampler and steps).

float16 keeps about three significant digits per weight: samples from the same noise typically
differ from the float32 model's by well under one 8-bit colour level (2/255 in [-1, 1]).
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path

import torch

from ..config import TrainConfig
from ..data.data import dataset_name
from ..model import UNet
from ..plumbing.checkpoint import FORMAT as CHECKPOINT_FORMAT
from ..plumbing.checkpoint import first_non_finite, load_checkpoint, load_model, torch_load, weights_problem
from ..plumbing.errors import CheckpointError, ConfigError
from ..plumbing.files import atomic_write, check_output_folder
from ..schedule import schedule_for
from .cards import checkpoint_facts, plain_card, render_card

PRETRAINED_FORMAT = "diffusion_utils/pretrained/1"
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"  # package data: weights/NAME.pt + NAME.md
SUFFIX = ".pt"
# The names the project publishes (its docs and cards use them): one that this installation lacks
# is named as missing, with what to do, rather than as an unknown name.
PUBLISHED = ("flowers32", "sr64", "flowers32-flow")


def available_pretrained() -> tuple[str, ...]:
    """The names of the pretrained models in this installation (the ``weights/*.pt`` files)."""
    if not WEIGHTS_DIR.is_dir():
        return ()
    return tuple(sorted(p.stem for p in WEIGHTS_DIR.glob(f"*{SUFFIX}") if not p.name.startswith(".")))


PRETRAINED: tuple[str, ...] = available_pretrained()  # what shipped, as found at import time (flow models too)


# ---------------------------------------------------------------------------------------------
# Export: training checkpoint → NAME.pt + NAME.md
# ---------------------------------------------------------------------------------------------
def export_pretrained(checkpoint_path: str | os.PathLike, out_path: str | os.PathLike,
                      card: dict | None = None, cond_aug_level: int | None = None) -> Path:
    """Write the EMA weights of a training checkpoint as a float16 pretrained file plus its card.

    Args:
        checkpoint_path: a ``diffusion_unet_pixels.pth`` written by :func:`~diffusion_utils.train`.
        out_path: the ``.pt`` file to write; the model card goes to ``out_path.with_suffix(".md")``.
        card: the model card's facts, plain types only (str, int, float, bool, None, lists and
            dicts of them), e.g. ``command``, ``commit``, ``wall_time`` (seconds), ``kid``,
            ``kid_std``, ``fid``, ``floor_kid``, ``floor_fid``, ``n_samples``, ``sampler``,
            ``notes``. What the checkpoint knows (``steps``, ``epochs``, ``images_seen``,
            ``parameters``, ``final_loss``) is filled in where ``card`` does not give it.
        cond_aug_level: for an upsampler, the condition noise level s it samples at by default
            (chosen by measuring after training; None keeps the training config's).

    Returns:
        ``out_path``. Both files are written atomically (a temporary file, then ``os.replace``).
    """
    out_path = Path(out_path)
    if out_path.suffix != SUFFIX:
        raise CheckpointError(f"the pretrained file must end in {SUFFIX} (its card is written next to it "
                              f"as .md); got {out_path}")
    card = plain_card(dict(card or {}))
    check_output_folder(out_path.parent, (out_path.name, out_path.with_suffix(".md").name))
    state = load_checkpoint(checkpoint_path)
    model, _, _ = load_model(checkpoint_path)  # the EMA weights, checked to fit the config
    weights = {}
    for name, value in model.state_dict().items():
        if value.is_floating_point():
            half = value.to(torch.float16)
            if not torch.isfinite(half).all():
                raise CheckpointError(f"{checkpoint_path}: weight {name} does not fit in float16 "
                                      f"(largest magnitude {value.abs().max().item():.3g}); it cannot be exported")
            value = half
        weights[name] = value.clone().contiguous()  # own storage: no shared views saved
    # Meant to be shared: the data named by dataset or folder name, not by a path of this machine.
    config = state["config"].replace(data=dataset_name(state["config"].data), data_root=None)
    if cond_aug_level is not None:
        if config.task != "sr":
            raise CheckpointError(f"{checkpoint_path} is not an upsampler; cond_aug_level is only for task='sr'")
        config = config.replace(cond_aug_level=cond_aug_level)
        model.cond_aug_level = config.cond_aug_level
    card = {**checkpoint_facts(state, model), **card}
    payload = {"format": PRETRAINED_FORMAT, "config": config.to_dict(), "weights": weights, "card": card}
    atomic_write(out_path, lambda file: torch.save(payload, file))
    markdown = render_card(out_path.stem, config, card)
    atomic_write(out_path.with_suffix(".md"), lambda file: file.write(markdown.encode("utf-8")))
    return out_path


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------
def load_pretrained(name: str | os.PathLike = "flowers32", device="cpu"):
    """A shipped pretrained model, or one exported to a file: returns ``(model, schedule, config)``.

    The same shape as :func:`~diffusion_utils.load_model`: a :class:`UNet` in eval mode with the
    float16 weights cast to float32, on ``device``; its :class:`NoiseSchedule` (a flow model: its FlowPath); its
    :class:`TrainConfig`. The model card's facts are also attached as ``model.card`` (see
    :func:`pretrained_card`).

    Args:
        name: one of :data:`PRETRAINED` (``"flowers32"``, ``"sr64"``, ``"flowers32-flow"`` where its file
            is installed), or the path of a ``.pt`` file written by :func:`export_pretrained` /
            ``python -m diffusion_utils export``.
        device: where to put the model.
    """
    state, path = _read(name)
    config = state["config"]
    model = UNet.from_config(config)
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state["weights"].items()})
    model.card = state["card"]
    model.to(device).eval()
    return model, schedule_for(config), config


def pretrained_card(name: str | os.PathLike = "flowers32") -> dict:
    """The model card's facts of a shipped name or a pretrained file (a copy: plain types only)."""
    return _read(name)[0]["card"]


def pretrained_path(name: str | os.PathLike) -> Path:
    """The file behind a shipped name, or ``name`` itself when it is a path (see :func:`load_pretrained`)."""
    if isinstance(name, os.PathLike):
        return Path(name)
    if not isinstance(name, str) or not name:
        raise CheckpointError(f"a pretrained model is named by a string or a path; got {name!r}")
    shipped = available_pretrained()
    if name in shipped:
        return WEIGHTS_DIR / f"{name}{SUFFIX}"
    looks_like_path = (os.sep in name or "/" in name or name.endswith((SUFFIX, ".pth"))
                       or Path(name).exists())
    if looks_like_path:
        return Path(name)
    if name in PUBLISHED:
        raise CheckpointError(f"pretrained weights {name!r} are not in this installation of diffusion_utils "
                              f"({WEIGHTS_DIR.name}/{name}{SUFFIX} is missing); install a release that ships them or "
                              f"reinstall the package, or pass the path of a {SUFFIX} file written by "
                              f"'python -m diffusion_utils export'")
    if not shipped:
        raise CheckpointError(f"unknown pretrained model {name!r}: this installation of diffusion_utils has no "
                              f"pretrained weights ({WEIGHTS_DIR.name}/ holds no {SUFFIX} file); reinstall the "
                              f"package, or pass the path of a file written by 'python -m diffusion_utils export'")
    close = difflib.get_close_matches(name, shipped, n=3)
    hint = f"did you mean {' or '.join(map(repr, close))}? " if close else ""
    raise CheckpointError(f"unknown pretrained model {name!r}; {hint}available: {', '.join(shipped)} "
                          f"(or pass the path of a {SUFFIX} file written by 'python -m diffusion_utils export')")


def _is_shipped(path: Path) -> bool:
    try:
        return path.parent.resolve() == WEIGHTS_DIR.resolve()
    except OSError:
        return False


def _fix(path: Path) -> str:
    """What to do about a bad file: reinstall for a shipped one, re-export for a user's."""
    if _is_shipped(path):
        return "the installation is damaged: reinstall the package (pip install --force-reinstall diffusion-utils)"
    return "export it again with 'python -m diffusion_utils export'"


def _read(name) -> tuple[dict, Path]:
    """Read and check a pretrained file; every failure is a one-line :class:`CheckpointError`."""
    path = pretrained_path(name)
    if not path.is_file():
        if _is_shipped(path):
            raise CheckpointError(f"pretrained weights {path} are missing; {_fix(path)}")
        raise CheckpointError(f"pretrained file {path} not found; write one with 'python -m diffusion_utils "
                              f"export' or pick a shipped name ({', '.join(available_pretrained()) or 'none installed'})")
    state = torch_load(path, "pretrained file", "cpu", _fix(path))
    if isinstance(state, dict) and state.get("format") == CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is a training checkpoint, not a pretrained file; load it with load_model() "
                              f"or 'sample --checkpoint', or convert it with 'python -m diffusion_utils export'")
    if not isinstance(state, dict) or state.get("format") != PRETRAINED_FORMAT:
        raise CheckpointError(f"{path} is not a diffusion_utils pretrained file (no '{PRETRAINED_FORMAT}' "
                              f"marker); {_fix(path)}")
    weights, card = state.get("weights"), state.get("card", {})
    if (not isinstance(weights, dict) or not weights
            or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in weights.items())):
        raise CheckpointError(f"{path} holds no weights (a dict of tensors); {_fix(path)}")
    if not isinstance(card, dict):
        raise CheckpointError(f"{path} holds a card of type {type(card).__name__}, not a dict; {_fix(path)}")
    if isinstance(state.get("config"), dict) and state["config"].get("bf16") is True:
        # Exported when bf16=True meant "on a native-bf16 GPU": today's "auto" (sampling reads it alike).
        state["config"] = {**state["config"], "bf16": "auto"}
    try:
        state["config"] = TrainConfig.from_dict(state.get("config"))
    except ConfigError as err:
        raise CheckpointError(f"{path} holds an invalid config ({err}); {_fix(path)}") from None
    with torch.device("meta"):  # the network's shapes, without allocating it
        problem = weights_problem(weights, UNet.from_config(state["config"]).state_dict())
    if problem:
        raise CheckpointError(f"{path}: the weights do not match the network its config describes ({problem}); "
                              f"{_fix(path)}")
    bad = first_non_finite(weights)
    if bad is not None:
        raise CheckpointError(f"{path}: weight {bad} holds NaN or infinite values; {_fix(path)}")
    state["card"] = card
    return state, path


__all__ = ["PRETRAINED", "PRETRAINED_FORMAT", "available_pretrained", "export_pretrained", "load_pretrained",
           "pretrained_card", "pretrained_path"]

