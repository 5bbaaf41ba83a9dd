"""The exact 1-D ODE picture of notebook 08: the ideal denoiser, and DDPM's ODE = the flow's ODE."""

import math

import torch

from diffusion_utils import NoiseSchedule
from diffusion_utils.ode_paths import (MEANS, STDS, WEIGHTS, ddim_paths, flow_paths, ode_gap, plot_ode_paths,
                                       plot_path_coefficients, posterior_mean, to_flow_coordinates)


def test_posterior_mean_of_one_gaussian_is_the_textbook_formula():
    # x₀ ~ N(μ, s²), xₜ = a x₀ + b ε: E[x₀|xₜ] = μ + a s² (xₜ − aμ)/(a²s² + b²)
    x_t = torch.linspace(-2, 2, 9, dtype=torch.float64)
    a, b, mu, s = 0.6, 0.8, 0.3, 0.5
    expected = mu + a * s ** 2 * (x_t - a * mu) / (a ** 2 * s ** 2 + b ** 2)
    got = posterior_mean(x_t, a, b, means=(mu, mu), stds=(s, s), weights=(0.5, 0.5))
    assert torch.allclose(got, expected, atol=1e-12)


def test_posterior_mean_matches_monte_carlo_on_the_mixture():
    gen = torch.Generator().manual_seed(0)
    n = 400_000
    k = torch.multinomial(torch.tensor(WEIGHTS), n, replacement=True, generator=gen)
    x0 = torch.tensor(MEANS, dtype=torch.float64)[k] + torch.tensor(STDS, dtype=torch.float64)[k] * torch.randn(
        n, generator=gen, dtype=torch.float64)
    a, b = 0.7, 0.5
    x_t = a * x0 + b * torch.randn(n, generator=gen, dtype=torch.float64)
    near = (x_t - 0.1).abs() < 0.01                       # the samples whose xₜ fell near 0.1
    mc = x0[near].mean()
    exact = posterior_mean(torch.tensor([0.1], dtype=torch.float64), a, b)[0]
    assert abs(float(mc - exact)) < 0.02, (float(mc), float(exact))


def test_both_odes_carry_noise_to_the_data_modes():
    schedule = NoiseSchedule.linear()
    x_T = torch.randn(2000, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ddpm_x, t = ddim_paths(x_T, schedule)
    flow_x, ts = flow_paths(x_T, 1.0, steps=500)
    assert ddpm_x.shape == (schedule.n_steps + 1, 2000) and t[0] == schedule.n_steps - 1 and t[-1] == -1
    assert flow_x.shape == (501, 2000) and ts[0] == 1 and ts[-1] == 0
    data_mean = sum(w * m for w, m in zip(WEIGHTS, MEANS))
    for end in (ddpm_x[-1], flow_x[-1]):
        # every end point sits in one of the two narrow modes, in about the right proportions
        nearest = torch.tensor(MEANS, dtype=torch.float64)[(end[:, None] - torch.tensor(MEANS)).abs().argmin(1)]
        assert (end - nearest).abs().quantile(0.99) < 4 * max(STDS)
        assert abs(float(end.mean()) - data_mean) < 0.06


def test_ddpm_and_flow_odes_are_the_same_curves_once_rescaled():
    assert ode_gap(n=64, seed=0) < 0.01
    schedule = NoiseSchedule.linear()
    x, t = ddim_paths(torch.randn(8, generator=torch.Generator().manual_seed(2), dtype=torch.float64), schedule)
    xf, tau = to_flow_coordinates(x, t, schedule)
    assert tau[-1] == 0 and torch.equal(xf[-1], x[-1])   # at the end both coordinates agree: τ = 0, scale 1
    assert 0.99 < float(tau[0]) < 1 and torch.all(tau[1:] <= tau[:-1])   # τ runs down from ≈ 1
    middle = len(t) // 2
    a = math.sqrt(float(schedule.alpha_bars[int(t[middle])]))
    assert abs(float(tau[middle]) - math.sqrt(1 - a * a) / (a + math.sqrt(1 - a * a))) < 1e-12


def test_the_pictures_have_their_labels():
    fig = plot_ode_paths(n=4)
    left, right = fig.axes
    assert "DDPM" in left.get_title() and left.get_xlabel() and right.get_xlabel().startswith("flow time")
    fig = plot_path_coefficients(NoiseSchedule.linear())
    assert len(fig.axes[0].lines) == 4 and fig.axes[0].get_ylabel() == "coefficient"
