"""Class conditioning and classifier-free guidance: labels from each data source, the class
embedding, label dropout in the loss, GuidedModel's arithmetic, sample(classes=…), fine-tuning an
unconditional checkpoint into a conditional one, and the CLI's --class/--guidance/--no-labels."""

from __future__ import annotations

import math

import pytest
import torch
from PIL import Image

from conftest import tiny_config, tiny_unet
from diffusion_utils import (ConfigError, TrainConfig, diffusion_loss, load_checkpoint,
                             load_dataset, load_model, make_synthetic_flowers, sample, train)
from diffusion_utils.cli import main
from diffusion_utils.data.data import SYNTHETIC_CLASS_NAMES, epoch_batches
from diffusion_utils.plumbing.errors import CheckpointError
from diffusion_utils.guidance import GuidedModel, check_guidance_scale, class_ids

NAMES = ("red rose", "sunflower", "daisy")


def conditional_unet(**kwargs):
    """A tiny 3-class UNet whose class embedding is random (perturbed), so classes matter."""
    return tiny_unet(num_classes=3, class_names=NAMES, **kwargs)


# ---------------------------------------------------------------------------------------------
# Labels in the data
def test_synthetic_labels_are_the_petal_colours_and_leave_the_images_unchanged():
    images, labels = make_synthetic_flowers(40, 16, seed=3, return_labels=True)
    assert torch.equal(images, make_synthetic_flowers(40, 16, seed=3))
    assert labels.dtype == torch.long and labels.shape == (40,)
    assert 0 <= labels.min() and labels.max() < len(SYNTHETIC_CLASS_NAMES) and len(labels.unique()) > 3
    ds = load_dataset("synthetic", 16, max_images=40, seed=3)
    assert torch.equal(ds.labels, labels) and ds.class_names == list(SYNTHETIC_CLASS_NAMES)
    # Red petals are redder than blue ones: the label describes the picture.
    red, blue = images[labels == 0].float(), images[labels == SYNTHETIC_CLASS_NAMES.index("blue")].float()
    assert (red[:, 0] - red[:, 2]).mean() > (blue[:, 0] - blue[:, 2]).mean()


def _write_images(folder, colours):
    folder.mkdir(parents=True, exist_ok=True)
    for i, colour in enumerate(colours):
        Image.new("RGB", (20, 20), colour).save(folder / f"im{i}.png")


def test_an_image_folder_with_class_subfolders_has_labels(tmp_path):
    _write_images(tmp_path / "tulip", [(200, 0, 0)] * 2)
    _write_images(tmp_path / "iris", [(0, 0, 200)] * 3)
    (tmp_path / "iris" / "broken.png").write_bytes(b"not an image")  # skipped, labels stay aligned
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):
        ds = load_dataset(str(tmp_path), 16, progress=False)
    assert ds.class_names == ["iris", "tulip"] and ds.num_classes == 2
    is_red = ds.images[:, 0, 0, 0] > 100
    assert torch.equal(ds.labels, is_red.long())  # tulips are red, irises blue
    sub = load_dataset(str(tmp_path), 16, max_images=3, seed=1, progress=False)  # cached; a subset
    assert torch.equal(sub.labels, (sub.images[:, 0, 0, 0] > 100).long())


@pytest.mark.parametrize("layout", ["flat", "one subfolder", "mixed"])
def test_an_image_folder_without_class_subfolders_has_no_labels(tmp_path, layout):
    if layout in ("flat", "mixed"):
        _write_images(tmp_path, [(10, 10, 10)] * 2)
    if layout in ("one subfolder", "mixed"):
        _write_images(tmp_path / "only", [(10, 10, 10)] * 2)
    ds = load_dataset(str(tmp_path), 16, progress=False)
    assert ds.labels is None and ds.class_names is None and ds.num_classes == 0


def test_epoch_batches_with_labels_yields_the_same_images_and_their_labels():
    images, labels = make_synthetic_flowers(20, 8, seed=0, return_labels=True)
    plain = list(epoch_batches(images, 8, torch.Generator().manual_seed(5)))
    paired = list(epoch_batches(images, 8, torch.Generator().manual_seed(5), labels=labels))
    assert len(plain) == len(paired) == 2
    for x, (x2, y) in zip(plain, paired):
        assert torch.equal(x, x2)
        # Each image's label is the label of the training image it came from (flipped or not).
        for img, label in zip(x2, y):
            u8 = ((img + 1) * 127.5).round().to(torch.uint8)
            match = [i for i in range(20) if torch.equal(images[i], u8) or torch.equal(images[i], u8.flip(-1))]
            assert labels[match[0]] == label


# ---------------------------------------------------------------------------------------------
# The class-conditional UNet and the loss
def test_unconditional_unet_has_no_class_embedding_and_refuses_labels():
    model = tiny_unet()
    assert model.num_classes == 0 and not hasattr(model, "class_embedding")
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([3, 7])
    with pytest.raises(ConfigError, match="unconditional"):
        model(x, t, torch.tensor([0, 1]))


