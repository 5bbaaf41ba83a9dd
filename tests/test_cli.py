"""``python -m diffusion_utils train|sample``: end to end, resume, and one-line errors for bad input.

Most tests call :func:`diffusion_utils.cli.main` in-process; the end-to-end test runs the real
``python -m diffusion_utils`` in subprocesses.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

import diffusion_utils.cli as cli
from diffusion_utils import CHECKPOINT_NAME, load_checkpoint
from diffusion_utils.cli import main
from diffusion_utils.plumbing.files import LOCK_NAME

# A train command that finishes in a second or two: the quick preset's 3-level UNet at 16 px,
# 8 base channels, 32 synthetic images in 2 batches, 20 diffusion steps, 2-step DDIM grids.
TINY_TRAIN = ["--preset", "quick", "--data", "synthetic", "--max-images", "32", "--epochs", "1",
              "--img-size", "16", "--base-channels", "8", "--batch-size", "16", "--n-steps", "20",
              "--sample-steps", "2", "--no-progress"]


def run_main(argv) -> int:
    """main()'s exit status, whether it returns it or argparse raises SystemExit."""
    try:
        return main([str(a) for a in argv])
    except SystemExit as exit_:
        return exit_.code


def snapshot(folder: Path) -> dict:
    """Every file below ``folder`` with its bytes and modification time."""
    return {p.relative_to(folder): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_one_error_line(stderr: str):
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got: {stderr!r}"
    assert lines[0].startswith("error: "), lines[0]
    assert "Traceback" not in stderr


# ---------------------------------------------------------------------------------------------
# End to end, in real subprocesses
# ---------------------------------------------------------------------------------------------
def test_end_to_end_train_then_sample_in_subprocesses(tmp_path):
    """Quick train on synthetic data, then sample: every promised file is written, the GIF
    loops forever over many frames, and a bad call from a real process prints one error line."""
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # DIFFUSION_CACHE_DIR points into tmp_path

    def python_m(*args):
        return subprocess.run([sys.executable, "-m", "diffusion_utils", *map(str, args)], cwd=tmp_path,
                              env=env, capture_output=True, text=True, timeout=300)

    trained = python_m("train", "--preset", "quick", "--data", "synthetic", "--max-images", "64",
                       "--epochs", "1", "--img-size", "32", "--sample-steps", "5", "--out", out, "--no-progress")
    assert trained.returncode == 0, trained.stderr
    assert "Traceback" not in trained.stderr
    for name in (CHECKPOINT_NAME, "loss.png", "epoch_samples.png", "samples/epoch_001.png"):
        assert (out / name).is_file(), name
    config = load_checkpoint(out / CHECKPOINT_NAME)["config"]
    assert (config.img_size, config.max_images, config.num_epochs, config.sample_steps) == (32, 64, 1, 5)

    sampled = python_m("sample", "--checkpoint", out / CHECKPOINT_NAME, "--n", 8, "--steps", 10, "--no-progress")
    assert sampled.returncode == 0, sampled.stderr
    with Image.open(out / "samples_grid.png") as grid:
        assert grid.size == (2 + 3 * 34, 2 + 3 * 34)  # 8 images of 32 px, 3 per row, 2 px padding
    with Image.open(out / "generated_pixel_diffusion.png") as big:
        assert big.size[0] >= 200
    with Image.open(out / "diffusion_animation.gif") as gif:
        assert gif.is_animated and gif.n_frames == 11  # 10 steps + the final sample
        assert gif.info.get("loop") == 0  # loops forever
        gif.seek(gif.n_frames - 1)
        assert gif.info["duration"] > 500  # the final frame is held
    with Image.open(out / "loss.png") as loss:
        assert loss.size[0] > 100

    missing = python_m("sample", "--checkpoint", tmp_path / "nope.pth")
    assert missing.returncode == 2
    assert_one_error_line(missing.stderr)


# ---------------------------------------------------------------------------------------------
# In-process
# ---------------------------------------------------------------------------------------------
def test_sample_in_process_is_seeded(checkpoint_copy, tmp_path, capsys):
    """The sample command writes its three files; the same --seed gives the same grid, another
    seed another grid; --sampler/--steps/--eta/--raw-weights are accepted."""
    out_a, out_b, out_c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    base = ["sample", "--checkpoint", checkpoint_copy, "--n", 4, "--steps", 3, "--no-progress", "--frames", 3]
    assert run_main(base + ["--out", out_a, "--seed", 1]) == 0
    assert run_main(base + ["--out", out_b, "--seed", 1]) == 0
    assert run_main(base + ["--out", out_c, "--seed", 2, "--sampler", "ddim", "--eta", 0.5, "--raw-weights"]) == 0
    for out in (out_a, out_b, out_c):
        for name in ("samples_grid.png", "diffusion_animation.gif", "generated_pixel_diffusion.png"):
            assert (out / name).is_file()
    assert (out_a / "samples_grid.png").read_bytes() == (out_b / "samples_grid.png").read_bytes()
    assert (out_a / "samples_grid.png").read_bytes() != (out_c / "samples_grid.png").read_bytes()
    with Image.open(out_a / "diffusion_animation.gif") as gif:
        assert gif.n_frames == 3
    assert "Traceback" not in capsys.readouterr().err


def test_train_resume_without_flags_uses_the_checkpoints_config(tmp_path, monkeypatch, capsys):
    """`train --resume` alone continues ./outputs with the checkpoint's own settings (not the
    preset's); `--resume --epochs 2` trains one more epoch with everything else unchanged."""
    monkeypatch.chdir(tmp_path)
    assert run_main(["train", *TINY_TRAIN]) == 0
    ckpt = tmp_path / "outputs" / CHECKPOINT_NAME
    first = load_checkpoint(ckpt)
    assert (first["config"].img_size, first["config"].base_channels, first["step"]) == (16, 8, 2)
    capsys.readouterr()

    assert run_main(["train", "--resume"]) == 0  # already at its last epoch: nothing more to do
    err = capsys.readouterr().err
    assert "16px" in err and "1 epochs" in err and "Traceback" not in err
    assert load_checkpoint(ckpt)["config"] == first["config"]

    assert run_main(["train", "--resume", "--epochs", "2", "--no-progress"]) == 0
    second = load_checkpoint(ckpt)
    assert second["config"] == first["config"].replace(num_epochs=2)
    assert second["step"] == 4 and second["losses"][:2].tolist() == first["losses"].tolist()


def test_train_overwrite_replaces_an_existing_checkpoint(tmp_path):
    """--overwrite starts a new run in a folder that holds a checkpoint."""
    out = tmp_path / "o"
    assert run_main(["train", *TINY_TRAIN, "--out", out]) == 0
    assert run_main(["train", *TINY_TRAIN, "--out", out, "--overwrite", "--seed", "5"]) == 0
    assert load_checkpoint(out / CHECKPOINT_NAME)["config"].seed == 5


# ---------------------------------------------------------------------------------------------
# Bad input: exit status 2, one line on stderr, nothing on disk changed
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def train_out(tmp_path) -> Path:
    """An output folder that already holds files from an earlier run (but no checkpoint)."""
    out = tmp_path / "train_out"
    (out / "samples").mkdir(parents=True)
    (out / "notes.txt").write_text("keep me")
    (out / "loss.png").write_bytes(b"an old figure")
    (out / "samples" / "epoch_001.png").write_bytes(b"old")
    return out


TRAIN_ERRORS = {
    "beta_end below beta_start": ["--data", "synthetic", "--beta-start", "0.02", "--beta-end", "0.01"],
    "img size the quick UNet cannot halve": ["--preset", "quick", "--data", "synthetic", "--img-size", "30"],
    "unknown dataset": ["--preset", "quick", "--data", "nosuchset"],
    "zero epochs": ["--preset", "quick", "--data", "synthetic", "--epochs", "0"],
    "negative batch": ["--preset", "quick", "--data", "synthetic", "--batch-size", "-3"],
    "bad device": ["--preset", "quick", "--data", "synthetic", "--device", "gpu"],
    "malformed cuda device": ["--preset", "quick", "--data", "synthetic", "--device", "cuda:x"],
    "sample steps above n_steps": ["--preset", "quick", "--data", "synthetic", "--n-steps", "10"],
    "resume without a checkpoint": ["--preset", "quick", "--data", "synthetic", "--resume"],
}


@pytest.mark.parametrize("case", list(TRAIN_ERRORS))
def test_bad_train_input_exits_2_with_one_line(case, train_out, capsys):
    before = snapshot(train_out)
    assert run_main(["train", "--out", train_out, *TRAIN_ERRORS[case]]) == 2
    assert_one_error_line(capsys.readouterr().err)
    assert snapshot(train_out) == before


@pytest.mark.parametrize("case", ["empty", "missing"])
def test_empty_or_missing_data_folder_exits_2_with_one_line(case, tmp_path, train_out, capsys):
    folder = tmp_path / "data"
    if case == "empty":
        folder.mkdir()
        (folder / "readme.txt").write_text("no images here")
    before = snapshot(train_out)
    assert run_main(["train", "--preset", "quick", "--data", f"{folder}/", "--out", train_out]) == 2
    err = capsys.readouterr().err
    assert_one_error_line(err)
    assert str(folder) in err
    assert snapshot(train_out) == before


def test_existing_checkpoint_needs_resume_or_overwrite(checkpoint_copy, capsys):
    out = checkpoint_copy.parent
    (out / "loss.png").write_bytes(b"figure")
    before = snapshot(out)
    assert run_main(["train", *TINY_TRAIN, "--out", out]) == 2
    err = capsys.readouterr().err
    assert_one_error_line(err)
    assert "--resume" in err and "--overwrite" in err
    assert snapshot(out) == before


def test_resume_with_a_different_architecture_exits_2(checkpoint_copy, capsys):
    out = checkpoint_copy.parent
    before = snapshot(out)
    assert run_main(["train", "--out", out, "--resume", "--img-size", "32", "--no-progress"]) == 2
    assert_one_error_line(capsys.readouterr().err)
    assert snapshot(out) == before


@pytest.fixture
def sample_out(checkpoint_copy) -> Path:
    """The checkpoint's folder, holding outputs of an earlier sample run."""
    out = checkpoint_copy.parent
    for name in ("samples_grid.png", "diffusion_animation.gif", "generated_pixel_diffusion.png"):
        (out / name).write_bytes(b"old " + name.encode())
    return out


SAMPLE_ERRORS = {
    "n zero": ["--n", "0"],
    "n negative": ["--n", "-3"],
    "n not a number": ["--n", "many"],
    "steps with ddpm": ["--sampler", "ddpm", "--steps", "5"],
    "steps above T": ["--sampler", "ddim", "--steps", "51"],
    "eta above 1": ["--sampler", "ddim", "--eta", "2"],
    "unknown sampler": ["--sampler", "euler"],
    "unknown device": ["--device", "tpu"],
    "malformed cuda device": ["--device", "cuda:x"],
    "meta device": ["--device", "meta"],
}


@pytest.mark.parametrize("case", list(SAMPLE_ERRORS))
def test_bad_sample_input_exits_2_with_one_line(case, sample_out, capsys):
    before = snapshot(sample_out)
    assert run_main(["sample", "--checkpoint", sample_out / CHECKPOINT_NAME, *SAMPLE_ERRORS[case]]) == 2
    assert_one_error_line(capsys.readouterr().err)
    assert snapshot(sample_out) == before


@pytest.mark.parametrize("case", ["missing", "corrupt", "truncated", "foreign"])
def test_bad_checkpoint_exits_2_with_one_line(case, sample_out, capsys):
    path = sample_out / CHECKPOINT_NAME
    if case == "missing":
        path = sample_out / "no_such.pth"
    elif case == "corrupt":
        path = sample_out / "corrupt.pth"
        path.write_bytes(os.urandom(1000))
    elif case == "truncated":
        path = sample_out / "truncated.pth"
        path.write_bytes((sample_out / CHECKPOINT_NAME).read_bytes()[:5000])
    else:
        path = sample_out / "foreign.pth"
        torch.save({"weights": torch.zeros(3)}, path)
    before = snapshot(sample_out)
    assert run_main(["sample", "--checkpoint", path, "--n", "2"]) == 2
    err = capsys.readouterr().err
    assert_one_error_line(err)
    assert path.name in err
    assert snapshot(sample_out) == before


def test_missing_command_or_unknown_flag_is_one_line(capsys):
    for argv in ([], ["fly"], ["train", "--no-such-flag"], ["sample"], ["sample", "--checkpoint", "a.pth",
                 "--pretrained", "b.pt"], ["export"], ["export", "--checkpoint", "a.pth"]):
        assert run_main(argv) == 2
        assert_one_error_line(capsys.readouterr().err)


# ---------------------------------------------------------------------------------------------
# Validation before work: the output folder, sizes, damaged checkpoints, warnings, Ctrl-C, memory
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def no_data_loading(monkeypatch):
    """Fails the test if the train command gets as far as loading data."""
    monkeypatch.setattr(cli, "load_dataset", lambda *a, **k: pytest.fail("data was loaded before the check"))


@pytest.mark.parametrize("case", ["below a file", "read-only", "samples is a file", "locked by another run",
                                  "empty name"])
def test_unusable_train_out_exits_2_before_any_work(case, tmp_path, train_out, no_data_loading, capsys):
    """An --out that train could not write, or that another run holds, is refused before the data
    is loaded (let alone trained on), in one line, with nothing on disk changed."""
    (tmp_path / "file").write_text("x")
    out = {"below a file": tmp_path / "file" / "run", "empty name": ""}.get(case, train_out)
    if case == "samples is a file":
        shutil.rmtree(train_out / "samples")
        (train_out / "samples").write_text("x")
    fd = None
    if case == "locked by another run":
        fcntl = pytest.importorskip("fcntl")
        fd = os.open(train_out / LOCK_NAME, os.O_RDWR | os.O_CREAT)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(fd, b"4242 otherhost\n")
    before = snapshot(tmp_path)
    if case == "read-only":
        train_out.chmod(0o555)
    try:
        assert run_main(["train", *TINY_TRAIN, "--out", out]) == 2
    finally:
        train_out.chmod(0o755)
        if fd is not None:
            os.close(fd)
    assert_one_error_line(capsys.readouterr().err)
    assert snapshot(tmp_path) == before


TRAIN_SIZE_AND_VALUE_ERRORS = {
    "diffusion steps in the billions": ["--n-steps", "3000000000"],
    "image size in the millions": ["--img-size", "1048576"],
    "epochs in the trillions": ["--epochs", "1000000000000"],
    "infinite learning rate": ["--lr", "inf"],
    "NaN beta": ["--beta-end", "nan"],
    "seed beyond 32 bits": ["--seed", str(2 ** 64)],
}


@pytest.mark.parametrize("case", list(TRAIN_SIZE_AND_VALUE_ERRORS))
def test_absurd_or_non_finite_train_values_exit_2_before_any_work(case, train_out, no_data_loading, capsys):
    before = snapshot(train_out)
    argv = ["train", "--preset", "quick", "--data", "synthetic", "--out", train_out]
    assert run_main(argv + TRAIN_SIZE_AND_VALUE_ERRORS[case]) == 2
    assert_one_error_line(capsys.readouterr().err)
    assert snapshot(train_out) == before


def test_empty_data_is_refused_not_the_current_folder(tmp_path, train_out, monkeypatch, capsys):
    """--data '' used to train on whatever folder the command ran in."""
    monkeypatch.chdir(tmp_path)
    Image.new("RGB", (8, 8)).save(tmp_path / "stray.png")
    monkeypatch.setattr(cli, "train", lambda *a, **k: pytest.fail("trained"))
    before = snapshot(train_out)
    assert run_main(["train", "--preset", "quick", "--data", "", "--out", train_out]) == 2
    assert_one_error_line(capsys.readouterr().err)
    assert snapshot(train_out) == before


@pytest.mark.parametrize("argv", [["--n", "3000000000"], ["--n", "10001"], ["--seed", str(2 ** 64)]])
def test_absurd_sample_sizes_exit_2_naming_the_range(argv, sample_out, capsys):
    before = snapshot(sample_out)
    assert run_main(["sample", "--checkpoint", sample_out / CHECKPOINT_NAME, *argv]) == 2
    err = capsys.readouterr().err
    assert_one_error_line(err)
    assert "[" in err and "]" in err  # the allowed range
    assert snapshot(sample_out) == before


def test_unwritable_sample_out_exits_2_before_sampling(checkpoint_copy, tmp_path, monkeypatch, capsys):
    for name in ("sample", "sample_trajectory"):
        monkeypatch.setattr(cli, name, lambda *a, **k: pytest.fail("sampled before the check"))
    (tmp_path / "file").write_text("x")
    assert run_main(["sample", "--checkpoint", checkpoint_copy, "--out", tmp_path / "file" / "x"]) == 2
    assert_one_error_line(capsys.readouterr().err)


DAMAGED = {
    "missing entry": lambda s: {k: v for k, v in s.items() if k != "ema"},
    "config of the wrong type": lambda s: {**s, "config": [1, 2, 3]},
    "weights that disagree with their config": lambda s: {**s, "config": {**s["config"], "time_emb_dim": 32}},
    "non-finite weights": lambda s: {**s, "ema": {k: v * float("inf") if v.is_floating_point() else v
                                                  for k, v in s["ema"].items()}},
}


@pytest.mark.parametrize("case, command", [("missing entry", "sample"), ("config of the wrong type", "resume"),
                                           ("weights that disagree with their config", "export"),
                                           ("non-finite weights", "sample")])
def test_damaged_checkpoint_exits_2_with_one_line_for_every_command(case, command, sample_out, capsys):
    """The one reader: sample, train --resume and export all refuse a damaged checkpoint in one
    line, without a torch warning, before writing anything."""
    path = sample_out / CHECKPOINT_NAME
    torch.save(DAMAGED[case](torch.load(path, weights_only=True)), path)
    before = snapshot(sample_out)
    argv = {"sample": ["sample", "--checkpoint", path, "--n", "2"],
            "resume": ["train", "--resume", "--out", sample_out, "--no-progress"],
            "export": ["export", "--checkpoint", path, "--out", sample_out / "m.pt"]}[command]
    assert run_main(argv) == 2
    err = capsys.readouterr().err
    assert_one_error_line(err)
    assert str(path) in err and "damaged" in err
    assert snapshot(sample_out) == before


def test_warnings_are_one_line_each(checkpoint_copy, capsys):
    """A stale lock is taken over with a note; the CLI prints it (like every warning) as one line."""
    out = checkpoint_copy.parent
    checkpoint_copy.unlink()
    (out / LOCK_NAME).write_text("999999 somehost\n")
    assert run_main(["train", "--resume", "--out", out]) == 2  # no checkpoint: refused after taking the lock
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("warning: took over the lock") and "pid 999999" in lines[0]
    assert len(lines) == 2 and lines[1].startswith("error: ")
    assert not (out / LOCK_NAME).exists()


@pytest.mark.parametrize("case", ["fresh", "resume", "sample"])
def test_ctrl_c_before_the_first_checkpoint_says_what_there_is_to_resume(case, checkpoint_copy, tmp_path,
                                                                         monkeypatch, capsys):
    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "load_dataset", ctrl_c)
    monkeypatch.setattr(cli, "sample", ctrl_c)
    monkeypatch.setattr(cli, "sample_trajectory", ctrl_c)  # the first batch keeps its trajectory for the GIF
    argv = {"fresh": ["train", *TINY_TRAIN, "--out", tmp_path / "new"],
            "resume": ["train", "--resume", "--out", checkpoint_copy.parent, "--epochs", "3"],
            "sample": ["sample", "--checkpoint", checkpoint_copy, "--out", tmp_path / "s"]}[case]
    assert run_main(argv) == 130
    stderr = capsys.readouterr().err
    err = stderr.strip().splitlines()[-1]  # after the line that announces the work, if any
    assert "Traceback" not in stderr and err.startswith("interrupted")
    if case == "fresh":
        assert "nothing to resume" in err and not (tmp_path / "new").exists()
    elif case == "resume":
        assert f"--resume --out {checkpoint_copy.parent}" in err
    else:
        assert "--resume" not in err


