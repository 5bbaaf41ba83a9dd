"""The noise schedule and the forward process q(xₜ | x₀), checked against closed forms in float64.

Index convention (see schedule.py): code step t is the paper's step t + 1, so ``alpha_bars[t]``
is ᾱ_{t+1} = ∏_{s ≤ t} (1 − β_s) and ``q_sample(x0, t)`` matches t + 1 applications of q_step.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from diffusion_utils import ConfigError, NoiseSchedule, TrainConfig


def f64(x: torch.Tensor) -> np.ndarray:
    return x.double().numpy()


# ---------------------------------------------------------------------------------------------
# The linear schedule
# ---------------------------------------------------------------------------------------------
def test_linear_betas_are_an_exact_linspace():
    """β runs linearly from beta_start to beta_end: exact endpoints, equal spacing."""
    s = NoiseSchedule.linear(1000, 1e-4, 0.02)
    assert len(s) == s.n_steps == 1000
    assert s.betas.shape == (1000,) and s.betas.dtype == torch.float32
    assert s.betas[0].item() == np.float32(1e-4)
    assert s.betas[-1].item() == np.float32(0.02)
    expected = np.linspace(1e-4, 0.02, 1000, dtype=np.float64).astype(np.float32)
    np.testing.assert_array_equal(s.betas.numpy(), expected)


def test_alphas_and_alpha_bars_match_closed_form():
    """αₜ = 1 − βₜ; ᾱₜ = ∏ αₛ and ᾱₜ₋₁ (with ᾱ₀ = 1), against a float64 computation."""
    s = NoiseSchedule.linear(1000, 1e-4, 0.02)
    betas = np.linspace(1e-4, 0.02, 1000, dtype=np.float64)
    alpha_bars = np.cumprod(1 - betas)
    np.testing.assert_allclose(f64(s.alphas), 1 - betas, rtol=1e-7, atol=0)
    np.testing.assert_allclose(f64(s.alpha_bars), alpha_bars, rtol=1e-6, atol=0)
    np.testing.assert_allclose(f64(s.alpha_bars_prev), np.r_[1.0, alpha_bars[:-1]], rtol=1e-6, atol=0)
    np.testing.assert_allclose(f64(s.sqrt_alpha_bars), np.sqrt(alpha_bars), rtol=1e-6)
    np.testing.assert_allclose(f64(s.sqrt_one_minus_alpha_bars), np.sqrt(1 - alpha_bars), rtol=1e-6)
    # SNR is computed on the fly in float32, where 1 − ᾱ loses ~4 digits near t = 0.
    np.testing.assert_allclose(f64(s.signal_to_noise()), alpha_bars / (1 - alpha_bars), rtol=1e-3)
    # The defaults of Ho et al.: ᾱ_T is almost 0 (pure noise), ᾱ₁ almost 1.
    assert s.alpha_bars[-1] < 1e-4 and s.alpha_bars[0] == np.float32(1 - 1e-4)


def test_from_config_uses_the_configs_schedule():
    """NoiseSchedule.from_config builds the linear or cosine schedule the config names."""
    lin = NoiseSchedule.from_config(TrainConfig(n_steps=30, beta_start=1e-3, beta_end=0.05))
    assert len(lin) == 30 and lin.betas[0].item() == np.float32(1e-3) and lin.betas[-1].item() == np.float32(0.05)
    cos = NoiseSchedule.from_config(TrainConfig(n_steps=30, schedule="cosine"))
    assert torch.equal(cos.betas, NoiseSchedule.cosine(30).betas)


# ---------------------------------------------------------------------------------------------
# The cosine schedule
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n_steps", [50, 1000])
def test_cosine_alpha_bar_matches_nichol_dhariwal(n_steps):
    """ᾱₜ = f(t)/f(0), f(t) = cos²((t/T + s)/(1 + s) · π/2), s = 0.008 (Nichol & Dhariwal eq. 17);
    only the last β is clipped to 0.999, which makes ᾱ_T = ᾱ_{T-1} · 0.001."""
    s = NoiseSchedule.cosine(n_steps)

    def f(t):
        return math.cos((t / n_steps + 0.008) / 1.008 * math.pi / 2) ** 2

    closed = np.array([f(t) / f(0) for t in range(1, n_steps + 1)])
    np.testing.assert_allclose(f64(s.alpha_bars[:-1]), closed[:-1], rtol=2e-5, atol=1e-9)
    betas = 1 - closed / np.r_[1.0, closed[:-1]]
    assert betas[-1] > 0.999  # the unclipped last β would be 1: ᾱ_T = 0 exactly
    assert s.betas[-1].item() == np.float32(0.999)
    np.testing.assert_allclose(s.alpha_bars[-1].item(), closed[-2] * (1 - 0.999), rtol=1e-4)
    assert bool((s.betas[:-1] < 0.999).all()), "only the last beta should be clipped"
    assert bool((s.betas > 0).all()) and bool((s.alpha_bars[1:] < s.alpha_bars[:-1]).all())


# ---------------------------------------------------------------------------------------------
# The posterior q(xₜ₋₁ | xₜ, x₀)
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_posterior_variance_and_mean_coefficients(kind):
    """β̃ₜ = (1−ᾱₜ₋₁)/(1−ᾱₜ) βₜ, c₁ = √ᾱₜ₋₁ βₜ/(1−ᾱₜ), c₂ = √αₜ (1−ᾱₜ₋₁)/(1−ᾱₜ) (Ho et al. eq. 7)."""
    s = NoiseSchedule.linear(1000) if kind == "linear" else NoiseSchedule.cosine(1000)
    b = f64(s.betas)  # the float32 betas in float64: the formulas are then exact up to rounding
    ab = np.cumprod(1 - b)
    ab_prev = np.r_[1.0, ab[:-1]]
    np.testing.assert_allclose(f64(s.posterior_variance), (1 - ab_prev) / (1 - ab) * b, rtol=1e-4, atol=1e-12)
    np.testing.assert_allclose(f64(s.posterior_mean_coef_x0), np.sqrt(ab_prev) * b / (1 - ab), rtol=1e-4)
    np.testing.assert_allclose(f64(s.posterior_mean_coef_xt), np.sqrt(1 - b) * (1 - ab_prev) / (1 - ab),
                               rtol=1e-4, atol=1e-12)
    # At the first step the posterior is a point mass on x₀: β̃ = 0, c₁ = 1, c₂ = 0.
    assert s.posterior_variance[0].item() == 0.0
    assert s.posterior_mean_coef_x0[0].item() == pytest.approx(1.0, abs=1e-6)
    assert s.posterior_mean_coef_xt[0].item() == 0.0


def test_posterior_matches_bayes_rule():
    """q_posterior_mean and β̃ agree with the product of the Gaussians q(xₜ₋₁|x₀) and q(xₜ|xₜ₋₁),
    derived independently: precision = 1/(1−ᾱₜ₋₁) + αₜ/βₜ, mean = var·(√ᾱₜ₋₁ x₀/(1−ᾱₜ₋₁) + √αₜ xₜ/βₜ)."""
    s = NoiseSchedule.linear(1000)
    gen = torch.Generator().manual_seed(0)
    t = torch.tensor([1, 5, 100, 500, 999])
    x0 = torch.rand(5, 3, 4, 4, generator=gen, dtype=torch.float64) * 2 - 1
    x_t = torch.randn(5, 3, 4, 4, generator=gen, dtype=torch.float64)
    b = s.betas.double()[t].view(-1, 1, 1, 1)
    ab = torch.cumprod(1 - s.betas.double(), 0)
    ab_prev = ab[t - 1].view(-1, 1, 1, 1)
    var = 1 / (1 / (1 - ab_prev) + (1 - b) / b)
    mean = var * (ab_prev.sqrt() * x0 / (1 - ab_prev) + (1 - b).sqrt() * x_t / b)
    torch.testing.assert_close(s.q_posterior_mean(x0, x_t, t), mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(s.posterior_variance.double()[t], var.flatten(), rtol=1e-5, atol=1e-9)


# ---------------------------------------------------------------------------------------------
# q_sample (one jump) against q_step (one step at a time)
# ---------------------------------------------------------------------------------------------
def test_iterated_q_step_moments_equal_q_sample_moments_exactly():
    """The mean and variance recursions of q_step, m ← √αₜ m, v ← αₜ v + βₜ, give exactly
    q_sample's √ᾱₜ x₀ and 1 − ᾱₜ at every t (float64)."""
    s = NoiseSchedule.linear(1000)
    b = s.betas.double()
    m, v = 1.0, 0.0
    means, variances = [], []
    for t in range(1000):
        m, v = math.sqrt(1 - b[t].item()) * m, (1 - b[t].item()) * v + b[t].item()
        means.append(m)
        variances.append(v)
    ab = torch.cumprod(1 - b, 0).numpy()
    np.testing.assert_allclose(means, np.sqrt(ab), rtol=1e-12)
    np.testing.assert_allclose(variances, 1 - ab, rtol=1e-12)
    # q_step with zero noise carries the mean: after t+1 steps it is q_sample's mean.
    x0 = torch.full((1, 1, 1, 1), 0.7)
    x, zero = x0.clone(), torch.zeros_like(x0)
    for t in range(1000):
        x = s.q_step(x, torch.tensor([t]), zero)
        if t in (0, 10, 500, 999):
            assert x.item() == pytest.approx(s.q_sample(x0, torch.tensor([t]), zero).item(), rel=1e-4, abs=1e-7)


