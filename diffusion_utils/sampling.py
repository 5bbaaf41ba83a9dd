"""The reverse process: turning noise into images with a trained network (ε- or v-prediction).

Three samplers share one entry point, :func:`sample`, and one trained model:

- ``"ddpm"`` — Ho et al. 2020, Algorithm 2: T ancestral steps of p(xₜ₋₁ | xₜ), one network call
  each (1000 calls per image with the default schedule). The reference everything is judged by.
- ``"ddim"`` — Song et al. 2021: a non-Markovian process with the same marginals q(xₜ | x₀), so
  the same network can jump across many timesteps at once. ``eta=0`` is deterministic given the
  starting noise; ``eta=1`` with all T steps is exactly the DDPM sampler.
- ``"dpmpp"`` — DPM-Solver++(2M), Lu et al. 2022: a second-order multistep solver of the
  diffusion ODE in the data-prediction (x̂₀) form; good samples in 15–25 calls.

Timestep spacing. A fast sampler visits ``steps`` of the T timesteps. We use *trailing* spacing
(Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps are Flawed", Table 2):
tᵢ = round(T − i·T/steps) − 1, which always starts at the last timestep T−1. At the first sampling
step the noisy image is pure noise, so the network must be asked about the timestep whose
marginal actually is (almost) pure noise. "Leading" spacing (0, T/steps, 2T/steps, …) never visits
T−1 — with 10 steps it starts at t = 900, where the network expects some image to remain — which
is a known source of washed-out, low-contrast samples with few steps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from .config import as_int, bf16_available, check_sampler_steps
from .errors import ConfigError
from .guidance import GuidedModel, check_guidance_scale, class_ids
from .pixels import to_uint8
from .schedule import NoiseSchedule, at_timesteps

SPACINGS = ("trailing", "leading", "linspace")


@dataclass
class Trajectory:
    """Intermediate states of one sampling run, for animations and the denoising slider.

    Attributes:
        timesteps: the paper's t of each frame, from T (pure noise) down to 0 (the final sample).
        frames: uint8 tensor (F, N, C, H, W) — the noisy images xₜ, on the CPU.
        x0_frames: uint8 tensor (F, N, C, H, W) — the network's guess x̂₀ of the clean image at
            each frame (for the last frame, the sample itself).
        images: the final samples (N, C, H, W) in [-1, 1], as :func:`sample` returns them.

    :func:`sample_trajectory` makes one.
    """

    timesteps: list[int]
    frames: torch.Tensor
    x0_frames: torch.Tensor
    images: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.timesteps)


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


# ---------------------------------------------------------------------------------------------
# One DDPM step
# ---------------------------------------------------------------------------------------------
def predict_eps_x0(model: torch.nn.Module, schedule: NoiseSchedule, x_t: torch.Tensor, t: torch.Tensor,
                   bf16: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the network once and return (ε̂, x̂₀), both float32 of x_t's shape.

    Whatever the network was trained to output (``model.prediction``: ``"eps"`` or ``"v"``), the
    schedule's :meth:`~NoiseSchedule.eps_and_x0` turns it into the noise estimate ε̂ and the clean
    image estimate x̂₀, so no sampler needs to know. With ``bf16`` the network runs in bfloat16
    autocast (on devices where :func:`bf16_available` says it pays off).
    """
    with torch.autocast(x_t.device.type, dtype=torch.bfloat16, enabled=bf16):
        output = model(x_t, t).float()
    return schedule.eps_and_x0(output, x_t, t, getattr(model, "prediction", "eps"))


def p_sample(model: torch.nn.Module, schedule: NoiseSchedule, x_t: torch.Tensor, t,
             noise: torch.Tensor | None = None, clip_x0: bool = True) -> torch.Tensor:
    """One reverse step xₜ → xₜ₋₁ ~ p_θ(xₜ₋₁ | xₜ) = N(μ_θ, β̃ₜ I)   (Ho et al. Algorithm 2).

    x_t: (B, C, H, W); t: int or (B,) code timesteps in [0, T-1]; noise: z ~ N(0, I) of x_t's
    shape (drawn with ``torch.randn_like`` if None; ignored at t = 0, where no noise is added).

    ``clip_x0=False``: Ho et al.'s ε form, μ_θ = (xₜ − βₜ/√(1−ᾱₜ) · ε̂) / √αₜ.
    ``clip_x0=True``: predict x̂₀ = (xₜ − √(1−ᾱₜ) ε̂)/√ᾱₜ, clamp it to [-1, 1], and use the
    posterior mean μ̃ₜ(xₜ, x̂₀). Without the clamp the two are the same number; with it, early
    steps cannot produce values outside the data range, which gives cleaner samples.
    """
    x_prev, _ = _ddpm_step(model, schedule, x_t, t, noise, clip_x0)
    return x_prev


