"""Walking between two samples: spherical interpolation of the starting noise (and of the class).

A deterministic sampler (DDIM with η = 0, DPM-Solver++) is a fixed map from starting noise x_T to
an image, so a smooth path between two noises gives a smooth path between two images (Song et al.
2021, §5.3). The path must stay where the sampler expects its input: a Gaussian x_T ∈ ℝᵈ has norm
≈ √d, and the straight line between two such points passes much closer to the origin (the midpoint
has norm ≈ √(d/2)), i.e. *less* noise than the network was trained to start from — the midpoint
images come out washed out. Spherical interpolation (Shoemake 1985) follows the great circle
instead and keeps the norm:

    slerp(a, b; λ) = sin((1 − λ)θ)/sin θ · a + sin(λθ)/sin θ · b,   cos θ = a·b / (|a| |b|)

Between two *classes* we interpolate the class embedding linearly, with the same λ:
e(λ) = (1 − λ) E[c_a] + λ E[c_b] (:meth:`UNet.embed_classes` accepts such weights), and guide
towards that point with classifier-free guidance as usual; the unconditional branch is unchanged.
"""

from __future__ import annotations

import torch

from .guidance import GuidedModel, check_guidance_scale, class_ids
from .plumbing.errors import ConfigError
from .sampling import sample
from .schedule import NoiseSchedule


def slerp(a: torch.Tensor, b: torch.Tensor, weights) -> torch.Tensor:
    """Spherical interpolation between ``a`` and ``b`` (same shape) at each λ in ``weights``.

    Returns (len(weights), *a.shape); λ = 0 gives ``a`` and λ = 1 gives ``b`` exactly. If
    |a| = |b| every point has that norm. Nearly parallel inputs fall back to linear interpolation.
    """
    if a.shape != b.shape:
        raise ConfigError(f"slerp needs two tensors of the same shape; got {tuple(a.shape)} and {tuple(b.shape)}")
    lam = torch.as_tensor(weights, dtype=torch.float64).reshape(-1)
    a64, b64 = a.double().flatten(), b.double().flatten()
    cos = torch.dot(a64, b64) / (a64.norm() * b64.norm())
    theta = torch.arccos(cos.clamp(-1, 1))
    if theta.abs() < 1e-4:  # (almost) the same direction: sin θ ≈ 0, and lerp is as good
        wa, wb = 1 - lam, lam
    else:
        wa, wb = torch.sin((1 - lam) * theta) / torch.sin(theta), torch.sin(lam * theta) / torch.sin(theta)
    wa = torch.where(lam == 0, 1.0, torch.where(lam == 1, 0.0, wa))  # the endpoints exactly
    wb = torch.where(lam == 0, 0.0, torch.where(lam == 1, 1.0, wb))
    shape = (-1,) + (1,) * a.ndim
    return (wa.reshape(shape) * a64.reshape(a.shape) + wb.reshape(shape) * b64.reshape(b.shape)).to(a.dtype)


def class_mix(model: torch.nn.Module, class_a, class_b, weights) -> torch.Tensor:
    """Weights (len(weights), num_classes + 1) over the class embeddings: (1 − λ) on ``class_a``,
    λ on ``class_b`` (names or ids, checked like ``sample(classes=…)``)."""
    a, b = class_ids([class_a, class_b], model, 2).tolist()
    lam = torch.as_tensor(weights, dtype=torch.float32).reshape(-1)
    mix = torch.zeros(len(lam), model.num_classes + 1)
    mix[:, a] += 1 - lam
    mix[:, b] += lam
    return mix


def interpolate(model: torch.nn.Module, schedule: NoiseSchedule, n_frames: int = 8, *,
                noise: tuple[torch.Tensor, torch.Tensor] | None = None, generator: torch.Generator | None = None,
                classes=None, guidance_scale: float | None = None, sampler: str = "ddim", steps: int = 20,
                progress: bool = False) -> torch.Tensor:
    """Decode ``n_frames`` points between two starting noises with a deterministic sampler.

    Args:
        noise: the two endpoints x_T, each (C, H, W); drawn from ``generator`` if None.
        classes: None (unconditional), one class (name or id) for every frame, or a pair
            ``(class_a, class_b)``: the class embedding moves from a to b along with the noise.
        guidance_scale: classifier-free guidance w (default 1) when ``classes`` is given.
        sampler: ``"ddim"`` (η = 0) or ``"dpmpp"`` — both deterministic, so the strip is smooth.
        steps: network calls per image.

    Returns (n_frames, C, H, W) in [-1, 1]: frame 0 from the first noise, the last from the second.
    """
    if sampler not in ("ddim", "dpmpp"):
        raise ConfigError(f"interpolation needs a deterministic sampler, 'ddim' or 'dpmpp'; got {sampler!r}")
    if not isinstance(n_frames, int) or n_frames < 2:
        raise ConfigError(f"n_frames must be an integer >= 2; got {n_frames!r}")
    shape = (getattr(model, "in_channels", 3), model.img_size, model.img_size)
    if noise is None:
        noise = (torch.randn(shape, generator=generator), torch.randn(shape, generator=generator))
    if len(noise) != 2 or any(tuple(z.shape) != shape for z in noise):
        raise ConfigError(f"noise must be two tensors of shape {shape}")
    lam = torch.linspace(0, 1, n_frames)
    x_T = slerp(noise[0], noise[1], lam)
    kwargs = dict(sampler=sampler, steps=steps, eta=0.0, x_T=x_T, progress=progress)
    pair = classes is not None and not isinstance(classes, (str, int)) and len(classes) == 2
    if pair:
        guided = GuidedModel(model, class_mix(model, classes[0], classes[1], lam),
                             1.0 if guidance_scale is None else check_guidance_scale(guidance_scale))
        return sample(guided, schedule, n_frames, **kwargs)
    if classes is not None and not isinstance(classes, (str, int)):
        raise ConfigError(f"classes must be one class or a pair (class_a, class_b); got {classes!r}")
    return sample(model, schedule, n_frames, classes=classes, guidance_scale=guidance_scale, **kwargs)


__all__ = ["class_mix", "interpolate", "slerp"]
