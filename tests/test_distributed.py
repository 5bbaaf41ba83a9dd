"""Training on several processes (DistributedDataParallel over gloo, on the CPU).

Two real processes train a tiny model and must end with the weights one process gets from the
same config and seeds; a run stopped on one rank stops on both; a checkpoint written by two
processes resumes on one; ``torchrun`` through the CLI trains, and refuses a batch that does not
split, one line per process.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from conftest import tiny_config
from diffusion_utils import CHECKPOINT_NAME, TrainConfig, load_checkpoint, train
from diffusion_utils.plumbing import distributed
from diffusion_utils.data.data import epoch_batches, make_synthetic_flowers
from diffusion_utils.plumbing.errors import ConfigError
from diffusion_utils.run import TrainingInterrupted

# Tolerance for "the same weights": the all-reduce adds the two half-batch gradients in another
# order than one process sums the whole batch, so weights agree to float32 rounding (measured:
# ≤ 2e-6 after 8 AdamW steps), not bit for bit.
ATOL = 2e-5

# dropout=0: dropout masks are drawn per process from the global generator, so with dropout the
# two runs would differ by design. 64 synthetic flowers, batch 16: 4 steps per epoch.
CONFIG = dict(dropout=0.0, max_images=64, batch_size=16, num_epochs=2)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world_size: int, port: int, config: dict, out: str, resume: bool, stop_at: int) -> None:
    """One rank: join the group, check the collectives, train; report into out/rank{rank}.json."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    report = {}
    with distributed.process_group("cpu", "gloo") as ranks:
        report["ranks"] = [ranks.rank, ranks.world_size]
        nan_here = torch.tensor(float("nan") if rank == 1 else 1.0)
        report["mean_is_nan"] = bool(distributed.mean_over_ranks(nan_here, ranks).isnan())
        report["any_rank"] = distributed.any_rank(rank == 1, ranks, torch.device("cpu"))

        def on_step(step, loss):  # Ctrl-C on rank 1 only, after step `stop_at`
            if rank == 1 and step == stop_at:
                os.kill(os.getpid(), signal.SIGINT)

        try:
            result = train(TrainConfig.from_dict(config), out, resume=resume, progress=False, on_step=on_step)
            report["losses"] = result.losses
        except TrainingInterrupted as stopped:
            report["interrupted"] = str(stopped)
    Path(out, f"rank{rank}.json").write_text(json.dumps(report))


def run_ranks(out: Path, config: TrainConfig, resume: bool = False, stop_at: int = 0, world_size: int = 2) -> list:
    mp.spawn(_worker, args=(world_size, free_port(), config.to_dict(), str(out), resume, stop_at),
             nprocs=world_size, join=True)
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(world_size)]


def max_difference(a: dict, b: dict) -> float:
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a if a[k].is_floating_point())


def test_two_processes_train_as_one_and_resume_anywhere(tmp_path):
    """2 ranks × 8 images = one process × 16 images: the same losses and weights (to float
    rounding); stopped on one rank, both stop after the same step; the checkpoint two ranks wrote
    resumes on one process to the weights of an uninterrupted run."""
    config = tiny_config(**CONFIG)
    three_epochs = train(config.replace(num_epochs=3), tmp_path / "one_3", progress=False)
    two_epochs = train(config, tmp_path / "one_2", progress=False)

    reports = run_ranks(tmp_path / "two", config)
    assert [r["ranks"] for r in reports] == [[0, 2], [1, 2]]
    assert all(r["mean_is_nan"] and r["any_rank"] for r in reports)  # a NaN or a flag on rank 1 reaches rank 0
    assert reports[0]["losses"] == pytest.approx(two_epochs.losses, abs=1e-5)
    assert reports[1]["losses"] == reports[0]["losses"]  # every rank logs the global batch's loss
    saved = load_checkpoint(tmp_path / "two" / CHECKPOINT_NAME)
    assert saved["step"] == 8
    assert max_difference(saved["model"], two_epochs.model.state_dict()) < ATOL
    assert max_difference(saved["ema"], load_checkpoint(two_epochs.checkpoint_path)["ema"]) < ATOL
    assert not list((tmp_path / "two").glob("*.tmp*"))

    # Resume the two-process checkpoint on one process: epoch 3 lands where the 3-epoch run did.
    shutil.copytree(tmp_path / "two", tmp_path / "resumed", ignore=shutil.ignore_patterns("*.json", "*.lock"))
    resumed = train(config.replace(num_epochs=3), tmp_path / "resumed", resume=True, progress=False)
    assert resumed.losses == pytest.approx(three_epochs.losses, abs=1e-5)
    assert max_difference(resumed.model.state_dict(), three_epochs.model.state_dict()) < ATOL

    # Ctrl-C on rank 1 after step 5: both ranks stop there, and the checkpoint holds step 5.
    stopped = run_ranks(tmp_path / "stopped", config, stop_at=5)
    assert all("interrupted after step 5 of 8" in r["interrupted"] for r in stopped)
    assert load_checkpoint(tmp_path / "stopped" / CHECKPOINT_NAME)["step"] == 5


