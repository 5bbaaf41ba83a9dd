"""Flow matching (rectified flow): a straight path from the image to the noise, and its loss.

Lipman et al. 2023, Liu et al. 2023 and Albergo & Vanden-Eijnden 2023 train the same UNet on a
simpler path than DDPM's. With t ∈ [0, 1], t = 0 the image and t = 1 the noise (the convention of
Stable Diffusion 3 and diffusers' ``FlowMatchEulerDiscreteScheduler``):

    xₜ = (1 − t)·x₀ + t·ε,        ε ~ N(0, I)
    u  = dxₜ/dt = ε − x₀          (the velocity along the path: the same for every t)
    L(θ) = ‖u − u_θ(xₜ, t)‖²

The network learns the *average* velocity over every (x₀, ε) pair that passes through xₜ; that
field carries N(0, I) at t = 1 to the data at t = 0, and sampling integrates it backwards
(``sampler="euler"`` or ``"heun"``, :mod:`~diffusion_utils.samplers`). DDPM's ODE is the same
kind of object on a curved path: DDIM (η = 0) is Euler's method on it, re-parameterised
(notebook 08 shows the numbers).

Where t comes from (``config.flow_t``): ``"uniform"``, t ~ U(0, 1) (Liu et al.), or
``"logit_normal"``, t = sigmoid(m + s·n) with n ~ N(0, 1) (Esser et al. 2024, §3.1), which spends
more of the training on the middle of the path, where the velocity is hardest to guess.

The UNet's time embedding was built for integer steps 0 … 999; a flow model feeds it 1000·t, so
its sinusoids see the same range (SD3 and diffusers do the same: ``timesteps = 1000·σ``).
"""

from __future__ import annotations

import contextlib
import math

import torch

from .plumbing.distributed import shard_slice
from .plumbing.errors import ConfigError

OBJECTIVES = ("diffusion", "flow")  # what a network learns: DDPM's ε or v, or the flow's velocity
FLOW_T = ("uniform", "logit_normal")
TIME_SCALE = 1000.0  # a flow model's time embedding sees 1000·t (t ∈ [0, 1])


def check_flow_options(flow_t: str = "uniform", logit_std: float = 1.0, shift: float = 1.0) -> None:
    """One-line :class:`ConfigError` for an unknown ``flow_t``, a logit-normal scale ≤ 0 or a time shift ≤ 0."""
    if flow_t not in FLOW_T:
        raise ConfigError(f"flow_t must be one of {FLOW_T}; got {flow_t!r}")
    if not (isinstance(logit_std, (int, float)) and math.isfinite(logit_std) and logit_std > 0):
        raise ConfigError(f"flow_logit_std must be a positive number; got {logit_std!r}")
    if not (isinstance(shift, (int, float)) and math.isfinite(shift) and shift > 0):
        raise ConfigError(f"the time shift must be a positive number (1: no shift); got {shift!r}")


