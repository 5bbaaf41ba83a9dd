"""Flow matching: the path, its loss, Euler and Heun (against diffusers and against a closed form),
the bridge to DDIM, and the refusals."""

import math

import numpy as np
import pytest
import torch

from diffusion_utils import (DDIM, ConfigError, Euler, FlowPath, Heun, NoiseSchedule, TrainConfig, UNet, flow_loss,
                             sample, sample_trajectory)
from diffusion_utils.plumbing.checkpoint import check_compatible
from diffusion_utils.plumbing.errors import CheckpointError


def tiny_flow_unet(num_classes=0):
    torch.manual_seed(0)
    return UNet(base_channels=8, channel_mults=(1, 2), num_res_blocks=1, attention_levels=(), time_emb_dim=16,
                img_size=8, num_classes=num_classes, objective="flow")


def test_path_ends_and_velocity():
    x0, eps = torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8)
    path = FlowPath()
    assert torch.equal(path.q_sample(x0, torch.zeros(4), eps), x0)  # t = 0 is the image
    assert torch.equal(path.q_sample(x0, torch.ones(4), eps), eps)  # t = 1 the noise
    t = torch.rand(4)
    x_t = path.q_sample(x0, t, eps)
    x0_hat, eps_hat = path.x0_and_eps(path.velocity(x0, eps), x_t, t)  # the true velocity gives both ends back
    assert torch.allclose(x0_hat, x0, atol=1e-5) and torch.allclose(eps_hat, eps, atol=1e-5)


def test_logit_normal_t_is_in_the_open_interval_and_centred():
    t = FlowPath("logit_normal").sample_t(20_000, torch.Generator().manual_seed(0))
    assert 0 < t.min() and t.max() < 1
    assert abs(float(t.median()) - 0.5) < 0.02  # sigmoid of N(0, 1): median ½
    u = FlowPath("uniform").sample_t(20_000, torch.Generator().manual_seed(0))
    assert abs(float(u.mean()) - 0.5) < 0.01 and float(u.std()) == pytest.approx(1 / math.sqrt(12), abs=0.01)


def test_shifted_grid_is_sd3s_formula():
    grid = FlowPath(shift=3.0).timesteps(4)
    even = np.linspace(1, 0, 5)
    np.testing.assert_allclose(grid, 3 * even / (1 + 2 * even), atol=1e-12)
    assert FlowPath().timesteps(4) == pytest.approx([1.0, 0.75, 0.5, 0.25, 0.0])


def test_flow_loss_is_the_velocity_mse():
    """With a network that outputs the true velocity of each example the loss is 0; with zeros it is E‖ε − x₀‖²."""
    x0 = torch.rand(8, 3, 8, 8) * 2 - 1
    path = FlowPath("uniform")

    class Zero(torch.nn.Module):
        def forward(self, x, t):
            return torch.zeros_like(x)

    g = torch.Generator().manual_seed(1)
    loss = flow_loss(Zero(), path, x0, generator=g)
    g = torch.Generator().manual_seed(1)
    t = path.sample_t(8, g)
    eps = torch.randn(x0.shape, generator=g)
    assert float(loss) == pytest.approx(float((eps - x0).pow(2).mean()), rel=1e-6)


def test_euler_matches_diffusers_flow_match_euler_scheduler():
    """The same x_T, the same toy velocity model, diffusers' own sigmas: our Euler step lands where theirs does."""
    diffusers = pytest.importorskip("diffusers")
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)
    scheduler.set_timesteps(12)
    sigmas = [float(s) for s in scheduler.sigmas]

    def velocity(x, sigma):  # any smooth function of (x, t) will do
        return torch.tanh(x) * (0.5 + sigma) - 0.3 * x + sigma

    x_T = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    theirs = x_T.clone()
    for i, t in enumerate(scheduler.timesteps):
        theirs = scheduler.step(velocity(theirs, sigmas[i]), t, theirs).prev_sample
    ours, euler = x_T.clone(), Euler(FlowPath())
    for t, t_next in zip(sigmas[:-1], sigmas[1:]):
        ours = euler.step(ours, t, t_next, velocity(ours, t))[0]
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=1e-6)