@torch.no_grad()
def _ddpm_step(model, schedule, x_t, t, noise, clip_x0, bf16=False):
    """p_sample that also returns x̂₀, for trajectories."""
    t = torch.as_tensor(t, device=x_t.device).long().reshape(-1).expand(x_t.shape[0])
    eps, x0_hat = predict_eps_x0(model, schedule, x_t, t, bf16)
    if clip_x0:
        x0_hat = x0_hat.clamp(-1, 1)
        mean = schedule.q_posterior_mean(x0_hat, x_t, t)
    else:
        beta = at_timesteps(schedule.betas, t, x_t)
        noise_std = at_timesteps(schedule.sqrt_one_minus_alpha_bars, t, x_t)
        mean = (x_t - beta / noise_std * eps) / at_timesteps(schedule.alphas, t, x_t).sqrt()  # Ho et al. eq. 11
    if noise is None:
        noise = torch.randn_like(x_t)
    # σₜ² = β̃ₜ; β̃ is exactly 0 at t = 0, so the last step returns the mean without noise.
    sigma = at_timesteps(schedule.posterior_variance, t, x_t).sqrt()
    return mean + sigma * noise, x0_hat


# ---------------------------------------------------------------------------------------------
# The sampling loop
# ---------------------------------------------------------------------------------------------
def check_sampling_options(model: torch.nn.Module, schedule: NoiseSchedule, n: int, *,
                           sampler: str = "ddpm", steps: int | None = None, eta: float = 0.0,
                           classes=None, guidance_scale: float | None = None, t_start: int | None = None,
                           names: dict[str, str] | None = None) -> tuple[int, int, int, torch.Tensor | None]:
    """Check :func:`sample`'s options before any work; returns ``(n, steps, t_start, class_ids)``
    with the defaults filled in (``class_ids`` (n,) or None), or raises a one-line
    :class:`ConfigError`. ``names`` renames the options in the messages (the CLI passes its flags,
    e.g. ``{"eta": "--eta"}``), as :func:`~diffusion_utils.config.as_int` takes a name."""
    name = {key: key for key in ("n", "steps", "eta", "classes", "guidance_scale", "t_start")} | (names or {})
    n = as_int(name["n"], n, 1)
    T = schedule.n_steps
    if t_start is None:
        t_start = T - 1
    elif not isinstance(t_start, int) or not 0 <= t_start < T:
        raise ConfigError(f"{name['t_start']} must be an integer code timestep in [0, {T - 1}]; got {t_start!r}")
    steps = check_sampler_steps(sampler, steps, t_start + 1, name["steps"])  # ddpm: every one of t_start + 1
    if not 0.0 <= eta <= 1.0:
        raise ConfigError(f"{name['eta']} must be in [0, 1]; got {eta}")
    if guidance_scale is not None and classes is None:
        raise ConfigError(f"{name['guidance_scale']} needs {name['classes']}: say which class to guide towards")
    if guidance_scale is not None:
        check_guidance_scale(guidance_scale)
    return n, steps, t_start, None if classes is None else class_ids(classes, model, n)


