"""Inputs a new user tried that once slipped through: each is now one line on stderr and exit
status 2, before the command announces any work, loads any data or writes anything.

- ``sample --class ''`` (a class list with no name in it) ended in a ZeroDivisionError traceback;
- ``train --resume --epochs 1`` on a run past epoch 1, and ``train --init-from`` a checkpoint of
  another network, printed the run's "Training on …" line and loaded the data before refusing.
"""

from __future__ import annotations

import pytest

import diffusion_utils.cli as cli
from diffusion_utils import PRETRAINED

from test_cli import TINY_TRAIN, assert_one_error_line, run_main, snapshot


@pytest.fixture
def no_data_loading(monkeypatch):
    monkeypatch.setattr(cli, "load_dataset", lambda *a, **k: pytest.fail("data was loaded before the refusal"))


@pytest.mark.skipif("flowers32" not in PRETRAINED, reason="the shipped flowers32 weights are not installed")
@pytest.mark.parametrize("classes", [[""], [","], ["", " "]])
def test_a_class_list_without_a_name_is_one_line(classes, tmp_path, capsys):
    argv = ["sample", "--pretrained", "flowers32", "--n", "2", "--out", tmp_path / "s"]
    for value in classes:
        argv += ["--class", value]
    assert run_main(argv) == 2
    err = capsys.readouterr().err
    assert_one_error_line(err)
    assert "unknown class" in err and "pink primrose" in err  # what the names look like
    assert not (tmp_path / "s").exists()


def test_resuming_with_fewer_epochs_than_done_is_refused_before_any_work(checkpoint_copy, no_data_loading, capsys):
    """The shared run trained 2 epochs; --epochs 1 cannot continue it."""
    out = checkpoint_copy.parent
    before = snapshot(out)
    assert run_main(["train", "--resume", "--epochs", "1", "--out", out, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert_one_error_line(err)
    assert "already trained 2 epochs" in err and "--epochs" in err
    assert snapshot(out) == before


@pytest.mark.parametrize("case", ["another network", "with --resume"])
def test_init_from_a_checkpoint_it_cannot_start_from_is_refused_before_any_work(case, checkpoint_copy, tmp_path,
                                                                               no_data_loading, capsys):
    """The shared run's tiny two-level UNet cannot start a quick-preset run (three levels, 32 px)."""
    out = tmp_path / "new"
    argv = ["train", *TINY_TRAIN, "--img-size", "32", "--out", out, "--init-from", checkpoint_copy]
    if case == "with --resume":
        argv = ["train", "--resume", "--out", checkpoint_copy.parent, "--init-from", checkpoint_copy]
    before = snapshot(checkpoint_copy.parent)
    assert run_main(argv) == 2
    err = capsys.readouterr().err
    assert_one_error_line(err)
    assert ("was trained with" in err) if case == "another network" else ("pass only one" in err)
    assert not out.exists() and snapshot(checkpoint_copy.parent) == before