def gaussian_velocity(mu, s):
    """The true velocity field of the straight path when the data are N(μ, s²): E[ε − x₀ | xₜ = x]."""
    def u(x, t):
        var = (1 - t) ** 2 * s ** 2 + t ** 2  # Var xₜ
        return -mu + (t - (1 - t) * s ** 2) / var * (x - (1 - t) * mu)  # Cov(ε − x₀, xₜ)/Var xₜ
    return u


def integrate(sampler, steps, u, x1):
    grid = sampler.timesteps(steps) + [sampler.end]
    x = x1.clone()
    for i, (t, t_next) in enumerate(zip(grid[:-1], grid[1:])):
        out = u(x, t)
        x_new, _ = sampler.step(x, t, t_next, out)
        if sampler.corrects(i):
            x_new = sampler.correct(x, t, t_next, out, u(x_new, t_next))
        x = x_new
    return x


@pytest.mark.parametrize("sampler_class, order", [(Euler, 1), (Heun, 2)])
def test_gaussian_data_are_reached_at_the_methods_order(sampler_class, order):
    """N(0, I) at t = 1 flows to N(μ, s²) at t = 0 (exactly: x₀ = μ + s·x₁); the error of Euler falls
    as 1/K and Heun's as 1/K² with K intervals (the fitted log-log slope measures the order)."""
    mu, s = 0.7, 0.3
    x1 = torch.randn(4000, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    exact = mu + s * x1
    sampler = sampler_class(FlowPath())
    intervals = [8, 16, 32, 64]
    calls = [2 * k - 1 if sampler_class is Heun else k for k in intervals]  # Heun: k − 1 corrected, then Euler
    assert [len(sampler.timesteps(c)) for c in calls] == intervals
    errors = [float((integrate(sampler, c, gaussian_velocity(mu, s), x1) - exact).abs().max()) for c in calls]
    slope = -np.polyfit(np.log(intervals), np.log(errors), 1)[0]
    assert slope == pytest.approx(order, abs=0.2), f"errors {errors}"
    samples = integrate(sampler, calls[-1], gaussian_velocity(mu, s), x1)
    assert float(samples.mean()) == pytest.approx(mu, abs=0.02) and float(samples.std()) == pytest.approx(s, abs=0.02)


def test_heun_never_corrects_the_interval_that_ends_at_t_0():
    heun = Heun(FlowPath())
    assert len(heun.timesteps(5)) == 3 and [heun.corrects(i) for i in range(3)] == [True, True, False]
    assert len(heun.timesteps(4)) == 3 and [heun.corrects(i) for i in range(3)] == [True, False, False]
    assert len(heun.timesteps(1)) == 1 and not heun.corrects(0)
    for steps in range(1, 12):  # every call is spent: two per corrected interval, one per Euler interval
        n = len(heun.timesteps(steps))
        assert sum(2 if heun.corrects(i) else 1 for i in range(n)) == steps and not heun.corrects(n - 1)


def test_ddim_is_euler_on_the_reparameterised_flow():
    """DDIM (η = 0) from t to t_next equals one Euler step of dx̄/dσ̄ = ε̂ in x̄ = x/√ᾱ, σ̄ = √(1−ᾱ)/√ᾱ."""
    schedule = NoiseSchedule.linear(1000)
    ddim = DDIM(schedule, "eps", clip_x0=False)
    g = torch.Generator().manual_seed(0)
    for t, t_next in [(999, 899), (500, 250), (99, -1)]:
        x, eps = torch.randn(2, 3, 8, 8, generator=g), torch.randn(2, 3, 8, 8, generator=g)
        a_t, a_n = ddim.alpha_bar(t), ddim.alpha_bar(t_next)
        sigma_bar = lambda a: math.sqrt(1 - a) / math.sqrt(a)  # noqa: E731
        x_bar_next = x / math.sqrt(a_t) + (sigma_bar(a_n) - sigma_bar(a_t)) * eps  # Euler in (σ̄, x̄)
        torch.testing.assert_close(ddim.step(x, t, t_next, eps)[0], math.sqrt(a_n) * x_bar_next,
                                   atol=2e-5, rtol=1e-5)


def test_a_flow_model_trains_and_samples_with_euler_heun_and_guidance():
    model = tiny_flow_unet(num_classes=3)
    x0 = torch.rand(8, 3, 8, 8) * 2 - 1
    loss = flow_loss(model, FlowPath(), x0, generator=torch.Generator().manual_seed(0),
                     y=torch.tensor([0, 1, 2, 0, 1, 2, 0, 1]), p_uncond=0.5)
    loss.backward()
    assert math.isfinite(loss.item()) and model.stem.weight.grad is not None
    for name in ("euler", "heun"):
        images = sample(model, FlowPath(), 3, sampler=name, steps=5, progress=False,
                        generator=torch.Generator().manual_seed(0))
        assert images.shape == (3, 3, 8, 8) and images.abs().max() <= 1
    guided = sample(model, FlowPath(), 2, sampler="euler", steps=4, classes=1, guidance_scale=3.0, progress=False)
    assert guided.shape == (2, 3, 8, 8)
    traj = sample_trajectory(model, FlowPath(), 2, sampler="euler", steps=4, progress=False,
                             generator=torch.Generator().manual_seed(0))
    assert traj.timesteps == pytest.approx([1.0, 0.75, 0.5, 0.25, 0]) and len(traj.frames) == 5
    again = sample(model, FlowPath(), 2, sampler="euler", steps=4, progress=False, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(traj.images, again)


def test_refusals_name_the_fix():
    flow_model, path = tiny_flow_unet(), FlowPath()
    with pytest.raises(ConfigError, match="diffusion sampler.*flow model"):
        sample(flow_model, path, 1, sampler="ddim", steps=5, progress=False)
    diffusion_model = UNet(base_channels=8, channel_mults=(1, 2), num_res_blocks=1, attention_levels=(),
                           time_emb_dim=16, img_size=8)
    with pytest.raises(ConfigError, match="samples flow models"):
        sample(diffusion_model, NoiseSchedule.linear(20), 1, sampler="euler", steps=5, progress=False)
    with pytest.raises(ConfigError, match="schedule does not match"):
        sample(flow_model, NoiseSchedule.linear(20), 1, sampler="euler", steps=5, progress=False)
    with pytest.raises(ConfigError, match="objective must be one of"):
        TrainConfig.preset("quick", objective="rectified")
    with pytest.raises(ConfigError, match="flow_shift"):
        TrainConfig.preset("quick-flow", flow_shift=0)
    with pytest.raises(ConfigError, match="flow_logit_std"):
        TrainConfig.preset("quick-flow", flow_logit_std=-1.0)
    with pytest.raises(ConfigError, match="does not sample a flow model"):
        TrainConfig.preset("quick-flow", sampler="dpmpp")
    with pytest.raises(CheckpointError, match="objective"):  # resuming a flow checkpoint with a diffusion config
        check_compatible(TrainConfig.preset("quick-flow"), TrainConfig.preset("quick"), "run/ckpt.pth",
                         ignore=("prediction",))


def test_any_preset_turns_flow_and_samples_with_euler():
    config = TrainConfig.preset("quick", objective="flow")
    assert config.sampler == "euler" and config.objective == "flow"
    assert TrainConfig.from_dict({k: v for k, v in TrainConfig.preset("quick").to_dict().items()
                                  if k != "objective"}).objective == "diffusion"  # an old checkpoint's config
