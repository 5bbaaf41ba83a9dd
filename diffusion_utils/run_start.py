"""Where a training run starts: its device, its classes, its own checkpoint, or another run's weights.

:class:`~diffusion_utils.TrainingRun` calls these before its first step, so that every mistake is
refused before any work: a checkpoint that cannot be continued (another network or schedule, more
epochs done than asked for), a checkpoint to start from whose network or classes do not fit, a
class count the data does not have.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .config import TrainConfig
from .data.data import ImageDataset
from .plumbing import distributed
from .plumbing.checkpoint import check_compatible, load_checkpoint, load_model
from .plumbing.checks import resolve_device
from .plumbing.errors import CheckpointError, ConfigError
from .training import TrainState


def run_device(config: TrainConfig, ranks: distributed.Ranks) -> torch.device:
    """Where the run trains: ``config.device`` (``"auto"``: CUDA, MPS, CPU); this rank's GPU under torchrun."""
    device = resolve_device(config.device)
    if device.type == "cuda" and ranks.active:
        device = torch.device("cuda", torch.cuda.current_device())  # LOCAL_RANK's GPU
    return device


def with_classes_of(config: TrainConfig, dataset: ImageDataset) -> TrainConfig:
    """``config`` with ``num_classes`` and ``class_names`` settled by the data.

    ``num_classes=None`` becomes the dataset's class count (0 without labels); an explicit count
    must match the data's (0 always may: it trains unconditionally and ignores the labels).
    """
    wanted = dataset.num_classes if config.num_classes is None else config.num_classes
    if wanted and wanted != dataset.num_classes:
        found = f"{dataset.num_classes} classes" if dataset.num_classes else "no labels"
        raise ConfigError(f"num_classes is {wanted} but the data has {found}; use data with "
                          f"{wanted} classes, or train unconditionally (num_classes=0, --no-labels)")
    return config.replace(num_classes=wanted, class_names=tuple(dataset.class_names or ()) if wanted else ())


def resumable(path: Path, config: TrainConfig) -> tuple[dict, TrainConfig]:
    """The checkpoint at ``path`` and the config that continues it: ``config``, whose classes, if
    left to the data (None), are the checkpoint's. Checked: the same network and schedule, and no
    more epochs done than ``config.num_epochs``."""
    saved = load_checkpoint(path)  # on the CPU; TrainState.load_state_dict moves tensors to the device
    if config.num_classes is None:
        config = config.replace(num_classes=saved["config"].num_classes)
    check_compatible(saved["config"], config, path)
    if saved["epoch"] > config.num_epochs:
        raise ConfigError(f"the checkpoint has already trained {saved['epoch']} epochs (step {saved['step']}), "
                          f"past num_epochs={config.num_epochs}; raise num_epochs (--epochs) to train longer")
    return saved, config


def check_init_from(saved: TrainConfig, config: TrainConfig, path) -> None:
    """Raise :class:`CheckpointError` unless a checkpoint trained with ``saved`` can start a run of
    ``config``: the same network and schedule; no classes (an unconditional model may start a
    class-conditional run) or the run's own (checked once known: ``num_classes=None`` waits for the data)."""
    check_compatible(saved, config, path, ignore=("num_classes",))
    if config.num_classes is not None and saved.num_classes not in (0, config.num_classes):
        raise CheckpointError(f"{path} has {saved.num_classes} classes but this run has {config.num_classes}; "
                              f"start from a checkpoint with the same classes")


def init_weights_from(state: TrainState, path: str | Path) -> None:
    """Start ``state``'s model (and its EMA) from the EMA weights of the checkpoint at ``path``
    (checked by :func:`check_init_from`). An unconditional checkpoint's class embedding starts at
    zero in a class-conditional run, so the model begins exactly where the unconditional one was."""
    model, _, _ = load_model(path)
    missing, _ = state.model.load_state_dict(model.state_dict(), strict=False)
    if set(missing) - {"class_embedding.weight"}:  # check_init_from rules this out; say so if not
        raise CheckpointError(f"{path} lacks {', '.join(sorted(missing))}; start from a checkpoint of this network")
    state.ema.module.load_state_dict(state.model.state_dict())


__all__ = ["run_device", "with_classes_of", "resumable", "check_init_from", "init_weights_from"]
