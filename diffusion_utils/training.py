"""Training ε_θ with the simple loss of Ho et al. 2020 (Algorithm 1):

    repeat:  x₀ ~ data,  t ~ Uniform{1…T},  ε ~ N(0, I)
             take a gradient step on  ‖ε − ε_θ(√ᾱₜ x₀ + √(1−ᾱₜ) ε, t)‖²

Around that loop: AdamW with a linear learning-rate warm-up, gradient-norm clipping, an EMA of
the weights (``torch.optim.swa_utils.AveragedModel``, with warm-up), bfloat16 autocast on CUDA,
a tqdm progress bar, a loss history, a fixed-noise sample grid every ``sample_every`` epochs, and a
checkpoint after every epoch. ``resume=True`` continues from the checkpoint exactly (the same
losses as an uninterrupted run, on the CPU). Ctrl-C writes a checkpoint before stopping; a NaN
loss stops the run and names the step.
"""

from __future__ import annotations

import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.optim.swa_utils import AveragedModel
from tqdm.auto import tqdm

from .checkpoint import CHECKPOINT_NAME, check_compatible, load_checkpoint, load_model, save_checkpoint
from .config import TrainConfig, bf16_available, resolve_device
from .data import ImageDataset, batches_per_epoch, epoch_batches, load_dataset
from .errors import CheckpointError, ConfigError, TrainingDiverged
from .model import UNet
from .sampling import sample, to_uint8
from .schedule import NoiseSchedule
from .visualization import plot_epoch_table, plot_loss, save_grid


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


def make_ema(model: torch.nn.Module, decay: float) -> AveragedModel:
    """An EMA copy of ``model``: θ_ema ← d·θ_ema + (1 − d)·θ, with d = min(decay, (1+n)/(10+n)).

    The warm-up term (n = updates so far) keeps the early EMA from being dominated by the
    random initial weights: with decay 0.9995 a plain EMA would need thousands of steps to
    forget them.
    """

    @torch.no_grad()
    def ema_update(ema_params, params, num_averaged):
        n = float(num_averaged)
        d = min(decay, (1 + n) / (10 + n))
        torch._foreach_lerp_(ema_params, params, 1 - d)

    return AveragedModel(model, multi_avg_fn=ema_update)


def learning_rate(config: TrainConfig, step: int) -> float:
    """Linear warm-up over ``lr_warmup_steps``, then constant (as in Ho et al.)."""
    if config.lr_warmup_steps == 0:
        return config.lr
    return config.lr * min(1.0, (step + 1) / config.lr_warmup_steps)


