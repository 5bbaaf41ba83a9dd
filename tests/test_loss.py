"""diffusion_loss: Algorithm 1 of Ho et al. by hand, the v target, min-SNR weighting, oracles.

The stand-in models are tiny: a random 8-channel UNet, a parameter-free "oracle" that knows the
clean images and so can output the exact ε (or v) for any xₜ, and a fixed function of (x, t).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from diffusion_utils import ConfigError, NoiseSchedule
from diffusion_utils.plumbing.distributed import shard_slice
from diffusion_utils.loss import LossSettings, diffusion_loss

from conftest import tiny_unet

T = 50


@pytest.fixture(scope="module")
def schedule() -> NoiseSchedule:
    return NoiseSchedule.linear(T, 1e-3, 0.2)


@pytest.fixture(scope="module")
def x0() -> torch.Tensor:
    return torch.rand(6, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def hand_draws(schedule: NoiseSchedule, x0: torch.Tensor, seed: int):
    """Algorithm 1, lines 3–4, by hand: t ~ U{0…T−1} first, then ε ~ N(0, I), from one generator;
    xₜ = √ᾱₜ x₀ + √(1−ᾱₜ) ε from the float64 betas. Returns (t, ε, xₜ in float64, ᾱₜ (B,1,1,1))."""
    gen = _gen(seed)
    t = torch.randint(0, schedule.n_steps, (x0.shape[0],), generator=gen)
    eps = torch.randn(x0.shape, generator=gen)
    ab = torch.cumprod(1 - schedule.betas.double(), 0)[t].view(-1, 1, 1, 1)
    x_t = ab.sqrt() * x0.double() + (1 - ab).sqrt() * eps.double()
    return t, eps, x_t, ab


class X0Oracle(nn.Module):
    """Knows the clean batch x₀, so from (xₜ, t) it can output the exact training target:
    ε = (xₜ − √ᾱₜ x₀)/√(1−ᾱₜ), or v = √ᾱₜ ε − √(1−ᾱₜ) x₀ (computed in float64)."""

    def __init__(self, schedule: NoiseSchedule, x0: torch.Tensor, prediction: str, outputs: str | None = None):
        super().__init__()
        self.ab = torch.cumprod(1 - schedule.betas.double(), 0)
        self.x0 = x0.double()
        self.prediction = prediction  # what the loss will think the output is
        self.outputs = outputs or prediction  # what it actually outputs

    def forward(self, x, t):
        ab = self.ab[t].view(-1, 1, 1, 1)
        eps = (x.double() - ab.sqrt() * self.x0) / (1 - ab).sqrt()
        out = eps if self.outputs == "eps" else ab.sqrt() * eps - (1 - ab).sqrt() * self.x0
        return out.float()


class Recorder(nn.Module):
    """Wraps a model and records every (xₜ, t, output) it is called with."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.prediction = getattr(model, "prediction", "eps")
        self.calls = []

    def forward(self, x, t):
        out = self.model(x, t)
        self.calls.append((x.detach().clone(), t.clone(), out.detach().clone()))
        return out


# ---------------------------------------------------------------------------------------------
# The simple loss, ε and v
# ---------------------------------------------------------------------------------------------
def test_eps_loss_is_algorithm_1_by_hand(schedule, x0):
    """With a fixed generator, the loss is ‖ε − ε_θ(xₜ, t)‖² averaged over the batch, where t and
    then ε are drawn from that generator and xₜ = √ᾱₜ x₀ + √(1−ᾱₜ) ε (all recomputed by hand);
    the network sees exactly that xₜ and t."""
    model = Recorder(tiny_unet(8))
    loss = diffusion_loss(model, schedule, x0, generator=_gen(7))
    t, eps, x_t, _ = hand_draws(schedule, x0, 7)
    (seen_x, seen_t, _), = model.calls
    assert torch.equal(seen_t, t)
    torch.testing.assert_close(seen_x.double(), x_t, rtol=0, atol=1e-6)
    with torch.no_grad():
        expected = (model.model(x_t.float(), t).double() - eps.double()).pow(2).mean()
    assert loss.ndim == 0 and loss.dtype == torch.float32
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    # a different seed draws different t and ε, hence a different loss
    assert diffusion_loss(model, schedule, x0, generator=_gen(8)).item() != pytest.approx(loss.item(), rel=1e-3)


