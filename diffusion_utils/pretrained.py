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
    images = sample(model, schedule, 16, sampler=config.sampler, steps=config.steps_for_sampling)

float16 keeps about three significant digits per weight: samples from the same noise typically
differ from the float32 model's by well under one 8-bit colour level (2/255 in [-1, 1]).
"""

from __future__ import annotations

import difflib
import math
import numbers
import os
import shlex
from pathlib import Path

import torch

from .checkpoint import first_non_finite, load_checkpoint, load_model, torch_load, weights_problem
from .config import TrainConfig
from .errors import CheckpointError, ConfigError
from .files import atomic_write, check_output_folder
from .model import UNet, count_parameters
from .schedule import NoiseSchedule

PRETRAINED_FORMAT = "diffusion_utils/pretrained/1"
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"  # package data: weights/NAME.pt + NAME.md
SUFFIX = ".pt"
# The card's figures, in the order the Markdown shows them (any other key is listed after them).
CARD_KEYS = ("command", "command_source", "commit", "images_seen", "steps", "epochs", "wall_time", "hardware",
             "final_loss", "parameters", "kid", "kid_std", "fid", "floor_kid", "floor_kid_std", "floor_fid",
             "n_samples", "sampler", "sample_steps", "reference", "limitations", "notes")


def available_pretrained() -> tuple[str, ...]:
    """The names of the pretrained models in this installation (the ``weights/*.pt`` files)."""
    if not WEIGHTS_DIR.is_dir():
        return ()
    return tuple(sorted(p.stem for p in WEIGHTS_DIR.glob(f"*{SUFFIX}") if not p.name.startswith(".")))


PRETRAINED: tuple[str, ...] = available_pretrained()  # what shipped, as found at import time


# ---------------------------------------------------------------------------------------------
# Export: training checkpoint → NAME.pt + NAME.md
# ---------------------------------------------------------------------------------------------
def export_pretrained(checkpoint_path: str | os.PathLike, out_path: str | os.PathLike,
                      card: dict | None = None) -> Path:
    """Write the EMA weights of a training checkpoint as a float16 pretrained file plus its card.

    Args:
        checkpoint_path: a ``diffusion_unet_pixels.pth`` written by :func:`~diffusion_utils.train`.
        out_path: the ``.pt`` file to write; the model card goes to ``out_path.with_suffix(".md")``.
        card: the model card's facts, plain types only (str, int, float, bool, None, lists and
            dicts of them), e.g. ``command``, ``commit``, ``wall_time`` (seconds), ``kid``,
            ``kid_std``, ``fid``, ``floor_kid``, ``floor_fid``, ``n_samples``, ``sampler``,
            ``notes``. What the checkpoint knows (``steps``, ``epochs``, ``images_seen``,
            ``parameters``, ``final_loss``) is filled in where ``card`` does not give it.

    Returns:
        ``out_path``. Both files are written atomically (a temporary file, then ``os.replace``).
    """
    out_path = Path(out_path)
    if out_path.suffix != SUFFIX:
        raise CheckpointError(f"the pretrained file must end in {SUFFIX} (its card is written next to it "
                              f"as .md); got {out_path}")
    card = _plain(dict(card or {}), "card")
    check_output_folder(out_path.parent, (out_path.name, out_path.with_suffix(".md").name))
    state = load_checkpoint(checkpoint_path)
    config: TrainConfig = state["config"]
    weights = {}
    for key, value in state["ema"].items():  # load_checkpoint checked that the EMA fits the config
        if not key.startswith("module."):
            continue  # AveragedModel's n_averaged counter
        name = key.removeprefix("module.")
        if value.is_floating_point():
            half = value.detach().to("cpu", torch.float16)
            if not torch.isfinite(half).all():
                raise CheckpointError(f"{checkpoint_path}: weight {name} does not fit in float16 "
                                      f"(largest magnitude {value.abs().max().item():.3g}); it cannot be exported")
            value = half
        weights[name] = value.detach().cpu().clone().contiguous()  # own storage: no shared views saved
    card = {**checkpoint_facts(state), **card}
    payload = {"format": PRETRAINED_FORMAT, "config": config.to_dict(), "weights": weights, "card": card}
    atomic_write(out_path, lambda file: torch.save(payload, file))
    markdown = render_card(out_path.stem, config, card)
    atomic_write(out_path.with_suffix(".md"), lambda file: file.write(markdown.encode("utf-8")))
    return out_path


def checkpoint_facts(state: dict, model: UNet | None = None) -> dict:
    """What a training checkpoint tells the model card: steps, epochs, images seen, final loss."""
    config: TrainConfig = state["config"]
    step = int(state.get("step", 0))
    # train() drops each epoch's remainder batch, so every step saw a full batch (or, when the
    # data is smaller than a batch, all of it).
    per_step = min(config.batch_size, config.max_images) if config.max_images else config.batch_size
    facts = {"steps": step, "epochs": int(state.get("epoch", 0)), "images_seen": step * per_step}
    losses = state.get("losses")
    if isinstance(losses, torch.Tensor) and losses.numel():
        facts["final_loss"] = round(float(losses[-50:].float().mean()), 5)
    facts["parameters"] = count_parameters(model if model is not None else UNet.from_config(config))
    return facts


def _plain(value, where: str):
    """``value`` with tuples turned into lists; a :class:`CheckpointError` for anything that is not
    a plain type (the file must load with ``weights_only=True``, and the card must be readable)."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        return str(value)
    if isinstance(value, numbers.Integral):  # also numpy integers, stored as Python ints
        return int(value)
    if isinstance(value, numbers.Real):  # also numpy floats
        return float(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        bad = [k for k in value if not isinstance(k, str)]
        if bad:
            raise CheckpointError(f"{where} has a non-string key {bad[0]!r}; card keys must be strings")
        return {k: _plain(v, f"{where}[{k!r}]") for k, v in value.items()}
    raise CheckpointError(f"{where} is a {type(value).__name__}; a model card holds only str, int, float, "
                          f"bool, None, lists and dicts")


# ---------------------------------------------------------------------------------------------
# The model card, as Markdown
# ---------------------------------------------------------------------------------------------
def render_card(name: str, config: TrainConfig, card: dict) -> str:
    """A short, readable model card: what it is, how to load it, how it was trained, how good it is."""
    c = dict(card)
    size = f"{config.img_size}×{config.img_size}"
    data = config.data + (f" ({config.max_images} images)" if config.max_images else "")
    params = c.get("parameters")
    lines = [
        f"# {name}: a pretrained diffusion_utils DDPM",
        "",
        f"A pixel-space DDPM (Ho et al. 2020) that generates {size} RGB images, trained on {data}. "
        f"The UNet has {_number(params) + ' parameters, ' if params else ''}base {config.base_channels} channels, "
        f"channel multipliers {list(config.channel_mults)}, {config.num_res_blocks} residual block(s) per level and "
        f"self-attention at level(s) {list(config.attention_levels)}; it predicts {_prediction(config.prediction)} "
        f"under a {config.n_steps}-step {config.schedule} noise schedule. The file holds the EMA weights in "
        f"float16 and the full training config.",
        "",
    ]
    if config.num_classes:
        names = config.class_names
        example = "sunflower" if "sunflower" in names else (names[0] if names else 0)  # for the examples
        lines += [
            f"It is class-conditional on {config.num_classes} classes (label dropout {config.p_uncond:g} in "
            f"training), so one set of weights samples unconditionally or a chosen class with classifier-free "
            f"guidance (Ho & Salimans 2022).",
            "",
        ]
    lines += [
        "## Load it",
        "",
        "```python",
        "from diffusion_utils import load_pretrained, pretrained_card, sample",
        f'model, schedule, config = load_pretrained("{name}")  # or a path to {name}.pt',
        f"images = sample(model, schedule, 16, sampler={config.sampler!r}, steps={config.steps_for_sampling})"
        "  # in [-1, 1]",
    ]
    if config.num_classes:
        lines.append(f"guided = sample(model, schedule, 16, sampler={config.sampler!r}, steps={config.steps_for_sampling}, "
                     f"classes={example!r}, guidance_scale=3)")
    lines += [
        "```",
        "",
        f"or from a shell: `python -m diffusion_utils sample --pretrained {name} --out outputs`"
        + (f" (add `--class {shlex.quote(str(example))} --guidance 3` for one class)." if config.num_classes else "."),
        "",
        "## How it was trained",
        "",
    ]
    command = c.pop("command", None)
    source = c.pop("command_source", None)
    lines.append(f"- Command: `{command}`" + (f" ({source})" if source else "") if command
                 else "- Command: not recorded")
    commit = c.pop("commit", None)
    lines.append(f"- Commit: `{commit}`" if commit else "- Commit: not recorded")
    seen, steps, epochs = c.pop("images_seen", None), c.pop("steps", None), c.pop("epochs", None)
    if seen is not None:
        detail = ", ".join(part for part in (
            f"{_number(steps)} optimizer steps" if steps is not None else "",
            f"batch {config.batch_size}",
            f"{_number(epochs)} epochs" if epochs is not None else "") if part)
        lines.append(f"- Images seen: {_number(seen)} ({detail})")
    wall = c.pop("wall_time", None)
    hardware = c.pop("hardware", None)
    if wall is not None:
        lines.append(f"- Wall time: {_duration(wall)}" + (f" on {hardware}" if hardware else ""))
    elif hardware:
        lines.append(f"- Hardware: {hardware}")
    loss = c.pop("final_loss", None)
    if loss is not None:
        lines.append(f"- Final training loss (mean of the last 50 steps): {_figure(loss)}")
    c.pop("parameters", None)
    decay = "" if config.lr_decay == "none" else f" then {config.lr_decay} decay to 0"
    lines.append(f"- Optimiser: AdamW, lr {config.lr:g}, warm-up {config.lr_warmup_steps} steps{decay}, "
                 f"EMA decay up to {config.ema_decay:g} (power-function γ {config.ema_gamma:g}), "
                 f"loss weighting {config.loss_weighting}, seed {config.seed}")
    lines += ["", "## Quality", ""]
    kid, kid_std, fid = c.pop("kid", None), c.pop("kid_std", None), c.pop("fid", None)
    floor_kid, floor_kid_std, floor_fid = c.pop("floor_kid", None), c.pop("floor_kid_std", None), c.pop("floor_fid", None)
    n_samples, sampler, sample_steps = c.pop("n_samples", None), c.pop("sampler", None), c.pop("sample_steps", None)
    reference = c.pop("reference", None)
    if any(v is not None for v in (kid, fid, floor_kid, floor_fid)):
        how = ", ".join(part for part in (
            f"{_number(n_samples)} generated images" if n_samples is not None else "",
            f"sampler {sampler}" + (f" with {sample_steps} steps" if sample_steps is not None else "") if sampler else "",
            f"against {reference}" if reference else "") if part)
        lines += [f"Measured with {how}." if how else "Measured as below.", "",
                  "| metric | this model | real-data floor |", "|---|---|---|",
                  f"| KID (lower is better) | {_with_std(kid, kid_std)} | {_with_std(floor_kid, floor_kid_std)} |",
                  f"| FID (lower is better) | {_figure(fid)} | {_figure(floor_fid)} |", "",
                  "The floor is what two disjoint sets of real images score against each other at the same "
                  "sample size: the best any model can reach in this measurement, not zero."]
    else:
        lines.append("Not measured.")
    lines += ["", "## Limitations", ""]
    limitations = c.pop("limitations", None)
    if limitations:
        lines += [f"- {item}" for item in (limitations if isinstance(limitations, list) else [limitations])]
    knows = (f"it knows its {config.num_classes} class labels but no text prompts" if config.num_classes
             else "it knows no labels or text prompts")
    lines += [f"- {size} pixels only, and only the kind of images it was trained on ({config.data}); {knows}.",
              "- A teaching model: small and briefly trained, far from the state of the art.",
              "- Weights are stored in float16 and cast to float32 on loading."]
    notes = c.pop("notes", None)
    if notes:
        lines += ["", "## Notes", ""] + [f"- {item}" for item in (notes if isinstance(notes, list) else [notes])]
    if c:  # whatever else the card holds
        lines += ["", "## Other facts", ""] + [f"- {key}: {_figure(value)}" for key, value in c.items()]
    return "\n".join(lines) + "\n"


def _prediction(prediction: str) -> str:
    return {"eps": "the noise ε", "v": "the velocity v (Salimans & Ho 2022)"}.get(prediction, prediction)


def _number(value) -> str:
    return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else str(value)


def _figure(value) -> str:
    if value is None:
        return "not measured"
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    return _number(value)


def _with_std(value, std) -> str:
    return _figure(value) if value is None or std is None else f"{_figure(value)} ± {_figure(std)}"


def _duration(value) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    seconds = float(value)
    if seconds < 120:
        return f"{seconds:.0f} s"
    hours, minutes = divmod(round(seconds / 60), 60)
    return (f"{hours} h {minutes} min" if hours else f"{minutes} min") + f" ({seconds:,.0f} s)"


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------
def load_pretrained(name: str | os.PathLike = "flowers32", device="cpu"):
    """A shipped pretrained model, or one exported to a file: returns ``(model, schedule, config)``.

    The same shape as :func:`~diffusion_utils.load_model`: a :class:`UNet` in eval mode with the
    float16 weights cast to float32, on ``device``; its :class:`NoiseSchedule`; its
    :class:`TrainConfig`. The model card's facts are also attached as ``model.card`` (see
    :func:`pretrained_card`).

    Args:
        name: one of :data:`PRETRAINED` (``"flowers32"``), or the path of a ``.pt`` file written by
            :func:`export_pretrained` / ``python -m diffusion_utils export``.
        device: where to put the model.
    """
    state, path = _read(name)
    config = state["config"]
    model = UNet.from_config(config)
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state["weights"].items()})
    model.card = state["card"]
    model.to(device).eval()
    return model, NoiseSchedule.from_config(config), config


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
    if isinstance(state, dict) and state.get("format") == "diffusion_utils/1":
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
           "pretrained_card", "pretrained_path", "render_card"]


def load_trained_or_pretrained(checkpoint: str | os.PathLike, pretrained: str = "flowers32", device="cpu"):
    """The EMA model notebook 03 saved at ``checkpoint`` if there is a readable one, else the
    pretrained weights ``pretrained``; prints one line saying which. Never trains.

    This is how notebooks 04 and 05 show the reader's own model when they trained one, and real
    flowers when they did not. Returns ``(model, schedule, config)`` like :func:`load_model`.
    """
    checkpoint = Path(checkpoint)
    if checkpoint.exists():
        try:
            model, schedule, config = load_model(checkpoint, device)
            print(f"Showing the model notebook 03 trained ({checkpoint}: {config.num_epochs} epochs at "
                  f"{config.img_size} px).")
            return model, schedule, config
        except CheckpointError as err:
            print(f"Not using {checkpoint}: {err}")
    model, schedule, config = load_pretrained(pretrained, device)
    seen = model.card.get("images_seen")
    print(f"Showing the pretrained {pretrained} model ({config.img_size} px"
          + (f", {seen:,} training images seen" if isinstance(seen, int) else "")
          + f"); run notebook 03 to train your own into {checkpoint}.")
    return model, schedule, config