def test_a_new_conditional_unet_starts_equal_to_the_unconditional_one():
    """The class embedding starts at zero, so copying an unconditional model's weights gives the
    same function for every class — fine-tuning starts where the unconditional model was."""
    torch.manual_seed(0)
    uncond = tiny_unet(seed=1)
    cond = tiny_unet(seed=1, num_classes=3)  # tiny_unet perturbs zeros: reset the embedding
    torch.nn.init.zeros_(cond.class_embedding.weight)
    cond.load_state_dict(uncond.state_dict(), strict=False)
    x, t = torch.randn(3, 3, 16, 16), torch.tensor([1, 20, 40])
    for y in (None, torch.tensor([0, 1, 2]), torch.tensor([3, 3, 3])):
        assert torch.equal(cond(x, t, y), uncond(x, t))


def test_labels_change_the_output_and_none_means_the_null_class():
    model = conditional_unet()
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([10, 10])
    out0, out1 = model(x, t, torch.tensor([0, 0])), model(x, t, torch.tensor([1, 1]))
    assert not torch.allclose(out0, out1)
    assert torch.equal(model(x, t), model(x, t, torch.full((2,), model.null_class)))


def test_label_dropout_1_is_the_unconditional_loss_and_0_keeps_the_labels(schedule20):
    model = conditional_unet()
    x0, y = torch.rand(4, 3, 16, 16) * 2 - 1, torch.tensor([0, 1, 2, 1])

    def loss(**kw):
        return diffusion_loss(model, schedule20, x0, generator=torch.Generator().manual_seed(7), **kw)

    assert torch.equal(loss(y=y, p_uncond=1.0 - 1e-12), loss())  # every label dropped → ∅
    assert not torch.equal(loss(y=y, p_uncond=0.0), loss())


# ---------------------------------------------------------------------------------------------
# Guidance
def test_guided_model_mixes_the_two_branches_and_w_0_1_are_exact():
    model = conditional_unet()
    x, t, c = torch.randn(2, 3, 16, 16), torch.tensor([5, 30]), torch.tensor([2, 0])
    null = torch.full((2,), model.null_class)
    eps_c, eps_null = model(x, t, c), model(x, t, null)
    assert torch.equal(GuidedModel(model, c, 0)(x, t), eps_null)
    assert torch.equal(GuidedModel(model, c, 1)(x, t), eps_c)
    assert torch.allclose(GuidedModel(model, c, 3.5)(x, t), eps_null + 3.5 * (eps_c - eps_null), atol=1e-5)


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_sample_with_guidance_0_is_unconditional_and_1_is_conditional(prediction, schedule20):
    model = conditional_unet(prediction=prediction)

    def run(**kw):
        return sample(model, schedule20, 3, sampler="ddim", steps=4, progress=False,
                      generator=torch.Generator().manual_seed(1), **kw)

    assert torch.equal(run(classes="sunflower", guidance_scale=0), run())
    assert torch.equal(run(classes="Sunflower", guidance_scale=1), run(classes=1))
    assert not torch.equal(run(classes="sunflower", guidance_scale=3), run(classes="daisy", guidance_scale=3))
    per_image = run(classes=["red rose", 1, "daisy"], guidance_scale=2)
    assert torch.equal(per_image[1:2], sample(model, schedule20, 3, sampler="ddim", steps=4, progress=False,
                                               generator=torch.Generator().manual_seed(1),
                                               classes=1, guidance_scale=2)[1:2])


def test_class_ids_accept_names_and_ids_and_explain_mistakes():
    model = conditional_unet()
    assert class_ids("daisy", model, 3).tolist() == [2, 2, 2]
    assert class_ids(["Red Rose", "1", 2], model, 3).tolist() == [0, 1, 2]
    with pytest.raises(ConfigError, match=r"unknown class 'sunflowr'; did you mean 'sunflower'\?"):
        class_ids("sunflowr", model, 1)
    with pytest.raises(ConfigError, match=r"class id must be in \[0, 2\]; got 3"):
        class_ids(3, model, 1)
    with pytest.raises(ConfigError, match="one class for all 4 images or one per image; got 2"):
        class_ids([0, 1], model, 4)
    with pytest.raises(ConfigError, match="unconditional"):
        class_ids("daisy", tiny_unet(), 1)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -1.0, "strong", None])
def test_a_guidance_scale_that_is_not_a_finite_number_is_refused(bad, schedule20):
    with pytest.raises(ConfigError, match="guidance_scale must be"):
        check_guidance_scale(bad)
    if bad is not None:
        with pytest.raises(ConfigError, match="guidance_scale must be"):
            sample(conditional_unet(), schedule20, 1, sampler="ddim", steps=2, classes=0,
                   guidance_scale=bad, progress=False)


def test_guidance_without_classes_is_refused(schedule20):
    with pytest.raises(ConfigError, match="needs classes"):
        sample(conditional_unet(), schedule20, 1, sampler="ddim", steps=2, guidance_scale=2, progress=False)


