"""train(): outputs, exact resume (after an epoch and after Ctrl-C mid-epoch), divergence, mismatches.

All runs share one tiny config: 64 synthetic 16 px images, batch 16 → 4 steps per epoch, 2 epochs,
dropout 0.1 (so the global RNG, which dropout draws from, must be restored on resume too).
"""

from __future__ import annotations

import copy
import math
import os
import shutil
import signal

import numpy as np
import pytest
import torch
from PIL import Image

import diffusion_utils.run as run_module
import diffusion_utils.training as training
from diffusion_utils import (CHECKPOINT_NAME, CheckpointError, ConfigError, RunFolderError, TrainingDiverged,
                             TrainingInterrupted, load_checkpoint, load_dataset, load_model, make_ema,
                             save_checkpoint, train)
from diffusion_utils.plumbing.checkpoint import check_compatible
from diffusion_utils.loss import diffusion_loss
from diffusion_utils.training import TrainState, ema_decay_at, learning_rate, train_step

from conftest import tiny_config

STEPS_PER_EPOCH = 4


def config(**overrides):
    return tiny_config(**{"max_images": 64, "num_epochs": 2, **overrides})


@pytest.fixture(scope="module")
def dataset():
    return load_dataset("synthetic", 16, max_images=64, seed=0)


@pytest.fixture(scope="module")
def run_a(tmp_path_factory, dataset):
    """The reference: 2 epochs, uninterrupted, recording every on_step call."""
    out = tmp_path_factory.mktemp("run_a")
    calls = []
    result = train(config(), out, dataset=dataset, progress=False, on_step=lambda s, l: calls.append((s, l)))
    return result, calls


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for name in sa:
        assert torch.equal(sa[name], sb[name]), name


def test_train_returns_losses_and_writes_its_outputs(run_a):
    """One loss per optimiser step, finite; checkpoint, loss curve, epoch table and one grid per
    epoch on disk; on_step called after every step with (step, loss)."""
    result, calls = run_a
    out = result.out_dir
    assert len(result.losses) == 2 * STEPS_PER_EPOCH
    assert all(math.isfinite(x) and x > 0 for x in result.losses)
    assert calls == [(i + 1, loss) for i, loss in enumerate(result.losses)]
    assert result.checkpoint_path == out / CHECKPOINT_NAME and result.checkpoint_path.is_file()
    for name in ("loss.png", "epoch_samples.png", "samples/epoch_001.png", "samples/epoch_002.png"):
        with Image.open(out / name) as im:
            assert im.size[0] > 16 and im.size[1] > 16, name
    assert sorted(result.epoch_grids) == [1, 2]
    for grid in result.epoch_grids.values():
        assert grid.shape == (4, 3, 16, 16) and grid.dtype == torch.uint8
    # the per-epoch PNG is the grid of that epoch's samples (2×2 images, 2 px white padding)
    with Image.open(out / "samples/epoch_002.png") as im:
        png = np.asarray(im.convert("RGB"))
    assert png.shape == (2 + 2 * 18, 2 + 2 * 18, 3)
    np.testing.assert_array_equal(png[2:18, 2:18], result.epoch_grids[2][0].permute(1, 2, 0).numpy())
    assert result.images_seen == 2 * STEPS_PER_EPOCH * 16
    assert result.ema_model.img_size == 16 and len(result.schedule) == 50
    state = load_checkpoint(result.checkpoint_path)
    assert state["step"] == 8 and state["epoch"] == 2 and state["losses"].tolist() == result.losses


def test_training_reduces_the_loss_from_its_start(tmp_path, dataset):
    """A sanity check that the loop learns: the mean loss of the last steps is below the first
    steps' (a higher learning rate, 6 epochs of 4 steps)."""
    result = train(config(num_epochs=6, lr=3e-3, sample_every=6), tmp_path, dataset=dataset, progress=False)
    assert np.mean(result.losses[-4:]) < 0.8 * np.mean(result.losses[:4])


