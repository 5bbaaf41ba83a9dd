"""A training run: Algorithm 1's step in a loop, and what a real run needs around it.

:mod:`~diffusion_utils.training` holds the algorithm (:func:`~diffusion_utils.training.train_step`).
This module holds the run, which reads, two levels deep (:meth:`TrainingRun.train`)::

    while epochs remain:                       # Algorithm 1: repeat …
        for x₀, y in this epoch's batches:
            loss = train_step(state, x₀, y)    # … one gradient step on ‖ε − ε_θ(xₜ, t)‖²
            run.after_step(loss)               # progress bar, hooks, Ctrl-C
        run.end_epoch()                        # finite weights? the epoch's samples, the checkpoint, hooks

Around that loop:

- **Checks before any work**, in two stages: creating a :class:`TrainingRun` checks what needs no
  data (the config, resume vs init_from, the checkpoints' networks, the epochs already trained:
  :mod:`~diffusion_utils.run_start`); :meth:`TrainingRun.prepare` checks what needs it (image
  size, classes, the batch split).
- **Checkpoints** after every epoch, atomically; only finite weights are ever saved, so the file on
  disk is always the last good one. ``resume=True`` continues from it exactly (the same losses as
  an uninterrupted run, on the CPU); ``init_from`` starts a new run from another run's EMA weights.
- **Stopping.** The first Ctrl-C finishes the current step, writes a checkpoint and raises
  :class:`TrainingInterrupted`; a second stops at once. A NaN loss, or weights that became NaN or
  infinite, raise :class:`~diffusion_utils.plumbing.errors.TrainingDiverged` naming the step and the last
  good checkpoint. Steps are counted from 1, as the progress bar counts them.
- **Hooks** (:class:`~diffusion_utils.run_hooks.RunHooks`) are called at the start, after every
  step, after every epoch and at the end: the figures (:mod:`~diffusion_utils.notebook.run_figures`) and
  the live training view use them.
- **Several processes** (``torchrun``): each rank takes its slice of every global batch; rank 0
  alone keeps the EMA, draws the samples and writes files (:mod:`~diffusion_utils.plumbing.distributed`).
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .config import TrainConfig
from .data.batches import batches_per_epoch, epoch_batches
from .data.data import ImageDataset, load_dataset
from .model import UNet
from .plumbing import distributed
from .plumbing.checkpoint import CHECKPOINT_NAME, first_non_finite, load_checkpoint, save_checkpoint
from .plumbing.errors import CheckpointError, ConfigError, TrainingDiverged, short_reason
from .plumbing.files import check_output_folder, lock_run_folder, remove_stale_temp_files
from .plumbing.pixels import to_model_range, to_uint8
from .run_hooks import outputs_of
from .run_start import check_init_from, init_weights_from, resumable, run_device, with_classes_of
from .sampling import sample
from .schedule import NoiseSchedule
from .superres import downsample, upsample
from .training import TrainState, train_step


@dataclass
class TrainResult:
    """What a run returns. ``ema_model`` is the one to sample from."""

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


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped a run. ``checkpoint``: the checkpoint a resumed run continues from
    (None: this run saved none, so there is nothing to resume)."""

    def __init__(self, message: str, checkpoint: Path | None):
        super().__init__(message)
        self.checkpoint = checkpoint


def run_training(config: TrainConfig, out_dir: str | Path = "outputs", *, dataset: ImageDataset | None = None,
                 resume: bool = False, init_from: str | Path | None = None, progress: bool = True, hooks=(),
                 cache_dir: str | Path | None = None) -> TrainResult:
    """Train as ``config`` says, with ``out_dir`` locked for the whole run; only the checkpoint
    and what ``hooks`` write go into it (:func:`~diffusion_utils.train` adds the figures).

    ``dataset``: the images (default: ``config.data``, loaded after the checks that need no data);
    ``cache_dir``: where decoded images are cached. The other arguments are :class:`TrainingRun`'s.
    """
    hooks = list(hooks)
    out_dir = check_output_folder(out_dir, outputs_of(hooks))
    ranks = distributed.current()
    # Rank 0 alone writes into out_dir, so it alone locks it (the others would be refused).
    with lock_run_folder(out_dir) if ranks.is_main else contextlib.nullcontext(out_dir) as out_dir:
        run = TrainingRun(config, out_dir, resume=resume, init_from=init_from, progress=progress,
                          hooks=hooks, ranks=ranks)
        run.prepare(dataset if dataset is not None else run.load_data(cache_dir))
        return run.train()


