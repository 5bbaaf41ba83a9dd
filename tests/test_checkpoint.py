"""Checkpoints: safe loading, EMA vs raw weights, one-line errors for bad files, atomic writes."""

from __future__ import annotations

import os
import pickle
import warnings

import pytest
import torch

from diffusion_utils import CheckpointError, TrainConfig, load_checkpoint, load_model, save_checkpoint
from diffusion_utils.plumbing.checkpoint import ENTRIES, FORMAT, check_compatible, checkpoint_problem
from diffusion_utils.plumbing.errors import short_reason

from conftest import tiny_config


def one_line(err: BaseException) -> str:
    message = str(err)
    assert message and "\n" not in message, repr(message)
    return message


def test_checkpoint_loads_with_weights_only(trained_run):
    """The file train() writes opens with torch.load(weights_only=True): plain types and tensors."""
    state = torch.load(trained_run.checkpoint_path, weights_only=True)
    assert state["format"] == FORMAT
    for key in ("config", "model", "ema", "optimizer", "step", "epoch", "batch_in_epoch", "losses",
                "epoch_grids", "rng"):
        assert key in state, key
    assert state["step"] == len(trained_run.losses) == 4 and state["epoch"] == 2
    assert state["batch_in_epoch"] == 0
    assert TrainConfig.from_dict(state["config"]) == trained_run.config
    assert state["losses"].tolist() == trained_run.losses


def test_save_and_load_round_trip(trained_run, tmp_path):
    """save_checkpoint → load_checkpoint gives back every entry, with the config as a TrainConfig."""
    state = torch.load(trained_run.checkpoint_path, weights_only=True)
    path = save_checkpoint(tmp_path / "sub" / "ck.pth", {k: v for k, v in state.items() if k != "format"})
    loaded = load_checkpoint(path)
    assert loaded["config"] == trained_run.config
    assert torch.equal(loaded["losses"], state["losses"]) and loaded["step"] == state["step"]
    assert sorted(loaded) == sorted(state)


def test_load_model_returns_ema_weights_by_default(trained_run):
    """load_model gives the EMA weights (use_ema=True) or the raw weights (use_ema=False), in
    eval mode, with the schedule and config the model was trained with."""
    ema_model, schedule, config = load_model(trained_run.checkpoint_path)
    raw_model, _, _ = load_model(trained_run.checkpoint_path, use_ema=False)
    assert config == trained_run.config and len(schedule) == config.n_steps
    assert not ema_model.training and not raw_model.training
    for name, value in ema_model.state_dict().items():
        assert torch.equal(value, trained_run.ema_model.state_dict()[name]), name
    for name, value in raw_model.state_dict().items():
        assert torch.equal(value, trained_run.model.state_dict()[name]), name
    differs = [n for n, v in ema_model.state_dict().items() if not torch.equal(v, raw_model.state_dict()[n])]
    assert differs, "after a few steps the EMA should differ from the raw weights"


def test_missing_checkpoint_raises_one_line(tmp_path):
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(tmp_path / "nope.pth")
    assert "not found" in one_line(info.value)
    with pytest.raises(CheckpointError):
        load_model(tmp_path / "nope.pth")
    with pytest.raises(CheckpointError):  # a folder is not a checkpoint either
        load_checkpoint(tmp_path)


