"""Algorithm 1 of Ho et al. 2020 — the training loss — in one function.

    x₀ ~ q(x₀),  t ~ Uniform({1, …, T}),  ε ~ N(0, I)
    L(θ) = ‖ε − ε_θ(√ᾱₜ x₀ + √(1−ᾱₜ) ε, t)‖²

Two documented options generalise it without changing its shape:

- ``prediction="v"`` (Salimans & Ho 2022): the network outputs v = √ᾱₜ ε − √(1−ᾱₜ) x₀ instead
  of ε, and the loss is ‖v − v_θ‖². Near t = T, ε-prediction asks the network to output the
  noise it was given (an easy task that tells it little about the image), while v moves smoothly
  from ε at t ≈ 0 to −x₀ at t ≈ T.
- ``loss_weighting="min_snr"`` (Hang et al. 2023): each example's squared error is weighted by
  :meth:`NoiseSchedule.loss_weights`, which stops the many easy low-noise steps from dominating.

How the loss weighs and conditions the batch is one small value, :class:`LossSettings`, built
once per run from the config (``LossSettings.from_config(config)``); a notebook can give its
fields as keywords instead (``diffusion_loss(model, schedule, x0, loss_weighting="min_snr")``).
``train()`` calls :func:`diffusion_loss` once per step; so do the benchmarks.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from .plumbing.distributed import shard_slice
from .schedule import NoiseSchedule


@dataclass(frozen=True)
class LossSettings:
    """How the training objective weighs and conditions a batch (not what the network predicts:
    ε or v is the model's own ``prediction``, so the loss cannot disagree with the network).

    Attributes:
        loss_weighting: ``"none"`` (the simple loss) or ``"min_snr"`` (Hang et al. 2023).
        snr_gamma: γ of min-SNR weighting, min(SNRₜ, γ).
        p_uncond: with labels, the probability that a label is replaced by the "no class" token,
            so the network also learns the unconditional model that classifier-free guidance
            needs (Ho & Salimans 2022).
        cond_aug_max: for an upsampler, the largest level s of the condition's noise,
            s ~ U{0, …, cond_aug_max} (Ho et al. 2022, §3.3).
    """

    loss_weighting: str = "none"
    snr_gamma: float = 5.0
    p_uncond: float = 0.0
    cond_aug_max: int = 0

    @classmethod
    def from_config(cls, config) -> "LossSettings":
        """The settings a :class:`~diffusion_utils.TrainConfig` trains with."""
        return cls(loss_weighting=config.loss_weighting, snr_gamma=config.snr_gamma, p_uncond=config.p_uncond,
                   cond_aug_max=config.cond_aug_max)


def diffusion_loss(model: torch.nn.Module, schedule: NoiseSchedule, x0: torch.Tensor, *,
                   y: torch.Tensor | None = None, cond: torch.Tensor | None = None,
                   generator: torch.Generator | None = None, shard: tuple[int, int] = (0, 1),
                   settings: LossSettings | None = None, autocast_dtype: torch.dtype | None = None,
                   **setting_fields) -> torch.Tensor:
    """The loss of one batch, a scalar tensor (Algorithm 1, lines 2–5).

    Args:
        model: the network; ``model.prediction`` (``"eps"`` or ``"v"``, default ``"eps"``)
            says what it outputs.
        schedule: the noise schedule, on ``x0``'s device.
        x0: clean images (B, C, H, W) in [-1, 1].
        y: class labels (B,) for a class-conditional model (None: unconditional); each is dropped
            with probability ``settings.p_uncond`` (drawn from ``generator`` after t and ε).
        cond: for an upsampler (:mod:`~diffusion_utils.superres`), the low-resolution images
            upsampled to ``x0``'s size, z (B, 3, H, W) in [-1, 1]. Each is noised to a level
            s ~ U{0, …, ``settings.cond_aug_max``} (drawn after the label drops, then its noise
            ε′) and the network sees [xₜ, z_s] and s (noise-conditioning augmentation).
        generator: draws t and ε (on ``x0``'s device), in that order.
        shard: ``(rank, world_size)`` when ``x0`` is one of ``world_size`` equal slices of a
            global batch (:func:`~diffusion_utils.plumbing.distributed.shard_slice`): t, ε and the label
            drops are drawn for the whole global batch and this rank keeps its slice, so N
            processes draw what one process would. ``(0, 1)``: ``x0`` is the whole batch.
        settings: the objective's :class:`LossSettings` (default: the simple loss, no label drops).
        autocast_dtype: run the network under ``torch.autocast`` in this dtype (e.g. bfloat16);
            the loss itself is always computed in float32.
        **setting_fields: instead of ``settings``, its fields by name (``loss_weighting="min_snr"``,
            ``snr_gamma``, ``p_uncond``, ``cond_aug_max``), as notebooks call it.
    """
    if settings is None:
        settings = LossSettings(**setting_fields)
    elif setting_fields:
        raise TypeError(f"diffusion_loss takes settings= or its fields ({', '.join(setting_fields)}), not both")
    net = getattr(model, "module", model)  # the UNet itself when wrapped in DistributedDataParallel
    prediction = getattr(net, "prediction", "eps")
    n = x0.shape[0] * shard[1]  # the global batch: this rank's rows times the number of ranks
    mine = shard_slice(n, shard)  # this process's rows of it
    t = torch.randint(0, schedule.n_steps, (n,), device=x0.device, generator=generator)[mine]  # t ~ U{1…T}
    eps = torch.randn((n, *x0.shape[1:]), device=x0.device, generator=generator)[mine]  # ε ~ N(0, I)
    x_t = schedule.q_sample(x0, t, eps)  # xₜ = √ᾱₜ x₀ + √(1−ᾱₜ) ε
    if y is not None and settings.p_uncond > 0:  # label dropout: c → ∅ with probability p_uncond
        drop = (torch.rand(n, device=x0.device, generator=generator) < settings.p_uncond)[mine]
        y = torch.where(drop, torch.full_like(y, net.null_class), y)
    extra = {}
    if cond is not None:  # an upsampler: noise the condition too (Ho et al. 2022, §3.3)
        s = torch.randint(0, settings.cond_aug_max + 1, (n,), device=x0.device,
                          generator=generator)[mine]  # s ~ U{0…s_max}
        eps_cond = torch.randn((n, *cond.shape[1:]), device=x0.device, generator=generator)[mine]  # ε′ ~ N(0, I)
        extra = {"cond": schedule.q_sample(cond, s, eps_cond), "cond_t": s}  # z_s = √ᾱ_s z + √(1−ᾱ_s) ε′
    autocast = (torch.autocast(x0.device.type, dtype=autocast_dtype) if autocast_dtype is not None
                else contextlib.nullcontext())
    with autocast:
        output = model(x_t, t, y, **extra) if y is not None or extra else model(x_t, t)  # ε_θ(xₜ, t[, c]) (or v_θ)
    target = schedule.training_target(x0, t, eps, prediction)  # ε (or v)
    per_example = (output.float() - target).pow(2).mean(dim=(1, 2, 3))  # ‖target − output‖²
    weights = schedule.loss_weights(t, prediction, settings.loss_weighting, settings.snr_gamma)  # 1, or min-SNR's
    return (weights * per_example).mean()