def test_v_loss_is_the_mse_to_the_v_target(schedule, x0):
    """For a model with ``prediction="v"`` the loss is ‖v − v_θ‖² with v = √ᾱₜ ε − √(1−ᾱₜ) x₀ (by
    hand in float64), not the ε loss of the same network output."""
    net = tiny_unet(8, prediction="v")
    assert net.prediction == "v"
    loss = diffusion_loss(net, schedule, x0, generator=_gen(3))
    t, eps, x_t, ab = hand_draws(schedule, x0, 3)
    v = ab.sqrt() * eps.double() - (1 - ab).sqrt() * x0.double()
    with torch.no_grad():
        out = net(x_t.float(), t).double()
    assert loss.item() == pytest.approx((out - v).pow(2).mean().item(), rel=1e-5)
    assert loss.item() != pytest.approx((out - eps.double()).pow(2).mean().item(), rel=1e-2)


@pytest.mark.parametrize("prediction", ["eps", "v"])
@pytest.mark.parametrize("weighting", ["none", "min_snr"])
def test_a_model_that_outputs_the_true_target_has_zero_loss(schedule, x0, prediction, weighting):
    """An oracle that outputs exactly ε (or v) for every xₜ has loss 0; the same oracle declared
    with the other parameterisation (it outputs ε but claims v, or vice versa) does not."""
    oracle = X0Oracle(schedule, x0, prediction)
    assert diffusion_loss(oracle, schedule, x0, generator=_gen(1), loss_weighting=weighting).item() < 1e-8
    other = "v" if prediction == "eps" else "eps"
    liar = X0Oracle(schedule, x0, prediction=other, outputs=prediction)
    assert diffusion_loss(liar, schedule, x0, generator=_gen(1), loss_weighting=weighting).item() > 1e-3


def test_a_model_without_a_prediction_attribute_is_an_eps_model(schedule, x0):
    """A plain nn.Module without ``.prediction`` is trained on ε (the default)."""
    class Plain(nn.Module):
        def forward(self, x, t):
            return 0.3 * x

    loss = diffusion_loss(Plain(), schedule, x0, generator=_gen(5))
    t, eps, x_t, _ = hand_draws(schedule, x0, 5)
    assert loss.item() == pytest.approx((0.3 * x_t - eps.double()).pow(2).mean().item(), rel=1e-5)


# ---------------------------------------------------------------------------------------------
# min-SNR weighting
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("prediction", ["eps", "v"])
@pytest.mark.parametrize("gamma", [1.0, 5.0])
def test_min_snr_loss_is_the_weighted_per_example_mean(schedule, x0, prediction, gamma):
    """loss = mean_b w_b · mean_pixels (out − target)², w = min(SNR, γ)/SNR (ε) or
    min(SNR, γ)/(SNR + 1) (v), SNR = ᾱ/(1−ᾱ) — all by hand in float64 — and it differs from the
    unweighted loss with the same draws."""
    net = tiny_unet(8, prediction=prediction)
    loss = diffusion_loss(net, schedule, x0, generator=_gen(2), loss_weighting="min_snr", snr_gamma=gamma)
    plain = diffusion_loss(net, schedule, x0, generator=_gen(2))
    t, eps, x_t, ab = hand_draws(schedule, x0, 2)
    target = eps.double() if prediction == "eps" else ab.sqrt() * eps.double() - (1 - ab).sqrt() * x0.double()
    with torch.no_grad():
        per_example = (net(x_t.float(), t).double() - target).pow(2).mean(dim=(1, 2, 3))
    snr = (ab / (1 - ab)).flatten()
    assert (snr > gamma).any() and (snr < gamma).any()  # seed 2 draws t = 1 and 8: both sides of γ
    w = snr.clamp(max=gamma) / (snr if prediction == "eps" else snr + 1)
    assert loss.item() == pytest.approx((w * per_example).mean().item(), rel=1e-4)
    assert plain.item() == pytest.approx(per_example.mean().item(), rel=1e-5)
    assert loss.item() != pytest.approx(plain.item(), rel=1e-3)