def test_resume_after_an_epoch_continues_exactly(run_a, tmp_path):
    """1 epoch, then resume with num_epochs=2: the same losses, weights, EMA and epoch grids as
    the uninterrupted 2-epoch run. (This run loads its data itself from config.data.)"""
    reference, _ = run_a
    first = train(config(num_epochs=1), tmp_path, progress=False)  # dataset=None: loads "synthetic"
    assert first.losses == reference.losses[:STEPS_PER_EPOCH]
    second = train(config(num_epochs=2), tmp_path, resume=True, progress=False)
    assert first.losses + second.losses[len(first.losses):] == reference.losses
    assert second.losses == reference.losses
    assert_same_weights(second.model, reference.model)
    assert_same_weights(second.ema_model, reference.ema_model)
    assert sorted(second.epoch_grids) == [1, 2]
    for epoch in (1, 2):
        assert torch.equal(second.epoch_grids[epoch], reference.epoch_grids[epoch])
    a, b = load_checkpoint(reference.checkpoint_path), load_checkpoint(second.checkpoint_path)
    for key, value in a["optimizer"]["state"].items():
        for name, tensor in value.items():
            assert torch.equal(torch.as_tensor(tensor), torch.as_tensor(b["optimizer"]["state"][key][name]))


def test_ctrl_c_mid_epoch_saves_and_resume_continues_exactly(run_a, tmp_path, dataset):
    """SIGINT in the middle of epoch 2 (step 6 of 8): the loop finishes that step, writes a
    checkpoint at step 6 and raises KeyboardInterrupt; resuming gives the uninterrupted run."""
    reference, _ = run_a
    k = STEPS_PER_EPOCH + 2
    handler_before = signal.getsignal(signal.SIGINT)

    def interrupt_at_k(step, loss):
        if step == k:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(TrainingInterrupted, match=f"interrupted after step {k} of 8; checkpoint saved") as info:
        train(config(), tmp_path, dataset=dataset, progress=False, on_step=interrupt_at_k)
    assert info.value.checkpoint == tmp_path / CHECKPOINT_NAME
    assert signal.getsignal(signal.SIGINT) is handler_before  # the Ctrl-C handler is uninstalled
    state = load_checkpoint(tmp_path / CHECKPOINT_NAME)
    assert (state["step"], state["epoch"], state["batch_in_epoch"]) == (k, 1, 2)
    assert state["losses"].tolist() == reference.losses[:k]
    assert not list(tmp_path.glob(".*.tmp"))

    resumed = train(config(), tmp_path, dataset=dataset, resume=True, progress=False)
    assert resumed.losses == reference.losses
    assert_same_weights(resumed.model, reference.model)
    assert_same_weights(resumed.ema_model, reference.ema_model)
    assert torch.equal(resumed.epoch_grids[2], reference.epoch_grids[2])


def test_nan_loss_raises_training_diverged_naming_the_step(tmp_path, dataset, monkeypatch):
    """A NaN loss in the 6th step (epoch 2) stops training with TrainingDiverged naming step 6
    (counted from 1, as on_step and Ctrl-C count), the learning rate and the last good
    checkpoint (step 4), which is left as it was; no optimiser step is taken on it."""
    bad_call = 6
    real_loss = training.diffusion_loss
    calls = []

    def loss_with_nan_at_third_call(*args, **kwargs):
        calls.append(1)
        loss = real_loss(*args, **kwargs)
        return loss * float("nan") if len(calls) == bad_call else loss

    monkeypatch.setattr(training, "diffusion_loss", loss_with_nan_at_third_call)
    seen, saved = [], {}
    ckpt = tmp_path / CHECKPOINT_NAME

    def record(step, loss):
        seen.append(step)
        if ckpt.exists() and not saved:
            saved["bytes"] = ckpt.read_bytes()

    with pytest.raises(TrainingDiverged) as info:
        train(config(), tmp_path, dataset=dataset, progress=False, on_step=record)
    message = str(info.value)
    assert "\n" not in message and "nan" in message and f"at step {bad_call} " in message and "lr" in message
    assert seen == list(range(1, bad_call))
    assert f"the last good checkpoint is {ckpt} (step {STEPS_PER_EPOCH})" in message
    assert ckpt.read_bytes() == saved["bytes"]


