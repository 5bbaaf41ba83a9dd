"""What a training run draws, and :func:`train`: a run that draws it.

:class:`RunFigures` is a :class:`~diffusion_utils.run_hooks.RunHooks` that writes into the run's folder
``samples/epoch_NNN.png`` (each epoch's samples from fixed noise, as the run draws them) and, at
the end, ``loss.png`` (the loss per step) and ``epoch_samples.png`` (the per-epoch table).
:func:`train` is :func:`~diffusion_utils.run.run_training` with it attached, so the loop itself
(:mod:`~diffusion_utils.run`) never imports the plotting code.
"""

from __future__ import annotations

from pathlib import Path

from ..config import TrainConfig
from ..data.data import ImageDataset
from ..run import TrainingRun, TrainResult, run_training
from ..run_hooks import RunHooks, StepCallbacks, outputs_of
from .visualization import loss_label, plot_epoch_table, plot_loss, save_grid


class RunFigures(RunHooks):
    """Writes a run's figures into its folder (on rank 0)."""

    outputs = ("loss.png", "epoch_samples.png", "samples/")

    def end_of_epoch(self, run: TrainingRun) -> None:
        grid = run.state.epoch_grids.get(run.state.epoch)
        if grid is not None and run.ranks.is_main:
            save_grid(grid, run.out_dir / "samples" / f"epoch_{run.state.epoch:03d}.png")

    def end(self, run: TrainingRun) -> None:
        if not run.ranks.is_main:
            return
        if run.state.losses:
            plot_loss(run.state.losses, run.out_dir / "loss.png",
                      label=loss_label(run.state.config.prediction, run.state.config.loss_weighting))
        if run.state.epoch_grids:
            plot_epoch_table(run.state.epoch_grids, run.out_dir / "epoch_samples.png")


# What train() writes into its output folder ("/" marks a folder), checked before it starts.
TRAIN_OUTPUTS = outputs_of([RunFigures()])


def train(config: TrainConfig, out_dir: str | Path = "outputs", *, dataset: ImageDataset | None = None,
          resume: bool = False, init_from: str | Path | None = None, progress: bool = True, on_step=None,
          on_start=None, cache_dir: str | Path | None = None, hooks=()) -> TrainResult:
    """Train a DDPM as ``config`` says, writing checkpoints and figures into ``out_dir``.

    Args:
        config: every hyperparameter (see :class:`TrainConfig`).
        out_dir: where ``diffusion_unet_pixels.pth``, ``loss.png``, ``samples/epoch_NNN.png``
            and ``epoch_samples.png`` (the per-epoch table) are written.
        dataset: images to train on (default: ``load_dataset(config.data, …)``).
        resume: continue from ``out_dir/diffusion_unet_pixels.pth`` (it must exist and match the
            config's network and schedule; ``num_epochs`` may be raised to train longer).
        init_from: a new run (step 0, fresh optimizer) whose weights start from this checkpoint's
            EMA weights (see :func:`~diffusion_utils.run_start.init_weights_from`).
        progress: show a progress bar.
        on_step: optional ``callback(step, loss)`` after every optimiser step.
        on_start: optional ``callback(state, total_steps)``, once before the first step, with the
            run's :class:`TrainState` (its model, EMA, schedule and losses, which on_step can then
            read) and the step count the run will end at. :class:`~diffusion_utils.LiveTrainingView`
            uses both hooks. Under torchrun, both are called on every rank.
        cache_dir: where decoded images are cached (see :mod:`diffusion_utils.data.image_cache`).
        hooks: more :class:`~diffusion_utils.run_hooks.RunHooks`, called after the figures' and the callbacks'.

    Raises :class:`TrainingDiverged` when the loss or the weights stop being finite (the last good
    checkpoint stays), :class:`~diffusion_utils.plumbing.errors.RunFolderError` when ``out_dir`` cannot be
    written or another run is using it, and :class:`TrainingInterrupted` on Ctrl-C.
    """
    return run_training(config, out_dir, dataset=dataset, resume=resume, init_from=init_from, progress=progress,
                        hooks=[RunFigures(), StepCallbacks(on_start, on_step), *hooks], cache_dir=cache_dir)