def test_q_sample_in_one_jump_matches_iterated_q_step_in_distribution():
    """Sampling xₜ in one jump (eq. 4) or by t + 1 forward steps (eq. 2) from the same x₀ gives
    the same distribution: sample means and stds agree with each other and with √ᾱₜ x₀, √(1−ᾱₜ)."""
    s = NoiseSchedule.linear(1000)
    n = 20_000
    gen = torch.Generator().manual_seed(0)
    x0 = torch.full((n, 1, 1, 1), 0.7)
    x = x0.clone()
    checked = {0, 10, 500, 999}
    for t in range(1000):
        tt = torch.tensor([t])  # one t for the whole batch: the coefficients broadcast
        x = s.q_step(x, tt, torch.randn(x.shape, generator=gen))
        if t not in checked:
            continue
        jump = s.q_sample(x0, tt, torch.randn(x.shape, generator=gen))
        mean = math.sqrt(s.alpha_bars[t].item()) * 0.7
        std = math.sqrt(1 - s.alpha_bars[t].item())
        se_mean, se_std = std / math.sqrt(n), std / math.sqrt(2 * n)
        for draw in (x, jump):  # both estimators within 5 standard errors of the truth
            assert abs(draw.mean().item() - mean) < 5 * se_mean, (t, draw.mean().item(), mean)
            assert abs(draw.std().item() - std) < 5 * se_std, (t, draw.std().item(), std)
        assert abs(x.mean().item() - jump.mean().item()) < 7 * se_mean
        assert abs(x.std().item() - jump.std().item()) < 7 * se_std


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-10), (torch.float32, 2e-4)])
def test_predict_x0_inverts_q_sample(dtype, tol):
    """Given the true noise, predict_x0 recovers x₀ and predict_eps recovers ε (all t, mixed batch)."""
    s = NoiseSchedule.linear(1000)
    gen = torch.Generator().manual_seed(1)
    t = torch.tensor([0, 1, 10, 250, 500, 998, 999])
    x0 = (torch.rand(len(t), 3, 8, 8, generator=gen) * 2 - 1).to(dtype)
    eps = torch.randn(x0.shape, generator=gen).to(dtype)
    x_t = s.q_sample(x0, t, eps)
    assert x_t.dtype == dtype
    torch.testing.assert_close(s.predict_x0(x_t, t, eps), x0, rtol=0, atol=tol)
    torch.testing.assert_close(s.predict_eps(x_t, t, x0), eps, rtol=0, atol=tol * 10)


