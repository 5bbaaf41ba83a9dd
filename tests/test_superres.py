"""The cascade's second stage: an upsampler trained through the same UNet, loss and train_step."""

from __future__ import annotations

import pytest
import torch

import diffusion_utils.cli as cli
from diffusion_utils import (CHECKPOINT_NAME, CheckpointError, ConfigError, NoiseSchedule, TrainConfig, UNet, diffusion_loss,
                             export_pretrained, load_pretrained, sample_cascade, save_checkpoint, train, upsample)
from diffusion_utils.superres import downsample, noised_condition, training_pair, upsample_condition
from diffusion_utils.training import TrainState

from conftest import perturb_zero_init, tiny_config, tiny_unet

SR = dict(task="sr", img_size=16, crop_size=8, num_classes=0, attention_levels=(), mid_attention=False,
          prediction="v", loss_weighting="min_snr", cond_aug_max=20, sampler="dpmpp", sample_steps=4)


def tiny_sr(seed: int = 0, **kwargs) -> UNet:
    """A random tiny upsampler 8 px → 16 px (zero-init layers perturbed), in eval mode."""
    return tiny_unet(16, seed, attention_levels=(), mid_attention=False, cond_channels=3, low_res_size=8,
                     **kwargs)


def images(n: int, size: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


# ---------------------------------------------------------------------------------------------
# The training pair and the loss
# ---------------------------------------------------------------------------------------------
def test_training_pair_crops_the_target_and_its_condition_alike():
    x0 = images(6, 16)
    full_z = upsample_condition(downsample(x0, 8), 16)
    crops, z = training_pair(x0, low_res_size=8, crop_size=8, generator=torch.Generator().manual_seed(1))
    assert crops.shape == z.shape == (6, 3, 8, 8)
    for i in range(6):  # each crop is a window of its own image, and z the same window of its condition
        hits = [(r, c) for r in range(9) for c in range(9) if torch.equal(x0[i, :, r:r + 8, c:c + 8], crops[i])]
        assert len(hits) == 1
        r, c = hits[0]
        assert torch.equal(full_z[i, :, r:r + 8, c:c + 8], z[i])


def test_training_pair_without_crop_is_the_whole_image_and_a_blurred_condition():
    x0 = images(2, 16)
    same, z = training_pair(x0, low_res_size=8, crop_size=None)
    assert torch.equal(same, x0)
    assert (z - x0).abs().mean() > 0.1  # the 8 px version has lost the detail
    assert z.min() >= -1 and z.max() <= 1


def test_training_pair_split_over_ranks_is_one_process_draw():
    x0 = images(8, 16)
    whole = training_pair(x0, low_res_size=8, crop_size=8, generator=torch.Generator().manual_seed(3))
    halves = [training_pair(x0[r * 4:(r + 1) * 4], low_res_size=8, crop_size=8,
                            generator=torch.Generator().manual_seed(3), shard=(r, 2)) for r in range(2)]
    assert torch.equal(torch.cat([h[0] for h in halves]), whole[0])
    assert torch.equal(torch.cat([h[1] for h in halves]), whole[1])


class _Spy(torch.nn.Module):
    """Records what the loss hands the network."""
    prediction = "eps"

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, x, t, y=None, cond=None, cond_t=None):
        self.calls.append(dict(x=x, t=t, cond=cond, cond_t=cond_t))
        return torch.zeros_like(x)


def test_loss_noises_the_condition_to_a_level_it_tells_the_network():
    schedule = NoiseSchedule.linear(100)
    x0, z = images(64, 8), images(64, 8, seed=1)
    spy = _Spy()
    diffusion_loss(spy, schedule, x0, generator=torch.Generator().manual_seed(0), cond=z, cond_aug_max=30)
    call = spy.calls[0]
    s = call["cond_t"]
    assert s.shape == (64,) and 0 <= int(s.min()) and int(s.max()) <= 30 and len(set(s.tolist())) > 10
    # z_s = √ᾱ_s z + √(1−ᾱ_s) ε′: remove the signal part, and what is left has the std of level s
    residual = (call["cond"] - schedule.sqrt_alpha_bars[s][:, None, None, None] * z)
    expected_std = schedule.sqrt_one_minus_alpha_bars[s]
    measured = residual.flatten(1).std(dim=1)
    assert torch.allclose(measured, expected_std, rtol=0.35, atol=0.003)
    # with s_max = 0 every condition is at the first level: almost clean
    spy.calls.clear()
    diffusion_loss(spy, schedule, x0, generator=torch.Generator().manual_seed(0), cond=z, cond_aug_max=0)
    assert int(spy.calls[0]["cond_t"].max()) == 0
    assert (spy.calls[0]["cond"] - z).abs().max() < 0.1


