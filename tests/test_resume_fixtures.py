"""Checkpoints written by an earlier version of the package still load, sample and resume exactly.

tests/fixtures/resume_*.pth were written by version 0.1.0 (``make_resume_fixtures.py`` beside
them), each by a tiny run stopped by Ctrl-C in the middle of its second epoch; the JSON beside
each records the losses its uninterrupted continuation gave then. Resuming with today's code must
give the same losses: the checkpoint's keys and the order of the random draws in a training step
are part of the format.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from diffusion_utils import CHECKPOINT_NAME, TrainConfig, load_checkpoint, load_model, train

FIXTURES = Path(__file__).parent / "fixtures"


def fixture_run(name: str, tmp_path: Path) -> tuple[Path, dict]:
    """A copy of fixture ``name``'s checkpoint in its own run folder, and what it recorded."""
    shutil.copy2(FIXTURES / f"resume_{name}.pth", tmp_path / CHECKPOINT_NAME)
    return tmp_path / CHECKPOINT_NAME, json.loads((FIXTURES / f"resume_{name}.json").read_text())


@pytest.mark.parametrize("name", ["generate", "sr"])
def test_an_old_checkpoint_loads_and_samples(name, tmp_path):
    path, expected = fixture_run(name, tmp_path)
    state = load_checkpoint(path)
    assert state["config"] == TrainConfig(**{**expected["config"], "class_names": state["config"].class_names,
                                             "num_classes": state["config"].num_classes})
    assert (state["step"], state["epoch"], state["batch_in_epoch"]) == (3, 1, 1)
    assert state["losses"].tolist() == pytest.approx(expected["losses"][:3], rel=1e-6)
    model, schedule, config = load_model(path)
    assert config.task == expected["config"].get("task", "generate")
    x = torch.zeros(2, 3, config.img_size, config.img_size)
    t = torch.tensor([0, len(schedule) - 1])
    cond = {"cond": x, "cond_t": torch.zeros(2, dtype=torch.long)} if config.task == "sr" else {}
    with torch.no_grad():
        assert torch.isfinite(model(x, t, **cond)).all()


@pytest.mark.parametrize("name", ["generate", "sr"])
def test_an_old_checkpoint_resumes_to_the_losses_it_gave_then(name, tmp_path):
    path, expected = fixture_run(name, tmp_path)
    result = train(TrainConfig(**expected["config"]), tmp_path, resume=True, progress=False)
    assert result.losses == pytest.approx(expected["losses"], rel=1e-5)
    final = load_checkpoint(path)
    assert (final["step"], final["epoch"]) == (expected["step"], expected["epoch"])
    ema_sum = sum(float(v.double().sum()) for k, v in final["ema"].items() if k.startswith("module."))
    assert ema_sum == pytest.approx(expected["ema_weight_sum"], rel=1e-5)