@torch.no_grad()
def sample(model: torch.nn.Module, schedule: NoiseSchedule, n: int, *, img_size: int | None = None,
           # the sampler and its knobs
           sampler: str = "ddpm", steps: int | None = None, eta: float = 0.0, spacing: str = "trailing",
           clip_x0: bool = True,
           # randomness
           generator: torch.Generator | None = None, x_T: torch.Tensor | None = None,
           # classifier-free guidance
           classes=None, guidance_scale: float | None = None,
           # editing: start part-way down, change the state after each step
           t_start: int | None = None, after_step: Callable[[torch.Tensor, int], torch.Tensor] | None = None,
           # where and how it runs
           device=None, bf16: bool = True, progress: bool = True,
           _recorder: "_TrajectoryRecorder | None" = None) -> torch.Tensor:  # _recorder: sample_trajectory's
    """Generate ``n`` images with the chosen sampler. Returns images (n, C, H, W) in [-1, 1].

    For the intermediate states as well (an animation, the denoising slider), call
    :func:`sample_trajectory` with the same options.

    Args:
        model: the trained ε_θ (put in eval mode here); its device is used unless ``device``.
        schedule: the schedule it was trained with.
        n: number of images.
        img_size: H = W of the images (default: ``model.img_size``).

        sampler: ``"ddpm"`` (T ancestral steps), ``"ddim"`` or ``"dpmpp"``.
        steps: network calls per image (default: T for ddpm, 50 for the others). For ``ddpm`` it
            must be T (t_start + 1 with ``t_start``); the ancestral sampler cannot skip steps.
        eta: DDIM only: 0 = deterministic, 1 = DDPM-like noise.
        spacing: which timesteps a fast sampler visits (see the module docstring).
        clip_x0: clamp the predicted x̂₀ to [-1, 1] at every step.

        generator: a CPU ``torch.Generator``; all randomness (the starting noise and every
            step's noise) is drawn from it on the CPU, so a seed gives the same images on any
            device.
        x_T: a starting noise batch (n, C, H, W) instead of drawing one.

        classes: for a class-conditional model, one class (a name from ``model.class_names`` or
            an id) for all images, or one per image. None: unconditional samples (the "no class"
            token).
        guidance_scale: classifier-free guidance w (see :mod:`~diffusion_utils.guidance`):
            ε̂ = ε_∅ + w (ε_c − ε_∅); 0 is unconditional, 1 (the default) plain conditional, > 1
            more typical and less diverse. Needs ``classes``.

        t_start: start part-way down instead of at pure noise: ``x_T`` is then an image noised
            to this code timestep (in [0, T−1]; default T−1, pure noise), and the ``steps``
            timesteps are spread over [0, t_start] with the same spacing rule. ``ddpm`` takes all
            t_start + 1 of them. SDEdit (:mod:`~diffusion_utils.editing`) starts here.
        after_step: ``after_step(x, t)`` is called after every step with the new state and its
            code timestep t (−1 for the final image) and returns the state to continue from.
            Inpainting uses it to put the known pixels back; None changes nothing.

        device: where to run (default: the model's device).
        bf16: run the network in bfloat16 autocast on GPUs with native support (the update
            arithmetic stays float32).
        progress: show a tqdm progress bar.
    """
    n, steps, t_start, ids = check_sampling_options(model, schedule, n, sampler=sampler, steps=steps, eta=eta,
                                                    classes=classes, guidance_scale=guidance_scale, t_start=t_start)
    # Spread the steps over the t_start + 1 timesteps [0, t_start] (all T of them by default).
    ts = timesteps_for(t_start + 1, steps, spacing if sampler != "ddpm" else "trailing")
    if ids is not None:
        model = GuidedModel(model, ids, 1.0 if guidance_scale is None else guidance_scale)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    bf16 = bf16 and bf16_available(device)
    img_size = img_size or model.img_size
    shape = (n, getattr(model, "in_channels", 3), img_size, img_size)
    if x_T is None:
        x_T = torch.randn(shape, generator=generator)
    elif tuple(x_T.shape) != shape:
        raise ConfigError(f"x_T must have shape {shape}; got {tuple(x_T.shape)}")

    def draw_noise() -> torch.Tensor:
        return torch.randn(shape, generator=generator).to(device)

    was_training = model.training
    model.eval()
    try:
        x = x_T.to(device=device, dtype=torch.float32)
        x0_prev = None  # DPM-Solver++'s previous data prediction
        for i, t in enumerate(tqdm(ts, desc=f"{sampler} sampling", disable=not progress, leave=False)):
            t_next = ts[i + 1] if i + 1 < len(ts) else -1  # -1 is the clean image (ᾱ = 1)
            if sampler == "ddpm":
                noise = draw_noise() if t > 0 else torch.zeros_like(x)  # β̃ at t = 0 is 0 anyway
                x_new, x0_hat = _ddpm_step(model, schedule, x, torch.full((n,), t, device=device), noise,
                                           clip_x0, bf16)
            elif sampler == "ddim":
                x_new, x0_hat = _ddim_step(model, schedule, x, t, t_next, eta, clip_x0, bf16, draw_noise)
            else:
                x_new, x0_hat = _dpmpp_2m_step(model, schedule, x, t, t_next, x0_prev,
                                               ts[i - 1] if i > 0 else None, clip_x0, bf16)
                x0_prev = x0_hat
            if after_step is not None:
                x_new = after_step(x_new, t_next)
            if _recorder is not None:
                _recorder.add(t + 1, x, x0_hat)
            x = x_new
    finally:
        model.train(was_training)
    return x.clamp(-1, 1)