def test_noised_condition_is_the_forward_process():
    schedule = NoiseSchedule.linear(100)
    z, noise, s = images(3, 8), images(3, 8, seed=2), torch.tensor([0, 50, 99])
    assert torch.equal(noised_condition(schedule, z, s, noise), schedule.q_sample(z, s, noise))


# ---------------------------------------------------------------------------------------------
# The network
# ---------------------------------------------------------------------------------------------
def test_upsampler_sees_its_condition_and_its_noise_level():
    model = tiny_sr()
    x, t = images(2, 16), torch.tensor([10, 10])
    z = images(2, 16, seed=1)
    out = model(x, t, cond=z, cond_t=torch.tensor([0, 0]))
    assert out.shape == x.shape
    assert not torch.allclose(out, model(x, t, cond=images(2, 16, seed=5), cond_t=torch.tensor([0, 0])))
    assert not torch.allclose(out, model(x, t, cond=z, cond_t=torch.tensor([40, 40])))
    with pytest.raises(ConfigError, match="upsampler"):
        model(x, t)
    with pytest.raises(ConfigError, match="takes no low-resolution condition"):
        tiny_unet(16)(x, t, cond=z, cond_t=torch.tensor([0, 0]))


def test_a_convolutional_upsampler_is_translation_equivariant_away_from_the_borders():
    """Why it can train on crops and sample whole images: without attention, the output at a pixel
    depends only on a neighbourhood, so a crop's output is the full image's output there (up to
    the borders, and to GroupNorm's statistics, which are per image)."""
    model = tiny_sr(seed=1)
    for module in model.modules():  # per-image normalisation is the one global operation: neutralise it
        if isinstance(module, torch.nn.GroupNorm):
            module.forward = lambda h: h
    x, z = images(1, 112), images(1, 112, seed=1)
    t, s = torch.tensor([5]), torch.tensor([0])
    full = model(x, t, cond=z, cond_t=s)
    crop = model(x[..., 16:96, 16:96], t, cond=z[..., 16:96, 16:96], cond_t=s)
    # The crop starts at an even offset (stride-2 convolutions are equivariant to shifts by 2), and
    # the tiny UNet's receptive field reaches 32 px: compare the pixels farther than that from the edge.
    m = 34
    assert torch.allclose(full[..., 16 + m:96 - m, 16 + m:96 - m], crop[..., m:-m, m:-m], atol=1e-5)
    assert not torch.allclose(full[..., 16:20, 16:20], crop[..., :4, :4], atol=1e-3)  # the borders differ


def test_config_checks_the_upsampler_settings():
    assert tiny_config(**SR).low_res_size == 8
    assert tiny_config(task="sr", num_classes=None, cond_aug_max=10, attention_levels=()).num_classes == 0
    with pytest.raises(ConfigError, match="crop_size"):
        tiny_config(crop_size=8)  # a generator does not train on crops
    with pytest.raises(ConfigError, match="crop_size"):
        tiny_config(**{**SR, "crop_size": 7})
    with pytest.raises(ConfigError, match="num_classes"):
        tiny_config(**{**SR, "num_classes": 3})
    with pytest.raises(ConfigError, match="cond_aug_max"):
        tiny_config(**{**SR, "cond_aug_max": 50})  # n_steps is 50
    with pytest.raises(ConfigError, match="task"):
        tiny_config(task="inpaint")


# ---------------------------------------------------------------------------------------------
# Sampling: upsample and the cascade
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpmpp"])
def test_upsample_runs_every_sampler_and_is_seeded(sampler):
    model, schedule = tiny_sr(), NoiseSchedule.linear(20)
    low = images(3, 8)
    a = upsample(model, schedule, low, sampler=sampler, generator=torch.Generator().manual_seed(0), progress=False)
    b = upsample(model, schedule, low, sampler=sampler, generator=torch.Generator().manual_seed(0), progress=False)
    assert a.shape == (3, 3, 16, 16) and torch.equal(a, b)
    assert a.min() >= -1 and a.max() <= 1
    other = upsample(model, schedule, images(3, 8, seed=9), sampler=sampler,
                     generator=torch.Generator().manual_seed(0), progress=False)
    assert not torch.equal(a, other)  # the condition matters