class TrainingRun:
    """One training run in ``out_dir``: checked, prepared, trained::

        run = TrainingRun(config, out_dir, resume=…, init_from=…, hooks=[…])  # the checks without data
        run.prepare(run.load_data())                                         # the checks with it; the state
        result = run.train()                                                 # the loop

    :func:`run_training` does the three; the CLI calls them one by one, so that every refusal
    comes before it announces the run. The caller holds ``out_dir``'s lock
    (:func:`~diffusion_utils.plumbing.files.lock_run_folder`) throughout: creating the run removes the
    temporary files a killed run left there.

    Args:
        config: every hyperparameter (see :class:`TrainConfig`).
        out_dir: the run's folder, where ``diffusion_unet_pixels.pth`` is written.
        resume: continue from ``out_dir/diffusion_unet_pixels.pth`` (it must exist and match the
            config's network and schedule; ``num_epochs`` may be raised to train longer).
        init_from: a new run (step 0, fresh optimizer) whose weights start from this checkpoint's
            EMA weights (see :func:`init_weights_from`).
        progress: show a progress bar (rank 0 only).
        hooks: :class:`~diffusion_utils.run_hooks.RunHooks` to call.
        ranks: this process's place among several (default: :func:`distributed.current`).
    """

    def __init__(self, config: TrainConfig, out_dir: str | Path, *, resume: bool = False,
                 init_from: str | Path | None = None, progress: bool = True, hooks=(),
                 ranks: distributed.Ranks | None = None):
        config = config.settled()  # again: a notebook may have changed a field since the config was built
        if resume and init_from is not None:
            raise ConfigError("resume (--resume) continues a run and init_from (--init-from) starts a new one; "
                              "pass only one")
        # Where the run writes and trains: known before anything is read.
        self.out_dir, self.hooks = Path(out_dir), list(hooks)
        self.ranks = ranks or distributed.current()
        self.device = run_device(config, self.ranks)
        self.progress = progress and self.ranks.is_main  # rank 0 alone shows progress
        self.checkpoint_path = self.out_dir / CHECKPOINT_NAME
        if self.ranks.is_main:
            remove_stale_temp_files(self.out_dir, CHECKPOINT_NAME)  # left by a killed run; no live writer now
        # What it starts from, checked without the data: its own checkpoint, or another run's weights.
        self.resumed: dict | None = None  # the checkpoint to continue, until prepare() moves it into the state
        self.saved_step: int | None = None  # the step of the last checkpoint of this run on disk
        if resume:
            self.resumed, config = resumable(self.checkpoint_path, config)
            self.saved_step = self.resumed["step"]
        self.init_from = init_from  # a checkpoint whose EMA weights start a new run
        self.init_config = None if init_from is None else load_checkpoint(init_from)["config"]
        if init_from is not None:
            check_init_from(self.init_config, config, init_from)
        self.config = config  # prepare() fills in the data's classes
        # Set by prepare(), from the data.
        self.dataset: ImageDataset | None = None
        self.labels: torch.Tensor | None = None  # the dataset's labels, for a class-conditional run
        self.state: TrainState | None = None  # everything a step reads and writes (and a checkpoint holds)
        self.total_steps = 0  # where the run ends
        self.grid_noise: torch.Tensor | None = None  # x_T of every per-epoch sample grid, the same each time
        self.grid_low_res: torch.Tensor | None = None  # an upsampler's grids: the same real images, shrunk
        # Set by the loop (train()).
        self.ctrl_c = _StopOnCtrlC()  # while the loop runs, the first Ctrl-C asks for a stop after the step
        self.bar: tqdm | None = None  # the progress bar
        self.start_time, self.start_step = 0.0, 0  # the clock and the state's step at this process's first step
        self.epoch_start_rng: torch.Tensor | None = None  # the data generator as the epoch began (a checkpoint saves it)
        self.seconds = 0.0  # the loop's wall time

    def load_data(self, cache_dir: str | Path | None = None, load=load_dataset) -> ImageDataset:
        """The config's images (``load``: :func:`~diffusion_utils.load_dataset`, or a function
        with its signature); rank 0 first, filling the image cache that the other ranks then read."""
        config = self.config
        with distributed.main_first(self.ranks):
            return load(config.data, config.img_size, root=config.data_root, max_images=config.max_images,
                        seed=config.seed, cache_dir=cache_dir, progress=self.progress)

    def prepare(self, dataset: ImageDataset) -> None:
        """The checks that need the data, then the run's state: fresh (weights from
        ``config.seed``), started from ``init_from``'s weights, or the resumed checkpoint's."""
        if dataset.img_size != self.config.img_size:
            raise ConfigError(f"the dataset's images are {dataset.img_size} px but img_size is {self.config.img_size}")
        config = self.config = with_classes_of(self.config, dataset)
        if self.init_from is not None:
            check_init_from(self.init_config, config, self.init_from)  # now that the classes are known
        distributed.shard_size(min(config.batch_size, len(dataset)), self.ranks)  # the batch must split evenly
        self.dataset, self.labels = dataset, dataset.labels if config.num_classes else None
        state = self.state = TrainState(config, self.device, self.ranks)
        if self.init_from is not None:
            init_weights_from(state, self.init_from)
        self.grid_noise = torch.randn(config.sample_grid_n, 3, config.img_size, config.img_size,
                                      generator=torch.Generator().manual_seed(config.seed + 2))
        # An upsampler's grids upsample the same real images every time (the first of the data, shrunk).
        self.grid_low_res = (downsample(to_model_range(dataset.images[:config.sample_grid_n]), config.low_res_size)
                             if config.task == "sr" else None)
        if self.resumed is not None:
            try:
                state.load_state_dict(self.resumed)
            except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as err:
                raise CheckpointError(f"{self.checkpoint_path} cannot be resumed ({short_reason(err)}); re-train "
                                      f"or pick another checkpoint") from None
            self.resumed = None  # its tensors now live in the state
        self.total_steps = state.total_steps = batches_per_epoch(len(dataset), config.batch_size) * config.num_epochs

    # ------------------------------------------------------------------------------------
    def train(self) -> TrainResult:
        """Algorithm 1's loop from the prepared state to ``num_epochs``; returns the result.

        Raises :class:`TrainingDiverged` when the loss or the weights stop being finite (the last
        good checkpoint stays) and :class:`TrainingInterrupted` on Ctrl-C.
        """
        state, config = self.state, self.config
        self._start()
        with self._stopping():
            while state.epoch < config.num_epochs:  # Algorithm 1: repeat …
                for x0, y in self._epoch_batches():
                    loss = train_step(state, x0, y)  # … x₀ ~ data, t ~ U{1…T}, ε ~ N(0, I): a gradient step
                    self.after_step(loss)
                self.end_epoch()  # … until converged (here: num_epochs)
        self.seconds = time.perf_counter() - self.start_time
        for hook in self.hooks:
            hook.end(self)
        return self.result()

    def _start(self) -> None:
        """Before the first step: the hooks' start, the progress bar, the clock."""
        for hook in self.hooks:
            hook.start(self)
        self.bar = tqdm(total=self.total_steps, initial=self.state.step, desc="training", unit="step",
                        disable=not self.progress)
        self.start_time, self.start_step = time.perf_counter(), self.state.step
        self.state.model.train()

    def _epoch_batches(self):
        """This epoch's batches as ``(x0, y)`` (y None without labels), from where the epoch stands
        (a resumed run skips the batches it did). The data generator's state at the epoch's start
        is kept: a checkpoint written mid-epoch holds it, so a resumed run replays the same shuffle."""
        state = self.state
        self.epoch_start_rng = state.data_rng.get_state()
        for batch in epoch_batches(self.dataset.images, self.config.batch_size, state.data_rng,
                                   start=state.batch_in_epoch, labels=self.labels,
                                   shard=(self.ranks.rank, self.ranks.world_size)):
            yield batch if self.labels is not None else (batch, None)

    def after_step(self, loss: float) -> None:
        """After every step: the progress bar, the hooks, and a Ctrl-C on any rank (write a
        checkpoint, raise :class:`TrainingInterrupted`)."""
        state = self.state
        self.bar.update(1)
        self.bar.set_postfix(epoch=f"{state.epoch + 1}/{self.config.num_epochs}", loss=f"{loss:.4f}")
        for hook in self.hooks:
            hook.after_step(self, loss)
        if distributed.any_rank(self.ctrl_c.requested, self.ranks, self.device):
            self.save(self.epoch_start_rng)
            raise TrainingInterrupted(f"interrupted after step {state.step} of {self.total_steps}; checkpoint "
                                      f"saved to {self.checkpoint_path}", self.checkpoint_path)

    def end_epoch(self) -> None:
        """After every epoch: check the weights, draw the epoch's samples (every ``sample_every``
        epochs and at the last), write the checkpoint, call the hooks."""
        state, config = self.state, self.config
        state.epoch += 1
        state.batch_in_epoch = 0
        self.check_finite()  # before the epoch's samples too: no figure from broken weights
        if self.ranks.is_main and (state.epoch % config.sample_every == 0 or state.epoch == config.num_epochs):
            state.epoch_grids[state.epoch] = self.sample_grid()
        self.save(state.data_rng.get_state())
        for hook in self.hooks:
            hook.end_of_epoch(self)

    # ------------------------------------------------------------------------------------
    def sample_grid(self) -> torch.Tensor:
        """The EMA model's samples now, uint8 (n, 3, H, W), from the same starting noise every
        time, so the per-epoch table shows progress, not luck (an upsampler upsamples the same
        real images every time)."""
        state, config = self.state, self.config
        options = dict(sampler=config.sampler, steps=config.steps_for_sampling, x_T=self.grid_noise, bf16=config.bf16,
                       generator=torch.Generator().manual_seed(config.seed + 3), progress=False)
        if self.grid_low_res is not None:
            return to_uint8(upsample(state.ema.module, state.schedule, self.grid_low_res, **options))
        return to_uint8(sample(state.ema.module, state.schedule, len(self.grid_noise), img_size=config.img_size,
                               **options))

    def check_finite(self) -> None:
        """Raise :class:`TrainingDiverged` once the weights (or rank 0's EMA) are no longer finite."""
        state = self.state
        bad = first_non_finite(state.model.state_dict())
        if self.ranks.is_main:  # the EMA lives on rank 0
            bad = bad or first_non_finite(state.ema.module.state_dict())
        if distributed.any_rank(bool(bad), self.ranks, self.device):
            raise TrainingDiverged(f"weights became NaN or infinite at step {state.step} (epoch "
                                   f"{min(state.epoch + 1, self.config.num_epochs)}, {bad or 'on rank 0'}); lower "
                                   f"lr (now {self.config.lr}) or check the data")

    def save(self, data_rng_state: torch.Tensor) -> None:
        """Write the checkpoint (rank 0; the others wait): only finite weights are ever saved."""
        self.check_finite()
        if self.ranks.is_main:
            save_checkpoint(self.checkpoint_path, self.state.state_dict(data_rng_state))
        distributed.barrier(self.ranks)
        self.saved_step = self.state.step

    def last_good(self) -> str:
        """Where a stopped run can be continued from, in words."""
        if self.saved_step is None:
            return "no checkpoint of this run was written, so there is nothing to resume"
        return f"the last good checkpoint is {self.checkpoint_path} (step {self.saved_step})"

    @contextlib.contextmanager
    def _stopping(self):
        """Ctrl-C and divergence, turned into exceptions that say what is on disk; the progress
        bar is closed however the loop ends."""
        try:
            with self.ctrl_c:
                yield
        except TrainingDiverged as err:
            raise TrainingDiverged(f"{err}; {self.last_good()}") from None
        except TrainingInterrupted:
            raise
        except KeyboardInterrupt:  # a second Ctrl-C: stopped at once, mid-step; the checkpoint on disk is intact
            raise TrainingInterrupted(f"interrupted during step {self.state.step + 1} of {self.total_steps}; "
                                      f"{self.last_good()}",
                                      self.checkpoint_path if self.saved_step is not None else None) from None
        finally:
            self.bar.close()

    def result(self) -> TrainResult:
        state, config = self.state, self.config
        return TrainResult(config=config, model=state.model, ema_model=state.ema.module, schedule=state.schedule,
                           losses=state.losses, epoch_grids=state.epoch_grids, checkpoint_path=self.checkpoint_path,
                           device=self.device, seconds=self.seconds,
                           images_seen=(state.step - self.start_step) * min(config.batch_size, len(self.dataset)),
                           out_dir=self.out_dir)


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