def test_q_sample_accepts_per_image_timesteps():
    """Each image in a batch is noised at its own t (the coefficients broadcast per image)."""
    s = NoiseSchedule.linear(100)
    x0 = torch.ones(3, 3, 2, 2)
    eps = torch.zeros_like(x0)
    out = s.q_sample(x0, torch.tensor([0, 50, 99]), eps)
    for i, t in enumerate([0, 50, 99]):
        assert torch.allclose(out[i], torch.full((3, 2, 2), s.sqrt_alpha_bars[t].item()))


def test_invalid_schedules_raise_config_error():
    """Bad betas or step counts are ConfigErrors, not silent NaNs."""
    for bad in (lambda: NoiseSchedule.linear(0), lambda: NoiseSchedule.linear(10, 0.02, 0.01),
                lambda: NoiseSchedule.linear(10, 0.0, 0.01), lambda: NoiseSchedule.cosine(0),
                lambda: NoiseSchedule(torch.tensor([0.1, 1.0])), lambda: NoiseSchedule(torch.tensor([]))):
        with pytest.raises(ConfigError):
            bad()


# ---------------------------------------------------------------------------------------------
# What the network predicts: the ε and v parameterisations (Salimans & Ho 2022)
# ---------------------------------------------------------------------------------------------
def _batch(n_steps: int, seed: int, n: int = 8):
    """Random code timesteps (always including 0 and T−1), x₀ in [-1, 1] and ε, in float32."""
    gen = torch.Generator().manual_seed(seed)
    t = torch.randint(0, n_steps, (n,), generator=gen)
    t[0], t[-1] = 0, n_steps - 1
    x0 = torch.rand(n, 3, 4, 4, generator=gen) * 2 - 1
    eps = torch.randn(x0.shape, generator=gen)
    return t, x0, eps


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_v_target_is_sqrt_ab_eps_minus_sqrt_one_minus_ab_x0(kind):
    """training_target(…, "v") = √ᾱₜ ε − √(1−ᾱₜ) x₀ (float64 by hand, random per-image t);
    training_target(…, "eps") is ε itself, also the default."""
    s = NoiseSchedule.linear(1000) if kind == "linear" else NoiseSchedule.cosine(1000)
    t, x0, eps = _batch(1000, 0)
    ab = torch.cumprod(1 - s.betas.double(), 0)[t].view(-1, 1, 1, 1)
    v = ab.sqrt() * eps.double() - (1 - ab).sqrt() * x0.double()
    torch.testing.assert_close(s.training_target(x0, t, eps, "v").double(), v, rtol=0, atol=2e-6)
    assert torch.equal(s.training_target(x0, t, eps, "eps"), eps)
    assert torch.equal(s.training_target(x0, t, eps), eps)
    # v runs from ≈ ε at t = 0 to ≈ −x₀ at t = T − 1
    torch.testing.assert_close(s.training_target(x0, t, eps, "v")[0], eps[0], rtol=0, atol=2e-2)
    torch.testing.assert_close(s.training_target(x0, t, eps, "v")[-1], -x0[-1], rtol=0, atol=2e-2)


