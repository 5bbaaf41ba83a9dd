"""TrainConfig: the original design as defaults, presets, validation, environment, round trips."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from diffusion_utils import DATA_ENV, PRESET_ENV, ConfigError, TrainConfig, UNet
from diffusion_utils.config import EPOCHS_ENV, EVAL_ENV, eval_samples_from_env


def test_defaults_are_the_original_design():
    """64 px, batch 64, T = 1000, β from 1e-4 to 0.02, base 64, time embedding 128, 300 epochs,
    1000-step ancestral sampling, Flowers102."""
    c = TrainConfig()
    assert (c.img_size, c.batch_size, c.n_steps, c.num_epochs) == (64, 64, 1000, 300)
    assert (c.beta_start, c.beta_end, c.schedule) == (1e-4, 0.02, "linear")
    assert (c.base_channels, c.time_emb_dim) == (64, 128)
    assert c.data == "flowers102" and c.max_images is None
    assert c.sampler == "ddpm" and c.steps_for_sampling == 1000


def test_presets_build():
    """'full' is the defaults; 'quick' is smaller but valid; overrides apply on top; both build a UNet."""
    assert TrainConfig.preset("full") == TrainConfig()
    quick = TrainConfig.preset("quick")
    assert quick.img_size < 64 and quick.num_epochs < 300 and quick.max_images
    assert quick.steps_for_sampling < quick.n_steps and quick.sampler != "ddpm"
    assert TrainConfig.preset("quick", num_epochs=3).num_epochs == 3
    for config in (quick, TrainConfig()):
        model = UNet.from_config(config)
        assert model.img_size == config.img_size
    with pytest.raises(ConfigError, match="preset"):
        TrainConfig.preset("medium")
    with pytest.raises(ConfigError, match="unknown config field"):
        TrainConfig.preset("quick", epochs=3)


@pytest.mark.parametrize("field, value", [
    ("img_size", 0), ("img_size", -32), ("n_steps", 0), ("batch_size", -1), ("num_epochs", 0),
    ("base_channels", 0), ("num_res_blocks", 0), ("time_emb_dim", 0), ("sample_every", 0),
    ("sample_grid_n", -2), ("max_images", 0), ("max_images", -5),
    ("beta_start", 0.0), ("beta_end", 1.0), ("lr", 0.0), ("lr", -1e-3), ("dropout", 1.0),
    ("ema_decay", 1.0), ("grad_clip", 0.0), ("seed", -1), ("lr_warmup_steps", -1),
    ("sampler", "euler"), ("schedule", "sigmoid"), ("device", "gpu"), ("device", "tpu"),
    ("time_emb_dim", 15), ("attention_levels", (4,)), ("channel_mults", ()),
    ("prediction", "x0"), ("prediction", "EPS"), ("prediction", None), ("loss_weighting", "p2"),
    ("loss_weighting", None), ("snr_gamma", 0.0), ("snr_gamma", -1.0), ("snr_gamma", float("nan")),
    ("ema_gamma", 0.0), ("ema_gamma", -6.94), ("lr_decay", "linear"), ("lr_decay", None),
])
def test_invalid_values_raise_config_error_naming_the_field(field, value):
    """Each out-of-range value raises ConfigError, and the message names the field."""
    with pytest.raises(ConfigError) as info:
        TrainConfig(**{field: value})
    assert field in str(info.value) and "\n" not in str(info.value)


def test_beta_end_must_exceed_beta_start():
    with pytest.raises(ConfigError, match="beta_end"):
        TrainConfig(beta_start=0.02, beta_end=0.01)
    with pytest.raises(ConfigError, match="beta_end"):
        TrainConfig(beta_start=0.01, beta_end=0.01)


def test_img_size_must_be_divisible_for_the_unet():
    """Four levels halve three times: 64 is fine, 60 is not; with two levels 30 is fine."""
    with pytest.raises(ConfigError, match="img_size"):
        TrainConfig(img_size=60)
    with pytest.raises(ConfigError, match="img_size"):
        TrainConfig.preset("quick", img_size=30)
    assert TrainConfig(img_size=30, channel_mults=(1, 2), attention_levels=(1,)).img_size == 30


def test_sample_steps_rules():
    """sample_steps must be in [1, n_steps], and DDPM cannot use fewer than n_steps."""
    with pytest.raises(ConfigError, match="sample_steps"):
        TrainConfig(sampler="ddim", n_steps=100, sample_steps=101)
    with pytest.raises(ConfigError, match="sample_steps"):
        TrainConfig(sampler="ddim", sample_steps=0)
    with pytest.raises(ConfigError, match="sample_steps"):
        TrainConfig(sampler="ddpm", sample_steps=50)
    assert TrainConfig(sampler="ddpm", n_steps=100, sample_steps=100).steps_for_sampling == 100
    assert TrainConfig(sampler="ddim").steps_for_sampling == 50
    assert TrainConfig(sampler="dpmpp", n_steps=20).steps_for_sampling == 20
    assert TrainConfig(sampler="ddim", sample_steps=7).steps_for_sampling == 7


def test_valid_devices():
    for device in ("auto", "cpu", "cuda", "cuda:1", "mps"):
        assert TrainConfig(device=device).device == device


def test_replace_validates():
    c = TrainConfig()
    assert c.replace(num_epochs=2).num_epochs == 2 and c.num_epochs == 300
    with pytest.raises(ConfigError, match="num_epochs"):
        c.replace(num_epochs=0)
    with pytest.raises(ConfigError, match="unknown"):
        c.replace(epochs=2)


def test_from_env_reads_preset_and_data(monkeypatch):
    """DIFFUSION_PRESET picks the preset, DIFFUSION_DATA the data; explicit overrides win."""
    monkeypatch.setenv(PRESET_ENV, "quick")
    monkeypatch.setenv(DATA_ENV, "synthetic")
    c = TrainConfig.from_env()
    assert c == TrainConfig.preset("quick", data="synthetic")
    assert TrainConfig.from_env(data="/some/folder").data == "/some/folder"
    monkeypatch.setenv(PRESET_ENV, " FULL ")
    monkeypatch.setenv(DATA_ENV, "/data/flowers")
    assert TrainConfig.from_env() == TrainConfig(data="/data/flowers")
    monkeypatch.setenv(PRESET_ENV, "huge")
    with pytest.raises(ConfigError, match="preset"):
        TrainConfig.from_env()


def test_from_env_reads_the_epochs_and_refuses_a_bad_count(monkeypatch):
    """DIFFUSION_EPOCHS replaces the preset's epochs (CI's short notebook run); an explicit
    num_epochs still wins, and a value that is not a whole number is one line naming the variable."""
    monkeypatch.setenv(PRESET_ENV, "quick")
    monkeypatch.setenv(EPOCHS_ENV, " 2 ")
    assert TrainConfig.from_env() == TrainConfig.preset("quick", num_epochs=2)
    assert TrainConfig.from_env(num_epochs=5).num_epochs == 5
    for bad in ("two", "-1", "2.5"):
        monkeypatch.setenv(EPOCHS_ENV, bad)
        with pytest.raises(ConfigError, match=f"DIFFUSION_EPOCHS={bad!r} must be a whole number"):
            TrainConfig.from_env()
    monkeypatch.setenv(EPOCHS_ENV, "0")
    with pytest.raises(ConfigError, match="num_epochs"):
        TrainConfig.from_env()


def test_the_eval_sample_count_comes_from_the_environment_or_the_notebook(monkeypatch):
    """DIFFUSION_EVAL_SAMPLES (CI's short scoring in notebook 05) replaces the notebook's count; unset or
    blank it is the notebook's; anything but a whole number ≥ 2 is one line naming the variable."""
    monkeypatch.delenv(EVAL_ENV, raising=False)
    assert eval_samples_from_env(200) == 200
    monkeypatch.setenv(EVAL_ENV, " ")
    assert eval_samples_from_env(200) == 200
    monkeypatch.setenv(EVAL_ENV, " 50 ")
    assert eval_samples_from_env(200) == 50
    for bad in ("fifty", "-5", "1", "0", "2.5"):
        monkeypatch.setenv(EVAL_ENV, bad)
        with pytest.raises(ConfigError, match=f"DIFFUSION_EVAL_SAMPLES={bad!r} must be a whole number"):
            eval_samples_from_env(200)


def test_from_env_without_variables_uses_the_default_preset():
    """With neither variable set, the default_preset argument and the preset's own data apply."""
    assert TrainConfig.from_env(default_preset="full") == TrainConfig()
    assert TrainConfig.from_env(default_preset="quick") == TrainConfig.preset("quick")


def test_to_dict_from_dict_round_trip():
    """to_dict gives plain Python types (lists, not tuples); from_dict rebuilds an equal config
    and ignores unknown keys (checkpoints from newer versions)."""
    c = TrainConfig.preset("quick", data="synthetic", seed=3, sample_steps=20)
    d = c.to_dict()
    assert isinstance(d["channel_mults"], list) and isinstance(d["attention_levels"], list)
    assert all(isinstance(v, (int, float, str, bool, list, type(None))) for v in d.values())
    assert TrainConfig.from_dict(d) == c
    assert TrainConfig.from_dict({**d, "from_the_future": 1}) == c
    with pytest.raises(ConfigError):
        TrainConfig.from_dict({**d, "img_size": -1})


def test_prediction_and_loss_defaults_are_ho_et_al():
    """The defaults (and the full preset) are Ho et al.'s: ε-prediction, the unweighted simple
    loss; γ = 5 (Hang et al.'s default) and the EMA's γ = 6.94 (Karras et al.'s σ_rel = 0.10). The
    quick preset, chosen by bench_recipes, trains v-prediction with min-SNR weighting."""
    for c in (TrainConfig(), TrainConfig.preset("full")):
        assert (c.prediction, c.loss_weighting, c.snr_gamma, c.ema_gamma) == ("eps", "none", 5.0, 6.94)
    quick = TrainConfig.preset("quick")
    assert (quick.prediction, quick.loss_weighting, quick.snr_gamma, quick.ema_gamma) == ("v", "min_snr", 5.0, 6.94)
    c = TrainConfig(prediction="v", loss_weighting="min_snr", snr_gamma=2.5, ema_gamma=16.0)
    assert (c.prediction, c.loss_weighting, c.snr_gamma, c.ema_gamma) == ("v", "min_snr", 2.5, 16.0)


def test_unet_from_config_carries_the_prediction():
    """UNet.from_config builds a model whose .prediction is the config's; the weights do not
    depend on it (same seed → same parameters); an unknown prediction is a ConfigError."""
    import torch

    small = dict(img_size=8, base_channels=8, channel_mults=(1, 2), attention_levels=(1,), time_emb_dim=16)
    torch.manual_seed(0)
    eps_model = UNet.from_config(TrainConfig(**small))
    torch.manual_seed(0)
    v_model = UNet.from_config(TrainConfig(**small, prediction="v"))
    assert eps_model.prediction == "eps" and v_model.prediction == "v"
    for (name, a), (_, b) in zip(eps_model.state_dict().items(), v_model.state_dict().items()):
        assert torch.equal(a, b), name
    with pytest.raises(ConfigError, match="prediction"):
        UNet(**small, prediction="x0")


def test_new_fields_round_trip_and_default_when_missing():
    """prediction, loss_weighting, snr_gamma and ema_gamma survive to_dict/from_dict; a dict
    from before they existed (a checkpoint's config) gives ε-prediction and the simple loss."""
    c = TrainConfig.preset("quick", prediction="v", loss_weighting="min_snr", snr_gamma=3.0, ema_gamma=10.0)
    d = c.to_dict()
    assert (d["prediction"], d["loss_weighting"], d["snr_gamma"], d["ema_gamma"]) == ("v", "min_snr", 3.0, 10.0)
    assert TrainConfig.from_dict(d) == c
    old = {k: v for k, v in d.items() if k not in ("prediction", "loss_weighting", "snr_gamma", "ema_gamma")}
    restored = TrainConfig.from_dict(old)
    assert (restored.prediction, restored.loss_weighting, restored.snr_gamma, restored.ema_gamma) == \
        ("eps", "none", 5.0, 6.94)
    assert restored == c.replace(prediction="eps", loss_weighting="none", snr_gamma=5.0, ema_gamma=6.94)
    with pytest.raises(ConfigError, match="prediction"):
        TrainConfig.from_dict({**d, "prediction": "x0"})


@pytest.mark.parametrize("field, value", [
    ("num_epochs", True), ("batch_size", 16.0), ("img_size", "32"), ("seed", None), ("max_images", 2.5),
    ("lr", "1e-3"), ("lr", None), ("beta_start", True), ("bf16", 1), ("bf16", "yes"), ("data", 3),
    ("channel_mults", (1.5, 2, 2, 2)), ("channel_mults", "1222"), ("attention_levels", (True,)),
    ("sample_steps", 5.0),
])
def test_wrong_types_raise_config_error_naming_the_field(field, value):
    """A bool for a count, a float or a string for an integer, an int for a bool: one line naming the field."""
    with pytest.raises(ConfigError) as info:
        TrainConfig(**{field: value})
    message = str(info.value)
    assert message.startswith(field) and "\n" not in message


@pytest.mark.parametrize("field", ["lr", "beta_start", "beta_end", "dropout", "weight_decay", "grad_clip",
                                   "ema_decay", "ema_gamma", "snr_gamma"])
@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")])
def test_non_finite_hyperparameters_are_refused_when_the_config_is_built(field, value):
    with pytest.raises(ConfigError, match=f"^{field} must be a finite number"):
        TrainConfig(**{field: value})


@pytest.mark.parametrize("field, value", [("n_steps", 3_000_000_000), ("img_size", 2 ** 20), ("batch_size", 10 ** 9),
                                          ("num_epochs", 10 ** 12), ("base_channels", 10 ** 6), ("seed", 2 ** 64)])
def test_absurd_sizes_are_refused_with_the_allowed_range(field, value):
    with pytest.raises(ConfigError) as info:
        TrainConfig(**{field: value})
    assert str(info.value).startswith(f"{field} must be an integer in [")


def test_numpy_numbers_paths_and_lists_are_accepted_as_plain_types():
    """What notebooks pass: numpy integers and floats, pathlib paths for data, lists for tuples;
    stored as plain Python types (so a checkpoint holding the config loads with weights_only)."""
    c = TrainConfig(num_epochs=np.int64(3), batch_size=np.int32(8), lr=np.float32(1e-3), seed=np.uint8(7),
                    data=Path("some/folder"), data_root=Path("/data"), channel_mults=[1, np.int64(2), 2, 2])
    assert (c.num_epochs, c.batch_size, c.seed) == (3, 8, 7) and type(c.num_epochs) is int and type(c.lr) is float
    assert c.data == "some/folder" and c.data_root == "/data" and c.channel_mults == (1, 2, 2, 2)
    assert TrainConfig.from_dict(c.to_dict()) == c
    assert TrainConfig(lr=1).lr == 1.0  # an int is a fine float


def test_from_dict_of_a_non_dict_names_the_problem():
    with pytest.raises(ConfigError, match="must be a dict"):
        TrainConfig.from_dict(["lr", 1e-3])


def test_a_config_changed_after_it_was_built_is_checked_again():
    """validate() (which train() calls first) catches a field set to a bad value after construction."""
    c = TrainConfig()
    c.lr = float("inf")
    with pytest.raises(ConfigError, match="lr"):
        c.validate()


def test_validate_changes_nothing_and_settled_returns_the_settled_copy():
    """validate() only checks: fields assigned after the config was built (a numpy integer, a
    list, an upsampler's num_classes=None) stay as assigned. settled() returns a checked copy in
    the form a new config gets (int, tuple, an upsampler's 0 classes), leaving the original alone."""
    c = TrainConfig.preset("sr64")
    c.num_epochs, c.channel_mults, c.num_classes = np.int64(3), [1, 2, 2], None
    c.validate()
    assert type(c.num_epochs) is np.int64 and c.channel_mults == [1, 2, 2] and c.num_classes is None
    settled = c.settled()
    assert type(settled.num_epochs) is int and settled.channel_mults == (1, 2, 2) and settled.num_classes == 0
    assert type(c.num_epochs) is np.int64 and c.num_classes is None  # still as assigned
    assert settled == TrainConfig.preset("sr64", num_epochs=3, num_classes=None)
    assert settled.settled() == settled


def test_an_upsampler_is_built_with_no_classes_and_a_generator_keeps_none():
    """Building settles num_classes=None: 0 for an upsampler (the base model draws the class), None
    (from the data) for a model that draws from noise; the saved dict says the same."""
    assert TrainConfig(task="sr", img_size=64).num_classes == 0
    assert TrainConfig(task="sr", img_size=64).to_dict()["num_classes"] == 0
    assert TrainConfig().num_classes is None
    with pytest.raises(ConfigError, match="num_classes"):
        TrainConfig(task="sr", img_size=64, num_classes=5)