def test_each_rank_takes_its_slice_of_the_same_shuffle():
    """epoch_batches(shard=(r, N)): the N slices, side by side, are the one-process batch."""
    images = make_synthetic_flowers(24, 8, seed=0)
    whole = list(epoch_batches(images, 8, torch.Generator().manual_seed(3)))
    slices = [list(epoch_batches(images, 8, torch.Generator().manual_seed(3), shard=(r, 2))) for r in range(2)]
    for b, batch in enumerate(whole):
        assert torch.equal(torch.cat([slices[0][b], slices[1][b]]), batch)


def test_a_batch_that_does_not_split_is_refused_in_one_line():
    with pytest.raises(ConfigError, match="does not split evenly across 4 processes"):
        distributed.shard_size(18, distributed.Ranks(0, 4))
    assert distributed.shard_size(16, distributed.Ranks(3, 4)) == 4
    with pytest.raises(ConfigError, match="backend must be one of"):
        with distributed.process_group("cpu", "mpi"):
            pass


def test_nccl_on_the_cpu_is_refused(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="NCCL backend needs CUDA GPUs but training runs on cpu"):
        with distributed.process_group("cpu", "nccl"):
            pass


def test_torchrun_trains_through_the_cli_and_refuses_a_batch_that_does_not_split(tmp_path):
    """The command docs/gpu.md gives, on 2 CPU processes: one announcement, one checkpoint; then a
    batch of 15 on 2 processes: every process exits non-zero with one line, nothing written."""
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        pytest.skip("torchrun is not installed beside this Python")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def launch(out, *flags):
        return subprocess.run([str(torchrun), "--standalone", "--nproc_per_node=2", "-m", "diffusion_utils",
                               "train", "--data", "synthetic", "--img-size", "16", "--max-images", "32",
                               "--base-channels", "8", "--n-steps", "50", "--epochs", "1", "--device", "cpu",
                               "--sample-steps", "3", "--no-progress", "--out", str(out), *flags],
                              env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)

    good = launch(tmp_path / "good", "--batch-size", "16")
    assert good.returncode == 0, good.stderr
    assert good.stderr.count("Training on 2 processes on cpu") == 1
    assert load_checkpoint(tmp_path / "good" / CHECKPOINT_NAME)["step"] == 2

    bad = launch(tmp_path / "bad", "--batch-size", "15")
    assert bad.returncode != 0
    errors = [line for line in bad.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: the batch of 15 images does not split evenly across 2 processes; use a "
                      "batch_size divisible by 2, or another --nproc_per_node"] * 2
    assert not (tmp_path / "bad" / CHECKPOINT_NAME).exists()


def test_without_torchrun_there_is_one_process_and_bad_variables_are_named(monkeypatch):
    """No WORLD_SIZE: rank 0 of 1 and process_group() does nothing; a WORLD_SIZE or RANK that is
    not a number is one line naming it."""
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert (distributed.launched_world_size(), distributed.launched_rank()) == (1, 0)
    with distributed.process_group("cpu") as ranks:
        assert ranks == distributed.SINGLE and not ranks.active and ranks.is_main
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ConfigError, match="WORLD_SIZE='two' is not a number"):
        distributed.launched_world_size()
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "x")
    with pytest.raises(ConfigError, match="RANK='x' is not a number"):
        distributed.launched_rank()