def test_learning_rate_warms_up_then_stays_or_follows_the_cosine():
    """Warm-up: lr·(s+1)/W. Then "none" stays at lr; "cosine" is lr·½(1 + cos(π(s−W)/(T−W))):
    lr at the end of the warm-up, lr/2 halfway through the rest, 0 at the last step and after."""
    constant = config(lr=1e-3, lr_warmup_steps=4)
    assert [learning_rate(constant, s, 100) for s in (0, 3, 50, 99)] == pytest.approx([2.5e-4, 1e-3, 1e-3, 1e-3])
    assert learning_rate(constant, 10**6) == pytest.approx(1e-3)  # no horizon needed
    cosine = constant.replace(lr_decay="cosine")
    assert learning_rate(cosine, 0, 104) == pytest.approx(2.5e-4)  # the warm-up is the same
    assert learning_rate(cosine, 4, 104) == pytest.approx(1e-3)
    assert learning_rate(cosine, 54, 104) == pytest.approx(5e-4)
    assert learning_rate(cosine, 29, 104) == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi / 4)))
    assert learning_rate(cosine, 104, 104) == pytest.approx(0.0, abs=1e-15)
    assert learning_rate(cosine, 200, 104) == pytest.approx(0.0, abs=1e-15)
    with pytest.raises(ConfigError, match="total steps"):
        learning_rate(cosine, 50)


def test_train_decays_the_lr_over_the_run(tmp_path, dataset):
    """With lr_decay="cosine", train() gives the optimiser each step's lr over its num_epochs."""
    seen = []
    cfg = config(lr_decay="cosine", lr_warmup_steps=2)
    run = {}
    train(cfg, tmp_path, dataset=dataset, progress=False, on_start=lambda state, total: run.update(state=state),
          on_step=lambda step, loss: seen.append(run["state"].optimizer.param_groups[0]["lr"]))
    total = 2 * STEPS_PER_EPOCH
    assert seen == pytest.approx([learning_rate(cfg, s, total) for s in range(total)])
    assert seen[-1] < 0.1 * cfg.lr < seen[2]


def test_huge_learning_rate_diverges(tmp_path, dataset):
    """lr = 1e30 blows the weights up after the first step: TrainingDiverged at the step it happens."""
    seen = []
    with pytest.raises(TrainingDiverged, match=r"loss became (nan|inf|-inf) at step \d+") as info:
        train(config(lr=1e30, lr_warmup_steps=0), tmp_path, dataset=dataset, progress=False,
              on_step=lambda s, l: seen.append(s))
    assert f"at step {len(seen) + 1} " in str(info.value)
    assert len(seen) < 2 * STEPS_PER_EPOCH


def test_weights_that_become_non_finite_are_never_saved(tmp_path, monkeypatch):
    """Weights that turn NaN in the last step of epoch 2 (the loss of that step was still finite;
    16 images, one step per epoch): the run stops before that epoch's grid and checkpoint, naming
    step 2 and the last good checkpoint (step 1), which stays byte for byte what epoch 1 wrote."""
    ckpt, saved = tmp_path / CHECKPOINT_NAME, {}
    real_step = run_module.train_step

    def step_then_poison(state, x0, y=None):
        if state.step == 1:
            saved["bytes"] = ckpt.read_bytes()
        loss = real_step(state, x0, y)
        if state.step == 2:
            with torch.no_grad():
                next(state.model.parameters()).view(-1)[0] = float("nan")
        return loss

    monkeypatch.setattr(run_module, "train_step", step_then_poison)
    with pytest.raises(TrainingDiverged) as info:
        train(config(max_images=16), tmp_path, dataset=load_dataset("synthetic", 16, max_images=16), progress=False)
    message = str(info.value)
    assert "\n" not in message and "weights became NaN or infinite at step 2 (epoch 2" in message
    assert f"the last good checkpoint is {ckpt} (step 1)" in message
    assert ckpt.read_bytes() == saved["bytes"]
    assert (tmp_path / "samples" / "epoch_001.png").exists() and not (tmp_path / "samples" / "epoch_002.png").exists()


