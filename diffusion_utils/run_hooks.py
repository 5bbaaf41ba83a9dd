"""The hooks of a training run: code it calls at four moments (start, after every step, after every
epoch, end), and what each hook writes into the run's folder.

:class:`~diffusion_utils.RunFigures` (the loss curve and the epoch table) and the live training
view are hooks; so is anything a notebook wants to see or record during a run
(``run_training(config, hooks=[MyHook()])``). A hook reads the run (:class:`~diffusion_utils.TrainingRun`:
``run.state``, ``run.total_steps``, ``run.ranks``) and never changes what it trains.
"""

from __future__ import annotations

from .plumbing.checkpoint import CHECKPOINT_NAME


class RunHooks:
    """Code called at four moments of a run; subclass it and override what you need.

    ``outputs``: what the hook writes into the run's folder ("/" marks a folder), checked with the
    checkpoint before the run starts. Under ``torchrun`` every rank calls its hooks: write files
    only where ``run.ranks.is_main``.
    """

    outputs: tuple[str, ...] = ()

    def start(self, run: TrainingRun) -> None:
        """Before the first step: ``run.state`` and ``run.total_steps`` are set."""

    def after_step(self, run: TrainingRun, loss: float) -> None:
        """After every optimiser step; ``run.state.step`` counts it (from 1)."""

    def end_of_epoch(self, run: TrainingRun) -> None:
        """After an epoch's checkpoint: ``run.state.epoch`` epochs are done, and
        ``run.state.epoch_grids`` holds this epoch's samples if it drew any."""

    def end(self, run: TrainingRun) -> None:
        """After the last epoch (not after Ctrl-C or a divergence)."""


class StepCallbacks(RunHooks):
    """Two plain functions as hooks: ``on_start(state, total_steps)`` before the first step and
    ``on_step(step, loss)`` after every step (what :class:`~diffusion_utils.LiveTrainingView` gives)."""

    def __init__(self, on_start=None, on_step=None):
        self.on_start, self.on_step = on_start, on_step

    def start(self, run: TrainingRun) -> None:
        if self.on_start is not None:
            self.on_start(run.state, run.total_steps)

    def after_step(self, run: TrainingRun, loss: float) -> None:
        if self.on_step is not None:
            self.on_step(run.state.step, loss)


def outputs_of(hooks) -> tuple[str, ...]:
    """What a run with ``hooks`` writes into its folder: the checkpoint and each hook's outputs."""
    return (CHECKPOINT_NAME, *(name for hook in hooks for name in hook.outputs))


__all__ = ["RunHooks", "StepCallbacks", "outputs_of"]