@pytest.mark.parametrize("kind", ["random_bytes", "truncated", "empty", "plain_pickle"])
def test_corrupt_checkpoint_raises_one_line(trained_run, tmp_path, kind):
    """Random bytes, a truncated real checkpoint, an empty file, a plain pickle: CheckpointError."""
    path = tmp_path / "bad.pth"
    real = trained_run.checkpoint_path.read_bytes()
    content = {"random_bytes": os.urandom(4096), "truncated": real[: len(real) // 2], "empty": b"",
               "plain_pickle": pickle.dumps({"format": FORMAT}, protocol=2)}[kind]
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as info:
        load_model(path)
    assert str(path) in one_line(info.value)


class NotATensor:
    pass


@pytest.mark.parametrize("payload", [
    {"model": {"w": torch.zeros(2)}},  # a dict without our format marker
    torch.zeros(3),  # a bare tensor
    [1, 2, 3],
    {"format": "someone_else/2", "config": {}},
])
def test_foreign_torch_file_raises_one_line(tmp_path, payload):
    """A readable torch file that is not ours names the missing marker."""
    path = tmp_path / "foreign.pth"
    torch.save(payload, path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert "not a diffusion_utils checkpoint" in one_line(info.value)


def test_pickled_objects_are_refused(tmp_path):
    """A file that would run code on unpickling (an arbitrary class) is refused by weights_only."""
    path = tmp_path / "evil.pth"
    torch.save({"format": FORMAT, "payload": NotATensor()}, path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = one_line(info.value)
    assert "not a readable checkpoint" in message and "could run code" in message
    assert "weights_only" not in message  # torch's advice to load it unsafely is not passed on


def test_invalid_config_or_weights_raise_checkpoint_error(trained_run, tmp_path):
    """Our marker but an invalid config, or weights that do not fit the config: CheckpointError."""
    state = torch.load(trained_run.checkpoint_path, weights_only=True)
    bad_config = dict(state, config={**state["config"], "img_size": -1})
    torch.save(bad_config, tmp_path / "a.pth")
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(tmp_path / "a.pth")
    assert "invalid config" in one_line(info.value)
    wider = dict(state, config={**state["config"], "base_channels": 16})
    torch.save(wider, tmp_path / "b.pth")
    for use_ema in (True, False):
        with pytest.raises(CheckpointError) as info:
            load_model(tmp_path / "b.pth", use_ema=use_ema)
        assert "do not match" in one_line(info.value)


def test_check_compatible():
    """Architecture or schedule fields must match; training-only fields may change."""
    saved = tiny_config()
    check_compatible(saved, saved.replace(num_epochs=10, lr=1e-4, batch_size=8, sampler="dpmpp"), "ck")
    for change in (dict(base_channels=16), dict(img_size=32), dict(n_steps=100), dict(beta_end=0.03),
                   dict(channel_mults=(1, 1)), dict(attention_levels=()), dict(schedule="cosine"),
                   dict(time_emb_dim=32), dict(num_res_blocks=2)):
        with pytest.raises(CheckpointError) as info:
            check_compatible(saved, saved.replace(**change), "ck")
        assert next(iter(change)) in one_line(info.value)


def test_atomic_write_leaves_no_temp_file(tmp_path):
    """A successful write leaves only the checkpoint; a failed write keeps the previous file
    intact and removes its temporary file."""
    path = tmp_path / "ck.pth"
    save_checkpoint(path, {"config": tiny_config().to_dict(), "x": torch.ones(3)})
    save_checkpoint(path, {"config": tiny_config().to_dict(), "x": torch.zeros(3)})
    assert sorted(os.listdir(tmp_path)) == ["ck.pth"]
    before = path.read_bytes()
    with pytest.raises(Exception):
        save_checkpoint(path, {"config": tiny_config().to_dict(), "x": lambda: 0})  # unpicklable
    assert sorted(os.listdir(tmp_path)) == ["ck.pth"]
    assert path.read_bytes() == before
    assert torch.equal(torch.load(path, weights_only=True)["x"], torch.zeros(3))


def _poison(weights: dict, value: float) -> dict:
    name = next(k for k, v in weights.items() if v.is_floating_point() and v.numel() > 1)
    bad = weights[name].clone()
    bad.view(-1)[0] = value
    return {**weights, name: bad}


# Each kind of damage a checkpoint can have → a change to its state dict and words the one-line error must hold.
DAMAGE = {
    **{f"no {name}": (lambda s, name=name: {k: v for k, v in s.items() if k != name}, f"no '{name}' entry")
       for name in ENTRIES},
    "config a string": (lambda s: {**s, "config": "lr=1e-3"}, "'config' is a str"),
    "config value of the wrong type": (lambda s: {**s, "config": {**s["config"], "lr": "fast"}}, "lr must be"),
    "config value out of range": (lambda s: {**s, "config": {**s["config"], "n_steps": 10 ** 10}}, "n_steps"),
    "step a string": (lambda s: {**s, "step": "4"}, "'step' is a str"),
    "step negative": (lambda s: {**s, "step": -1}, "negative"),
    "wider config": (lambda s: {**s, "config": {**s["config"], "base_channels": 16}}, "do not match"),
    "weight missing": (lambda s: {**s, "model": dict(list(s["model"].items())[1:])}, "no entry"),
    "weight extra": (lambda s: {**s, "model": {**s["model"], "head.extra": torch.zeros(1)}}, "unexpected entry"),
    "weight not a tensor": (lambda s: {**s, "model": {**s["model"], next(iter(s["model"])): [0.0]}}, "not a tensor"),
    "ema key not a string": (lambda s: {**s, "ema": {**s["ema"], 3: torch.zeros(1)}}, "not a string"),
    "nan weight": (lambda s: {**s, "model": _poison(s["model"], float("nan"))}, "NaN or infinite"),
    "inf ema weight": (lambda s: {**s, "ema": _poison(s["ema"], float("inf"))}, "NaN or infinite"),
    "optimizer for fewer parameters": (lambda s: {**s, "optimizer": {**s["optimizer"], "param_groups": [
        {**s["optimizer"]["param_groups"][0], "params": s["optimizer"]["param_groups"][0]["params"][:-1]}]}},
        "parameters"),
    "optimizer moment misshapen": (lambda s: {**s, "optimizer": {**s["optimizer"], "state": {
        0: {**s["optimizer"]["state"][0], "exp_avg": torch.zeros(7, 7)}}}}, "shape"),
    "optimizer without groups": (lambda s: {**s, "optimizer": {"state": {}}}, "param_groups"),
    "rng without noise": (lambda s: {**s, "rng": {**s["rng"], "noise": None}}, "rng"),
    "losses 2-D": (lambda s: {**s, "losses": s["losses"][None]}, "losses"),
    "epoch grids of floats": (lambda s: {**s, "epoch_grids": {1: torch.zeros(1, 3, 4, 4)}}, "epoch_grids"),
}


@pytest.fixture(scope="module")
def saved_state(trained_run) -> dict:
    """The shared run's checkpoint as torch.load gives it (read once: loading costs ~0.3 s)."""
    return torch.load(trained_run.checkpoint_path, weights_only=True)


@pytest.mark.parametrize("case", list(DAMAGE))
def test_every_kind_of_damage_is_found_and_put_in_words(case, saved_state):
    """The reader's check finds each kind of damage and says what it is, in one line."""
    change, expected = DAMAGE[case]
    problem = checkpoint_problem(change(dict(saved_state)))
    assert problem and "\n" not in problem and expected in problem, problem


def test_an_undamaged_checkpoint_has_no_problem(saved_state):
    assert checkpoint_problem(dict(saved_state)) is None


def test_a_damaged_file_is_one_line_for_every_reader(saved_state, tmp_path):
    """load_checkpoint and load_model (and through them sample, export, --resume and the
    notebooks' loaders; see test_cli) refuse a damaged file in one line that names it and the
    problem, with no warning from torch."""
    path = tmp_path / "damaged.pth"
    torch.save(DAMAGE["nan weight"][0](saved_state), path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for read in (load_checkpoint, load_model):
            with pytest.raises(CheckpointError) as info:
                read(path)
            message = one_line(info.value)
            assert str(path) in message and "is damaged" in message and "NaN or infinite" in message


def test_a_folder_is_not_a_checkpoint_and_the_message_points_inside(trained_run):
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(trained_run.checkpoint_path.parent)
    assert str(trained_run.checkpoint_path) in one_line(info.value)


def test_short_reason_is_one_line_and_never_cut_mid_word():
    err = RuntimeError("PytorchStreamReader failed reading zip archive: failed finding central directory " * 3
                       + "\nsecond line")
    reason = short_reason(err, 60)
    assert len(reason) <= 60 and "\n" not in reason and reason.endswith(" …")
    assert reason.removesuffix(" …") in err.args[0] and err.args[0][len(reason) - 2] == " "
    assert short_reason(IndexError()) == "IndexError"
