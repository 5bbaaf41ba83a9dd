"""The noise schedule and the forward (noising) process q of Ho et al. 2020.

Index convention: code timesteps are ``t ∈ {0, …, T-1}``; code step ``t`` is the paper's step
``t + 1``. So ``betas[0]`` is β₁, ``alpha_bars[T-1]`` is ᾱ_T (almost 0: pure noise) and
``alpha_bars[0]`` is ᾱ₁ = 1 - β₁ (almost 1: almost the clean image).

Everything the samplers need is precomputed once here in float64 and stored as float32:

- βₜ (``betas``), αₜ = 1 - βₜ (``alphas``), ᾱₜ = ∏ₛ≤ₜ αₛ (``alpha_bars``), ᾱₜ₋₁
  (``alpha_bars_prev``, with ᾱ₀ = 1);
- the posterior q(xₜ₋₁ | xₜ, x₀) = N(μ̃ₜ, β̃ₜ I) of Ho et al. eq. 6–7:
  β̃ₜ = (1 - ᾱₜ₋₁)/(1 - ᾱₜ) · βₜ and μ̃ₜ = c₁ x₀ + c₂ xₜ with
  c₁ = √ᾱₜ₋₁ βₜ / (1 - ᾱₜ) and c₂ = √αₜ (1 - ᾱₜ₋₁)/(1 - ᾱₜ).
"""

from __future__ import annotations

import math

import torch

from .plumbing.errors import ConfigError

PREDICTIONS = ("eps", "v")  # what the network outputs: the noise ε, or v = √ᾱ ε − √(1−ᾱ) x₀
LOSS_WEIGHTINGS = ("none", "min_snr")


def check_prediction(prediction: str) -> None:
    """Raise :class:`ConfigError` unless ``prediction`` is one of :data:`PREDICTIONS`."""
    if prediction not in PREDICTIONS:
        raise ConfigError(f"prediction must be one of {PREDICTIONS}; got {prediction!r}")