@pytest.mark.parametrize("prediction", ["eps", "v"])
@pytest.mark.parametrize("dtype, tol", [(torch.float64, 2e-6), (torch.float32, 5e-4)])
def test_eps_and_x0_inverts_the_training_target(prediction, dtype, tol):
    """Given the true target (ε or v) of xₜ = q_sample(x₀, t, ε), eps_and_x0 returns the true ε
    and x₀, at every t from 0 to T−1 in one mixed batch. (The v inversion uses ᾱ + (1 − ᾱ) = 1,
    which the float32-stored √ᾱ and √(1−ᾱ) satisfy only to ~1e-7, so even float64 data gets a
    float32-sized tolerance.)"""
    s = NoiseSchedule.linear(1000)
    t, x0, eps = _batch(1000, 1)
    x0, eps = x0.to(dtype), eps.to(dtype)
    x_t = s.q_sample(x0, t, eps)
    target = s.training_target(x0, t, eps, prediction)
    eps_hat, x0_hat = s.eps_and_x0(target, x_t, t, prediction)
    assert eps_hat.dtype == x0_hat.dtype == dtype
    torch.testing.assert_close(x0_hat, x0, rtol=0, atol=tol)
    # ε̂ from the ε target is ε itself; from v it is √(1−ᾱ) xₜ + √ᾱ v, exact up to rounding
    torch.testing.assert_close(eps_hat, eps, rtol=0, atol=tol)


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_eps_and_x0_are_consistent_with_x_t_for_any_output(prediction):
    """Whatever the network outputs, (ε̂, x̂₀) satisfy xₜ = √ᾱₜ x̂₀ + √(1−ᾱₜ) ε̂, and for v the
    formulas are x̂₀ = √ᾱ xₜ − √(1−ᾱ) v̂, ε̂ = √(1−ᾱ) xₜ + √ᾱ v̂ (float64 data; the schedule's
    float32 coefficients bound the identities at ~1e-7 relative)."""
    s = NoiseSchedule.cosine(100)
    gen = torch.Generator().manual_seed(2)
    t = torch.tensor([0, 1, 17, 50, 98, 99])
    x_t = torch.randn(6, 3, 4, 4, generator=gen, dtype=torch.float64)
    out = torch.randn(6, 3, 4, 4, generator=gen, dtype=torch.float64) * 3
    eps_hat, x0_hat = s.eps_and_x0(out, x_t, t, prediction)
    a = s.sqrt_alpha_bars.double()[t].view(-1, 1, 1, 1)
    sig = s.sqrt_one_minus_alpha_bars.double()[t].view(-1, 1, 1, 1)
    torch.testing.assert_close(a * x0_hat + sig * eps_hat, x_t, rtol=0, atol=1e-6)
    if prediction == "v":
        torch.testing.assert_close(x0_hat, a * x_t - sig * out, rtol=0, atol=1e-12)
        torch.testing.assert_close(eps_hat, sig * x_t + a * out, rtol=0, atol=1e-12)
        # and the v it implies is the output again
        torch.testing.assert_close(a * eps_hat - sig * x0_hat, out, rtol=0, atol=1e-6)
    else:
        assert torch.equal(eps_hat, out)
        torch.testing.assert_close(x0_hat, s.predict_x0(x_t, t, out), rtol=0, atol=0)