def sample_trajectory(model: torch.nn.Module, schedule: NoiseSchedule, n: int, *, frames: int | None = None,
                      **options) -> "Trajectory":
    """Sample like :func:`sample` (the same ``options``) and keep the way there: a
    :class:`Trajectory` of ``frames`` evenly spaced states (default: every step), always the
    first (pure noise) and the last, whose ``images`` are what :func:`sample` returns."""
    n_calls = check_sampling_options(model, schedule, n, **{k: options[k] for k in (
        "sampler", "steps", "t_start") if k in options})[1]
    recorder = _TrajectoryRecorder(n_calls + 1, frames)
    images = sample(model, schedule, n, _recorder=recorder, **options)
    recorder.add(0, images, images)
    return recorder.result(images)


def _alpha_bar(schedule: NoiseSchedule, t: int) -> float:
    """ᾱ at code step t as a Python float; ᾱ = 1 for t = -1 (the clean image)."""
    return 1.0 if t < 0 else float(schedule.alpha_bars[t])


def _x0_and_eps(model, schedule, x, t, clip_x0, bf16):
    """ε̂ and x̂₀ from the network, x̂₀ clamped if asked, and then the ε̂ consistent with it."""
    t_batch = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
    eps, x0 = predict_eps_x0(model, schedule, x, t_batch, bf16)
    a = _alpha_bar(schedule, t)
    if clip_x0:
        x0 = x0.clamp(-1, 1)
        eps = (x - a ** 0.5 * x0) / (1 - a) ** 0.5  # the noise that x̂₀ implies
    return x0, eps


def _ddim_step(model, schedule, x, t, t_next, eta, clip_x0, bf16, draw_noise):
    """Song et al. 2021, eq. 12: x_prev = √ᾱ_prev x̂₀ + √(1−ᾱ_prev−σ²) ε̂ + σ z.

    σ = η √((1−ᾱ_prev)/(1−ᾱₜ)) √(1−ᾱₜ/ᾱ_prev)   (eq. 16); η = 1 and consecutive steps make σ² = β̃ₜ.
    """
    x0, eps = _x0_and_eps(model, schedule, x, t, clip_x0, bf16)
    a_t, a_prev = _alpha_bar(schedule, t), _alpha_bar(schedule, t_next)
    sigma = eta * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)) ** 0.5
    x_prev = a_prev ** 0.5 * x0 + max(1 - a_prev - sigma ** 2, 0.0) ** 0.5 * eps
    if sigma > 0:
        x_prev = x_prev + sigma * draw_noise()
    return x_prev, x0


def _dpmpp_2m_step(model, schedule, x, t, t_next, x0_prev, t_prev, clip_x0, bf16):
    """DPM-Solver++(2M), Lu et al. 2022, Algorithm 2, with αₜ = √ᾱₜ, σₜ = √(1−ᾱₜ), λ = log(αₜ/σₜ).

    x_next = (σ_next/σₜ) xₜ − α_next (e^(−h) − 1) D,  h = λ_next − λₜ,
    D = (1 + 1/(2r)) x̂₀ − 1/(2r) x̂₀_prev, r = h_prev / h   (first order, D = x̂₀, on the first step).
    The last step lands on the clean image (σ = 0) and is first order: x₀ = x̂₀.
    """
    x0, _ = _x0_and_eps(model, schedule, x, t, clip_x0, bf16)
    if t_next < 0:
        return x0, x0

    def lam(step: int) -> float:
        a = _alpha_bar(schedule, step)
        return 0.5 * float(np.log(a / (1 - a)))

    a_t, a_next = _alpha_bar(schedule, t), _alpha_bar(schedule, t_next)
    h = lam(t_next) - lam(t)
    if x0_prev is None:
        d = x0
    else:
        r = (lam(t) - lam(t_prev)) / h
        d = (1 + 1 / (2 * r)) * x0 - 1 / (2 * r) * x0_prev
    x_next = ((1 - a_next) / (1 - a_t)) ** 0.5 * x - a_next ** 0.5 * float(np.expm1(-h)) * d
    return x_next, x0


class _TrajectoryRecorder:
    """Keeps up to ``keep`` of ``total`` frames, evenly spaced, as uint8 on the CPU."""

    def __init__(self, total: int, keep: int | None):
        keep = total if keep is None else max(2, min(keep, total))
        self.keep_indices = set(np.round(np.linspace(0, total - 1, keep)).astype(int).tolist())
        self.index = 0
        self.timesteps, self.frames, self.x0_frames = [], [], []

    def add(self, paper_t: int, x: torch.Tensor, x0: torch.Tensor) -> None:
        if self.index in self.keep_indices:
            self.timesteps.append(paper_t)
            self.frames.append(to_uint8(x))
            self.x0_frames.append(to_uint8(x0))
        self.index += 1

    def result(self, images: torch.Tensor) -> Trajectory:
        return Trajectory(self.timesteps, torch.stack(self.frames), torch.stack(self.x0_frames), images)