class NoiseSchedule:
    """A variance schedule β₁…β_T and the closed-form quantities derived from it.

    Build one with :meth:`linear` or :meth:`cosine`, or pass any 1-D tensor of betas in (0, 1).
    All tensors have shape ``(T,)``; move them with :meth:`to`.
    """

    def __init__(self, betas: torch.Tensor):
        betas = torch.as_tensor(betas, dtype=torch.float64)
        if betas.ndim != 1 or len(betas) == 0:
            raise ConfigError(f"betas must be a non-empty 1-D tensor; got shape {tuple(betas.shape)}")
        if not bool(((betas > 0) & (betas < 1)).all()):
            raise ConfigError("every beta must be in (0, 1)")
        alphas = 1.0 - betas  # αₜ = 1 − βₜ
        alpha_bars = torch.cumprod(alphas, dim=0)  # ᾱₜ = ∏ₛ≤ₜ αₛ
        alpha_bars_prev = torch.cat([torch.ones(1, dtype=torch.float64), alpha_bars[:-1]])  # ᾱₜ₋₁, ᾱ₀ = 1

        self.n_steps = len(betas)
        self.betas = betas.float()
        self.alphas = alphas.float()
        self.alpha_bars = alpha_bars.float()
        self.alpha_bars_prev = alpha_bars_prev.float()
        self.sqrt_alpha_bars = alpha_bars.sqrt().float()  # √ᾱₜ: how much signal survives
        self.sqrt_one_minus_alpha_bars = (1 - alpha_bars).sqrt().float()  # √(1−ᾱₜ): noise std
        # β̃ₜ = (1 − ᾱₜ₋₁)/(1 − ᾱₜ) · βₜ   (Ho et al. eq. 7)
        self.posterior_variance = ((1 - alpha_bars_prev) / (1 - alpha_bars) * betas).float()
        # μ̃ₜ(xₜ, x₀) = c₁ x₀ + c₂ xₜ       (Ho et al. eq. 7)
        self.posterior_mean_coef_x0 = (alpha_bars_prev.sqrt() * betas / (1 - alpha_bars)).float()
        self.posterior_mean_coef_xt = (alphas.sqrt() * (1 - alpha_bars_prev) / (1 - alpha_bars)).float()

    # ------------------------------------------------------------------------------------
    @classmethod
    def linear(cls, n_steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> "NoiseSchedule":
        """Ho et al.'s schedule: βₜ rises linearly from ``beta_start`` to ``beta_end``."""
        if n_steps < 1:
            raise ConfigError(f"n_steps must be a positive integer; got {n_steps}")
        if not 0 < beta_start < beta_end < 1:
            raise ConfigError(f"need 0 < beta_start < beta_end < 1; got beta_start={beta_start}, "
                              f"beta_end={beta_end}")
        return cls(torch.linspace(beta_start, beta_end, n_steps, dtype=torch.float64))

    @classmethod
    def cosine(cls, n_steps: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> "NoiseSchedule":
        """Nichol & Dhariwal 2021, eq. 17: ᾱₜ = f(t)/f(0) with f(t) = cos²((t/T + s)/(1 + s) · π/2).

        βₜ = 1 − ᾱₜ/ᾱₜ₋₁, clipped to ``max_beta`` so the last step is not singular. It destroys
        the image more slowly than the linear schedule, which wastes fewer steps on pure noise.
        """
        if n_steps < 1:
            raise ConfigError(f"n_steps must be a positive integer; got {n_steps}")
        steps = torch.arange(n_steps + 1, dtype=torch.float64)
        f = torch.cos((steps / n_steps + s) / (1 + s) * math.pi / 2) ** 2
        alpha_bar = f / f[0]
        betas = (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=max_beta)
        return cls(betas)

    @classmethod
    def from_config(cls, config) -> "NoiseSchedule":
        """The schedule a :class:`~diffusion_utils.TrainConfig` describes."""
        if config.schedule == "cosine":
            return cls.cosine(config.n_steps)
        return cls.linear(config.n_steps, config.beta_start, config.beta_end)

    def to(self, device) -> "NoiseSchedule":
        """Move every tensor to ``device`` (in place) and return self."""
        for name, value in vars(self).items():
            if isinstance(value, torch.Tensor):
                setattr(self, name, value.to(device))
        return self

    def __len__(self) -> int:
        return self.n_steps

    def __repr__(self) -> str:
        return (f"NoiseSchedule(n_steps={self.n_steps}, beta_1={self.betas[0].item():.3g}, "
                f"beta_T={self.betas[-1].item():.3g}, alpha_bar_T={self.alpha_bars[-1].item():.3g})")

    # ------------------------------------------------------------------------------------
    def signal_to_noise(self) -> torch.Tensor:
        """SNR(t) = ᾱₜ / (1 − ᾱₜ), shape (T,): how much image is left relative to noise."""
        return self.alpha_bars / (1 - self.alpha_bars)

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Jump straight to step t: xₜ = √ᾱₜ x₀ + √(1−ᾱₜ) ε   (Ho et al. eq. 4).

        x0: clean images (B, C, H, W) in [-1, 1]; t: int64 timesteps (B,) in [0, T-1];
        noise: ε ~ N(0, I), same shape as x0. Returns xₜ, same shape as x0.
        """
        return (at_timesteps(self.sqrt_alpha_bars, t, x0) * x0
                + at_timesteps(self.sqrt_one_minus_alpha_bars, t, x0) * noise)

    def q_step(self, x_prev: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """One forward step: xₜ = √(1−βₜ) xₜ₋₁ + √βₜ ε   (Ho et al. eq. 2).

        Iterating this from x₀ gives the same distribution as :meth:`q_sample` in one jump.
        """
        return (at_timesteps(self.alphas, t, x_prev).sqrt() * x_prev
                + at_timesteps(self.betas, t, x_prev).sqrt() * noise)

    def predict_x0(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """Invert eq. 4 with a predicted noise: x̂₀ = (xₜ − √(1−ᾱₜ) ε̂) / √ᾱₜ."""
        return ((x_t - at_timesteps(self.sqrt_one_minus_alpha_bars, t, x_t) * eps)
                / at_timesteps(self.sqrt_alpha_bars, t, x_t))

    def predict_eps(self, x_t: torch.Tensor, t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        """The noise implied by xₜ and a (possibly clipped) x̂₀: ε̂ = (xₜ − √ᾱₜ x̂₀) / √(1−ᾱₜ)."""
        return ((x_t - at_timesteps(self.sqrt_alpha_bars, t, x_t) * x0)
                / at_timesteps(self.sqrt_one_minus_alpha_bars, t, x_t))

    # ------------------------------------------------------------------------------------
    # What the network predicts. ε-prediction (Ho et al.) and v-prediction (Salimans & Ho 2022)
    # are two parameterisations of the same model; these two methods are the only places that
    # know the difference, so every sampler works with either.
    def training_target(self, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor,
                        prediction: str = "eps") -> torch.Tensor:
        """What the network is trained to output for xₜ = q_sample(x0, t, eps).

        ``"eps"``: ε.  ``"v"``: v = √ᾱₜ ε − √(1−ᾱₜ) x₀   (Salimans & Ho 2022, §4).
        Shapes as :meth:`q_sample`.
        """
        if prediction == "eps":
            return eps
        check_prediction(prediction)
        return (at_timesteps(self.sqrt_alpha_bars, t, x0) * eps
                - at_timesteps(self.sqrt_one_minus_alpha_bars, t, x0) * x0)

    def eps_and_x0(self, model_output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor,
                   prediction: str = "eps") -> tuple[torch.Tensor, torch.Tensor]:
        """Turn the network's output at (xₜ, t) into (ε̂, x̂₀), whatever it was trained to predict.

        ``"eps"``: ε̂ = output, x̂₀ = (xₜ − √(1−ᾱₜ) ε̂) / √ᾱₜ.
        ``"v"``:   x̂₀ = √ᾱₜ xₜ − √(1−ᾱₜ) v̂,  ε̂ = √(1−ᾱₜ) xₜ + √ᾱₜ v̂.
        All tensors (B, C, H, W); t (B,) code timesteps.
        """
        if prediction == "eps":
            return model_output, self.predict_x0(x_t, t, model_output)
        check_prediction(prediction)
        a = at_timesteps(self.sqrt_alpha_bars, t, x_t)  # √ᾱₜ
        s = at_timesteps(self.sqrt_one_minus_alpha_bars, t, x_t)  # √(1−ᾱₜ)
        return s * x_t + a * model_output, a * x_t - s * model_output

    def loss_weights(self, t: torch.Tensor, prediction: str = "eps", weighting: str = "none",
                     snr_gamma: float = 5.0) -> torch.Tensor:
        """Per-example loss weights (B,) for timesteps t.

        ``"none"``: 1 (Ho et al.'s simple loss). ``"min_snr"`` (Hang et al. 2023): clamp each
        timestep's weight, measured as an x₀ error, at γ: w = min(SNR, γ) / SNR for ε-prediction
        and min(SNR, γ) / (SNR + 1) for v-prediction. Low-noise steps, which are easy and would
        otherwise dominate the gradient, count less.
        """
        if weighting == "none":
            return torch.ones(t.shape, device=t.device)
        if weighting != "min_snr":
            raise ConfigError(f"loss_weighting must be one of {LOSS_WEIGHTINGS}; got {weighting!r}")
        check_prediction(prediction)
        snr = self.signal_to_noise().to(t.device)[t]  # SNR(t) = ᾱₜ / (1 − ᾱₜ)
        clamped = snr.clamp(max=snr_gamma)
        return clamped / snr if prediction == "eps" else clamped / (snr + 1)

    def q_posterior_mean(self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """μ̃ₜ(xₜ, x₀) = c₁ x₀ + c₂ xₜ, the mean of q(xₜ₋₁ | xₜ, x₀)   (Ho et al. eq. 7)."""
        return (at_timesteps(self.posterior_mean_coef_x0, t, x_t) * x0
                + at_timesteps(self.posterior_mean_coef_xt, t, x_t) * x_t)


def at_timesteps(values: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """values[t] reshaped to (B, 1, 1, 1) so it broadcasts against an image batch ``like``."""
    t = torch.as_tensor(t, device=values.device).long().reshape(-1)
    out = values[t].to(device=like.device, dtype=like.dtype)
    return out.reshape(-1, *([1] * (like.ndim - 1)))


def schedule_for(config):
    """What a :class:`~diffusion_utils.TrainConfig`'s model samples and trains with: its
    :class:`NoiseSchedule`, or for a flow model (``objective="flow"``) its
    :class:`~diffusion_utils.flow.FlowPath`."""
    if getattr(config, "objective", "diffusion") == "flow":
        from .flow import FlowPath  # flow imports nothing of this module; the import stays local to keep it so
        return FlowPath.from_config(config)
    return NoiseSchedule.from_config(config)