class FlowPath:
    """The straight path xₜ = (1 − t)·x₀ + t·ε and what training and sampling read from it.

    It plays the part a :class:`~diffusion_utils.NoiseSchedule` plays for a diffusion model:
    ``sample(model, path, n, sampler="euler")``. ``shift`` is SD3's time shift of the sampling
    grid (1: none; > 1 spends more steps near the noise).
    """

    def __init__(self, flow_t: str = "uniform", logit_mean: float = 0.0, logit_std: float = 1.0,
                 shift: float = 1.0):
        check_flow_options(flow_t, logit_std, shift)
        self.flow_t, self.logit_mean, self.logit_std, self.shift = flow_t, logit_mean, logit_std, shift

    @classmethod
    def from_config(cls, config) -> "FlowPath":
        """The path a flow :class:`~diffusion_utils.TrainConfig` describes."""
        return cls(config.flow_t, config.flow_logit_mean, config.flow_logit_std, config.flow_shift)

    def to(self, device) -> "FlowPath":
        """Nothing to move (the path is arithmetic); here so a path stands where a schedule does."""
        return self

    def __repr__(self) -> str:
        return (f"FlowPath(flow_t={self.flow_t!r}, logit_mean={self.logit_mean}, logit_std={self.logit_std}, "
                f"shift={self.shift})")

    # ---------------------------------------------------------------------------------------
    def sample_t(self, n: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
        """n training times t (n,) float32 in (0, 1): uniform, or logit-normal (Esser et al. 2024)."""
        if self.flow_t == "uniform":
            return torch.rand(n, generator=generator, device=device)  # t ~ U(0, 1)
        n01 = torch.randn(n, generator=generator, device=device)
        return torch.sigmoid(self.logit_mean + self.logit_std * n01)  # t = σ(m + s·n), n ~ N(0, 1)

    @staticmethod
    def q_sample(x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """xₜ = (1 − t)·x₀ + t·ε. x0, eps: (B, C, H, W); t: (B,) in [0, 1]. Returns (B, C, H, W)."""
        t = t.reshape(-1, *([1] * (x0.ndim - 1))).to(x0.dtype)
        return (1 - t) * x0 + t * eps

    @staticmethod
    def velocity(x0: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """The training target u = dxₜ/dt = ε − x₀, shape of x0."""
        return eps - x0

    @staticmethod
    def x0_and_eps(u: torch.Tensor, x_t: torch.Tensor, t) -> tuple[torch.Tensor, torch.Tensor]:
        """The path's ends implied by a velocity at (xₜ, t): x̂₀ = xₜ − t·û and ε̂ = xₜ + (1 − t)·û."""
        t = torch.as_tensor(t, dtype=x_t.dtype, device=x_t.device).reshape(-1, *([1] * (x_t.ndim - 1)))
        return x_t - t * u, x_t + (1 - t) * u

    def timesteps(self, steps: int, t_start: float = 1.0) -> list[float]:
        """The grid t₀ = t_start > t₁ > … > t_steps = 0 of a ``steps``-interval sampler (steps + 1 points).

        Evenly spaced, then shifted: t ↦ shift·t / (1 + (shift − 1)·t) (Esser et al. 2024, eq. 23);
        shift = 1 leaves the grid even.
        """
        grid = torch.linspace(t_start, 0.0, steps + 1, dtype=torch.float64)
        grid = self.shift * grid / (1 + (self.shift - 1) * grid)
        return [float(t) for t in grid]


def flow_loss(model: torch.nn.Module, path: FlowPath, x0: torch.Tensor, *,
              generator: torch.Generator | None = None, autocast_dtype: torch.dtype | None = None,
              y: torch.Tensor | None = None, p_uncond: float = 0.0,
              shard: tuple[int, int] = (0, 1)) -> torch.Tensor:
    """The flow-matching loss of one batch, a scalar tensor: ‖(ε − x₀) − u_θ((1 − t)x₀ + tε, t)‖².

    The same shape as :func:`~diffusion_utils.diffusion_loss` (Algorithm 1): x0 (B, C, H, W) in
    [-1, 1]; t, ε and then the label drops (probability ``p_uncond``, for classifier-free
    guidance) are drawn from ``generator`` for the whole global batch, and with ``shard`` =
    (rank, world_size) this process keeps its slice, as one process would have drawn them.
    """
    net = getattr(model, "module", model)
    n = x0.shape[0] * shard[1]  # the global batch
    mine = shard_slice(n, shard)  # this process's rows of it
    t = path.sample_t(n, generator, x0.device)[mine]  # t ~ U(0, 1) or logit-normal
    eps = torch.randn((n, *x0.shape[1:]), device=x0.device, generator=generator)[mine]  # ε ~ N(0, I)
    x_t = path.q_sample(x0, t, eps)  # xₜ = (1 − t) x₀ + t ε
    if y is not None and p_uncond > 0:  # label dropout: c → ∅ with probability p_uncond
        drop = (torch.rand(n, device=x0.device, generator=generator) < p_uncond)[mine]
        y = torch.where(drop, torch.full_like(y, net.null_class), y)
    autocast = (torch.autocast(x0.device.type, dtype=autocast_dtype) if autocast_dtype is not None
                else contextlib.nullcontext())
    with autocast:
        output = model(x_t, t, y) if y is not None else model(x_t, t)  # u_θ(xₜ, t[, c])
    return (output.float() - path.velocity(x0, eps)).pow(2).mean()  # ‖u − u_θ‖²
