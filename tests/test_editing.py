"""Starting the sampler part-way (t_start), the after_step hook, SDEdit and inpainting."""

from __future__ import annotations

import pytest
import torch

from conftest import tiny_unet
from diffusion_utils import ConfigError, box_mask, inpaint, sample, sample_trajectory, sdedit
from diffusion_utils.editing import check_mask, start_timestep

NAMES = ("red rose", "sunflower", "daisy")


@pytest.fixture(scope="module")
def model():
    return tiny_unet(num_classes=3, class_names=NAMES)


def originals(n: int = 2, seed: int = 5) -> torch.Tensor:
    return torch.rand(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed)) * 2 - 1


# ---------------------------------------------------------------------------------------------
# sample(t_start=…, after_step=…)
@pytest.mark.parametrize("sampler", ["ddim", "dpmpp"])
def test_t_start_at_the_last_timestep_is_plain_sampling(model, schedule20, sampler):
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    plain = sample(model, schedule20, 2, sampler=sampler, steps=5, x_T=x, progress=False)
    same = sample(model, schedule20, 2, sampler=sampler, steps=5, x_T=x, t_start=19, progress=False)
    assert torch.equal(plain, same)


def test_t_start_spreads_the_steps_below_it(model, schedule20):
    """With t_start the trajectory starts at t_start + 1 (paper t) and visits only timesteps below."""
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    traj = sample_trajectory(model, schedule20, 1, sampler="ddim", steps=3, x_T=x, t_start=8, progress=False)
    assert traj.timesteps == [9, 6, 3, 0]
    traj = sample_trajectory(model, schedule20, 1, sampler="ddpm", x_T=x, t_start=4,
                             generator=torch.Generator().manual_seed(1), progress=False)
    assert traj.timesteps == [5, 4, 3, 2, 1, 0]  # ddpm takes every step below t_start


@pytest.mark.parametrize("bad", [-1, 20, 2.5, "3"])
def test_a_bad_t_start_is_refused(model, schedule20, bad):
    with pytest.raises(ConfigError, match="t_start"):
        sample(model, schedule20, 1, sampler="ddim", steps=2, t_start=bad, progress=False)


def test_after_step_sees_every_step_and_its_result_is_used(model, schedule20):
    seen = []

    def hook(x, t):
        seen.append(t)
        return torch.zeros_like(x) if t < 0 else x

    out = sample(model, schedule20, 1, sampler="dpmpp", steps=4, progress=False, after_step=hook,
                 generator=torch.Generator().manual_seed(0))
    assert seen == [14, 9, 4, -1] and torch.equal(out, torch.zeros_like(out))


# ---------------------------------------------------------------------------------------------
# SDEdit
def test_sdedit_strength_1_is_sampling_from_the_noised_image(model, schedule20):
    images, noise = originals(), torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(9))
    edited = sdedit(model, schedule20, images, 1.0, steps=5, noise=noise, classes="daisy", guidance_scale=2,
                    progress=False)
    x_T = schedule20.q_sample(images, torch.full((2,), 19), noise)
    plain = sample(model, schedule20, 2, sampler="dpmpp", steps=5, x_T=x_T, classes="daisy", guidance_scale=2,
                   progress=False)
    assert torch.equal(edited, plain)


def test_sdedit_with_a_generator_draws_the_same_noise(model, schedule20):
    images = originals()
    a = sdedit(model, schedule20, images, 0.5, steps=4, generator=torch.Generator().manual_seed(3), progress=False)
    noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(3))
    b = sdedit(model, schedule20, images, 0.5, steps=4, noise=noise, progress=False)
    assert torch.equal(a, b)


def test_sdedit_small_strength_stays_close_to_the_original(model, schedule20):
    """A weak edit changes the image less than a strong one, from the same noise."""
    images = originals(4)
    noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(1))
    dist = [(sdedit(model, schedule20, images, s, steps=10, noise=noise, progress=False) - images).pow(2).mean()
            for s in (0.1, 1.0)]
    assert dist[0] < dist[1]


def test_start_timestep():
    assert start_timestep(1.0, 1000) == 999 and start_timestep(0.5, 1000) == 499
    assert start_timestep(1e-6, 1000) == 0


