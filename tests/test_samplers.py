"""The sampler classes against diffusers' schedulers: the same x_T, the same toy ε-network, the
same trailing timesteps, stepped by hand through both."""

import pytest
import torch

from diffusion_utils import DDIM, DPMSolverPP, NoiseSchedule

diffusers = pytest.importorskip("diffusers")
STEPS = 10


def toy_eps(x, t):
    """Any smooth function of (x, t) will do; t is the code timestep."""
    return torch.tanh(x) * 0.5 + 0.2 * torch.sin(x * (1 + float(t) / 1000))


def run_ours(sampler, x_T):
    ts = sampler.timesteps(STEPS)
    x = x_T.clone()
    for i, t in enumerate(ts):
        t_next = ts[i + 1] if i + 1 < len(ts) else sampler.end
        x = sampler.step(x, t, t_next, toy_eps(x, t))[0]
    return x, ts


def run_theirs(scheduler, x_T, **step_options):
    scheduler.set_timesteps(STEPS)
    x = x_T.clone()
    for t in scheduler.timesteps:
        x = scheduler.step(toy_eps(x, int(t)), t, x, **step_options).prev_sample
    return x, [int(t) for t in scheduler.timesteps]


COMMON = dict(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
              prediction_type="epsilon", timestep_spacing="trailing")


def test_ddim_matches_diffusers_ddim_scheduler():
    x_T = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    ours, our_ts = run_ours(DDIM(NoiseSchedule.linear(1000), "eps", clip_x0=True), x_T)
    scheduler = diffusers.DDIMScheduler(**COMMON, clip_sample=True, set_alpha_to_one=True)
    theirs, their_ts = run_theirs(scheduler, x_T, eta=0.0, use_clipped_model_output=True)
    assert our_ts == their_ts
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def test_dpmpp_2m_matches_diffusers_multistep_scheduler():
    x_T = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    ours, our_ts = run_ours(DPMSolverPP(NoiseSchedule.linear(1000), "eps", clip_x0=False), x_T)
    scheduler = diffusers.DPMSolverMultistepScheduler(**COMMON, algorithm_type="dpmsolver++", solver_order=2,
                                                      lower_order_final=True, final_sigmas_type="zero")
    theirs, their_ts = run_theirs(scheduler, x_T)
    assert our_ts == their_ts
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
