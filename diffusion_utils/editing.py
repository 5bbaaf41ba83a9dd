"""Editing real images with a trained model: SDEdit (image-to-image) and inpainting.

Neither needs new training or a new sampler loop; both are ways of *starting* or *constraining*
the ordinary reverse process of :func:`~diffusion_utils.sampling.sample`.

**SDEdit** (Meng et al. 2021). Noise a real image part of the way with the closed-form forward jump
and denoise it from there:

    x_{t₀} = √ᾱ_{t₀} x₀ + √(1 − ᾱ_{t₀}) ε,   t₀ = strength · T,   then run the sampler from t₀ to 0.

A small strength keeps the layout and colours of the input (little noise was added, little is
invented); strength 1 starts from (almost) pure noise and keeps almost nothing. With a
class-conditional model and guidance, the same call turns one flower towards another species.

**Inpainting** (the replacement trick; Lugmayr et al. 2022's RePaint without its resampling).
Start from pure noise; after every sampler step, overwrite the *known* pixels with the original
image noised to the step's timestep, x_t ← m ⊙ q_sample(x₀, t) + (1 − m) ⊙ x_t, with m = 1 where
the image is known. The network only ever sees states whose known part is consistent with x₀ at
the right noise level, so it fills the hole to match; at the end the known pixels are x₀ exactly.
"""

from __future__ import annotations

import math

import torch

from .plumbing.errors import ConfigError
from .sampling import sample
from .schedule import NoiseSchedule


def check_strength(strength) -> float:
    """SDEdit's strength as a float; a one-line :class:`ConfigError` unless it is in (0, 1]."""
    try:
        s = float(strength)
    except (TypeError, ValueError):
        raise ConfigError(f"strength must be a number in (0, 1]; got {strength!r}") from None
    if not (math.isfinite(s) and 0 < s <= 1):
        raise ConfigError(f"strength must be in (0, 1] (1 = start from pure noise); got {strength!r}")
    return s


def start_timestep(strength: float, n_steps: int) -> int:
    """The code timestep t₀ = round(strength · T) − 1 (at least 0) SDEdit starts from; 1 → T − 1."""
    return max(1, round(check_strength(strength) * n_steps)) - 1


def _check_images(images: torch.Tensor, model) -> torch.Tensor:
    if not torch.is_tensor(images) or images.ndim != 4 or not images.is_floating_point():
        raise ConfigError(f"images must be a float tensor (N, C, H, W) in [-1, 1]; got "
                          f"{tuple(images.shape) if torch.is_tensor(images) else type(images).__name__}")
    channels = getattr(model, "in_channels", 3)
    if images.shape[1] != channels:
        raise ConfigError(f"images must have {channels} channels; got shape {tuple(images.shape)}")
    return images


def sdedit(model: torch.nn.Module, schedule: NoiseSchedule, images: torch.Tensor, strength: float, *,
           sampler: str = "dpmpp", steps: int = 20, generator: torch.Generator | None = None,
           noise: torch.Tensor | None = None, **sample_kwargs) -> torch.Tensor:
    """SDEdit: noise ``images`` (N, C, H, W) in [-1, 1] to t₀ = strength·T, then denoise.

    ``steps`` are the network calls the sampler would make from pure noise; starting at t₀ it
    makes ``max(1, round(strength · steps))`` of them, over [0, t₀] (the same density of steps).
    ``noise`` (the ε of the jump) is drawn from ``generator`` when not given. Other keyword
    arguments go to :func:`~diffusion_utils.sampling.sample` (``classes``, ``guidance_scale``,
    ``eta``, ``progress``, …). strength = 1 is exactly ``sample`` started from
    ``schedule.q_sample(images, T − 1, noise)``. Returns the edited images, (N, C, H, W).
    """
    images = _check_images(images, model)
    t0 = start_timestep(strength, schedule.n_steps)
    if noise is None:
        noise = torch.randn(images.shape, generator=generator)
    elif noise.shape != images.shape:
        raise ConfigError(f"noise must have the images' shape {tuple(images.shape)}; got {tuple(noise.shape)}")
    noise = noise.to(images.device)
    x_t0 = schedule.q_sample(images, torch.full((len(images),), t0, device=images.device), noise)
    calls = t0 + 1 if sampler == "ddpm" else max(1, round(check_strength(strength) * steps))
    return sample(model, schedule, len(images), sampler=sampler, steps=min(calls, t0 + 1), t_start=t0,
                  x_T=x_t0, generator=generator, **sample_kwargs)


def check_mask(mask: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """``mask`` as float (N or 1, 1 or C, H, W), 1 = known pixel, 0 = to fill in.

    Accepts (H, W), (1 or C, H, W) or (1 or N, 1 or C, H, W), bool or float values in [0, 1];
    anything else is a one-line :class:`ConfigError`.
    """
    if not torch.is_tensor(mask):
        raise ConfigError(f"mask must be a tensor (H, W) with 1 = known, 0 = fill in; got {type(mask).__name__}")
    n, c, h, w = images.shape
    m = mask.float()
    m = m[None, None] if m.ndim == 2 else m[None] if m.ndim == 3 else m
    if m.ndim != 4 or m.shape[-2:] != (h, w) or m.shape[0] not in (1, n) or m.shape[1] not in (1, c):
        raise ConfigError(f"mask must have shape ({h}, {w}), (1, {h}, {w}) or ({n}, 1, {h}, {w}) to match "
                          f"images of shape {tuple(images.shape)}; got {tuple(mask.shape)}")
    if not torch.isfinite(m).all() or m.min() < 0 or m.max() > 1:
        raise ConfigError("mask values must be in [0, 1] (1 = known, 0 = fill in)")
    return m.to(images.device)


def box_mask(img_size: int, top: int, left: int, height: int, width: int) -> torch.Tensor:
    """A (img_size, img_size) mask that is 1 (known) everywhere except a 0 box (the hole)."""
    mask = torch.ones(img_size, img_size)
    mask[top:top + height, left:left + width] = 0
    return mask


def inpaint(model: torch.nn.Module, schedule: NoiseSchedule, images: torch.Tensor, mask: torch.Tensor, *,
            sampler: str = "dpmpp", steps: int = 20, generator: torch.Generator | None = None,
            **sample_kwargs) -> torch.Tensor:
    """Fill the pixels of ``images`` where ``mask`` is 0, keeping those where it is 1.

    Runs :func:`~diffusion_utils.sampling.sample` from pure noise (drawn from ``generator``) and,
    after every step to code timestep t, replaces the known region by ``q_sample(images, t, z)``
    with fresh z ~ N(0, I) (the clean ``images`` after the last step). Where the mask is 1 the
    result equals ``images``. Other keyword arguments go to ``sample`` (``classes``,
    ``guidance_scale``, ``progress``, …). Returns (N, C, H, W) in [-1, 1].
    """
    images = _check_images(images, model)
    mask = check_mask(mask, images)

    def put_back_known(x: torch.Tensor, t: int) -> torch.Tensor:
        if t < 0:
            known = images
        else:
            z = torch.randn(images.shape, generator=generator).to(images.device)
            known = schedule.q_sample(images, torch.full((len(images),), t, device=images.device), z)
        return mask * known + (1 - mask) * x

    return sample(model, schedule, len(images), sampler=sampler, steps=steps, generator=generator,
                  after_step=put_back_known, **sample_kwargs)


__all__ = ["box_mask", "check_mask", "check_strength", "inpaint", "sdedit", "start_timestep"]