def train(config: TrainConfig, out_dir: str | Path = "outputs", *, dataset: ImageDataset | None = None,
          resume: bool = False, progress: bool = True, on_step=None,
          cache_dir: str | Path | None = None) -> TrainResult:
    """Train a DDPM as ``config`` says, writing checkpoints and figures into ``out_dir``.

    Args:
        config: every hyperparameter (see :class:`TrainConfig`).
        out_dir: where ``diffusion_unet_pixels.pth``, ``loss.png``, ``samples/epoch_NNN.png``
            and ``epoch_samples.png`` (the per-epoch table) are written.
        dataset: images to train on (default: ``load_dataset(config.data, …)``).
        resume: continue from ``out_dir/diffusion_unet_pixels.pth`` (it must exist and match the
            config's network and schedule; ``num_epochs`` may be raised to train longer).
        progress: show a progress bar.
        on_step: optional ``callback(step, loss)`` after every optimiser step.
        cache_dir: where decoded images are cached (see :mod:`diffusion_utils.data`).
    """
    out_dir = Path(out_dir)
    ckpt_path = out_dir / CHECKPOINT_NAME
    device = resolve_device(config.device)
    if dataset is None:
        dataset = load_dataset(config.data, config.img_size, root=config.data_root,
                               max_images=config.max_images, seed=config.seed,
                               cache_dir=cache_dir, progress=progress)
    if dataset.img_size != config.img_size:
        raise ConfigError(f"the dataset's images are {dataset.img_size} px but img_size is {config.img_size}")

    torch.manual_seed(config.seed)  # the initial weights
    model = UNet.from_config(config).to(device)
    ema = make_ema(model, config.ema_decay)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    schedule = NoiseSchedule.from_config(config).to(device)
    data_rng = torch.Generator().manual_seed(config.seed)  # shuffling and flips
    noise_rng = torch.Generator(device=device).manual_seed(config.seed + 1)  # t and ε
    grid_noise = torch.randn(config.sample_grid_n, 3, config.img_size, config.img_size,
                             generator=torch.Generator().manual_seed(config.seed + 2))
    step = epoch = batch_in_epoch = 0
    losses: list[float] = []
    epoch_grids: dict[int, torch.Tensor] = {}

    if resume:
        state = load_checkpoint(ckpt_path)  # on the CPU; load_state_dict moves tensors to device
        check_compatible(state["config"], config, ckpt_path)
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        step, epoch, batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        losses = state["losses"].tolist()
        epoch_grids = dict(state["epoch_grids"])
        rng = state["rng"]
        data_rng.set_state(rng["data_epoch_start"])
        noise_rng.set_state(rng["noise"])
        torch.set_rng_state(rng["torch"])  # dropout draws from the global generators
        if device.type == "cuda" and rng.get("cuda") is not None:
            torch.cuda.set_rng_state(rng["cuda"], device)

    def checkpoint_state(epoch_start_rng: torch.Tensor) -> dict:
        return {
            "config": config.to_dict(), "model": model.state_dict(), "ema": ema.state_dict(),
            "optimizer": optimizer.state_dict(), "step": step, "epoch": epoch,
            "batch_in_epoch": batch_in_epoch, "losses": torch.tensor(losses, dtype=torch.float32),
            "epoch_grids": epoch_grids,
            "rng": {"data_epoch_start": epoch_start_rng, "noise": noise_rng.get_state(),
                    "torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None},
        }

    steps_per_epoch = batches_per_epoch(len(dataset), config.batch_size)
    total_steps = steps_per_epoch * config.num_epochs
    if step > total_steps:
        raise ConfigError(f"the checkpoint is already at step {step}, past num_epochs={config.num_epochs}; "
                          f"raise num_epochs to train longer")
    autocast = dict(device_type="cuda", dtype=torch.bfloat16, enabled=config.bf16 and bf16_available(device))
    bar = tqdm(total=total_steps, initial=step, desc="training", unit="step", disable=not progress)
    start_time, start_step = time.perf_counter(), step
    model.train()
    try:
        with _StopOnCtrlC() as stop:
            while epoch < config.num_epochs:
                epoch_start_rng = data_rng.get_state()
                for x0 in epoch_batches(dataset.images, config.batch_size, data_rng, start=batch_in_epoch):
                    x0 = x0.to(device, non_blocking=True)
                    t = torch.randint(0, schedule.n_steps, (x0.shape[0],), device=device, generator=noise_rng)
                    eps = torch.randn(x0.shape, device=device, generator=noise_rng)
                    x_t = schedule.q_sample(x0, t, eps)  # xₜ = √ᾱₜ x₀ + √(1−ᾱₜ) ε
                    with torch.autocast(**autocast):
                        eps_pred = model(x_t, t)
                    loss = F.mse_loss(eps_pred.float(), eps)  # ‖ε − ε_θ(xₜ, t)‖²
                    loss_value = loss.item()
                    if loss_value != loss_value or abs(loss_value) == float("inf"):
                        raise TrainingDiverged(
                            f"loss became {loss_value} at step {step} (epoch {epoch + 1}); lower lr "
                            f"(now {config.lr}) or check the data" + (f"; the last good checkpoint is {ckpt_path}"
                                                        if ckpt_path.exists() else ""))
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
                    for group in optimizer.param_groups:
                        group["lr"] = learning_rate(config, step)
                    optimizer.step()
                    ema.update_parameters(model)
                    step += 1
                    batch_in_epoch += 1
                    losses.append(loss_value)
                    bar.update(1)
                    bar.set_postfix(epoch=f"{epoch + 1}/{config.num_epochs}", loss=f"{loss_value:.4f}")
                    if on_step is not None:
                        on_step(step, loss_value)
                    if stop.requested:
                        save_checkpoint(ckpt_path, checkpoint_state(epoch_start_rng))
                        raise KeyboardInterrupt(f"interrupted at step {step}; checkpoint saved to {ckpt_path}")
                epoch += 1
                batch_in_epoch = 0
                if epoch % config.sample_every == 0 or epoch == config.num_epochs:
                    epoch_grids[epoch] = _sample_grid(ema.module, schedule, config, grid_noise)
                    save_grid(epoch_grids[epoch], out_dir / "samples" / f"epoch_{epoch:03d}.png")
                save_checkpoint(ckpt_path, checkpoint_state(data_rng.get_state()))
    finally:
        bar.close()
    seconds = time.perf_counter() - start_time
    if losses:
        plot_loss(losses, out_dir / "loss.png")
    if epoch_grids:
        plot_epoch_table(epoch_grids, out_dir / "epoch_samples.png")
    return TrainResult(config=config, model=model, ema_model=ema.module, schedule=schedule, losses=losses,
                       epoch_grids=epoch_grids, checkpoint_path=ckpt_path, device=device, seconds=seconds,
                       images_seen=(step - start_step) * min(config.batch_size, len(dataset)), out_dir=out_dir)


def load_or_train(checkpoint: str | Path, config: TrainConfig, device=None, progress: bool = True):
    """The EMA model saved in ``checkpoint`` if there is a readable one; otherwise first train the
    ``quick`` preset (on ``config.data``) into the checkpoint's folder.

    This is how notebooks 04 and 05 reuse the model notebook 03 trained, yet still run standalone.
    Returns ``(model, schedule, trained_config)``: the config the model was actually trained with.
    """
    checkpoint = Path(checkpoint)
    device = device or resolve_device(config.device)
    if checkpoint.exists():
        try:
            model, schedule, trained = load_model(checkpoint, device)
            print(f"Using the model notebook 03 trained: {checkpoint} ({trained.num_epochs} epochs, "
                  f"{trained.img_size} px).")
            return model, schedule, trained
        except CheckpointError as err:
            print(f"Not using {checkpoint}: {err}")
    quick = TrainConfig.preset("quick", data=config.data, data_root=config.data_root, device=config.device)
    print(f"No usable checkpoint from notebook 03 at {checkpoint}: training a quick model here "
          f"({quick.num_epochs} epochs at {quick.img_size} px; a few minutes on a CPU).")
    train(quick, checkpoint.parent, progress=progress)
    return load_model(checkpoint, device)


def _sample_grid(model, schedule, config: TrainConfig, grid_noise: torch.Tensor) -> torch.Tensor:
    """Samples from the same starting noise every time, so the table shows progress, not luck."""
    images = sample(model, schedule, len(grid_noise), img_size=config.img_size, sampler=config.sampler,
                    steps=config.steps_for_sampling, x_T=grid_noise, bf16=config.bf16,
                    generator=torch.Generator().manual_seed(config.seed + 3), progress=False)
    return to_uint8(images)


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