def test_upsample_uses_the_models_noise_level_unless_told():
    model, schedule = tiny_sr(cond_aug_level=15), NoiseSchedule.linear(20)
    low, gen = images(2, 8), lambda: torch.Generator().manual_seed(0)
    default = upsample(model, schedule, low, steps=3, generator=gen(), progress=False)
    assert torch.equal(default, upsample(model, schedule, low, steps=3, aug_level=15, generator=gen(), progress=False))
    assert not torch.equal(default, upsample(model, schedule, low, steps=3, aug_level=0, generator=gen(),
                                             progress=False))


@pytest.mark.parametrize("low_res, message", [
    (images(2, 4), "takes 8 px images to 16 px; got 4×4"),
    (images(2, 8) * 3, "values in \\[-1, 1\\]"),
    (torch.zeros(2, 1, 8, 8), "a batch of images"),
    (torch.full((2, 3, 8, 8), float("nan")), "values in \\[-1, 1\\]"),
    ("a picture", "a batch of images"),
])
def test_upsample_refuses_a_bad_condition_in_one_line(low_res, message):
    with pytest.raises(ConfigError, match=message) as err:
        upsample(tiny_sr(), NoiseSchedule.linear(20), low_res, progress=False)
    assert "\n" not in str(err.value)


def test_upsample_refuses_a_model_that_is_not_an_upsampler():
    with pytest.raises(ConfigError, match="not an upsampler"):
        upsample(tiny_unet(16), NoiseSchedule.linear(20), images(2, 8), progress=False)


def test_sample_cascade_keeps_the_base_models_classes_and_guidance():
    torch.manual_seed(0)
    base = perturb_zero_init(UNet(base_channels=8, channel_mults=(1, 2), num_res_blocks=1, attention_levels=(),
                                  time_emb_dim=16, img_size=8, num_classes=3, class_names=("a", "b", "c"))).eval()
    sr, schedule = tiny_sr(), NoiseSchedule.linear(20)
    run = lambda **kw: sample_cascade(base, sr, schedule, 2, steps=3, sr_steps=3, progress=False,  # noqa: E731
                                      generator=torch.Generator().manual_seed(0), **kw)
    a = run(classes="a", guidance_scale=2.0)
    assert a.shape == (2, 3, 16, 16)
    assert torch.equal(a, run(classes="a", guidance_scale=2.0))
    assert not torch.equal(a, run(classes="c", guidance_scale=2.0))
    with pytest.raises(ConfigError, match="takes 8 px images to 16 px; got 16×16"):
        sample_cascade(tiny_unet(16), sr, schedule, 2, progress=False)


# ---------------------------------------------------------------------------------------------
# Training and the CLI
# ---------------------------------------------------------------------------------------------
def test_train_on_crops_then_sample_whole_images_and_resume(tmp_path):
    config = tiny_config(**SR, max_images=16, batch_size=8, num_epochs=1)
    result = train(config, tmp_path, progress=False)
    assert result.epoch_grids[1].shape == (4, 3, 16, 16)  # the grid upsamples whole 16 px images
    assert len(result.losses) == 2
    again = train(config.replace(num_epochs=2), tmp_path, resume=True, progress=False)
    assert len(again.losses) == 4 and again.losses[:2] == result.losses
    fresh = tmp_path / "fresh"
    straight = train(config.replace(num_epochs=2), fresh, progress=False)
    assert straight.losses == again.losses  # resuming an upsampler run replays the same draws


def test_resume_refuses_a_generator_checkpoint_for_an_upsampler_run(tmp_path):
    sr = tiny_config(**SR, max_images=16, num_epochs=1)
    generator = sr.replace(task="generate", crop_size=None)  # the same network but for the input
    train(generator, tmp_path, progress=False)
    with pytest.raises(CheckpointError, match="task='generate' but the config asks for task='sr'"):
        train(sr.replace(num_epochs=2), tmp_path, resume=True, progress=False)


@pytest.fixture
def exported_sr(tmp_path):
    """A tiny untrained upsampler 8 → 16 px, exported as a pretrained file."""
    config = tiny_config(**SR)
    state = TrainState(config, torch.device("cpu"))
    ckpt = save_checkpoint(tmp_path / CHECKPOINT_NAME, state.state_dict(state.data_rng.get_state()))
    return export_pretrained(ckpt, tmp_path / "sr_tiny.pt")


@pytest.fixture
def exported_base(tmp_path, trained_run):
    return export_pretrained(trained_run.checkpoint_path, tmp_path / "base_tiny.pt")