def test_out_of_memory_is_one_line(checkpoint_copy, tmp_path, monkeypatch, capsys):
    def oom(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB\nmore detail")

    monkeypatch.setattr(cli, "sample", oom)
    monkeypatch.setattr(cli, "sample_trajectory", oom)  # the first batch keeps its trajectory for the GIF
    assert run_main(["sample", "--checkpoint", checkpoint_copy, "--out", tmp_path / "s"]) == 2
    announced, error = capsys.readouterr().err.strip().splitlines()  # "Sampling 64 images …", then one line
    assert announced.startswith("Sampling") and error.startswith("error: out of memory") and "--n" in error


def test_sample_generates_in_batches(checkpoint_copy, tmp_path, monkeypatch):
    """--n above the batch size is drawn a batch at a time, so memory stays flat for any --n."""
    sizes = []

    def counting(real):
        def draw(model, schedule, n, **kwargs):
            sizes.append(n)
            return real(model, schedule, n, **kwargs)
        return draw

    monkeypatch.setattr(cli, "sample", counting(cli.sample))
    monkeypatch.setattr(cli, "sample_trajectory", counting(cli.sample_trajectory))  # the first batch
    monkeypatch.setattr(cli, "SAMPLE_BATCH", 3)
    argv = ["sample", "--checkpoint", checkpoint_copy, "--steps", 2, "--frames", 2, "--no-progress", "--n", 4,
            "--out", tmp_path]
    assert run_main(argv) == 0
    assert sizes == [3, 1]
    with Image.open(tmp_path / "samples_grid.png") as grid:
        assert grid.size == (2 + 2 * 18, 2 + 2 * 18)  # 4 images of 16 px, 2 per row


def test_a_flow_run_trains_resumes_and_samples_from_the_cli(tmp_path, monkeypatch, capsys):
    """--objective flow on the quick preset: it trains, samples with heun, refuses ddim (exit 2, one
    line, nothing written) and refuses to resume as a diffusion run."""
    monkeypatch.chdir(tmp_path)
    assert run_main(["train", *TINY_TRAIN, "--objective", "flow", "--out", "run"]) == 0
    checkpoint = load_checkpoint(tmp_path / "run" / CHECKPOINT_NAME)
    assert checkpoint["config"].objective == "flow" and checkpoint["config"].sampler == "euler"
    assert run_main(["sample", "--checkpoint", f"run/{CHECKPOINT_NAME}", "--sampler", "heun", "--steps", "3",
                     "--n", "4", "--out", "samples", "--no-progress"]) == 0
    assert (tmp_path / "samples" / "samples_grid.png").exists()
    capsys.readouterr()
    assert run_main(["sample", "--checkpoint", f"run/{CHECKPOINT_NAME}", "--sampler", "ddim", "--steps", "3",
                     "--out", "refused"]) == 2
    assert_one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "refused").exists()
    assert run_main(["train", *TINY_TRAIN, "--objective", "diffusion", "--sampler", "ddim", "--epochs", "2",
                     "--resume", "--out", "run"]) == 2
    assert "objective" in capsys.readouterr().err


