"""Algorithm 1 of Ho et al. 2020: one training step, and the state it updates.

    repeat:  x₀ ~ data,  t ~ Uniform{1…T},  ε ~ N(0, I)
             take a gradient step on  ‖ε − ε_θ(√ᾱₜ x₀ + √(1−ᾱₜ) ε, t)‖²

:func:`train_step` is one pass of that loop: the loss (:func:`~diffusion_utils.diffusion_loss`),
backward, gradient-norm clipping, AdamW with :func:`learning_rate` (a linear warm-up, then
constant or a cosine decay), and the EMA of the weights (:func:`make_ema`, a power-function EMA
whose horizon grows with the run). :class:`TrainState` holds everything a step reads and writes,
and is the one owner of what a checkpoint holds. bfloat16 autocast is used where the hardware
computes it natively (``config.bf16="auto"``, :func:`~diffusion_utils.plumbing.precision.use_bf16`).

The loop around it — epochs, checkpoints, Ctrl-C, NaN, hooks — is :mod:`~diffusion_utils.run`.

With labelled data the model is class-conditional (``config.num_classes``): each batch carries its
labels, and the loss drops them with probability ``p_uncond`` (classifier-free guidance). An
upsampler (``config.task == "sr"``) trains on (x₀, z) pairs, z being x₀ shrunk and blown up again
(:mod:`~diffusion_utils.superres`). With several processes (``torchrun``), the state's network is
wrapped in DistributedDataParallel and each rank takes its slice of every global batch
(:mod:`~diffusion_utils.plumbing.distributed`).
"""

from __future__ import annotations

import math

import torch
from torch.optim.swa_utils import AveragedModel

from .config import TrainConfig
from .flow import flow_loss
from .loss import LossSettings, diffusion_loss
from .model import UNet
from .plumbing import distributed
from .plumbing.errors import ConfigError, TrainingDiverged
from .plumbing.precision import bf16_available, use_bf16
from .schedule import schedule_for
from .superres import training_pair


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
        self.schedule = schedule_for(config).to(device)  # a NoiseSchedule, or a flow model's FlowPath
        self.loss_settings = LossSettings.from_config(config)  # min-SNR's γ, label drops, the condition's noise
        self.data_rng = torch.Generator().manual_seed(config.seed)
        self.noise_rng = torch.Generator(device=device).manual_seed(config.seed + 1)
        self.autocast_dtype = torch.bfloat16 if use_bf16(config.bf16, device) else None  # config.bf16's choice here
        self.step = self.epoch = self.batch_in_epoch = 0
        self.total_steps: int | None = None  # where the run ends (set by the run); lr_decay's horizon
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
            "precision": {"autocast": "bfloat16" if self.autocast_dtype else "float32", "device_type": self.device.type},
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
        self.autocast_dtype = self._resumed_dtype(state.get("precision"))
        rng = state["rng"]
        self.data_rng.set_state(rng["data_epoch_start"])
        self.noise_rng.set_state(rng["noise"])
        torch.set_rng_state(rng["torch"])  # dropout draws from the global generators
        if self.device.type == "cuda" and rng.get("cuda") is not None:
            torch.cuda.set_rng_state(rng["cuda"], self.device)


    def _resumed_dtype(self, saved: dict | None) -> torch.dtype | None:
        """The autocast dtype a resumed run continues in, so that it stays in one dtype: with
        ``bf16="auto"`` on the same kind of device, the one the checkpoint recorded (a probe run
        again might decide otherwise); an explicit True or False, or other hardware, decide as
        they do for a new run. A checkpoint written before the dtype was recorded trained in
        bfloat16 only on a native-bf16 GPU (``bf16=True`` meant that then)."""
        if saved is None:
            return torch.bfloat16 if self.config.bf16 and bf16_available(self.device) else None
        if self.config.bf16 != "auto" or saved.get("device_type") != self.device.type:
            return self.autocast_dtype
        return torch.bfloat16 if saved.get("autocast") == "bfloat16" else None


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
    if config.objective == "flow":  # the straight path's velocity (diffusion_utils.flow)
        loss = flow_loss(state.network, state.schedule, x0, generator=state.noise_rng,
                         autocast_dtype=state.autocast_dtype, y=None if y is None else y.to(state.device),
                         p_uncond=config.p_uncond, shard=(ranks.rank, ranks.world_size))
    else:
        loss = diffusion_loss(state.network, state.schedule, x0, y=None if y is None else y.to(state.device),
                              cond=cond, generator=state.noise_rng, shard=(ranks.rank, ranks.world_size),
                              settings=state.loss_settings, autocast_dtype=state.autocast_dtype)
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