def test_unknown_prediction_is_a_one_line_config_error():
    """training_target, eps_and_x0, loss_weights (with min_snr) and check_prediction refuse an
    unknown parameterisation with a one-line ConfigError that names it and the allowed ones."""
    from diffusion_utils.schedule import PREDICTIONS, check_prediction

    assert PREDICTIONS == ("eps", "v")
    s = NoiseSchedule.linear(10, 1e-3, 0.2)
    t, x0, eps = _batch(10, 3, n=2)
    calls = [lambda: check_prediction("x0"), lambda: s.training_target(x0, t, eps, "x0"),
             lambda: s.eps_and_x0(eps, x0, t, "x0"), lambda: s.loss_weights(t, "x0", "min_snr")]
    for call in calls:
        with pytest.raises(ConfigError) as info:
            call()
        message = str(info.value)
        assert "\n" not in message and "prediction" in message and "'x0'" in message and "'v'" in message
    for ok in PREDICTIONS:
        check_prediction(ok)  # no error


# ---------------------------------------------------------------------------------------------
# Loss weights: Ho et al.'s simple loss and min-SNR (Hang et al. 2023)
# ---------------------------------------------------------------------------------------------
def test_loss_weights_none_are_ones():
    """weighting="none" gives ones (B,) for either prediction."""
    s = NoiseSchedule.linear(1000)
    t = torch.tensor([0, 3, 500, 999])
    for prediction in ("eps", "v"):
        w = s.loss_weights(t, prediction, "none")
        assert w.shape == (4,) and torch.equal(w, torch.ones(4))
    assert torch.equal(s.loss_weights(t), torch.ones(4))  # the default