def test_load_pretrained_gives_an_upsampler(exported_sr):
    model, schedule, config = load_pretrained(exported_sr)
    assert model.cond_channels == 3 and model.low_res_size == 8 and config.task == "sr"
    assert upsample(model, schedule, images(1, 8), steps=2, progress=False).shape == (1, 3, 16, 16)
    card = exported_sr.with_suffix(".md").read_text()
    assert "# sr_tiny: a pretrained diffusion_utils upsampler" in card
    assert "draws 16×16 RGB images given 8×8 ones" in card and "s ∈ [0, 20]" in card
    assert "upsample(sr, sr_schedule, small)" in card and "--upscale sr_tiny" in card


def test_cli_upscale_writes_the_four_outputs_at_the_upsamplers_size(tmp_path, exported_sr, capsys):
    base = tiny_config()  # the session's trained_run is 16 px; this base must draw 8 px images
    state = TrainState(base.replace(img_size=8), torch.device("cpu"))
    base_pt = export_pretrained(save_checkpoint(tmp_path / "b" / CHECKPOINT_NAME,
                                                state.state_dict(state.data_rng.get_state())), tmp_path / "b8.pt")
    out = tmp_path / "out"
    assert cli.main(["sample", "--pretrained", str(base_pt), "--upscale", str(exported_sr), "--n", "3",
                     "--steps", "3", "--sampler", "ddim", "--frames", "4", "--out", str(out), "--no-progress"]) == 0
    from PIL import Image
    grid = Image.open(out / "samples_grid.png")
    assert grid.size == (2 * 16 + 3 * 2, 2 * 16 + 3 * 2)  # 3 images of 16 px in a 2 × 2 grid, padding 2
    gif = Image.open(out / "diffusion_animation.gif")
    assert gif.n_frames == 8  # 4 frames of each stage (3 + 1 states of the base, 4 + 1 of the upsampler)
    assert (out / "generated_pixel_diffusion.png").exists()


def test_cli_upscale_refuses_a_model_that_is_not_an_upsampler_or_of_another_size(tmp_path, exported_base,
                                                                                    exported_sr, capsys):
    out = tmp_path / "nothing"
    for upscaler, message in [(exported_base, "draws from noise"), (exported_sr, "takes 8 px images")]:
        code = cli.main(["sample", "--pretrained", str(exported_base), "--upscale", str(upscaler), "--out", str(out)])
        err = capsys.readouterr().err.strip()
        assert code == 2 and message in err and len(err.splitlines()) == 1
        assert not out.exists() or not any(out.iterdir())


def test_cli_refuses_to_sample_an_upsampler_without_a_base(tmp_path, exported_sr, capsys):
    out = tmp_path / "nothing"
    assert cli.main(["sample", "--pretrained", str(exported_sr), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "is an upsampler" in err and "--upscale" in err and len(err.splitlines()) == 1
    assert not out.exists() or not any(out.iterdir())


def test_cli_trains_an_upsampler_from_any_preset(tmp_path, capsys):
    out = tmp_path / "sr"
    assert cli.main(["train", "--preset", "quick", "--task", "sr", "--img-size", "16", "--crop-size", "8",
                     "--data", "synthetic", "--max-images", "16", "--batch-size", "8", "--epochs", "1",
                     "--n-steps", "50", "--cond-aug-max", "10", "--sample-steps", "2", "--out", str(out),
                     "--no-progress"]) == 0
    model, _, config = load_pretrained(export_pretrained(out / CHECKPOINT_NAME, tmp_path / "sr.pt"))
    assert config.task == "sr" and config.crop_size == 8 and model.low_res_size == 8


def test_export_sets_the_noise_level_an_upsampler_samples_at(tmp_path, exported_sr, trained_run, capsys):
    checkpoint = exported_sr.parent / CHECKPOINT_NAME
    assert cli.main(["export", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "s7.pt"), "--aug-level", "7"]) == 0
    model, _, config = load_pretrained(tmp_path / "s7.pt")
    assert model.cond_aug_level == config.cond_aug_level == 7
    assert "samples at s = 7" in (tmp_path / "s7.md").read_text()
    capsys.readouterr()
    assert cli.main(["export", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "s.pt"), "--aug-level", "50"]) == 2
    assert "cond_aug_level" in capsys.readouterr().err  # T is 50 here: levels are 0 … 49
    assert cli.main(["export", "--checkpoint", str(trained_run.checkpoint_path), "--out", str(tmp_path / "g.pt"),
                     "--aug-level", "3"]) == 2
    assert "not an upsampler" in capsys.readouterr().err