def test_a_second_ctrl_c_in_the_first_epoch_leaves_nothing_to_resume(tmp_path, dataset):
    """A KeyboardInterrupt that is not the handled first Ctrl-C (here: raised in step 2) stops
    at once; before the first checkpoint, TrainingInterrupted says there is nothing to resume."""

    def second_ctrl_c(step, loss):
        if step == 2:
            raise KeyboardInterrupt

    with pytest.raises(TrainingInterrupted) as info:
        train(config(), tmp_path, dataset=dataset, progress=False, on_step=second_ctrl_c)
    assert info.value.checkpoint is None and "nothing to resume" in str(info.value)
    assert "of 8" in str(info.value) and not (tmp_path / CHECKPOINT_NAME).exists()


def test_train_refuses_a_locked_or_unwritable_folder_before_loading_data(tmp_path, monkeypatch):
    """From Python too: a folder below a file, or a folder another run holds, fails before any
    data is loaded (dataset=None would load it) and leaves the disk as it was."""
    monkeypatch.setattr(run_module, "load_dataset", lambda *a, **k: pytest.fail("data loaded"))
    (tmp_path / "file").write_text("x")
    with pytest.raises(RunFolderError, match="is a file"):
        train(config(), tmp_path / "file" / "run", progress=False)
    fcntl = pytest.importorskip("fcntl")
    (tmp_path / "run").mkdir()
    fd = os.open(tmp_path / "run" / ".diffusion_utils.lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(RunFolderError, match="in use"):
            train(config(), tmp_path / "run", progress=False)
    finally:
        os.close(fd)
    assert sorted(p.name for p in tmp_path.rglob("*")) == [".diffusion_utils.lock", "file", "run"]


def test_train_removes_stale_temporary_checkpoints(tmp_path, dataset):
    """A killed run's temporary checkpoint file goes as soon as the next run holds the folder."""
    stale = tmp_path / f".{CHECKPOINT_NAME}.12345-0badc0de.tmp"
    stale.write_bytes(b"half a checkpoint")
    with pytest.raises(CheckpointError, match="not found"):  # resume without a checkpoint: refused after locking
        train(config(), tmp_path, dataset=dataset, resume=True, progress=False)
    assert not stale.exists()


def test_resume_with_a_different_architecture_raises(checkpoint_copy, dataset):
    """Resuming a checkpoint with another network or schedule is a CheckpointError naming the field."""
    out = checkpoint_copy.parent
    for change in (dict(base_channels=16), dict(n_steps=60)):
        with pytest.raises(CheckpointError, match=next(iter(change))):
            train(config(**change), out, dataset=dataset, resume=True, progress=False)


def test_resume_errors(tmp_path, checkpoint_copy, dataset, monkeypatch):
    """Resuming without a checkpoint, or with fewer epochs than already trained (before any data
    is loaded), is refused; so is a dataset whose image size differs from the config's."""
    with pytest.raises(CheckpointError, match="not found"):
        train(config(), tmp_path / "empty", dataset=dataset, resume=True, progress=False)
    # the shared run trained 2 epochs: num_epochs=1 cannot continue it, and this is known before
    # the data (loading it would fail the test)
    monkeypatch.setattr(run_module, "load_dataset", lambda *a, **k: pytest.fail("data loaded"))
    with pytest.raises(ConfigError, match="already trained 2 epochs.*num_epochs"):
        train(config(num_epochs=1, max_images=16), checkpoint_copy.parent, resume=True, progress=False)
    with pytest.raises(ConfigError, match="img_size"):
        train(config(), tmp_path, dataset=load_dataset("synthetic", 8, max_images=4), progress=False)


# ---------------------------------------------------------------------------------------------
# The power-function EMA (Karras et al. 2024)
# ---------------------------------------------------------------------------------------------
def test_ema_decay_at_follows_the_power_law_and_is_capped():
    """d(n) = min(max_decay, (1 − 1/(n+1))^(γ+1)): 0 for the first update (a copy), the power
    law below the cap, exactly max_decay above it; non-decreasing in n, smaller for larger γ."""
    gamma, cap = 6.94, 0.9995
    assert ema_decay_at(0, cap, gamma) == 0.0
    for n in (1, 2, 10, 100, 1000):
        expected = (n / (n + 1)) ** (gamma + 1)
        assert expected < cap
        assert ema_decay_at(n, cap, gamma) == pytest.approx(expected, rel=1e-12)
    assert ema_decay_at(1, cap, gamma) == pytest.approx(0.5 ** 7.94, rel=1e-12)
    # the cap: (n/(n+1))^7.94 reaches 0.9995 near n = 7.94/0.0005 ≈ 15 880
    assert ema_decay_at(15_000, cap, gamma) < cap
    assert ema_decay_at(17_000, cap, gamma) == cap and ema_decay_at(10 ** 7, cap, gamma) == cap
    decays = [ema_decay_at(n, cap, gamma) for n in range(0, 20_000, 37)]
    assert all(a <= b for a, b in zip(decays, decays[1:]))
    assert all(a < b for a, b in zip(decays, decays[1:]) if b < cap)
    assert ema_decay_at(50, cap, 16.0) < ema_decay_at(50, cap, gamma) < ema_decay_at(50, cap, 1.0)


class Scalars(torch.nn.Module):
    """A 'model' whose only parameter is a float64 vector we set by hand."""

    def __init__(self, n: int = 4):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(n, dtype=torch.float64))

    def set(self, value: torch.Tensor) -> None:
        with torch.no_grad():
            self.w.copy_(value)


