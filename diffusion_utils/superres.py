"""Super-resolution: the second stage of a cascade (Ho et al. 2022, *Cascaded Diffusion Models*;
Saharia et al. 2022, *SR3*).

A base model draws a small image (32 px); an upsampler draws the 64 px image *given* it. The
upsampler is the same UNet and the same Algorithm 1, with one change to its input: the low-
resolution image z, upsampled to the output size, rides along as three extra input channels,

    ε_θ([xₜ, z_s], t, s)     with   z_s = √ᾱ_s z + √(1−ᾱ_s) ε′      (noise-conditioning augmentation)

Noise-conditioning augmentation (Ho et al. 2022, §3.3): during training the condition is itself
noised to a random level s ~ U{0, …, s_max} of the same schedule, and s is given to the network
(a second time embedding, added to the first). The base model's samples are not real photos shrunk
to 32 px; a network that has learnt to treat its condition as "a noisy hint of level s" is
forgiving of the base model's mistakes. At sampling one fixed s is chosen (the model card says
which, and why).

The network has no attention and no absolute position, so it can train on 32 × 32 **crops** of
the 64 px images (at the cost of a 32 px model) and sample whole 64 px images.

Shapes: low-resolution images (B, 3, h, w) and outputs (B, 3, 2h, 2w), all in [-1, 1].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .plumbing.distributed import shard_slice
from .plumbing.errors import ConfigError
from .sampling import Trajectory, sample, sample_trajectory
from .schedule import NoiseSchedule

UPSAMPLE_MODES = ("bicubic", "bilinear")


def downsample(images: torch.Tensor, size: int) -> torch.Tensor:
    """(B, C, H, W) → (B, C, size, size): antialiased bicubic, as the data loader shrinks photos."""
    return F.interpolate(images, size=(size, size), mode="bicubic", antialias=True, align_corners=False).clamp(-1, 1)


def upsample_condition(low_res: torch.Tensor, size: int, mode: str = "bicubic") -> torch.Tensor:
    """z: the low-resolution images (B, C, h, w) interpolated to (B, C, size, size), in [-1, 1]."""
    if mode not in UPSAMPLE_MODES:
        raise ConfigError(f"upsample_mode must be one of {UPSAMPLE_MODES}; got {mode!r}")
    return F.interpolate(low_res, size=(size, size), mode=mode, align_corners=False).clamp(-1, 1)


def noised_condition(schedule: NoiseSchedule, z: torch.Tensor, s: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """z_s = √ᾱ_s z + √(1−ᾱ_s) ε′: the condition noised to level s, (B,) code steps (forward process q)."""
    return schedule.q_sample(z, s, noise)


def training_pair(x0: torch.Tensor, *, low_res_size: int, crop_size: int | None, mode: str = "bicubic",
                  generator: torch.Generator | None = None,
                  shard: tuple[int, int] = (0, 1)) -> tuple[torch.Tensor, torch.Tensor]:
    """What an upsampler trains on: ``(x0, z)``, the target and its condition, cropped alike.

    x0: full-size images (B, 3, H, W) in [-1, 1]. z is x0 shrunk to ``low_res_size`` and upsampled
    back to H (what the base model's output will look like after interpolation). With
    ``crop_size``, both are cut to the same random ``crop_size`` square, one offset per image,
    drawn from ``generator`` (for the global batch under ``shard``, as :func:`diffusion_loss` draws).
    """
    size = x0.shape[-1]
    z = upsample_condition(downsample(x0, low_res_size), size, mode)
    if crop_size is None or crop_size >= size:
        return x0, z
    n = x0.shape[0] * shard[1]  # the global batch
    offsets = torch.randint(0, size - crop_size + 1, (n, 2), device=x0.device,
                            generator=generator)[shard_slice(n, shard)].tolist()
    x0_crops = torch.stack([x0[i, :, r:r + crop_size, c:c + crop_size] for i, (r, c) in enumerate(offsets)])
    z_crops = torch.stack([z[i, :, r:r + crop_size, c:c + crop_size] for i, (r, c) in enumerate(offsets)])
    return x0_crops, z_crops


class ConditionedModel(torch.nn.Module):
    """An upsampler with its condition fixed, called like any model: ``forward(x, t, y=None)``.

    z_s (B, 3, H, W) and s (B,) are bound once, so every sampler (DDPM, DDIM, DPM-Solver++) runs
    an upsampler unchanged, as :class:`~diffusion_utils.GuidedModel` binds a class.
    """

    def __init__(self, model: torch.nn.Module, z_s: torch.Tensor, s: torch.Tensor):
        super().__init__()
        self.model = model
        self.register_buffer("z_s", z_s, persistent=False)
        self.register_buffer("s", s, persistent=False)
        # What the samplers read from a model:
        self.prediction = getattr(model, "prediction", "eps")
        self.img_size = model.img_size
        self.in_channels = getattr(model, "in_channels", 3)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.model(x, t, y, cond=self.z_s.to(x.device), cond_t=self.s.to(x.device))


def check_low_res(model: torch.nn.Module, low_res) -> torch.Tensor:
    """``low_res`` as float (B, 3, h, w) in [-1, 1] for the upsampler ``model``, or a one-line
    :class:`ConfigError` that says what is wrong (not an upsampler, shape, size or range)."""
    if not getattr(model, "cond_channels", 0):
        raise ConfigError("this model is not an upsampler (it has no low-resolution input); "
                          "load one trained with task='sr', e.g. load_pretrained('sr64')")
    if not torch.is_tensor(low_res) or low_res.ndim != 4 or low_res.shape[1] != model.cond_channels:
        shape = tuple(low_res.shape) if torch.is_tensor(low_res) else type(low_res).__name__
        raise ConfigError(f"low_res must be a batch of images (B, {model.cond_channels}, "
                          f"{model.low_res_size}, {model.low_res_size}); got {shape}")
    if tuple(low_res.shape[-2:]) != (model.low_res_size, model.low_res_size):
        raise ConfigError(f"this upsampler takes {model.low_res_size} px images to {model.img_size} px; "
                          f"got {low_res.shape[-2]}×{low_res.shape[-1]} (a base model of another resolution?)")
    low_res = low_res.float()
    if not bool(torch.isfinite(low_res).all()) or low_res.min() < -1.01 or low_res.max() > 1.01:
        raise ConfigError(f"low_res must hold values in [-1, 1] (the model range); got [{low_res.min():.3g}, "
                          f"{low_res.max():.3g}]: convert uint8 images with x / 127.5 - 1")
    return low_res.clamp(-1, 1)


@torch.no_grad()
def upsample(sr_model: torch.nn.Module, schedule: NoiseSchedule, low_res: torch.Tensor, *,
             sampler: str = "dpmpp", steps: int | None = None, aug_level: int | None = None,
             generator: torch.Generator | None = None, **sample_options) -> torch.Tensor:
    """Draw ``sr_model.img_size`` px images (B, 3, H, W) in [-1, 1] given ``low_res`` (B, 3, h, w)
    in [-1, 1].

    The condition z is ``low_res`` interpolated to full size (``sr_model.upsample_mode``), noised
    to level ``aug_level`` (default: the model's ``cond_aug_level``, the level its card says it
    samples best at) with noise from ``generator``; then ``sampler`` runs as for any model.
    ``steps``: network calls (default 20; every step for ``"ddpm"``). ``sample_options`` pass on
    to :func:`~diffusion_utils.sample` (``eta``, ``x_T``, ``progress``, …). For the denoising
    steps as well, :func:`upsample_trajectory` takes the same arguments.
    """
    model, n, steps = _conditioned(sr_model, schedule, low_res, sampler, steps, aug_level, generator)
    return sample(model, schedule, n, img_size=sr_model.img_size, sampler=sampler, steps=steps,
                  generator=generator, **sample_options)


@torch.no_grad()
def upsample_trajectory(sr_model: torch.nn.Module, schedule: NoiseSchedule, low_res: torch.Tensor, *,
                        sampler: str = "dpmpp", steps: int | None = None, aug_level: int | None = None,
                        generator: torch.Generator | None = None, frames: int | None = None,
                        **sample_options) -> Trajectory:
    """:func:`upsample`, keeping ``frames`` states of the way (a :class:`~diffusion_utils.Trajectory`
    whose ``images`` are the upsampled images), for the denoising slider and the animation."""
    model, n, steps = _conditioned(sr_model, schedule, low_res, sampler, steps, aug_level, generator)
    return sample_trajectory(model, schedule, n, img_size=sr_model.img_size, sampler=sampler, steps=steps,
                             generator=generator, frames=frames, **sample_options)


def _conditioned(sr_model, schedule, low_res, sampler, steps, aug_level, generator):
    """The upsampler bound to its noised condition z_s (a :class:`ConditionedModel`), the batch
    size and the step count (20 unless given; every step for ddpm)."""
    low_res = check_low_res(sr_model, low_res)
    level = sr_model.cond_aug_level if aug_level is None else aug_level
    if not isinstance(level, int) or not 0 <= level < schedule.n_steps:
        raise ConfigError(f"aug_level must be an integer code step in [0, {schedule.n_steps - 1}]; got {level!r}")
    device = next(sr_model.parameters()).device
    n = low_res.shape[0]
    z = upsample_condition(low_res.to(device), sr_model.img_size, sr_model.upsample_mode)
    s = torch.full((n,), level, dtype=torch.long, device=device)
    noise = torch.randn(z.shape, generator=generator).to(device)  # ε′, drawn on the CPU like sample()'s noise
    if steps is None and sampler != "ddpm":
        steps = 20  # an upsampler's task is easy: 20 DPM-Solver++ calls suffice (its card measures it)
    return ConditionedModel(sr_model, noised_condition(schedule, z, s, noise), s), n, steps


@torch.no_grad()
def sample_cascade(base: torch.nn.Module, sr_model: torch.nn.Module, schedule: NoiseSchedule, n: int, *,
                   sr_schedule: NoiseSchedule | None = None, classes=None, guidance_scale: float | None = None,
                   sampler: str = "dpmpp", steps: int | None = None, sr_sampler: str | None = None,
                   sr_steps: int | None = None, aug_level: int | None = None,
                   generator: torch.Generator | None = None, progress: bool = True) -> torch.Tensor:
    """The whole cascade in one call: ``n`` images of ``sr_model.img_size`` px in [-1, 1].

    The base model draws ``n`` images at its own size with ``sampler``/``steps`` (its classes and
    classifier-free guidance as in :func:`~diffusion_utils.sample`); the upsampler then draws the
    full-size images given them (:func:`upsample`, with ``sr_sampler``/``sr_steps``, default the
    same sampler, and noise level ``aug_level``). ``schedule`` is the base's; ``sr_schedule`` the
    upsampler's (default the same). All randomness comes from ``generator``.
    """
    if base.img_size != getattr(sr_model, "low_res_size", None):
        check_low_res(sr_model, torch.zeros(1, 3, base.img_size, base.img_size))  # names the mismatch
    low_res = sample(base, schedule, n, sampler=sampler, steps=steps, classes=classes,
                     guidance_scale=guidance_scale, generator=generator, progress=progress)
    return upsample(sr_model, sr_schedule or schedule, low_res, sampler=sr_sampler or sampler, steps=sr_steps,
                    aug_level=aug_level, generator=generator, progress=progress)
