"""Spherical interpolation of starting noises, class-embedding interpolation, and the decoded strip."""

from __future__ import annotations

import pytest
import torch

from conftest import tiny_unet
from diffusion_utils import ConfigError, interpolate, sample, slerp
from diffusion_utils.guidance import GuidedModel
from diffusion_utils.interpolation import class_mix

NAMES = ("red rose", "sunflower", "daisy")


@pytest.fixture(scope="module")
def model():
    return tiny_unet(num_classes=3, class_names=NAMES)


def noises(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(3, 16, 16, generator=g), torch.randn(3, 16, 16, generator=g)


def test_slerp_endpoints_are_the_inputs_and_the_norm_is_kept():
    a, b = noises()
    b = b * a.norm() / b.norm()  # equal norms: every point on the arc has that norm
    path = slerp(a, b, torch.linspace(0, 1, 7))
    assert path.shape == (7, 3, 16, 16)
    assert torch.equal(path[0], a) and torch.equal(path[-1], b)
    torch.testing.assert_close(path.flatten(1).norm(dim=1), torch.full((7,), float(a.norm())))
    # A straight line would lose norm in the middle — which is why slerp is used.
    assert ((a + b) / 2).norm() < 0.8 * a.norm()


def test_slerp_of_parallel_inputs_is_linear_and_shapes_must_match():
    a = torch.ones(4)
    torch.testing.assert_close(slerp(a, 2 * a, [0.5])[0], 1.5 * a)
    with pytest.raises(ConfigError, match="same shape"):
        slerp(torch.ones(3), torch.ones(4), [0.5])


def test_class_mix_endpoints_are_the_class_embeddings(model):
    mix = class_mix(model, "red rose", "daisy", torch.linspace(0, 1, 3))
    assert mix.shape == (3, 4) and torch.allclose(mix.sum(1), torch.ones(3))
    t = torch.zeros(3, dtype=torch.long)
    emb_soft = model.embed_classes(mix, 3)
    emb_hard = model.embed_classes(torch.tensor([0, 2, 2]), 3)
    assert torch.equal(emb_soft[0], emb_hard[0]) and torch.equal(emb_soft[2], emb_hard[2])
    torch.testing.assert_close(emb_soft[1], (emb_hard[0] + emb_hard[2]) / 2)
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # one-hot weights are the same network as integer ids
        torch.testing.assert_close(model(x[:1], t[:1], mix[:1]), model(x[:1], t[:1], torch.tensor([0])))
        guided_soft = GuidedModel(model, mix, 3.0)(x, t)
        guided_ids = GuidedModel(model, torch.tensor([0, 1, 2]), 3.0)(x, t)
    torch.testing.assert_close(guided_soft[0], guided_ids[0])
    with pytest.raises(ConfigError, match="unknown class"):
        class_mix(model, "red rose", "tulip", [0.5])


def test_interpolation_endpoints_are_the_two_samples(model, schedule20):
    a, b = noises(1)
    strip = interpolate(model, schedule20, 5, noise=(a, b), classes=("red rose", "daisy"), guidance_scale=2,
                        steps=4)
    assert strip.shape == (5, 3, 16, 16)
    ends = [sample(model, schedule20, 1, sampler="ddim", steps=4, x_T=z[None], classes=c, guidance_scale=2,
                   progress=False)[0] for z, c in ((a, "red rose"), (b, "daisy"))]
    torch.testing.assert_close(strip[0], ends[0])
    torch.testing.assert_close(strip[-1], ends[1])
    assert not torch.allclose(strip[2], strip[0]) and not torch.allclose(strip[2], strip[-1])


def test_interpolation_unconditional_or_one_class_is_deterministic(model, schedule20):
    one = interpolate(model, schedule20, 3, generator=torch.Generator().manual_seed(4), classes="sunflower",
                      sampler="dpmpp", steps=3)
    again = interpolate(model, schedule20, 3, generator=torch.Generator().manual_seed(4), classes=1,
                        sampler="dpmpp", steps=3)
    assert torch.equal(one, again)
    uncond = interpolate(tiny_unet(), schedule20, 3, generator=torch.Generator().manual_seed(4), steps=3)
    assert uncond.shape == (3, 3, 16, 16)


@pytest.mark.parametrize("kwargs, message", [
    (dict(sampler="ddpm"), "deterministic"),
    (dict(n_frames=1), "n_frames"),
    (dict(classes=("red rose", "tulip")), "unknown class"),
    (dict(classes=("red rose", "daisy", "sunflower")), "one class or a pair"),
    (dict(classes=("red rose", "daisy"), guidance_scale=float("nan")), "guidance_scale"),
    (dict(noise=(torch.zeros(3, 8, 8), torch.zeros(3, 8, 8))), "noise"),
])
def test_bad_interpolation_settings_are_one_line(model, schedule20, kwargs, message):
    with pytest.raises(ConfigError, match=message) as err:
        interpolate(model, schedule20, **{"n_frames": 3, "steps": 2, **kwargs})
    assert "\n" not in str(err.value)


def test_classes_of_an_unconditional_model_are_refused(schedule20):
    with pytest.raises(ConfigError, match="unconditional"):
        interpolate(tiny_unet(), schedule20, 3, steps=2, classes=("red rose", "daisy"))
