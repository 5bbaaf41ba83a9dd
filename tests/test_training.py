"""train(): outputs, exact resume (after an epoch and after Ctrl-C mid-epoch), divergence, mismatches.

All runs share one tiny config: 64 synthetic 16 px images, batch 16 → 4 steps per epoch, 2 epochs,
dropout 0.1 (so the global RNG, which dropout draws from, must be restored on resume too).
"""

from __future__ import annotations

import math
import os
import signal

import numpy as np
import pytest
import torch
from PIL import Image

import diffusion_utils.training as training
from diffusion_utils import (CHECKPOINT_NAME, CheckpointError, ConfigError, TrainingDiverged,
                             load_checkpoint, load_dataset, train)

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

    with pytest.raises(KeyboardInterrupt, match=f"interrupted at step {k}"):
        train(config(), tmp_path, dataset=dataset, progress=False, on_step=interrupt_at_k)
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
    """A NaN loss at the 3rd step stops training with TrainingDiverged naming step 2 (0-based
    count of completed steps) and the learning rate; no optimiser step is taken on it."""
    real_loss = training.diffusion_loss
    calls = []

    def loss_with_nan_at_third_call(*args, **kwargs):
        calls.append(1)
        loss = real_loss(*args, **kwargs)
        return loss * float("nan") if len(calls) == 3 else loss

    monkeypatch.setattr(training, "diffusion_loss", loss_with_nan_at_third_call)
    seen = []
    with pytest.raises(TrainingDiverged) as info:
        train(config(), tmp_path, dataset=dataset, progress=False, on_step=lambda s, l: seen.append(s))
    message = str(info.value)
    assert "\n" not in message and "nan" in message and "at step 2 " in message and "lr" in message
    assert seen == [1, 2]


def test_huge_learning_rate_diverges(tmp_path, dataset):
    """lr = 1e30 blows the weights up after the first step: TrainingDiverged at the step it happens."""
    seen = []
    with pytest.raises(TrainingDiverged, match=r"loss became (nan|inf|-inf) at step \d+") as info:
        train(config(lr=1e30, lr_warmup_steps=0), tmp_path, dataset=dataset, progress=False,
              on_step=lambda s, l: seen.append(s))
    assert f"at step {len(seen)} " in str(info.value)
    assert len(seen) < 2 * STEPS_PER_EPOCH


def test_resume_with_a_different_architecture_raises(checkpoint_copy, dataset):
    """Resuming a checkpoint with another network or schedule is a CheckpointError naming the field."""
    out = checkpoint_copy.parent
    for change in (dict(base_channels=16), dict(n_steps=60)):
        with pytest.raises(CheckpointError, match=next(iter(change))):
            train(config(**change), out, dataset=dataset, resume=True, progress=False)


def test_resume_errors(tmp_path, checkpoint_copy, dataset):
    """Resuming without a checkpoint, or with fewer epochs than already trained, is refused;
    so is a dataset whose image size differs from the config's."""
    with pytest.raises(CheckpointError, match="not found"):
        train(config(), tmp_path / "empty", dataset=dataset, resume=True, progress=False)
    # the shared run trained 2 epochs of 2 steps (32 images); 64 images make 4 steps per epoch,
    # so with num_epochs=1 the checkpoint's step 4 is not past the end, but with 32 images it is
    small = load_dataset("synthetic", 16, max_images=16, seed=0)
    with pytest.raises(ConfigError, match="num_epochs"):
        train(config(num_epochs=1, max_images=16), checkpoint_copy.parent, dataset=small, resume=True,
              progress=False)
    with pytest.raises(ConfigError, match="img_size"):
        train(config(), tmp_path, dataset=load_dataset("synthetic", 8, max_images=4), progress=False)