@pytest.mark.parametrize("kind", ["linear", "cosine"])
@pytest.mark.parametrize("gamma", [1.0, 5.0, 20.0])
def test_min_snr_weights_match_hang_et_al(kind, gamma):
    """min-SNR weights, by hand in float64 with SNR = ᾱ/(1−ᾱ) at every t:
    ε: min(SNR, γ)/SNR, which is exactly 1 where SNR ≤ γ and γ/SNR < 1 above;
    v: min(SNR, γ)/(SNR + 1), always < 1."""
    s = NoiseSchedule.linear(1000) if kind == "linear" else NoiseSchedule.cosine(1000)
    t = torch.arange(1000)
    ab = torch.cumprod(1 - s.betas.double(), 0)
    snr = ab / (1 - ab)
    w_eps = s.loss_weights(t, "eps", "min_snr", gamma).double()
    w_v = s.loss_weights(t, "v", "min_snr", gamma).double()
    assert w_eps.shape == w_v.shape == (1000,)
    # float32 SNR loses digits where 1 − ᾱ is tiny (t ≈ 0), hence rtol 1e-3
    np.testing.assert_allclose(w_eps.numpy(), (snr.clamp(max=gamma) / snr).numpy(), rtol=1e-3)
    np.testing.assert_allclose(w_v.numpy(), (snr.clamp(max=gamma) / (snr + 1)).numpy(), rtol=1e-3)
    low = snr <= gamma * 0.99  # clearly below γ (away from float32 ties)
    assert low.any() and (~low).any()
    assert bool((w_eps[low] == 1).all())
    assert bool((w_eps[snr > gamma * 1.01] < 1).all())
    assert bool((w_v < 1).all())


def test_min_snr_weights_depend_on_gamma_and_on_t():
    """A larger γ keeps more of the low-noise steps' weight: the weights are non-decreasing in γ,
    and strictly larger at small t; with ε-prediction they rise towards 1 as t grows."""
    s = NoiseSchedule.linear(1000)
    t = torch.tensor([0, 10, 50, 200, 999])
    w1 = s.loss_weights(t, "eps", "min_snr", 1.0)
    w5 = s.loss_weights(t, "eps", "min_snr", 5.0)
    assert bool((w5 >= w1).all()) and w5[0] > w1[0] and w5[1] > w1[1]
    assert bool((w1[1:] >= w1[:-1]).all()) and w1[0] < 1e-3
    v1, v5 = s.loss_weights(t, "v", "min_snr", 1.0), s.loss_weights(t, "v", "min_snr", 5.0)
    assert v5[0] > v1[0] and not torch.equal(v1, v5)


def test_unknown_loss_weighting_is_a_config_error():
    """An unknown weighting is a one-line ConfigError naming loss_weighting and the allowed ones."""
    from diffusion_utils.schedule import LOSS_WEIGHTINGS

    assert LOSS_WEIGHTINGS == ("none", "min_snr")
    s = NoiseSchedule.linear(10, 1e-3, 0.2)
    with pytest.raises(ConfigError) as info:
        s.loss_weights(torch.tensor([0, 5]), "eps", "p2")
    message = str(info.value)
    assert "\n" not in message and "loss_weighting" in message and "'p2'" in message and "min_snr" in message
