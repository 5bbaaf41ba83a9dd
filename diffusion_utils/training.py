"""Training ε_θ with the simple loss of Ho et al. 2020 (Algorithm 1):

    repeat:  x₀ ~ data,  t ~ Uniform{1…T},  ε ~ N(0, I)
             take a gradient step on  ‖ε − ε_θ(√ᾱₜ x₀ + √(1−ᾱₜ) ε, t)‖²

Around that loop: AdamW with a linear learning-rate warm-up, gradient-norm clipping, an EMA of
the weights (``torch.optim.swa_utils.AveragedModel``, with warm-up), bfloat16 autocast on CUDA,
a tqdm progress bar, a loss history, a fixed-noise sample grid every ``sample_every`` epochs, and a
checkpoint after every epoch. ``resume=True`` continues from the checkpoint exactly (the same
losses as an uninterrupted run, on the CPU). Ctrl-C writes a checkpoint before stopping. A NaN
loss, or weights that became NaN or infinite, stop the run and name the step; only finite weights
are ever saved, so the checkpoint on disk is the last good one. The output folder is locked for
the whole run (:func:`~diffusion_utils.files.lock_run_folder`): a second run there is refused.

Launched by ``torchrun`` on several processes, the same loop trains with DistributedDataParallel:
each rank takes its slice of every global batch, and rank 0 alone keeps the EMA and writes files
(:mod:`~diffusion_utils.distributed` says what is global and what is per rank).

Steps are counted from 1, as the progress bar and ``on_step`` count them: "step k" in a message
is the k-th optimiser step of the run, whether it failed (NaN), or was the last one before Ctrl-C.

With labelled data the model is class-conditional (``config.num_classes``): each batch carries
its labels, and the loss drops them with probability ``p_uncond`` (classifier-free guidance).
``init_from`` starts a new run from another checkpoint's weights — to train longer with new
settings, or to fine-tune an unconditional model into a class-conditional one.
"""

from __future__ import annotations

import contextlib
import math
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.optim.swa_utils import AveragedModel
from tqdm.auto import tqdm

from . import distributed
from .checkpoint import (CHECKPOINT_NAME, check_compatible, first_non_finite, load_checkpoint, load_model,
                         save_checkpoint)
from .config import TrainConfig, bf16_available, resolve_device
from .data import ImageDataset, batches_per_epoch, epoch_batches, load_dataset, to_model_range
from .errors import CheckpointError, ConfigError, TrainingDiverged, short_reason
from .files import check_output_folder, lock_run_folder, remove_stale_temp_files
from .loss import diffusion_loss
from .model import UNet
from .sampling import sample, to_uint8
from .schedule import NoiseSchedule
from .superres import downsample, training_pair, upsample
from .visualization import plot_epoch_table, plot_loss, save_grid


# What train() writes into its output folder ("/" marks a folder), checked before it starts.
TRAIN_OUTPUTS = (CHECKPOINT_NAME, "loss.png", "epoch_samples.png", "samples/")


@dataclass
class TrainResult:
    """What :func:`train` returns. ``ema_model`` is the one to sample from."""

    config: TrainConfig
    model: UNet
    ema_model: UNet
    schedule: NoiseSchedule
    losses: list[float]
    epoch_grids: dict[int, torch.Tensor]  # epoch → uint8 (n, 3, H, W) samples from fixed noise
    checkpoint_path: Path
    device: torch.device
    seconds: float = 0.0
    images_seen: int = 0
    out_dir: Path = field(default_factory=Path)


def ema_decay_at(n_averaged: int, max_decay: float, gamma: float) -> float:
    """The EMA decay for update number ``n_averaged`` + 1: min(max_decay, (1 − 1/(n+1))^(γ+1)).

    Karras et al. 2024's power-function EMA: the first update copies the weights (decay 0), and
    after n updates the average covers roughly the last n/(γ+1) steps, so the EMA's horizon grows
    with the run. A 300-step run averages over its last ~40 steps instead of lagging behind the
    training weights (a fixed decay of 0.9995 would still remember the random initial weights);
    a long run reaches ``max_decay``.
    """
    n = float(n_averaged)
    return min(max_decay, (1.0 - 1.0 / (n + 1.0)) ** (gamma + 1.0))


def make_ema(model: torch.nn.Module, decay: float, gamma: float = 6.94) -> AveragedModel:
    """An EMA copy of ``model``: θ_ema ← d·θ_ema + (1 − d)·θ, with d = :func:`ema_decay_at`."""

    @torch.no_grad()
    def ema_update(ema_params, params, num_averaged):
        d = ema_decay_at(int(num_averaged), decay, gamma)
        torch._foreach_lerp_(ema_params, params, 1 - d)

    return AveragedModel(model, multi_avg_fn=ema_update)