# ---------------------------------------------------------------------------------------------
# Training and checkpoints
def test_labelled_data_trains_a_conditional_model_that_round_trips(trained_run):
    """The shared tiny run (synthetic flowers have colour labels) is class-conditional."""
    config = load_checkpoint(trained_run.checkpoint_path)["config"]
    assert config.num_classes == len(SYNTHETIC_CLASS_NAMES) and config.class_names == SYNTHETIC_CLASS_NAMES
    model, _, _ = load_model(trained_run.checkpoint_path)
    assert model.num_classes == 8 and model.class_names == SYNTHETIC_CLASS_NAMES


def test_num_classes_0_trains_unconditionally_and_a_wrong_count_is_refused(tmp_path):
    dataset = load_dataset("synthetic", 16, max_images=16)
    result = train(tiny_config(num_classes=0, max_images=16), tmp_path / "u", dataset=dataset, progress=False)
    assert result.model.num_classes == 0 and load_checkpoint(result.checkpoint_path)["config"].num_classes == 0
    with pytest.raises(ConfigError, match="num_classes is 5 but the data has 8 classes"):
        train(tiny_config(num_classes=5), tmp_path / "w", dataset=dataset, progress=False)


def test_init_from_an_unconditional_checkpoint_starts_a_conditional_run_where_it_was(tmp_path):
    dataset = load_dataset("synthetic", 16, max_images=16)
    uncond = train(tiny_config(num_classes=0, max_images=16), tmp_path / "u", dataset=dataset, progress=False)
    seen = {}

    def first_step(step, loss):
        seen.setdefault("loss", loss)

    cond = train(tiny_config(max_images=16, lr=1e-12, lr_warmup_steps=0), tmp_path / "c", dataset=dataset,
                 init_from=uncond.checkpoint_path, progress=False, on_step=first_step)
    assert cond.model.num_classes == 8
    start, _, _ = load_model(uncond.checkpoint_path)
    for name, value in start.state_dict().items():  # lr ≈ 0: the weights are still the EMA's
        assert torch.allclose(cond.model.state_dict()[name], value, atol=1e-6), name
    with pytest.raises(CheckpointError, match="base_channels"):
        train(tiny_config(max_images=16, base_channels=16), tmp_path / "d", dataset=dataset,
              init_from=uncond.checkpoint_path, progress=False)


def test_a_config_saved_before_class_conditioning_reads_as_unconditional():
    saved = tiny_config(num_classes=0).to_dict()
    del saved["num_classes"], saved["p_uncond"], saved["class_names"]
    assert TrainConfig.from_dict(saved).num_classes == 0
    assert TrainConfig().num_classes is None  # a new config: from the data


@pytest.mark.parametrize("field, value", [("num_classes", -1), ("p_uncond", 1.0), ("p_uncond", -0.1),
                                          ("class_names", ("a", "b"))])
def test_bad_conditioning_settings_are_refused(field, value):
    with pytest.raises(ConfigError, match=field):
        tiny_config(**{field: value, **({"num_classes": 3} if field == "class_names" else {})})


# ---------------------------------------------------------------------------------------------
# CLI
def _main(argv) -> int:
    try:
        return main([str(a) for a in argv])
    except SystemExit as exit_:
        return exit_.code


def test_cli_samples_a_named_class_with_guidance(checkpoint_copy, capsys):
    out = checkpoint_copy.parent
    assert _main(["sample", "--checkpoint", checkpoint_copy, "--n", 4, "--steps", 2, "--sampler", "ddim",
                  "--class", "red,blue", "--guidance", 2.5, "--frames", 2, "--no-progress"]) == 0
    assert "class red,blue, guidance 2.5" in capsys.readouterr().err
    assert (out / "samples_grid.png").exists()


@pytest.mark.parametrize("extra, message", [
    (["--class", "rd"], "unknown class 'rd'; did you mean 'red'?"),
    (["--class", "99"], "class id must be in [0, 7]; got 99"),
    (["--guidance", "2"], "--guidance needs --class"),
    (["--class", "red", "--guidance", "nan"], "guidance_scale must be a finite number"),
])
def test_cli_bad_class_or_guidance_is_one_line(checkpoint_copy, capsys, extra, message):
    assert _main(["sample", "--checkpoint", checkpoint_copy, "--n", 2, "--steps", 2, "--sampler", "ddim",
                  "--no-progress", *extra]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "Traceback" not in err
    assert not (checkpoint_copy.parent / "samples_grid.png").exists()


def test_cli_no_labels_trains_unconditionally_and_class_is_refused_then(tmp_path, capsys):
    out = tmp_path / "run"
    assert _main(["train", "--preset", "quick", "--data", "synthetic", "--max-images", 16, "--epochs", 1,
                  "--img-size", 16, "--base-channels", 8, "--batch-size", 16, "--n-steps", 20,
                  "--sample-steps", 2, "--no-progress", "--no-labels", "--out", out]) == 0
    assert "unconditional" in capsys.readouterr().err
    assert load_checkpoint(out / "diffusion_unet_pixels.pth")["config"].num_classes == 0
    assert _main(["sample", "--checkpoint", out / "diffusion_unet_pixels.pth", "--n", 1, "--class", "red",
                  "--no-progress"]) == 2
    assert "unconditional" in capsys.readouterr().err