def run_ema(values: torch.Tensor, max_decay: float, gamma: float) -> torch.Tensor:
    """make_ema over a model whose weights take ``values[0]``, ``values[1]``, … before each update."""
    model = Scalars(values.shape[1])
    ema = make_ema(model, max_decay, gamma)
    for value in values:
        model.set(value)
        ema.update_parameters(model)
    assert int(ema.n_averaged) == len(values)
    return ema.module.w.detach().clone()


def test_make_ema_with_gamma_0_is_the_running_mean():
    """With γ = 0 the decay is n/(n+1), so (below the cap) the EMA of k updates is exactly the
    arithmetic mean of the k weight vectors; with a cap of 0.5 it is the hand recursion
    e ← 0.5 e + 0.5 θ after the first copy."""
    values = torch.randn(25, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for k in (1, 2, 7, 25):
        torch.testing.assert_close(run_ema(values[:k], 0.999, 0.0), values[:k].mean(0), rtol=0, atol=1e-12)
    e = values[0].clone()
    for value in values[1:10]:
        e = 0.5 * e + 0.5 * value
    torch.testing.assert_close(run_ema(values[:10], 0.5, 0.0), e, rtol=0, atol=1e-12)


@pytest.mark.parametrize("max_decay, gamma", [(0.9995, 6.94), (0.9, 3.0), (0.3, 6.94)])
def test_make_ema_matches_the_hand_recursion(max_decay, gamma):
    """After k updates: e₁ = θ₁, eₙ₊₁ = d eₙ + (1 − d) θₙ₊₁ with d = min(max_decay, (n/(n+1))^(γ+1))."""
    values = torch.randn(40, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    e = values[0].clone()
    for n, value in enumerate(values[1:], start=1):
        d = min(max_decay, (n / (n + 1)) ** (gamma + 1))
        e = d * e + (1 - d) * value
    torch.testing.assert_close(run_ema(values, max_decay, gamma), e, rtol=0, atol=1e-12)


def test_a_short_run_ema_follows_the_weights_where_a_fixed_decay_lags():
    """300 updates of weights drifting linearly from θ₀ to θ₀ + Δ: the power EMA (γ = 6.94) sits
    about 300/(γ + 2) ≈ 34 steps behind the final weights (it averages the run's recent tail),
    while a fixed 0.9995 EMA (first update a copy, as AveragedModel does) is still mostly θ₁."""
    steps = 300
    gen = torch.Generator().manual_seed(2)
    start, delta = torch.randn(4, generator=gen, dtype=torch.float64), torch.randn(4, generator=gen, dtype=torch.float64)
    values = torch.stack([start + delta * k / steps for k in range(1, steps + 1)])
    power = run_ema(values, 0.9995, 6.94)
    fixed = values[0].clone()
    for value in values[1:]:
        fixed = 0.9995 * fixed + 0.0005 * value
    lag_power = ((values[-1] - power) / delta * steps).mean().item()  # in steps
    lag_fixed = ((values[-1] - fixed) / delta * steps).mean().item()
    assert 20 < lag_power < 50, lag_power
    assert lag_fixed > 250, lag_fixed
    assert (values[-1] - power).norm() < 0.2 * (values[-1] - fixed).norm()


# ---------------------------------------------------------------------------------------------
# TrainState and train_step
# ---------------------------------------------------------------------------------------------
def test_train_step_uses_the_configs_prediction_and_loss_weighting(dataset):
    """train_step's loss is diffusion_loss with the config's loss_weighting and snr_gamma on a
    model whose prediction is the config's, drawing t and ε from the state's noise generator."""
    cfg = config(prediction="v", loss_weighting="min_snr", snr_gamma=2.0, dropout=0.0)
    state = TrainState(cfg, torch.device("cpu"))
    assert state.model.prediction == "v" and state.ema.module.prediction == "v"
    x0 = dataset.images[:16]
    model_before = copy.deepcopy(state.model)
    noise_state = state.noise_rng.get_state()
    loss = train_step(state, x0)
    for weighting, gamma, should_match in (("min_snr", 2.0, True), ("min_snr", 5.0, False), ("none", 5.0, False)):
        rng = torch.Generator()
        rng.set_state(noise_state)
        expected = diffusion_loss(model_before, state.schedule, x0, generator=rng, loss_weighting=weighting,
                                  snr_gamma=gamma).item()
        assert (loss == pytest.approx(expected, rel=1e-6)) == should_match, (weighting, gamma, loss, expected)
    assert state.step == 1 and state.losses == [loss]


def test_train_state_round_trip_continues_bit_exactly(dataset, tmp_path):
    """state_dict → save_checkpoint → load_checkpoint → load_state_dict into a fresh TrainState:
    the next train_step gives the identical loss, weights, EMA and optimiser state (dropout on,
    so the global RNG is part of the state)."""
    cfg = config(prediction="v", loss_weighting="min_snr", ema_gamma=3.0)
    x0 = dataset.images[:16]
    a = TrainState(cfg, torch.device("cpu"))
    for batch in (dataset.images[16:32], dataset.images[32:48]):
        train_step(a, batch)
    path = save_checkpoint(tmp_path / "ck.pth", a.state_dict(a.data_rng.get_state()))
    loss_a = train_step(a, x0)
    b = TrainState(cfg, torch.device("cpu"))
    b.load_state_dict(load_checkpoint(path))
    assert (b.step, b.losses) == (2, a.losses[:2])
    loss_b = train_step(b, x0)
    assert loss_b == loss_a
    assert b.losses == a.losses and b.step == a.step == 3
    assert_same_weights(b.model, a.model)
    assert_same_weights(b.ema, a.ema)
    assert torch.equal(b.noise_rng.get_state(), a.noise_rng.get_state())
    # a fresh state (no load) would not have continued the same way
    c = TrainState(cfg, torch.device("cpu"))
    assert train_step(c, x0) != loss_a


def test_train_state_ema_uses_the_configs_gamma_and_decay(dataset):
    """After each train_step the EMA is the power-EMA recursion over the model's weights, with
    the config's ema_decay as the cap and its ema_gamma as γ."""
    cfg = config(ema_decay=0.6, ema_gamma=2.0)
    state = TrainState(cfg, torch.device("cpu"))
    hand = None
    for n in range(4):
        train_step(state, dataset.images[16 * n:16 * (n + 1)])
        weights = {k: v.detach().double().clone() for k, v in state.model.named_parameters()}
        if hand is None:
            hand = weights
        else:
            d = min(0.6, (n / (n + 1)) ** 3.0)
            hand = {k: d * hand[k] + (1 - d) * weights[k] for k in hand}
    assert 0 < min(0.6, (1 / 2) ** 3.0) < min(0.6, (3 / 4) ** 3.0) == 0.421875  # the cap is not hit
    for name, p in state.ema.module.named_parameters():
        torch.testing.assert_close(p.detach().double(), hand[name], rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Checkpoints and the prediction field
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def v_run(tmp_path_factory):
    """One epoch of one step with prediction="v" and min-SNR weighting (16 images)."""
    out = tmp_path_factory.mktemp("v_run")
    data = load_dataset("synthetic", 16, max_images=16, seed=0)
    cfg = config(prediction="v", loss_weighting="min_snr", snr_gamma=3.0, max_images=16, num_epochs=1)
    return train(cfg, out, dataset=data, progress=False), data


def test_load_model_of_a_v_checkpoint_is_a_v_model(v_run):
    """load_model gives back a UNet with prediction "v" and the config's loss settings, holding
    the run's EMA weights."""
    result, _ = v_run
    model, schedule, cfg = load_model(result.checkpoint_path)
    assert model.prediction == "v" and cfg.prediction == "v"
    assert (cfg.loss_weighting, cfg.snr_gamma) == ("min_snr", 3.0)
    assert_same_weights(model, result.ema_model)
    raw, _, _ = load_model(result.checkpoint_path, use_ema=False)
    assert raw.prediction == "v"


def test_resuming_a_v_checkpoint_as_eps_is_refused(v_run, tmp_path):
    """A checkpoint trained with prediction="v" refuses --resume with prediction="eps": a
    one-line CheckpointError naming the field and both values; with "v" it resumes."""
    result, data = v_run
    out = tmp_path / "run"
    out.mkdir()
    shutil.copy2(result.checkpoint_path, out / CHECKPOINT_NAME)  # the fixture's run stays as it was
    with pytest.raises(CheckpointError) as info:
        train(config(loss_weighting="min_snr", snr_gamma=3.0, max_images=16, num_epochs=2), out, dataset=data,
              resume=True, progress=False)
    message = str(info.value)
    assert "\n" not in message and "prediction='v'" in message and "prediction='eps'" in message
    saved = load_checkpoint(result.checkpoint_path)["config"]
    with pytest.raises(CheckpointError, match="prediction"):
        check_compatible(saved, saved.replace(prediction="eps"), "ck")
    # the loss weighting and the EMA's γ are training settings: changing them is allowed
    check_compatible(saved, saved.replace(loss_weighting="none", snr_gamma=1.0, ema_gamma=10.0), "ck")
    resumed = train(saved.replace(num_epochs=2), out, dataset=data, resume=True, progress=False)
    assert len(resumed.losses) == 2 and resumed.losses[0] == result.losses[0]


def test_a_checkpoint_from_before_prediction_existed_loads_as_eps(checkpoint_copy):
    """A checkpoint whose config has none of prediction, loss_weighting, snr_gamma, ema_gamma
    loads as an ε model with the simple loss (what it was trained with) and resumes."""
    state = torch.load(checkpoint_copy, weights_only=True)
    new_fields = ("prediction", "loss_weighting", "snr_gamma", "ema_gamma")
    state["config"] = {k: v for k, v in state["config"].items() if k not in new_fields}
    torch.save(state, checkpoint_copy)
    cfg = load_checkpoint(checkpoint_copy)["config"]
    assert (cfg.prediction, cfg.loss_weighting, cfg.snr_gamma, cfg.ema_gamma) == ("eps", "none", 5.0, 6.94)
    model, _, _ = load_model(checkpoint_copy)
    assert model.prediction == "eps"
    # the shared run: 32 images, batch 16, 2 epochs → resume into a third epoch
    data = load_dataset("synthetic", 16, max_images=32, seed=0)
    resumed = train(config(max_images=32, num_epochs=3), checkpoint_copy.parent, dataset=data, resume=True,
                    progress=False)
    assert len(resumed.losses) == 6 and resumed.losses[:4] == state["losses"].tolist()
    with pytest.raises(CheckpointError, match="prediction"):
        train(config(max_images=32, num_epochs=4, prediction="v"), checkpoint_copy.parent, dataset=data,
              resume=True, progress=False)


# ---------------------------------------------------------------------------------------------
# Hooks
# ---------------------------------------------------------------------------------------------
def test_hooks_are_called_at_the_start_after_every_step_and_epoch_and_at_the_end(tmp_path, dataset):
    """A RunHooks sees the run at four moments, after the checkpoint of each epoch; the run writes
    no figure unless a hook does (run_training: only the checkpoint)."""
    from diffusion_utils import RunHooks, run_training

    calls = []

    class Recorder(RunHooks):
        def start(self, run):
            calls.append(("start", run.state.step, run.total_steps))

        def after_step(self, run, loss):
            calls.append(("step", run.state.step, loss == run.state.losses[-1]))

        def end_of_epoch(self, run):
            saved = load_checkpoint(run.checkpoint_path)["step"]
            calls.append(("epoch", run.state.epoch, saved, sorted(run.state.epoch_grids)))

        def end(self, run):
            calls.append(("end", run.state.step))

    run_training(config(sample_every=2), tmp_path, dataset=dataset, progress=False, hooks=[Recorder()])
    steps = [("step", s, True) for s in range(1, STEPS_PER_EPOCH + 1)]
    later = [("step", s, True) for s in range(STEPS_PER_EPOCH + 1, 2 * STEPS_PER_EPOCH + 1)]
    assert calls == ([("start", 0, 8)] + steps + [("epoch", 1, 4, [])] + later + [("epoch", 2, 8, [2]), ("end", 8)])
    assert sorted(p.name for p in tmp_path.iterdir()) == [CHECKPOINT_NAME]


def test_a_hooks_outputs_are_checked_before_any_work(tmp_path, monkeypatch):
    """What a hook says it writes is checked with the checkpoint, before the data is loaded."""
    from diffusion_utils import RunHooks, run_training

    class Writes(RunHooks):
        outputs = ("report/",)

    monkeypatch.setattr(run_module, "load_dataset", lambda *a, **k: pytest.fail("data loaded"))
    (tmp_path / "report").write_text("a file where the hook's folder goes")
    with pytest.raises(RunFolderError, match="report"):
        run_training(config(), tmp_path, hooks=[Writes()], progress=False)


def test_a_run_trains_the_settled_config_and_leaves_the_callers_alone(tmp_path, dataset):
    """Fields a notebook assigns after building the config (a numpy count, a list) are settled for
    the run: the checkpoint saves plain types (it loads with weights_only), the caller's config is
    not changed."""
    cfg = config(num_epochs=1)
    cfg.num_epochs, cfg.channel_mults = np.int64(1), [1, 2]
    result = train(cfg, tmp_path, dataset=dataset, progress=False)
    assert type(result.config.num_epochs) is int and result.config.channel_mults == (1, 2)
    assert load_checkpoint(result.checkpoint_path)["config"] == result.config
    assert type(cfg.num_epochs) is np.int64 and cfg.channel_mults == [1, 2]