@pytest.mark.parametrize("bad", [0, -0.1, 1.01, float("nan"), float("inf"), "strong", None])
def test_sdedit_strength_outside_0_1_is_one_line(model, schedule20, bad):
    with pytest.raises(ConfigError, match="strength") as err:
        sdedit(model, schedule20, originals(), bad, progress=False)
    assert "\n" not in str(err.value)


def test_sdedit_refuses_a_class_for_an_unconditional_model(schedule20):
    with pytest.raises(ConfigError, match="unconditional"):
        sdedit(tiny_unet(), schedule20, originals(), 0.5, steps=2, classes="daisy", progress=False)


# ---------------------------------------------------------------------------------------------
# Inpainting
def test_an_all_known_mask_returns_the_original(model, schedule20):
    images = originals()
    out = inpaint(model, schedule20, images, torch.ones(16, 16), steps=5,
                  generator=torch.Generator().manual_seed(0), progress=False)
    assert torch.equal(out, images)


@pytest.mark.parametrize("sampler", ["ddim", "dpmpp"])
def test_inpainting_keeps_the_known_pixels_and_fills_the_hole(model, schedule20, sampler):
    images = originals()
    mask = box_mask(16, 4, 4, 8, 8)
    assert mask.sum() == 16 * 16 - 64
    out = inpaint(model, schedule20, images, mask, sampler=sampler, steps=5, classes="sunflower",
                  guidance_scale=3, generator=torch.Generator().manual_seed(0), progress=False)
    known = mask.bool().expand_as(images)
    assert torch.equal(out[known], images[known])
    assert not torch.allclose(out[~known], images[~known])
    # The unknown region comes from the sampler, not from the original: a different seed, a different fill.
    other = inpaint(model, schedule20, images, mask, sampler=sampler, steps=5, classes="sunflower",
                    guidance_scale=3, generator=torch.Generator().manual_seed(1), progress=False)
    assert not torch.equal(out, other)


def test_an_all_unknown_mask_is_plain_sampling(model, schedule20):
    """With nothing known, the hook changes nothing (mask 0): inpainting is ordinary sampling."""
    out = inpaint(model, schedule20, originals(), torch.zeros(1, 16, 16), sampler="ddim", steps=4,
                  generator=torch.Generator().manual_seed(2), progress=False)
    plain = sample(model, schedule20, 2, sampler="ddim", steps=4, generator=torch.Generator().manual_seed(2),
                   progress=False)
    assert torch.equal(out, plain)


@pytest.mark.parametrize("mask", [torch.ones(8, 8), torch.ones(3, 2, 16, 16), torch.ones(16), torch.ones(2, 2, 16, 16),
                                  torch.full((16, 16), 2.0), "centre"])
def test_a_mask_of_the_wrong_shape_or_range_is_one_line(model, schedule20, mask):
    with pytest.raises(ConfigError, match="mask") as err:
        inpaint(model, schedule20, originals(), mask, steps=2, progress=False)
    assert "\n" not in str(err.value)


def test_mask_shapes_that_broadcast_are_accepted():
    images = originals(2)
    for shape in [(16, 16), (1, 16, 16), (3, 16, 16), (2, 1, 16, 16), (1, 3, 16, 16)]:
        assert check_mask(torch.ones(shape, dtype=torch.bool), images).ndim == 4


def test_images_must_be_a_float_batch(model, schedule20):
    with pytest.raises(ConfigError, match="images"):
        sdedit(model, schedule20, torch.zeros(3, 16, 16), 0.5, progress=False)
    with pytest.raises(ConfigError, match="channels"):
        inpaint(model, schedule20, torch.zeros(1, 1, 16, 16), torch.ones(16, 16), progress=False)


@pytest.mark.parametrize("edit", ["sdedit", "inpaint"])
@pytest.mark.parametrize("kwargs, message", [(dict(classes="tulip"), "unknown class"), (dict(classes=7), "class id"),
                                             (dict(classes="daisy", guidance_scale=float("nan")), "guidance_scale")])
def test_bad_class_or_guidance_in_an_edit_is_one_line(model, schedule20, edit, kwargs, message):
    run = (lambda: sdedit(model, schedule20, originals(), 0.5, steps=2, progress=False, **kwargs)) if edit == "sdedit" \
        else (lambda: inpaint(model, schedule20, originals(), torch.ones(16, 16), steps=2, progress=False, **kwargs))
    with pytest.raises(ConfigError, match=message) as err:
        run()
    assert "\n" not in str(err.value)