def test_unknown_loss_weighting_is_a_config_error(schedule, x0):
    with pytest.raises(ConfigError, match="loss_weighting"):
        diffusion_loss(tiny_unet(8), schedule, x0, generator=_gen(0), loss_weighting="p2")


# ---------------------------------------------------------------------------------------------
# Gradients and autocast
# ---------------------------------------------------------------------------------------------
def test_loss_backpropagates_to_every_parameter(schedule, x0):
    """The loss is differentiable: every parameter of the (perturbed) UNet gets a finite gradient."""
    net = tiny_unet(8, prediction="v").train()
    diffusion_loss(net, schedule, x0, generator=_gen(0), loss_weighting="min_snr").backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert any(p.grad.abs().sum() > 0 for p in net.parameters())


def test_bfloat16_autocast_gives_a_float32_loss_close_to_float32(schedule, x0):
    """Under bfloat16 autocast (CPU here) the loss is still float32 and within bf16 precision
    of the float32 loss with the same draws."""
    net = tiny_unet(8)
    full = diffusion_loss(net, schedule, x0, generator=_gen(2))
    half = diffusion_loss(net, schedule, x0, generator=_gen(2), autocast_dtype=torch.bfloat16)
    assert half.dtype == torch.float32
    assert half.item() == pytest.approx(full.item(), rel=5e-2)


# ---------------------------------------------------------------------------------------------
# Several processes: each rank's rows of the global batch
# ---------------------------------------------------------------------------------------------
def test_shard_slice_tiles_the_global_batch_in_rank_order():
    assert [shard_slice(6, (r, 3)) for r in range(3)] == [slice(0, 2), slice(2, 4), slice(4, 6)]
    assert shard_slice(6, (0, 1)) == slice(0, 6)


def test_each_rank_sees_the_draws_of_its_rows_of_the_global_batch(schedule, x0):
    """With shard=(r, 2), rank r's half of the batch gets the t and xₜ that one process drew for
    those rows, so the mean of the two halves' losses is the whole batch's loss."""
    whole = Recorder(tiny_unet(8))
    loss = diffusion_loss(whole, schedule, x0, generator=_gen(4))
    halves = []
    for rank in range(2):
        mine = shard_slice(len(x0), (rank, 2))
        half = Recorder(tiny_unet(8))
        halves.append(diffusion_loss(half, schedule, x0[mine], generator=_gen(4), shard=(rank, 2)))
        (x_t, t, _), (x_t_all, t_all, _) = half.calls[0], whole.calls[0]
        assert torch.equal(t, t_all[mine]) and torch.allclose(x_t, x_t_all[mine])
    assert (halves[0] + halves[1]).item() / 2 == pytest.approx(loss.item(), rel=1e-6)


# ---------------------------------------------------------------------------------------------
# The objective's settings, as one value or as keywords
# ---------------------------------------------------------------------------------------------
def test_loss_settings_from_a_config_give_the_loss_its_keywords_give(schedule, x0):
    """LossSettings.from_config carries the config's weighting, γ, label dropout and condition noise;
    diffusion_loss with settings= is bit-for-bit the loss with the same fields as keywords."""
    from diffusion_utils import TrainConfig

    config = TrainConfig(loss_weighting="min_snr", snr_gamma=2.0, p_uncond=0.3, task="sr", img_size=64,
                         cond_aug_max=40)
    settings = LossSettings.from_config(config)
    assert settings == LossSettings(loss_weighting="min_snr", snr_gamma=2.0, p_uncond=0.3, cond_aug_max=40)
    net = tiny_unet(8, prediction="v")
    by_value = diffusion_loss(net, schedule, x0, generator=_gen(6), settings=settings)
    by_name = diffusion_loss(net, schedule, x0, generator=_gen(6), loss_weighting="min_snr", snr_gamma=2.0,
                             p_uncond=0.3, cond_aug_max=40)
    assert torch.equal(by_value, by_name)
    assert not torch.equal(by_value, diffusion_loss(net, schedule, x0, generator=_gen(6)))
    with pytest.raises(TypeError, match="not both"):
        diffusion_loss(net, schedule, x0, settings=settings, snr_gamma=2.0)
    with pytest.raises(TypeError):
        diffusion_loss(net, schedule, x0, loss_weightin="min_snr")  # a misspelt field is no silent default
