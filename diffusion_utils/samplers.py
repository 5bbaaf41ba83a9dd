"""The samplers, one small class each, in diffusers' shape: a grid, and one step along it.

Every sampler answers two questions, and :func:`~diffusion_utils.sample` runs any of them through
one loop:

- ``timesteps(steps)`` — where the network is called, in order (code timesteps 999 … 0 for a
  diffusion model, times 1 … > 0 for a flow model); each step lands on the next entry, and the
  last on ``end`` (the clean image: −1 for diffusion, 0 for flow);
- ``step(x, t, t_next, model_output)`` → ``(x_next, x0_hat)`` — one move from t to t_next given
  what the network said at (x, t), and its guess of the clean image (for the slider).

A second-order sampler that calls the network twice per step (Heun) says so with ``corrects(i)``
and finishes the step in ``correct``. Diffusion samplers (Ho et al.'s timesteps, ``schedule`` a
:class:`~diffusion_utils.NoiseSchedule`):

- :class:`DDPM` — Ho et al. 2020, Algorithm 2: every one of the T steps, ancestral (noise each step).
- :class:`DDIM` — Song et al. 2021: jumps across timesteps; η = 0 deterministic.
- :class:`DPMSolverPP` — Lu et al. 2022, DPM-Solver++(2M): second order from the last two x̂₀.

Flow samplers (t ∈ [0, 1], ``path`` a :class:`~diffusion_utils.flow.FlowPath`):

- :class:`Euler` — x_next = x + (t_next − t)·û: first order, one call per step.
- :class:`Heun` — Euler, then the average of the velocities at both ends: second order.

Timestep spacing of the diffusion samplers is *trailing* (Lin et al. 2024, Table 2): tᵢ =
round(T − i·T/steps) − 1 starts at T − 1, whose marginal really is pure noise; "leading" spacing
(0, T/steps, …) never visits T − 1 and washes out samples with few steps.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch

from .flow import FlowPath
from .plumbing.errors import ConfigError
from .schedule import NoiseSchedule, at_timesteps

SPACINGS = ("trailing", "leading", "linspace")
DIFFUSION_SAMPLERS = ("ddpm", "ddim", "dpmpp")
FLOW_SAMPLERS = ("euler", "heun")


def timesteps_for(n_steps: int, steps: int, spacing: str = "trailing") -> list[int]:
    """The code timesteps (in [0, T-1], descending) that a ``steps``-call sampler visits.

    ``trailing`` (default) starts at T−1; ``leading`` is DDIM's original 0, T/steps, …;
    ``linspace`` spreads from T−1 to 0 inclusive. ``steps == n_steps`` gives every timestep.
    """
    if not 1 <= steps <= n_steps:
        raise ConfigError(f"steps must be in [1, {n_steps}]; got {steps}")
    if spacing == "trailing":
        # [:steps]: with a float step, arange can yield one extra element near 0 (then t = −1).
        ts = np.round(np.arange(n_steps, 0, -n_steps / steps)[:steps]).astype(int) - 1
    elif spacing == "leading":
        ts = (np.arange(0, steps) * (n_steps // steps))[::-1]
    elif spacing == "linspace":
        ts = np.round(np.linspace(n_steps - 1, 0, steps)).astype(int)
    else:
        raise ConfigError(f"spacing must be one of {SPACINGS}; got {spacing!r}")
    return [int(t) for t in ts]


class Sampler:
    """What every sampler has; see the module docstring. Subclasses set ``end`` and the methods."""

    end: float = -1

    def timesteps(self, steps: int, t_start=None) -> list:
        raise NotImplementedError

    def step(self, x: torch.Tensor, t, t_next, model_output: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def corrects(self, i: int) -> bool:
        """True if step ``i`` needs a second network call at its end (see :class:`Heun`)."""
        return False


# ---------------------------------------------------------------------------------------------
# Diffusion samplers
# ---------------------------------------------------------------------------------------------
class _DiffusionSampler(Sampler):
    """The shared part: the schedule, what the network predicts, and x̂₀'s clamp."""

    end = -1  # code timestep −1 is the clean image (ᾱ = 1)

    def __init__(self, schedule: NoiseSchedule, prediction: str = "eps", clip_x0: bool = True,
                 spacing: str = "trailing"):
        if not isinstance(schedule, NoiseSchedule):
            raise ConfigError("a diffusion sampler needs the model's NoiseSchedule; this is a flow model's "
                              "path: sample it with sampler='euler' or 'heun'")
        self.schedule, self.prediction, self.clip_x0, self.spacing = schedule, prediction, clip_x0, spacing

    def alpha_bar(self, t: int) -> float:
        """ᾱ at code step t as a Python float; ᾱ = 1 for t = −1 (the clean image)."""
        return 1.0 if t < 0 else float(self.schedule.alpha_bars[t])

    def timesteps(self, steps: int, t_start: int | None = None) -> list[int]:
        """``steps`` code timesteps spread over [0, t_start] (default all T) with ``spacing``."""
        top = self.schedule.n_steps - 1 if t_start is None else t_start
        return timesteps_for(top + 1, steps, self.spacing)

    def x0_and_eps(self, x: torch.Tensor, t: int, model_output: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x̂₀ (clamped to [-1, 1] if ``clip_x0``) and the ε̂ consistent with it, from the network's output."""
        t_batch = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
        eps, x0 = self.schedule.eps_and_x0(model_output, x, t_batch, self.prediction)
        if self.clip_x0:
            a = self.alpha_bar(t)
            x0 = x0.clamp(-1, 1)
            eps = (x - a ** 0.5 * x0) / (1 - a) ** 0.5  # the noise that x̂₀ implies
        return x0, eps


class DDPM(_DiffusionSampler):
    """Ho et al. 2020, Algorithm 2: xₜ₋₁ = μ_θ(xₜ) + σₜ z, σₜ² = β̃ₜ, through every timestep.

    ``noise()`` draws z (default ``torch.randn_like``); ``step(..., noise=z)`` takes a given one.
    ``clip_x0=True`` clamps x̂₀ = (xₜ − √(1−ᾱₜ) ε̂)/√ᾱₜ and uses the posterior mean μ̃ₜ(xₜ, x̂₀);
    ``clip_x0=False`` is Ho et al.'s ε form μ_θ = (xₜ − βₜ/√(1−ᾱₜ) · ε̂)/√αₜ (the same number
    without the clamp).
    """

    def __init__(self, schedule: NoiseSchedule, prediction: str = "eps", clip_x0: bool = True,
                 noise: Callable[[], torch.Tensor] | None = None):
        super().__init__(schedule, prediction, clip_x0, "trailing")
        self.noise = noise

    def timesteps(self, steps: int | None = None, t_start: int | None = None) -> list[int]:
        """Every code timestep from t_start (default T − 1) down to 0: the ancestral sampler skips none."""
        top = self.schedule.n_steps - 1 if t_start is None else t_start
        return list(range(top, -1, -1))

    def step(self, x, t, t_next, model_output, noise: torch.Tensor | None = None):
        s, tt = self.schedule, torch.as_tensor(t, device=x.device).long().reshape(-1).expand(x.shape[0])
        eps, x0 = s.eps_and_x0(model_output, x, tt, self.prediction)
        if self.clip_x0:
            x0 = x0.clamp(-1, 1)
            mean = s.q_posterior_mean(x0, x, tt)  # μ̃ₜ(xₜ, x̂₀)
        else:
            beta, noise_std = at_timesteps(s.betas, tt, x), at_timesteps(s.sqrt_one_minus_alpha_bars, tt, x)
            mean = (x - beta / noise_std * eps) / at_timesteps(s.alphas, tt, x).sqrt()  # Ho et al. eq. 11
        if noise is None and bool((tt == 0).all()):
            noise = torch.zeros_like(x)  # β̃ at t = 0 is 0: no draw, so the generator is left as it was
        elif noise is None:
            noise = self.noise() if self.noise is not None else torch.randn_like(x)
        sigma = at_timesteps(s.posterior_variance, tt, x).sqrt()  # σₜ = √β̃ₜ, 0 at t = 0
        return mean + sigma * noise, x0


class DDIM(_DiffusionSampler):
    """Song et al. 2021, eq. 12: x_next = √ᾱ_next x̂₀ + √(1 − ᾱ_next − σ²) ε̂ + σ z.

    σ = η √((1−ᾱ_next)/(1−ᾱₜ)) √(1−ᾱₜ/ᾱ_next)  (eq. 16): η = 0 is deterministic; η = 1 over
    consecutive steps is DDPM's σₜ² = β̃ₜ. ``noise()`` draws z when σ > 0.
    """

    def __init__(self, schedule: NoiseSchedule, prediction: str = "eps", clip_x0: bool = True,
                 spacing: str = "trailing", eta: float = 0.0, noise: Callable[[], torch.Tensor] | None = None):
        super().__init__(schedule, prediction, clip_x0, spacing)
        self.eta, self.noise = eta, noise

    def step(self, x, t, t_next, model_output):
        x0, eps = self.x0_and_eps(x, t, model_output)
        a_t, a_next = self.alpha_bar(t), self.alpha_bar(t_next)
        sigma = self.eta * ((1 - a_next) / (1 - a_t) * (1 - a_t / a_next)) ** 0.5
        x_next = a_next ** 0.5 * x0 + max(1 - a_next - sigma ** 2, 0.0) ** 0.5 * eps
        if sigma > 0:
            x_next = x_next + sigma * (self.noise() if self.noise is not None else torch.randn_like(x))
        return x_next, x0


class DPMSolverPP(_DiffusionSampler):
    """DPM-Solver++(2M), Lu et al. 2022, Algorithm 2, with αₜ = √ᾱₜ, σₜ = √(1−ᾱₜ), λ = log(αₜ/σₜ).

    λ is *half* the log-SNR (SNR = α²/σ²). :meth:`update` is the formula; :meth:`step` keeps the
    previous x̂₀ and its timestep between calls (reset by :meth:`timesteps`).
    """

    def __init__(self, schedule: NoiseSchedule, prediction: str = "eps", clip_x0: bool = True,
                 spacing: str = "trailing"):
        super().__init__(schedule, prediction, clip_x0, spacing)
        self.x0_prev = self.t_prev = None

    def timesteps(self, steps: int, t_start: int | None = None) -> list[int]:
        self.x0_prev = self.t_prev = None
        return super().timesteps(steps, t_start)

    def lam(self, t: int) -> float:
        """λₜ = log(αₜ/σₜ) = ½ log(ᾱₜ/(1 − ᾱₜ))."""
        a = self.alpha_bar(t)
        return 0.5 * math.log(a / (1 - a))

    def update(self, x: torch.Tensor, t: int, t_next: int, x0: torch.Tensor,
               x0_prev: torch.Tensor | None = None, t_prev: int | None = None) -> torch.Tensor:
        """x_next = (σ_next/σₜ) xₜ − α_next (e^(−h) − 1) D,  h = λ_next − λₜ,
        D = (1 + 1/(2r)) x̂₀ − 1/(2r) x̂₀_prev, r = h_prev / h  (D = x̂₀ without a previous one).
        The last step lands on the clean image (σ = 0) and is first order: x₀ = x̂₀."""
        if t_next < 0:
            return x0
        a_t, a_next = self.alpha_bar(t), self.alpha_bar(t_next)
        h = self.lam(t_next) - self.lam(t)
        if x0_prev is None:
            d = x0
        else:
            r = (self.lam(t) - self.lam(t_prev)) / h
            d = (1 + 1 / (2 * r)) * x0 - 1 / (2 * r) * x0_prev
        return ((1 - a_next) / (1 - a_t)) ** 0.5 * x - a_next ** 0.5 * math.expm1(-h) * d

    def step(self, x, t, t_next, model_output):
        x0, _ = self.x0_and_eps(x, t, model_output)
        x_next = self.update(x, t, t_next, x0, self.x0_prev, self.t_prev)
        self.x0_prev, self.t_prev = x0, t
        return x_next, x0


# ---------------------------------------------------------------------------------------------
# Flow samplers
# ---------------------------------------------------------------------------------------------
class Euler(Sampler):
    """Euler's method on dx/dt = u_θ(x, t) from t = 1 to 0: x_next = x + (t_next − t)·û.

    ``model_output`` is the network's velocity û at (x, t); t_next < t, so each step walks
    against the velocity, from the noise towards the image. x̂₀ = x − t·û.
    """

    end = 0.0

    def __init__(self, path: FlowPath):
        if not isinstance(path, FlowPath):
            raise ConfigError("euler and heun sample a flow model along its FlowPath; this is a diffusion "
                              "model's NoiseSchedule: use sampler='ddpm', 'ddim' or 'dpmpp'")
        self.path = path

    def intervals(self, steps: int) -> int:
        """How many intervals ``steps`` network calls buy (one each for Euler)."""
        return steps

    def timesteps(self, steps: int, t_start: float | None = None) -> list[float]:
        """The first ``intervals(steps)`` points of the path's grid (shifted by ``path.shift``)."""
        return self.path.timesteps(self.intervals(steps), 1.0 if t_start is None else t_start)[:-1]

    def step(self, x, t, t_next, model_output):
        x0, _ = self.path.x0_and_eps(model_output, x, t)
        return x + (t_next - t) * model_output, x0  # x_{t_next} = xₜ + Δt·û,  Δt < 0


class Heun(Euler):
    """Heun's method (Karras et al. 2022, Algorithm 1): an Euler step to x̃, then the step again
    with the mean of the velocities at both ends: x_next = x + Δt·(û(x, t) + û(x̃, t_next))/2.

    Two network calls per corrected interval, second order. As in Karras et al., the interval that
    ends at t = 0 is never corrected: the correction would call the network on the clean image, a
    time it barely trains on (logit-normal t never draws it), and measured on the quick flow model
    it made the samples worse (an all-corrected 10-call run landed farther from the 200-step
    solution than a 9-call run that ends in Euler). So ``steps`` calls buy ``steps // 2 + 1``
    intervals: the last one Euler, and with an even ``steps`` the one before it too. One Euler
    interval of O(Δt²) error leaves the method second order.
    """

    def intervals(self, steps: int) -> int:
        self.n_calls = steps
        return steps // 2 + 1

    def corrects(self, i: int) -> bool:
        return i < self.n_calls - self.intervals(self.n_calls)  # the first calls − intervals intervals

    def correct(self, x, t, t_next, model_output, output_next):
        """The corrector: x_next = x + Δt·(û + û_next)/2, from the same x as :meth:`step`."""
        return x + (t_next - t) * 0.5 * (model_output + output_next)


def make_sampler(name: str, schedule, prediction: str = "eps", *, clip_x0: bool = True, eta: float = 0.0,
                 spacing: str = "trailing", noise: Callable[[], torch.Tensor] | None = None) -> Sampler:
    """The sampler called ``name`` for a model's ``schedule`` (or flow path), ready to run."""
    if name == "ddpm":
        return DDPM(schedule, prediction, clip_x0, noise)
    if name == "ddim":
        return DDIM(schedule, prediction, clip_x0, spacing, eta, noise)
    if name == "dpmpp":
        return DPMSolverPP(schedule, prediction, clip_x0, spacing)
    if name == "euler":
        return Euler(schedule)
    if name == "heun":
        return Heun(schedule)
    raise ConfigError(f"sampler must be one of {DIFFUSION_SAMPLERS + FLOW_SAMPLERS}; got {name!r}")