def test_sample_defaults_to_dpmpp_20_and_the_ancestral_sampler_is_one_flag_away(checkpoint_copy, tmp_path,
                                                                                 monkeypatch, capsys):
    """A diffusion model samples with DPM-Solver++ in 20 network calls unless told otherwise (not
    its training grids' DDIM); --sampler ddpm takes all T steps (--steps T says it outright); a
    sampler alone gets its own default steps; --help says all of it."""
    calls = []

    def recording(real):
        def draw(model, schedule, n, **kwargs):
            calls.append((kwargs["sampler"], kwargs["steps"]))
            return real(model, schedule, n, **kwargs)
        return draw

    monkeypatch.setattr(cli, "sample_trajectory", recording(cli.sample_trajectory))
    assert load_checkpoint(checkpoint_copy)["config"].sampler == "ddim"  # the grids' sampler is not the default
    base = ["sample", "--checkpoint", checkpoint_copy, "--n", 1, "--frames", 2, "--no-progress"]
    T = load_checkpoint(checkpoint_copy)["config"].n_steps
    for extra, expected in (([], ("dpmpp", 20)), (["--sampler", "ddpm"], ("ddpm", T)),
                            (["--sampler", "ddpm", "--steps", T], ("ddpm", T)), (["--sampler", "ddim"], ("ddim", 50)),
                            (["--steps", 7], ("dpmpp", 7))):
        calls.clear()
        assert run_main(base + extra + ["--out", tmp_path / "_".join(map(str, expected))]) == 0, extra
        assert calls == [expected], extra
        assert f"with {expected[0]} ({expected[1]} steps" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["sample", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for piece in ("dpmpp (DPM-Solver++, the default", "--sampler ddpm --steps 1000", "euler (the default)",
                  "default 20 for dpmpp, euler and heun"):
        assert piece in text, piece


def test_a_flow_checkpoint_samples_with_euler_20_by_default(tmp_path, monkeypatch, capsys):
    """A flow run samples with Euler in 20 steps when no sampler is given, whatever its grids used."""
    monkeypatch.chdir(tmp_path)
    assert run_main(["train", *TINY_TRAIN, "--objective", "flow", "--out", "run"]) == 0
    assert load_checkpoint(tmp_path / "run" / CHECKPOINT_NAME)["config"].sample_steps == 2
    capsys.readouterr()
    assert run_main(["sample", "--checkpoint", f"run/{CHECKPOINT_NAME}", "--n", "2", "--frames", "2",
                     "--out", "samples", "--no-progress"]) == 0
    assert "Sampling 2 images with euler (20 steps" in capsys.readouterr().err
    assert (tmp_path / "samples" / "samples_grid.png").exists()