def learning_rate(config: TrainConfig, step: int, total_steps: int | None = None) -> float:
    """The lr of optimiser step ``step`` (0-based) of a run of ``total_steps`` steps.

    Linear warm-up over ``lr_warmup_steps``, then constant (as in Ho et al.), or with
    ``lr_decay="cosine"`` a half cosine from ``lr`` down to 0 at step ``total_steps``:
    ηₛ = η · ½ (1 + cos(π · (s − warm-up) / (total_steps − warm-up))).
    """
    if config.lr_warmup_steps and step < config.lr_warmup_steps:
        return config.lr * (step + 1) / config.lr_warmup_steps
    if config.lr_decay == "none":
        return config.lr
    if total_steps is None:
        raise ConfigError("lr_decay='cosine' needs the run's total steps; pass total_steps")
    progress = min(1.0, (step - config.lr_warmup_steps) / max(1, total_steps - config.lr_warmup_steps))
    return config.lr * 0.5 * (1 + math.cos(math.pi * progress))


class TrainState:
    """Everything a run needs to continue exactly — the one owner of what a checkpoint holds.

    It builds a fresh run from a config (the initial weights from ``config.seed``), turns itself
    into the checkpoint's dict (:meth:`state_dict`) and back (:meth:`load_state_dict`).
    ``data_rng`` shuffles and flips (on the CPU); ``noise_rng`` draws t and ε (on ``device``).
    With several processes (``ranks``), ``network`` is ``model`` in DistributedDataParallel; every
    rank holds the same state (the EMA is updated on rank 0 only).
    """

    def __init__(self, config: TrainConfig, device: torch.device, ranks: distributed.Ranks = distributed.SINGLE):
        self.config = config
        self.device = device
        self.ranks = ranks
        torch.manual_seed(config.seed)  # the initial weights
        self.model = UNet.from_config(config).to(device)
        self.network = distributed.wrap(self.model, device, ranks)  # what the loss calls
        self.ema = make_ema(self.model, config.ema_decay, config.ema_gamma)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=config.lr,
                                           weight_decay=config.weight_decay)
        self.schedule = NoiseSchedule.from_config(config).to(device)
        self.data_rng = torch.Generator().manual_seed(config.seed)
        self.noise_rng = torch.Generator(device=device).manual_seed(config.seed + 1)
        self.autocast_dtype = torch.bfloat16 if config.bf16 and bf16_available(device) else None
        self.step = self.epoch = self.batch_in_epoch = 0
        self.total_steps: int | None = None  # where the run ends (set by train); lr_decay's horizon
        self.losses: list[float] = []
        self.epoch_grids: dict[int, torch.Tensor] = {}  # epoch → uint8 samples from fixed noise

    def state_dict(self, data_rng_at_epoch_start: torch.Tensor) -> dict:
        """Plain types and tensors only (loads with ``weights_only=True``). The data generator is
        saved as it was when the current epoch began, so a resumed run replays the same shuffle."""
        cuda = self.device.type == "cuda"
        return {
            "config": self.config.to_dict(), "model": self.model.state_dict(), "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(), "step": self.step, "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch, "losses": torch.tensor(self.losses, dtype=torch.float32),
            "epoch_grids": self.epoch_grids,
            "rng": {"data_epoch_start": data_rng_at_epoch_start, "noise": self.noise_rng.get_state(),
                    "torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state(self.device) if cuda else None},
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore from a checkpoint dict (as :func:`~diffusion_utils.load_checkpoint` returns)."""
        self.model.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step, self.epoch, self.batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        self.losses = state["losses"].tolist()
        self.epoch_grids = dict(state["epoch_grids"])
        rng = state["rng"]
        self.data_rng.set_state(rng["data_epoch_start"])
        self.noise_rng.set_state(rng["noise"])
        torch.set_rng_state(rng["torch"])  # dropout draws from the global generators
        if self.device.type == "cuda" and rng.get("cuda") is not None:
            torch.cuda.set_rng_state(rng["cuda"], self.device)


def train_step(state: TrainState, x0: torch.Tensor, y: torch.Tensor | None = None) -> float:
    """One optimiser step of Algorithm 1 on the batch ``x0`` (B, C, H, W) in [-1, 1]; returns the loss.

    ``y``: the batch's class labels (B,) for a class-conditional model. Raises
    :class:`TrainingDiverged` (before touching the weights) if the loss is not finite. With several
    processes, ``x0`` is this rank's slice of the global batch and the loss returned is the
    global batch's (the same on every rank).
    """
    config, ranks = state.config, state.ranks
    x0, cond = x0.to(state.device, non_blocking=True), None
    if config.task == "sr":  # an upsampler: the target and its low-resolution condition, cropped alike
        x0, cond = training_pair(x0, low_res_size=config.low_res_size, crop_size=config.crop_size,
                                 mode=config.upsample_mode, generator=state.noise_rng,
                                 shard=(ranks.rank, ranks.world_size))
    loss = diffusion_loss(state.network, state.schedule, x0,
                          generator=state.noise_rng, loss_weighting=config.loss_weighting,
                          snr_gamma=config.snr_gamma, autocast_dtype=state.autocast_dtype,
                          y=None if y is None else y.to(state.device), p_uncond=config.p_uncond,
                          shard=(ranks.rank, ranks.world_size), cond=cond, cond_aug_max=config.cond_aug_max)
    loss_value = distributed.mean_over_ranks(loss.detach(), ranks).item()
    if not math.isfinite(loss_value):
        raise TrainingDiverged(f"loss became {loss_value} at step {state.step + 1} (epoch {state.epoch + 1}); "
                               f"lower lr (now {config.lr}) or check the data")
    state.optimizer.zero_grad(set_to_none=True)
    loss.backward()  # ∇θ of the loss (DDP: averaged over the ranks, so it is the global batch's)
    torch.nn.utils.clip_grad_norm_(state.model.parameters(), config.grad_clip)
    for group in state.optimizer.param_groups:
        group["lr"] = learning_rate(config, state.step, state.total_steps)
    state.optimizer.step()
    if ranks.is_main:
        state.ema.update_parameters(state.model)
    state.step += 1
    state.batch_in_epoch += 1
    state.losses.append(loss_value)
    return loss_value


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


def init_weights_from(state: TrainState, path: str | Path) -> None:
    """Start ``state``'s model (and its EMA) from the EMA weights of the checkpoint at ``path``.

    The checkpoint must describe the same network and schedule, except that an unconditional
    checkpoint may start a class-conditional run: its class embedding then starts at zero, so the
    model begins exactly where the unconditional one was.
    """
    saved = load_checkpoint(path)["config"]
    check_compatible(saved, state.config, path, ignore=("num_classes",))
    if saved.num_classes not in (0, state.config.num_classes):
        raise CheckpointError(f"{path} has {saved.num_classes} classes but this run has "
                              f"{state.config.num_classes}; start from a checkpoint with the same classes")
    model, _, _ = load_model(path)
    missing, _ = state.model.load_state_dict(model.state_dict(), strict=False)
    if set(missing) - {"class_embedding.weight"}:  # check_compatible rules this out; say so if not
        raise CheckpointError(f"{path} lacks {', '.join(sorted(missing))}; start from a checkpoint of this network")
    state.ema.module.load_state_dict(state.model.state_dict())


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped :func:`train`. ``checkpoint``: the checkpoint a resumed run continues from
    (None: this run saved none, so there is nothing to resume)."""

    def __init__(self, message: str, checkpoint: Path | None):
        super().__init__(message)
        self.checkpoint = checkpoint


def train(config: TrainConfig, out_dir: str | Path = "outputs", *, dataset: ImageDataset | None = None,
          resume: bool = False, init_from: str | Path | None = None, progress: bool = True, on_step=None,
          on_start=None,
          cache_dir: str | Path | None = None) -> TrainResult:
    """Train a DDPM as ``config`` says, writing checkpoints and figures into ``out_dir``.

    Args:
        config: every hyperparameter (see :class:`TrainConfig`).
        out_dir: where ``diffusion_unet_pixels.pth``, ``loss.png``, ``samples/epoch_NNN.png``
            and ``epoch_samples.png`` (the per-epoch table) are written.
        dataset: images to train on (default: ``load_dataset(config.data, …)``).
        resume: continue from ``out_dir/diffusion_unet_pixels.pth`` (it must exist and match the
            config's network and schedule; ``num_epochs`` may be raised to train longer).
        init_from: a new run (step 0, fresh optimizer) whose weights start from this checkpoint's
            EMA weights (see :func:`init_weights_from`).
        progress: show a progress bar.
        on_step: optional ``callback(step, loss)`` after every optimiser step.
        on_start: optional ``callback(state, total_steps)``, once before the first step, with the
            run's :class:`TrainState` (its model, EMA, schedule and losses, which on_step can then
            read) and the step count the run will end at. :class:`~diffusion_utils.LiveTrainingView`
            uses both hooks. Under torchrun, both are called on every rank.
        cache_dir: where decoded images are cached (see :mod:`diffusion_utils.data`).

    Raises :class:`TrainingDiverged` when the loss or the weights stop being finite (the last good
    checkpoint stays), :class:`~diffusion_utils.errors.RunFolderError` when ``out_dir`` cannot be
    written or another run is using it, and :class:`TrainingInterrupted` on Ctrl-C.
    """
    config.validate()  # again: a notebook may have changed a field since the config was built
    out_dir = check_output_folder(out_dir, TRAIN_OUTPUTS)
    ranks = distributed.current()
    # Rank 0 alone writes into out_dir, so it alone locks it (the others would be refused).
    with lock_run_folder(out_dir) if ranks.is_main else contextlib.nullcontext(out_dir) as out_dir:
        if ranks.is_main:
            remove_stale_temp_files(out_dir, CHECKPOINT_NAME)  # left by a killed run; no live writer now
        return _train(config, out_dir, dataset=dataset, resume=resume, init_from=init_from, progress=progress,
                      on_step=on_step, on_start=on_start, cache_dir=cache_dir, ranks=ranks)


def _train(config: TrainConfig, out_dir: Path, *, dataset, resume, init_from, progress, on_step, on_start,
           cache_dir, ranks: distributed.Ranks) -> TrainResult:
    """:func:`train`, with ``out_dir`` locked."""
    ckpt_path = out_dir / CHECKPOINT_NAME
    device = resolve_device(config.device)
    if device.type == "cuda" and ranks.active:
        device = torch.device("cuda", torch.cuda.current_device())  # LOCAL_RANK's GPU
    progress = progress and ranks.is_main
    if dataset is None:
        with distributed.main_first(ranks):  # rank 0 fills the image cache, the others read it
            dataset = load_dataset(config.data, config.img_size, root=config.data_root,
                                   max_images=config.max_images, seed=config.seed,
                                   cache_dir=cache_dir, progress=progress)
    if dataset.img_size != config.img_size:
        raise ConfigError(f"the dataset's images are {dataset.img_size} px but img_size is {config.img_size}")
    if resume and init_from is not None:
        raise ConfigError("resume continues a run and init_from starts a new one; pass only one")
    config = with_classes_of(config, dataset)
    labels = dataset.labels if config.num_classes else None
    distributed.shard_size(min(config.batch_size, len(dataset)), ranks)  # the batch must split evenly

    state = TrainState(config, device, ranks)
    if init_from is not None:
        init_weights_from(state, init_from)
    grid_noise = torch.randn(config.sample_grid_n, 3, config.img_size, config.img_size,
                             generator=torch.Generator().manual_seed(config.seed + 2))
    # An upsampler's grids upsample the same real images every time (the first of the data, shrunk).
    grid_low_res = (downsample(to_model_range(dataset.images[:config.sample_grid_n]), config.low_res_size)
                    if config.task == "sr" else None)
    saved_step = None  # the step of this run's checkpoint on disk (None: none yet)
    if resume:
        saved = load_checkpoint(ckpt_path)  # on the CPU; load_state_dict moves tensors to device
        check_compatible(saved["config"], config, ckpt_path)
        try:
            state.load_state_dict(saved)
        except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as err:
            raise CheckpointError(f"{ckpt_path} cannot be resumed ({short_reason(err)}); re-train or pick another "
                                  f"checkpoint") from None
        saved_step = state.step

    steps_per_epoch = batches_per_epoch(len(dataset), config.batch_size)
    total_steps = state.total_steps = steps_per_epoch * config.num_epochs
    if state.step > total_steps:
        raise ConfigError(f"the checkpoint is already at step {state.step}, past num_epochs={config.num_epochs}; "
                          f"raise num_epochs to train longer")
    if on_start is not None:
        on_start(state, total_steps)
    bar = tqdm(total=total_steps, initial=state.step, desc="training", unit="step", disable=not progress)
    start_time, start_step = time.perf_counter(), state.step
    state.model.train()

    def last_good() -> str:
        if saved_step is None:
            return "no checkpoint of this run was written, so there is nothing to resume"
        return f"the last good checkpoint is {ckpt_path} (step {saved_step})"

    def check_finite() -> None:
        """Stop, keeping the last good checkpoint, once the weights are no longer finite."""
        bad = first_non_finite(state.model.state_dict())
        if ranks.is_main:  # the EMA lives on rank 0
            bad = bad or first_non_finite(state.ema.module.state_dict())
        if distributed.any_rank(bool(bad), ranks, device):
            bad = bad or "on rank 0"
            raise TrainingDiverged(f"weights became NaN or infinite at step {state.step} (epoch "
                                   f"{min(state.epoch + 1, config.num_epochs)}, {bad}); lower lr (now {config.lr}) "
                                   f"or check the data; {last_good()}")

    def save(data_rng_state: torch.Tensor) -> None:
        """Write the checkpoint (rank 0; the others wait): only finite weights are ever saved."""
        nonlocal saved_step
        check_finite()
        if ranks.is_main:
            save_checkpoint(ckpt_path, state.state_dict(data_rng_state))
        distributed.barrier(ranks)
        saved_step = state.step

    try:
        with _StopOnCtrlC() as stop:
            while state.epoch < config.num_epochs:  # Algorithm 1: repeat …
                epoch_start_rng = state.data_rng.get_state()
                for batch in epoch_batches(dataset.images, config.batch_size, state.data_rng,
                                           start=state.batch_in_epoch, labels=labels,
                                           shard=(ranks.rank, ranks.world_size)):
                    x0, y = batch if labels is not None else (batch, None)
                    try:
                        loss_value = train_step(state, x0, y)
                    except TrainingDiverged as err:
                        raise TrainingDiverged(f"{err}; {last_good()}") from None
                    bar.update(1)
                    bar.set_postfix(epoch=f"{state.epoch + 1}/{config.num_epochs}", loss=f"{loss_value:.4f}")
                    if on_step is not None:
                        on_step(state.step, loss_value)
                    if distributed.any_rank(stop.requested, ranks, device):  # Ctrl-C on any rank
                        save(epoch_start_rng)
                        raise TrainingInterrupted(f"interrupted after step {state.step} of {total_steps}; "
                                                  f"checkpoint saved to {ckpt_path}", ckpt_path)
                state.epoch += 1  # … until converged (here: num_epochs)
                state.batch_in_epoch = 0
                check_finite()  # before the epoch's grid too: no figure from broken weights
                if ranks.is_main and (state.epoch % config.sample_every == 0 or state.epoch == config.num_epochs):
                    grid = _sample_grid(state.ema.module, state.schedule, config, grid_noise, grid_low_res)
                    state.epoch_grids[state.epoch] = grid
                    save_grid(grid, out_dir / "samples" / f"epoch_{state.epoch:03d}.png")
                save(state.data_rng.get_state())
    except KeyboardInterrupt as interrupt:
        if isinstance(interrupt, TrainingInterrupted):
            raise
        # A second Ctrl-C: stopped at once, mid-step; the checkpoint on disk is intact.
        raise TrainingInterrupted(f"interrupted during step {state.step + 1} of {total_steps}; {last_good()}",
                                  ckpt_path if saved_step is not None else None) from None
    finally:
        bar.close()
    seconds = time.perf_counter() - start_time
    if state.losses and ranks.is_main:
        plot_loss(state.losses, out_dir / "loss.png")
    if state.epoch_grids and ranks.is_main:
        plot_epoch_table(state.epoch_grids, out_dir / "epoch_samples.png")
    return TrainResult(config=config, model=state.model, ema_model=state.ema.module, schedule=state.schedule,
                       losses=state.losses, epoch_grids=state.epoch_grids, checkpoint_path=ckpt_path,
                       device=device, seconds=seconds,
                       images_seen=(state.step - start_step) * min(config.batch_size, len(dataset)),
                       out_dir=out_dir)


def _sample_grid(model, schedule, config: TrainConfig, grid_noise: torch.Tensor,
                 grid_low_res: torch.Tensor | None = None) -> torch.Tensor:
    """Samples from the same starting noise every time, so the table shows progress, not luck.
    An upsampler upsamples the same ``grid_low_res`` images (n, 3, h, w) every time."""
    options = dict(sampler=config.sampler, steps=config.steps_for_sampling, x_T=grid_noise, bf16=config.bf16,
                   generator=torch.Generator().manual_seed(config.seed + 3), progress=False)
    if grid_low_res is not None:
        return to_uint8(upsample(model, schedule, grid_low_res.to(grid_noise.device), **options))
    return to_uint8(sample(model, schedule, len(grid_noise), img_size=config.img_size, **options))


class _StopOnCtrlC:
    """While active, the first Ctrl-C (SIGINT) only sets ``requested``; the loop then stops after
    the current step and writes a consistent checkpoint. A second Ctrl-C interrupts at once.
    (Signal handlers can only be installed from the main thread; elsewhere this does nothing.)
    """

    def __init__(self):
        self.requested = False
        self._previous = None

    def _handler(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> "_StopOnCtrlC":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
