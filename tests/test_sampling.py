"""The reverse process: one DDPM step by hand, and the three samplers end to end.

The stand-in models here are tiny: a parameter-free nn.Module computing a fixed function of
(x, t), an "oracle" that returns a stored noise tensor, and a random 8-channel UNet.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from diffusion_utils import ConfigError, NoiseSchedule, p_sample, sample, sample_trajectory, timesteps_for, to_uint8
from diffusion_utils.sampling import predict_eps_x0

from conftest import tiny_unet


class FixedFunction(nn.Module):
    """ε̂(x, t) = 0.5·x + sin(3x)·t/T: deterministic, depends on x and t, no parameters."""

    def __init__(self, n_steps: int):
        super().__init__()
        self.n_steps = n_steps

    def forward(self, x, t):
        t = torch.as_tensor(t).reshape(-1).expand(x.shape[0]).float()
        return 0.5 * x + torch.sin(3 * x) * (t / self.n_steps)[:, None, None, None]


class Oracle(nn.Module):
    """Returns a stored ε whatever it is asked: the network that knows the true noise."""

    def __init__(self, eps: torch.Tensor):
        super().__init__()
        self.eps = eps

    def forward(self, x, t):
        return self.eps.clone()


def column(values: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """values[t] as float64 (B, 1, 1, 1)."""
    return values.double()[t].view(-1, 1, 1, 1)


def ho_eps_form(schedule: NoiseSchedule, x_t, t, eps, z):
    """Ho et al. Algorithm 2, by hand in float64:
    x_{t-1} = (x_t − β_t/√(1−ᾱ_t) · ε̂)/√α_t + √β̃_t · z."""
    b = column(schedule.betas, t)
    ab = torch.cumprod(1 - schedule.betas.double(), 0)
    ab_t, ab_prev = ab[t].view(-1, 1, 1, 1), torch.cat([torch.ones(1, dtype=torch.float64), ab[:-1]])[t].view(-1, 1, 1, 1)
    var = (1 - ab_prev) / (1 - ab_t) * b
    mean = (x_t.double() - b / (1 - ab_t).sqrt() * eps.double()) / (1 - b).sqrt()
    return mean + var.sqrt() * z.double()


@pytest.fixture
def batch():
    gen = torch.Generator().manual_seed(0)
    x_t = torch.randn(4, 3, 8, 8, generator=gen)
    z = torch.randn(4, 3, 8, 8, generator=gen)
    return x_t, z


# ---------------------------------------------------------------------------------------------
# p_sample
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("t", [1, 10, 500, 999, (3, 200, 600, 998)])
def test_p_sample_without_clipping_is_ho_et_al_eps_form(batch, t):
    """clip_x0=False equals Algorithm 2's μ = (xₜ − βₜ/√(1−ᾱₜ) ε̂)/√αₜ plus √β̃ₜ z, with a fixed z,
    for one t for the whole batch or one t per image."""
    x_t, z = batch
    s = NoiseSchedule.linear(1000)
    model = FixedFunction(1000)
    t_vec = torch.tensor(t) if isinstance(t, tuple) else torch.full((4,), t)
    out = p_sample(model, s, x_t, t if isinstance(t, int) else t_vec, noise=z, clip_x0=False)
    expected = ho_eps_form(s, x_t, t_vec, model(x_t, t_vec), z)
    torch.testing.assert_close(out.double(), expected, rtol=1e-4, atol=1e-4)


def test_p_sample_with_a_tiny_unet_matches_the_hand_formula(batch):
    """The same check with a real (random, tiny) UNet as ε_θ."""
    x_t, z = batch
    s = NoiseSchedule.linear(100)
    model = tiny_unet(8)
    t = torch.tensor([0, 5, 50, 99])
    with torch.no_grad():
        eps = model(x_t, t)
    out = p_sample(model, s, x_t, t, noise=z, clip_x0=False)
    torch.testing.assert_close(out.double(), ho_eps_form(s, x_t, t, eps, z), rtol=1e-4, atol=1e-4)


def test_clipping_is_a_no_op_when_x0_prediction_is_in_range():
    """If the predicted x̂₀ lies inside [-1, 1], clamping changes nothing: clip_x0=True gives
    the clip_x0=False result (the posterior-mean and ε forms are the same number)."""
    s = NoiseSchedule.linear(1000)
    gen = torch.Generator().manual_seed(1)
    x0 = torch.rand(4, 3, 8, 8, generator=gen) - 0.5  # in [-0.5, 0.5]
    eps, z = torch.randn(x0.shape, generator=gen), torch.randn(x0.shape, generator=gen)
    for t in (1, 10, 300, 999):
        tt = torch.full((4,), t)
        x_t = s.q_sample(x0, tt, eps)
        model = Oracle(eps)
        assert s.predict_x0(x_t, tt, eps).abs().max() <= 1
        clipped = p_sample(model, s, x_t, t, noise=z, clip_x0=True)
        unclipped = p_sample(model, s, x_t, t, noise=z, clip_x0=False)
        torch.testing.assert_close(clipped, unclipped, rtol=1e-4, atol=1e-4)


def test_clipping_uses_the_posterior_mean_of_the_clamped_x0():
    """If x̂₀ leaves [-1, 1], clip_x0=True gives μ̃ₜ(xₜ, clamp(x̂₀)) + √β̃ₜ z, computed by hand
    with c₁ = √ᾱₜ₋₁ βₜ/(1−ᾱₜ), c₂ = √αₜ (1−ᾱₜ₋₁)/(1−ᾱₜ) — and differs from the unclipped step."""
    s = NoiseSchedule.linear(1000)
    gen = torch.Generator().manual_seed(2)
    x0 = (torch.rand(4, 3, 8, 8, generator=gen) * 2 - 1) * 3  # in [-3, 3]: mostly out of range
    eps, z = torch.randn(x0.shape, generator=gen), torch.randn(x0.shape, generator=gen)
    ab = torch.cumprod(1 - s.betas.double(), 0)
    for t in (10, 300, 999):
        tt = torch.full((4,), t)
        x_t = s.q_sample(x0, tt, eps)
        out = p_sample(Oracle(eps), s, x_t, t, noise=z, clip_x0=True)
        b, ab_t, ab_prev = s.betas.double()[t], ab[t], ab[t - 1]
        x0_hat = ((x_t.double() - (1 - ab_t).sqrt() * eps.double()) / ab_t.sqrt()).clamp(-1, 1)
        c1 = ab_prev.sqrt() * b / (1 - ab_t)
        c2 = (1 - b).sqrt() * (1 - ab_prev) / (1 - ab_t)
        expected = c1 * x0_hat + c2 * x_t.double() + ((1 - ab_prev) / (1 - ab_t) * b).sqrt() * z.double()
        torch.testing.assert_close(out.double(), expected, rtol=1e-4, atol=1e-4)
        # The clamp moves the step by exactly c₁ · (clamp(x̂₀) − x̂₀), which is not zero here.
        unclipped = p_sample(Oracle(eps), s, x_t, t, noise=z, clip_x0=False)
        shift = c1 * (x0_hat - x0.double())
        assert shift.abs().max() > 1e-4
        torch.testing.assert_close((out - unclipped).double(), shift, rtol=0, atol=1e-5)


@pytest.mark.parametrize("clip_x0", [False, True])
def test_no_noise_is_added_at_t0(batch, clip_x0):
    """At the last step (t = 0) the result is the mean whatever the noise; it equals x̂₀."""
    x_t, z = batch
    s = NoiseSchedule.linear(1000)
    model = FixedFunction(1000)
    a = p_sample(model, s, x_t, 0, noise=z * 100, clip_x0=clip_x0)
    b = p_sample(model, s, x_t, 0, noise=torch.zeros_like(z), clip_x0=clip_x0)
    c = p_sample(model, s, x_t, 0, noise=None, clip_x0=clip_x0)
    assert torch.equal(a, b) and torch.equal(b, c)
    x0_hat = s.predict_x0(x_t, torch.zeros(4, dtype=torch.long), model(x_t, 0))
    torch.testing.assert_close(b, x0_hat.clamp(-1, 1) if clip_x0 else x0_hat, rtol=1e-4, atol=1e-4)
    # …while at t = 1 the noise does matter
    assert not torch.allclose(p_sample(model, s, x_t, 1, noise=z, clip_x0=clip_x0),
                              p_sample(model, s, x_t, 1, noise=torch.zeros_like(z), clip_x0=clip_x0))


# ---------------------------------------------------------------------------------------------
# Timestep spacing
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n_steps", [20, 50, 100, 1000])
def test_trailing_spacing(n_steps):
    """Trailing spacing starts at T−1, is strictly descending, ≥ 0, and has ``steps`` entries,
    for every step count (float rounding once produced an extra t = −1)."""
    for steps in range(1, n_steps + 1):
        ts = timesteps_for(n_steps, steps)
        assert len(ts) == steps, (n_steps, steps, ts)
        assert ts[0] == n_steps - 1 and ts[-1] >= 0
        assert all(a > b for a, b in zip(ts, ts[1:])), (n_steps, steps, ts)
    assert timesteps_for(n_steps, n_steps) == list(range(n_steps - 1, -1, -1))


def test_trailing_spacing_examples():
    """Two worked examples: T = 1000 with 10 steps and with 4 steps."""
    assert timesteps_for(1000, 10) == [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]
    assert timesteps_for(1000, 4) == [999, 749, 499, 249]


def test_leading_and_linspace_spacing():
    """Leading spacing (DDIM's original) does not start at T−1; linspace runs T−1 … 0."""
    lead = timesteps_for(1000, 10, "leading")
    assert lead == [900, 800, 700, 600, 500, 400, 300, 200, 100, 0] and lead[0] != 999
    for steps in (2, 7, 50, 999):
        lead = timesteps_for(1000, steps, "leading")
        assert len(lead) == steps and lead[0] != 999 and all(a > b for a, b in zip(lead, lead[1:]))
    lin = timesteps_for(1000, 7, "linspace")
    assert lin[0] == 999 and lin[-1] == 0 and len(lin) == 7
    with pytest.raises(ConfigError):
        timesteps_for(1000, 10, "sideways")
    for bad in (0, 1001):
        with pytest.raises(ConfigError):
            timesteps_for(1000, bad)


# ---------------------------------------------------------------------------------------------
# sample()
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model16():
    return tiny_unet(16)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpmpp"])
def test_sample_is_reproducible_per_seed(model16, schedule20, sampler):
    """Same seed → identical images; different seed → different images (for every sampler;
    DDIM with eta=1 so its step noise is drawn from the generator too)."""
    kw = dict(sampler=sampler, eta=1.0 if sampler == "ddim" else 0.0, progress=False)
    a = sample(model16, schedule20, 2, generator=_gen(0), **kw)
    b = sample(model16, schedule20, 2, generator=_gen(0), **kw)
    c = sample(model16, schedule20, 2, generator=_gen(1), **kw)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


@pytest.mark.parametrize("sampler", ["ddim", "dpmpp"])
@pytest.mark.parametrize("steps", [1, 5, 10, 20])
def test_fast_samplers_give_images_in_range(model16, schedule20, sampler, steps):
    """Images are (n, 3, H, W) float in [-1, 1] at any step count, finite, not all equal."""
    images = sample(model16, schedule20, 3, sampler=sampler, steps=steps, generator=_gen(0), progress=False)
    assert images.shape == (3, 3, 16, 16) and images.dtype == torch.float32
    assert torch.isfinite(images).all() and images.min() >= -1 and images.max() <= 1
    assert images.std() > 0


def test_ddpm_sample_shape_and_range(model16, schedule20):
    """DDPM's T ancestral steps give (n, 3, H, W) in [-1, 1]; img_size may differ from the model's."""
    images = sample(model16, schedule20, 2, img_size=8, generator=_gen(0), progress=False)
    assert images.shape == (2, 3, 8, 8) and images.min() >= -1 and images.max() <= 1


@pytest.mark.parametrize("clip_x0", [True, False])
def test_ddim_eta1_with_all_steps_is_the_ddpm_sampler(model16, clip_x0):
    """DDIM with eta=1 over all T steps draws the same noise at the same steps and takes the
    same step as ancestral DDPM: same generator → the same images (to float32 rounding)."""
    schedule = NoiseSchedule.linear(40, 1e-3, 0.2)
    kw = dict(clip_x0=clip_x0, progress=False)
    ddpm = sample(model16, schedule, 4, sampler="ddpm", generator=_gen(3), **kw)
    ddim = sample(model16, schedule, 4, sampler="ddim", steps=40, eta=1.0, generator=_gen(3), **kw)
    torch.testing.assert_close(ddim, ddpm, rtol=0, atol=2e-5)
    # and so their statistics agree too
    assert abs(ddim.mean() - ddpm.mean()) < 1e-5 and abs(ddim.std() - ddpm.std()) < 1e-5
    # whereas eta=0 is a different (deterministic) process
    ddim0 = sample(model16, schedule, 4, sampler="ddim", steps=40, eta=0.0, generator=_gen(3), **kw)
    assert (ddim0 - ddpm).abs().max() > 1e-2


def test_ddim_eta0_is_deterministic_given_x_T(model16, schedule20):
    """With eta=0 DDIM draws no noise after x_T: different generators, same x_T → same images."""
    x_T = torch.randn(2, 3, 16, 16, generator=_gen(5))
    a = sample(model16, schedule20, 2, sampler="ddim", steps=7, eta=0.0, x_T=x_T, generator=_gen(0), progress=False)
    b = sample(model16, schedule20, 2, sampler="ddim", steps=7, eta=0.0, x_T=x_T, generator=_gen(1), progress=False)
    assert torch.equal(a, b)
    c = sample(model16, schedule20, 2, sampler="ddim", steps=7, eta=0.5, x_T=x_T, generator=_gen(1), progress=False)
    assert not torch.allclose(a, c)
    d = sample(model16, schedule20, 2, sampler="dpmpp", steps=7, x_T=x_T, generator=_gen(1), progress=False)
    e = sample(model16, schedule20, 2, sampler="dpmpp", steps=7, x_T=x_T, generator=_gen(2), progress=False)
    assert torch.equal(d, e)


@pytest.mark.parametrize("sampler, steps", [("ddpm", None), ("ddim", 6), ("dpmpp", 4)])
def test_sample_trajectory(model16, schedule20, sampler, steps):
    """The trajectory has one uint8 frame (F, n, 3, H, W) per step plus the final sample, its
    timesteps run from T down to 0 (paper convention: code t + 1), and its last frame is the result."""
    traj = sample_trajectory(model16, schedule20, 2, sampler=sampler, steps=steps, generator=_gen(0),
                             progress=False)
    images = traj.images
    assert images.dtype == torch.float32 and images.shape == (2, 3, 16, 16)
    n_calls = steps or 20
    assert len(traj) == n_calls + 1
    assert traj.frames.shape == traj.x0_frames.shape == (n_calls + 1, 2, 3, 16, 16)
    assert traj.frames.dtype == traj.x0_frames.dtype == torch.uint8
    assert traj.timesteps[0] == 20 and traj.timesteps[-1] == 0
    assert traj.timesteps == [t + 1 for t in timesteps_for(20, n_calls)] + [0]
    assert torch.equal(traj.frames[-1], to_uint8(images)) and torch.equal(traj.x0_frames[-1], to_uint8(images))
    # the first frame is the starting noise
    x_T = torch.randn(2, 3, 16, 16, generator=_gen(0))
    assert torch.equal(traj.frames[0], to_uint8(x_T))
    # the same seed without a trajectory gives the same images
    assert torch.equal(images, sample(model16, schedule20, 2, sampler=sampler, steps=steps,
                                      generator=_gen(0), progress=False))


def test_trajectory_frames_limits_the_frame_count(model16, schedule20):
    """frames keeps that many evenly spaced frames, always the first and the last."""
    traj = sample_trajectory(model16, schedule20, 1, sampler="ddpm", generator=_gen(0), frames=5, progress=False)
    assert len(traj) == 5 and traj.frames.shape[0] == 5
    assert traj.timesteps[0] == 20 and traj.timesteps[-1] == 0
    assert all(a > b for a, b in zip(traj.timesteps, traj.timesteps[1:]))


def test_invalid_sample_arguments_raise_config_error(model16, schedule20):
    """DDPM cannot skip steps; bad sampler, n, eta, steps or x_T shape are ConfigErrors."""
    bad_calls = [
        dict(sampler="ddpm", steps=10), dict(sampler="ddpm", steps=19), dict(sampler="euler"),
        dict(sampler="ddim", steps=0), dict(sampler="ddim", steps=21), dict(sampler="ddim", eta=1.5),
        dict(sampler="ddim", x_T=torch.zeros(2, 3, 8, 8)),
    ]
    for kwargs in bad_calls:
        with pytest.raises(ConfigError):
            sample(model16, schedule20, 2, progress=False, **kwargs)
    for n in (0, -1, 2.0):
        with pytest.raises(ConfigError, match="n must"):
            sample(model16, schedule20, n, sampler="ddim", steps=2, progress=False)


def test_sample_restores_the_models_training_mode(model16, schedule20):
    """sample() puts the model in eval mode while it runs and restores the previous mode after."""
    model16.train()
    try:
        sample(model16, schedule20, 1, sampler="ddim", steps=2, progress=False)
        assert model16.training
    finally:
        model16.eval()


# ---------------------------------------------------------------------------------------------
# v-prediction: every sampler goes through the schedule's one conversion
# ---------------------------------------------------------------------------------------------
class VFromEps(nn.Module):
    """A "v model" built from an ε model: it outputs v̂ = √ᾱₜ ε̂ − √(1−ᾱₜ) x̂₀ with
    x̂₀ = (xₜ − √(1−ᾱₜ) ε̂)/√ᾱₜ, computed by hand in float64. Read as v, it is the same model."""

    def __init__(self, eps_model: nn.Module, schedule: NoiseSchedule):
        super().__init__()
        self.eps_model = eps_model
        self.img_size = eps_model.img_size
        self.prediction = "v"
        self.ab = torch.cumprod(1 - schedule.betas.double(), 0)

    def forward(self, x, t):
        eps = self.eps_model(x, t).double()
        ab = self.ab[torch.as_tensor(t).reshape(-1)].view(-1, 1, 1, 1)
        x0 = (x.double() - (1 - ab).sqrt() * eps) / ab.sqrt()
        return (ab.sqrt() * eps - (1 - ab).sqrt() * x0).float()


def test_predict_eps_x0_reads_the_models_prediction(model16, schedule20):
    """predict_eps_x0 gives the same (ε̂, x̂₀) for an ε model and the v model built from it; the
    same v output read as ε (prediction flipped to "eps") gives something else."""
    v_model = VFromEps(model16, schedule20)
    x = torch.randn(3, 3, 16, 16, generator=_gen(0))
    t = torch.tensor([0, 9, 19])
    eps_a, x0_a = predict_eps_x0(model16, schedule20, x, t)
    eps_b, x0_b = predict_eps_x0(v_model, schedule20, x, t)
    torch.testing.assert_close(eps_b, eps_a, rtol=0, atol=1e-4)
    torch.testing.assert_close(x0_b, x0_a, rtol=0, atol=1e-4)
    v_model.prediction = "eps"
    eps_c, _ = predict_eps_x0(v_model, schedule20, x, t)
    assert (eps_c - eps_a).abs().max() > 0.1


@pytest.mark.parametrize("sampler, steps, eta", [("ddpm", None, 0.0), ("ddim", 7, 0.0), ("ddim", 7, 1.0),
                                                 ("dpmpp", 7, 0.0)])
@pytest.mark.parametrize("clip_x0", [True, False])
def test_samplers_give_the_same_images_for_an_eps_model_and_its_v_twin(model16, schedule20, sampler, steps,
                                                                        eta, clip_x0):
    """An ε-UNet and the v model that outputs the v it implies sample the same images (and the
    same trajectory, noisy frames and x̂₀ frames) from the same generator, for every sampler: each
    one turns the output into (ε̂, x̂₀) through the schedule, never by assuming ε. Read as ε, the
    v twin's outputs give different images."""
    v_model = VFromEps(model16, schedule20)
    kw = dict(sampler=sampler, steps=steps, eta=eta, clip_x0=clip_x0, progress=False)
    traj_eps = sample_trajectory(model16, schedule20, 2, generator=_gen(4), **kw)
    traj_v = sample_trajectory(v_model, schedule20, 2, generator=_gen(4), **kw)
    images_eps, images_v = traj_eps.images, traj_v.images
    torch.testing.assert_close(images_v, images_eps, rtol=0, atol=2e-5)
    assert traj_v.timesteps == traj_eps.timesteps
    for a, b in ((traj_v.frames, traj_eps.frames), (traj_v.x0_frames, traj_eps.x0_frames)):
        diff = (a.int() - b.int()).abs()
        assert diff.max() <= 1 and (diff == 0).float().mean() > 0.99  # uint8 rounding at most
    v_model.prediction = "eps"
    wrong = sample(v_model, schedule20, 2, generator=_gen(4), **kw)
    assert (wrong - images_eps).abs().max() > 0.1


def test_a_v_unet_samples_in_range(schedule20):
    """A (random) UNet(prediction="v") samples finite images in [-1, 1] with each sampler."""
    model = tiny_unet(16, prediction="v")
    assert model.prediction == "v"
    for sampler, steps in (("ddpm", None), ("ddim", 5), ("dpmpp", 5)):
        images = sample(model, schedule20, 2, sampler=sampler, steps=steps, generator=_gen(0), progress=False)
        assert images.shape == (2, 3, 16, 16) and torch.isfinite(images).all()
        assert images.min() >= -1 and images.max() <= 1 and images.std() > 0
