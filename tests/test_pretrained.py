"""Pretrained weights: export → load round trip, the model card, one-line errors, the CLI.

The exported models come from the shared tiny training run (``trained_run`` in conftest). The
tests of the shipped ``flowers32`` skip until its file is in ``diffusion_utils/pretrained/weights/``.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path

import pytest
import torch

from diffusion_utils import (PRETRAINED, CheckpointError, DiffusionError, TrainConfig, export_pretrained,
                             load_model, load_pretrained, pretrained_card, sample)
from diffusion_utils.pretrained import pretrained as pretrained_module
from diffusion_utils.pretrained.cards import render_card
from diffusion_utils.cli import build_parser, main, train_command, train_overrides
from diffusion_utils.pretrained.pretrained import PRETRAINED_FORMAT

from conftest import tiny_config

CARD = {"command": "python -m diffusion_utils train --preset quick --data synthetic", "commit": "0123abc",
        "wall_time": 4980.0, "hardware": "1× NVIDIA T4", "kid": 0.0123, "kid_std": 0.0004, "fid": 45.6,
        "floor_kid": 0.0011, "floor_fid": 7.8, "n_samples": 1000, "sampler": "dpmpp", "sample_steps": 20,
        "notes": ["trained for the tests"], "seeds": (1, 2)}
OUTPUTS = ("samples_grid.png", "diffusion_animation.gif", "generated_pixel_diffusion.png")


def one_line(err: BaseException) -> str:
    message = str(err)
    assert message and "\n" not in message, repr(message)
    return message


def run_main(argv) -> int:
    """main()'s exit status, whether it returns it or argparse raises SystemExit."""
    try:
        return main([str(a) for a in argv])
    except SystemExit as exit_:
        return exit_.code


def assert_one_error_line(stderr: str):
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got: {stderr!r}"
    assert lines[0].startswith("error: ") and "Traceback" not in stderr, stderr


def ema_weights(checkpoint_path) -> dict:
    state = torch.load(checkpoint_path, weights_only=True)
    return {k.removeprefix("module."): v for k, v in state["ema"].items() if k.startswith("module.")}


@pytest.fixture(scope="session")
def exported(trained_run, tmp_path_factory) -> Path:
    """The shared tiny run exported with a full card (read-only: copy it before changing it)."""
    return export_pretrained(trained_run.checkpoint_path, tmp_path_factory.mktemp("exported") / "tiny.pt", CARD)


@pytest.fixture
def weights_dir(tmp_path, monkeypatch) -> Path:
    """An empty stand-in for the package's weights/ folder."""
    folder = tmp_path / "weights"
    folder.mkdir()
    monkeypatch.setattr(pretrained_module, "WEIGHTS_DIR", folder)
    return folder


# ---------------------------------------------------------------------------------------------
# Export and the file format
# ---------------------------------------------------------------------------------------------
def test_export_writes_fp16_ema_weights_that_load_with_weights_only(trained_run, exported):
    """One torch.save file of plain types: the format marker, the config dict, the EMA weights in
    float16 (every parameter of the network), the card with the checkpoint's facts filled in."""
    state = torch.load(exported, weights_only=True)
    assert set(state) == {"format", "config", "weights", "card"}
    assert state["format"] == PRETRAINED_FORMAT
    assert TrainConfig.from_dict(state["config"]) == trained_run.config
    ema = ema_weights(trained_run.checkpoint_path)
    assert set(state["weights"]) == set(trained_run.ema_model.state_dict()) == set(ema)
    for name, value in state["weights"].items():
        assert value.dtype == torch.float16, name
        assert torch.equal(value, ema[name].half()), name
    card = state["card"]
    assert card["images_seen"] == 4 * 16 and card["steps"] == 4 and card["epochs"] == 2
    assert card["parameters"] == sum(p.numel() for p in trained_run.ema_model.parameters())
    assert card["kid"] == CARD["kid"] and card["seeds"] == [1, 2]  # tuples become lists
    assert sorted(os.listdir(exported.parent)) == ["tiny.md", "tiny.pt"]  # no temporary file left


def test_export_card_values_win_over_checkpoint_facts(trained_run, tmp_path):
    path = export_pretrained(trained_run.checkpoint_path, tmp_path / "m.pt", {"images_seen": 123, "steps": 9})
    card = pretrained_card(path)
    assert (card["images_seen"], card["steps"], card["epochs"]) == (123, 9, 2)


def test_model_card_markdown(exported):
    """The card says what the model is, how to load it, the exact command, the commit, the
    figures next to the real-data floor, and its limitations."""
    text = exported.with_suffix(".md").read_text(encoding="utf-8")
    assert text.startswith("# tiny")
    for piece in (CARD["command"], CARD["commit"], "load_pretrained(", "--pretrained", "Images seen: 64",
                  "1 h 23 min", "1× NVIDIA T4", "0.0123 ± 0.0004", "45.6", "0.0011", "7.8", "1,000", "dpmpp",
                  "floor", "## Limitations", "16×16", "trained for the tests", "seeds"):
        assert piece in text, piece


def test_model_card_shows_every_row_of_the_measurement_as_a_table(trained_run):
    """A card's ``table`` (the rows bench_quality.py --out writes) becomes one Markdown table after the
    model-vs-floor one, each row with its KID ± std, FID and, where timed, seconds per image."""
    rows = [{"name": "real floor", "kid": 0.0001, "kid_std": 0.0002, "fid": 23.57},
            {"name": "cascade, s = 25", "kid": 0.0431, "kid_std": 0.0021, "fid": 98.2, "seconds_per_image": 0.8462}]
    text = render_card("tiny", trained_run.config, {**CARD, "table": rows})
    quality = text.split("## Quality")[1].split("## Limitations")[0]
    table = [line for line in quality.splitlines() if line.startswith("| ") and "|---" not in line][-3:]
    assert table == ["| images | KID | FID | seconds per image |", "| real floor | 0.0001 ± 0.0002 | 23.57 |  |",
                     "| cascade, s = 25 | 0.0431 ± 0.0021 | 98.2 | 0.846 |"]
    assert "- table:" not in text  # the table is not listed again among the other facts


def test_model_card_without_figures_says_so(trained_run, tmp_path):
    path = export_pretrained(trained_run.checkpoint_path, tmp_path / "bare.pt")
    text = path.with_suffix(".md").read_text(encoding="utf-8")
    assert "Command: not recorded" in text and "Not measured." in text and "Images seen: 64" in text


@pytest.mark.parametrize("case", ["not .pt", "card object", "card key", "missing checkpoint"])
def test_export_errors_are_one_line_and_write_nothing(case, trained_run, tmp_path):
    out, card, ckpt = tmp_path / "out" / "m.pt", {}, trained_run.checkpoint_path
    if case == "not .pt":
        out = tmp_path / "out" / "m.md"
    elif case == "card object":
        card = {"kid": torch.tensor(0.1)}
    elif case == "card key":
        card = {"scores": {1: 0.1}}
    else:
        ckpt = tmp_path / "none.pth"
    with pytest.raises(CheckpointError) as info:
        export_pretrained(ckpt, out, card)
    one_line(info.value)
    assert not (tmp_path / "out").exists()


def test_export_refuses_weights_beyond_float16(trained_run, tmp_path):
    state = torch.load(trained_run.checkpoint_path, weights_only=True)
    key = next(k for k in state["ema"] if k.startswith("module."))
    state["ema"][key] = state["ema"][key] + 1e6
    torch.save(state, tmp_path / "big.pth")
    with pytest.raises(CheckpointError) as info:
        export_pretrained(tmp_path / "big.pth", tmp_path / "big.pt")
    assert "float16" in one_line(info.value)
    assert not (tmp_path / "big.pt").exists()


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------
def test_load_pretrained_matches_load_model(trained_run, exported):
    """The same shape as load_model: (model in eval mode, schedule, config); the weights are the
    EMA's to float16 precision; samples from the same seed match within a fraction of one 8-bit
    level. Nothing warns."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model, schedule, config = load_pretrained(exported)
    reference, ref_schedule, ref_config = load_model(trained_run.checkpoint_path)
    assert config == ref_config and not model.training
    assert torch.equal(schedule.betas, ref_schedule.betas)
    for name, value in model.state_dict().items():
        assert value.dtype == torch.float32, name
        assert torch.equal(value, reference.state_dict()[name].half().float()), name
    for sampler, steps in (("ddim", 5), ("dpmpp", 5), ("ddpm", None)):
        a = sample(model, schedule, 4, sampler=sampler, steps=steps, generator=torch.Generator().manual_seed(3),
                   progress=False)
        b = sample(reference, ref_schedule, 4, sampler=sampler, steps=steps,
                   generator=torch.Generator().manual_seed(3), progress=False)
        assert (a - b).abs().max() < 2 / 255, sampler
    assert model.card == pretrained_card(exported) and model.card["commit"] == CARD["commit"]


def test_load_pretrained_accepts_a_string_path(exported):
    model, _, config = load_pretrained(str(exported))
    assert config.img_size == model.img_size == 16


def test_shipped_names_come_from_the_weights_folder(exported, weights_dir):
    """A .pt file in weights/ is a name: load_pretrained("tiny") loads it, and a typo lists the
    available names with the close matches."""
    shutil.copy2(exported, weights_dir / "tiny.pt")
    shutil.copy2(exported, weights_dir / "flowers32.pt")
    (weights_dir / "flowers32.md").write_text("# card")
    assert pretrained_module.available_pretrained() == ("flowers32", "tiny")
    model, _, config = load_pretrained("tiny")
    assert config.img_size == 16 and pretrained_card("flowers32")["commit"] == CARD["commit"]
    with pytest.raises(CheckpointError) as info:
        load_pretrained("flower32")
    message = one_line(info.value)
    assert "did you mean 'flowers32'" in message and "available: flowers32, tiny" in message
    with pytest.raises(CheckpointError) as info:
        load_pretrained("imagenet")
    assert "did you mean" not in one_line(info.value) and "flowers32, tiny" in str(info.value)


def test_no_weights_installed_says_reinstall(weights_dir):
    with pytest.raises(CheckpointError) as info:
        load_pretrained("flowers32")
    message = one_line(info.value)
    assert "'flowers32'" in message and "reinstall" in message and "export" in message


def test_package_weights_folder_is_the_package_data_folder():
    """No machine paths: the names come from the weights/ folder inside the installed package."""
    folder = Path(pretrained_module.__file__).resolve().parent / "weights"
    assert pretrained_module.WEIGHTS_DIR == folder
    shipped = tuple(sorted(p.stem for p in folder.glob("*.pt"))) if folder.is_dir() else ()
    assert PRETRAINED == shipped


def lfs_pointer() -> bytes:
    return (b"version https://git-lfs.github.com/spec/v1\noid sha256:" + b"0" * 64 + b"\nsize 2400000\n")


@pytest.mark.parametrize("kind", ["random_bytes", "truncated", "empty", "lfs_pointer", "missing"])
def test_damaged_shipped_file_says_reinstall(kind, exported, weights_dir):
    """A shipped file that is corrupt, truncated, a git-LFS pointer, or gone (a dangling link)."""
    path = weights_dir / "flowers32.pt"
    real = exported.read_bytes()
    if kind == "missing":
        path.symlink_to(weights_dir / "gone.pt")
    else:
        path.write_bytes({"random_bytes": os.urandom(4096), "truncated": real[: len(real) // 2], "empty": b"",
                          "lfs_pointer": lfs_pointer()}[kind])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(CheckpointError) as info:
            load_pretrained("flowers32")
    message = one_line(info.value)
    assert "reinstall" in message and "flowers32.pt" in message


@pytest.mark.parametrize("kind", ["random_bytes", "truncated", "missing"])
def test_damaged_user_file_says_export_again(kind, exported, tmp_path):
    path = tmp_path / "mine.pt"
    if kind == "random_bytes":
        path.write_bytes(os.urandom(4096))
    elif kind == "truncated":
        path.write_bytes(exported.read_bytes()[:3000])
    with pytest.raises(CheckpointError) as info:
        load_pretrained(path)
    message = one_line(info.value)
    assert str(path) in message and "reinstall" not in message
    assert ("not found" if kind == "missing" else "export") in message


def rewrite(exported: Path, tmp_path: Path, **changes) -> Path:
    state = torch.load(exported, weights_only=True)
    state.update(changes)
    path = tmp_path / "changed.pt"
    torch.save(state, path)
    return path


@pytest.mark.parametrize("case, expected", [
    ("foreign dict", "not a diffusion_utils pretrained file"),
    ("bare tensor", "not a diffusion_utils pretrained file"),
    ("other format", "not a diffusion_utils pretrained file"),
    ("no weights", "holds no weights"),
    ("invalid config", "invalid config"),
    ("card not a dict", "card"),
    ("wider network", "do not match"),
    ("missing weight", "do not match"),
    ("nan weight", "NaN"),
])
def test_wrong_format_or_contents_raise_one_line(case, expected, exported, trained_run, tmp_path):
    state = torch.load(exported, weights_only=True)
    first = next(iter(state["weights"]))
    if case == "foreign dict":
        path = tmp_path / "f.pt"
        torch.save({"weights": {"w": torch.zeros(2)}}, path)
    elif case == "bare tensor":
        path = tmp_path / "f.pt"
        torch.save(torch.zeros(3), path)
    elif case == "other format":
        path = rewrite(exported, tmp_path, format="someone_else/3")
    elif case == "no weights":
        path = rewrite(exported, tmp_path, weights={})
    elif case == "invalid config":
        path = rewrite(exported, tmp_path, config={**state["config"], "img_size": -1})
    elif case == "card not a dict":
        path = rewrite(exported, tmp_path, card=[1, 2])
    elif case == "wider network":
        path = rewrite(exported, tmp_path, config={**state["config"], "base_channels": 16})
    elif case == "missing weight":
        path = rewrite(exported, tmp_path, weights={k: v for k, v in state["weights"].items() if k != first})
    else:
        bad = state["weights"][first].clone()
        bad.view(-1)[0] = float("nan")
        path = rewrite(exported, tmp_path, weights={**state["weights"], first: bad})
    with pytest.raises(CheckpointError) as info:
        load_pretrained(path)
    message = one_line(info.value)
    assert expected in message and str(path) in message


def test_a_training_checkpoint_is_not_a_pretrained_file(trained_run):
    with pytest.raises(CheckpointError) as info:
        load_pretrained(trained_run.checkpoint_path)
    message = one_line(info.value)
    assert "training checkpoint" in message and "export" in message


def test_pickled_objects_are_refused(tmp_path):
    """weights_only loading: a file that would run code on unpickling is refused in one line."""
    path = tmp_path / "evil.pt"
    torch.save({"format": PRETRAINED_FORMAT, "payload": Path("x")}, path)
    with pytest.raises(CheckpointError) as info:
        load_pretrained(path)
    assert "not a readable pretrained file" in one_line(info.value)


def test_errors_are_diffusion_errors():
    assert issubclass(CheckpointError, DiffusionError)
    with pytest.raises(DiffusionError):
        load_pretrained(123)


# ---------------------------------------------------------------------------------------------
# The shipped flowers32 (skips until its file is in diffusion_utils/pretrained/weights/)
# ---------------------------------------------------------------------------------------------
@pytest.mark.skipif("flowers32" not in PRETRAINED, reason="flowers32.pt is not in diffusion_utils/pretrained/weights/ yet")
def test_shipped_flowers32_loads_and_samples():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model, schedule, config = load_pretrained()
    assert config.img_size == 32 and not model.training
    card = pretrained_card("flowers32")
    for key in ("command", "commit", "images_seen", "kid", "floor_kid"):
        assert key in card, key
    markdown = pretrained_module.WEIGHTS_DIR / "flowers32.md"
    assert markdown.is_file() and card["command"] in markdown.read_text(encoding="utf-8")
    images = sample(model, schedule, 2, sampler="dpmpp", steps=4, generator=torch.Generator().manual_seed(0),
                    progress=False)
    assert images.shape == (2, 3, 32, 32) and torch.isfinite(images).all()


# ---------------------------------------------------------------------------------------------
# CLI: sample --pretrained, export
# ---------------------------------------------------------------------------------------------
def test_cli_sample_pretrained_writes_the_three_outputs(exported, tmp_path, monkeypatch, capsys):
    """--pretrained takes a path (or a shipped name); without --out the files go to ./outputs,
    never next to the weights."""
    monkeypatch.chdir(tmp_path)
    before = sorted(os.listdir(exported.parent))
    assert run_main(["sample", "--pretrained", exported, "--n", 4, "--steps", 3, "--frames", 3, "--no-progress"]) == 0
    for name in OUTPUTS:
        assert (tmp_path / "outputs" / name).is_file(), name
    assert sorted(os.listdir(exported.parent)) == before
    out = tmp_path / "elsewhere"
    assert run_main(["sample", "--pretrained", exported, "--n", 2, "--sampler", "ddim", "--frames", 2,
                     "--no-progress", "--out", out]) == 0
    assert all((out / name).is_file() for name in OUTPUTS)
    assert "Traceback" not in capsys.readouterr().err


def test_cli_sample_pretrained_by_name(exported, weights_dir, tmp_path, monkeypatch):
    shutil.copy2(exported, weights_dir / "tiny.pt")
    monkeypatch.chdir(tmp_path)
    assert run_main(["sample", "--pretrained", "tiny", "--n", 2, "--steps", 2, "--frames", 2, "--no-progress"]) == 0
    assert all((tmp_path / "outputs" / name).is_file() for name in OUTPUTS)
    assert sorted(os.listdir(weights_dir)) == ["tiny.pt"]


@pytest.mark.parametrize("case", ["both", "neither", "raw weights", "unknown name", "corrupt file",
                                  "training checkpoint"])
def test_cli_sample_source_errors_are_one_line(case, exported, trained_run, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(os.urandom(500))
    argv = {"both": ["--checkpoint", trained_run.checkpoint_path, "--pretrained", exported],
            "neither": [],
            "raw weights": ["--pretrained", exported, "--raw-weights"],
            "unknown name": ["--pretrained", "no_such_model"],
            "corrupt file": ["--pretrained", corrupt],
            "training checkpoint": ["--pretrained", trained_run.checkpoint_path]}[case]
    assert run_main(["sample", *argv, "--n", 2, "--no-progress"]) == 2
    assert_one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "outputs").exists()


def test_cli_export_round_trip(trained_run, tmp_path, capsys):
    """export --card writes FILE.pt and FILE.md; sample --pretrained FILE.pt then works."""
    card = tmp_path / "card.json"
    card.write_text(json.dumps({"commit": "feedbee", "kid": 0.02, "floor_kid": 0.001, "n_samples": 500}))
    out = tmp_path / "export" / "mine.pt"
    assert run_main(["export", "--checkpoint", trained_run.checkpoint_path, "--out", out, "--card", card]) == 0
    assert "mine.md" in capsys.readouterr().out
    saved = pretrained_card(out)
    assert saved["commit"] == "feedbee" and saved["kid"] == 0.02 and saved["images_seen"] == 64
    assert "feedbee" in out.with_suffix(".md").read_text(encoding="utf-8")
    model, _, config = load_pretrained(out)
    assert config == trained_run.config
    for name, value in model.state_dict().items():
        assert torch.equal(value, trained_run.ema_model.state_dict()[name].half().float()), name
    assert run_main(["sample", "--pretrained", out, "--n", 2, "--steps", 2, "--frames", 2, "--no-progress",
                     "--out", tmp_path / "s"]) == 0


def test_cli_export_without_card_reconstructs_the_command(tmp_path):
    """Without --card the card holds what the checkpoint knows, and a train command that rebuilds
    its config when the CLI's flags can express it."""
    run = tmp_path / "run"
    train = ["train", "--preset", "quick", "--data", "synthetic", "--max-images", "16", "--epochs", "1",
             "--img-size", "16", "--base-channels", "8", "--batch-size", "16", "--n-steps", "20",
             "--sample-steps", "2", "--no-progress", "--out", run]
    assert run_main(train) == 0
    out = tmp_path / "quick16.pt"
    assert run_main(["export", "--checkpoint", run / "diffusion_unet_pixels.pth", "--out", out]) == 0
    card = pretrained_card(out)
    assert card["command"].startswith("python -m diffusion_utils train --preset quick")
    assert "--img-size 16" in card["command"] and card["images_seen"] == 16 and card["steps"] == 1
    assert card["command"] in out.with_suffix(".md").read_text(encoding="utf-8")


@pytest.mark.parametrize("config", [
    TrainConfig.preset("quick"),
    TrainConfig.preset("quick", data="synthetic", img_size=16, lr=3e-4, ema_gamma=10.0, sampler="dpmpp",
                       sample_steps=20, prediction="v", loss_weighting="min_snr"),
    TrainConfig(),
    TrainConfig(num_epochs=50, device="cpu", seed=3, schedule="cosine"),
    TrainConfig.preset("quick", num_classes=0, p_uncond=0.2),
])
def test_train_command_rebuilds_the_config(config):
    """Parsing the reconstructed command the way `train` does gives the same config back."""
    words = train_command(config).split()
    args = build_parser().parse_args(words[3:])
    assert TrainConfig.preset(args.preset, **train_overrides(args)) == config


def test_train_command_of_a_conditional_run_leaves_the_classes_to_the_data():
    """num_classes and class_names came from the data: the command does not spell them out."""
    config = TrainConfig.preset("quick", num_classes=3, class_names=("a", "b", "c"))
    assert train_command(config) == train_command(TrainConfig.preset("quick"))


def test_model_card_of_a_conditional_model_shows_guided_sampling(exported):
    text = exported.with_suffix(".md").read_text(encoding="utf-8")  # synthetic flowers: 8 colour classes
    for piece in ("class-conditional on 8 classes", "classes='red', guidance_scale=3",
                  "--class red --guidance 3", "knows its 8 class labels"):
        assert piece in text, piece


def test_train_command_is_none_when_flags_cannot_express_the_config():
    assert train_command(tiny_config()) is None  # channel_mults (1, 2) is no preset's and has no flag


@pytest.mark.parametrize("case", ["missing checkpoint", "bad json", "json list", "missing card", "bad out"])
def test_cli_export_errors_are_one_line(case, trained_run, tmp_path, capsys):
    card = tmp_path / "card.json"
    card.write_text({"bad json": "{kid: 1", "json list": "[1, 2]"}.get(case, "{}"))
    ckpt = tmp_path / "none.pth" if case == "missing checkpoint" else trained_run.checkpoint_path
    out = tmp_path / "out" / ("m.txt" if case == "bad out" else "m.pt")
    argv = ["export", "--checkpoint", ckpt, "--out", out,
            "--card", tmp_path / "nope.json" if case == "missing card" else card]
    assert run_main(argv) == 2
    assert_one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "out").exists()


def test_an_exported_card_names_the_data_never_a_path_of_the_machine(trained_run, tmp_path):
    """A run trained on a folder of this machine: the card, and the config inside the file, name
    the folder by its own name (the torchvision Flowers102 layout as flowers102); no path remains."""
    from diffusion_utils import load_checkpoint, save_checkpoint

    for folder, name in ((tmp_path / "my photos" / "roses", "roses"),
                         (tmp_path / "data" / "flowers-102" / "jpg", "flowers102")):
        state = load_checkpoint(trained_run.checkpoint_path)
        state["config"] = state["config"].replace(data=str(folder), data_root=str(tmp_path / "data")).to_dict()
        ckpt = save_checkpoint(tmp_path / "run.pth", {k: v for k, v in state.items() if k != "format"})
        out = export_pretrained(ckpt, tmp_path / "shared" / f"{name}.pt")
        text = out.with_suffix(".md").read_text(encoding="utf-8")
        assert str(tmp_path) not in text and f"trained on {name}" in text and f"({name});" in text
        model, _, config = load_pretrained(out)
        assert (config.data, config.data_root) == (name, None)
        assert str(tmp_path) not in repr(torch.load(out, weights_only=True)["config"])


# ---------------------------------------------------------------------------------------------
# A flow-matching model: export, load, sample, its card
# ---------------------------------------------------------------------------------------------
FLOW_BASELINE = {"name": "flowers32", "kid": 0.0343, "kid_std": 0.0020, "sampler": "dpmpp", "sample_steps": 20}


@pytest.fixture(scope="module")
def flow_run(tmp_path_factory):
    """A tiny flow-matching run (2 epochs × 2 steps on synthetic flowers, class-conditional)."""
    from diffusion_utils import load_dataset, train

    config = tiny_config(num_epochs=2, objective="flow", sampler="euler", sample_steps=3)
    dataset = load_dataset("synthetic", config.img_size, max_images=config.max_images, seed=0)
    return train(config, tmp_path_factory.mktemp("flow"), dataset=dataset, progress=False)


@pytest.fixture(scope="module")
def flow_exported(flow_run, tmp_path_factory) -> Path:
    card = {"commit": "f10a7ed", "kid": 0.0512, "kid_std": 0.0021, "n_samples": 1000, "sampler": "euler",
            "sample_steps": 20, "floor_kid": 0.0001, "baseline": FLOW_BASELINE}
    return export_pretrained(flow_run.checkpoint_path, tmp_path_factory.mktemp("flow_export") / "tinyflow.pt", card)


def test_a_flow_model_exports_loads_and_samples_with_euler(flow_run, flow_exported):
    """The float16 file of a flow run loads as a flow UNet with its FlowPath (not a NoiseSchedule),
    samples with Euler within a fraction of an 8-bit level of the float32 EMA, and refuses DDIM."""
    from diffusion_utils.flow import FlowPath

    state = torch.load(flow_exported, weights_only=True)
    assert all(v.dtype == torch.float16 for v in state["weights"].values() if v.is_floating_point())
    assert state["config"]["objective"] == "flow"
    model, path, config = load_pretrained(flow_exported)
    reference, ref_path, _ = load_model(flow_run.checkpoint_path)
    assert isinstance(path, FlowPath) and model.objective == "flow" and config.objective == "flow"
    assert (path.flow_t, path.logit_std) == (config.flow_t, config.flow_logit_std)
    a = sample(model, path, 4, sampler="euler", steps=5, generator=torch.Generator().manual_seed(1), progress=False)
    b = sample(reference, ref_path, 4, sampler="euler", steps=5, generator=torch.Generator().manual_seed(1),
               progress=False)
    assert a.shape == (4, 3, 16, 16) and torch.isfinite(a).all() and (a - b).abs().max() < 2 / 255
    with pytest.raises(DiffusionError) as info:
        sample(model, path, 2, sampler="ddim", steps=5, progress=False)
    assert "flow model" in one_line(info.value)


def test_a_flow_models_card_says_flow_matching_and_velocity(flow_run, flow_exported):
    """The card names flow matching, the velocity u = ε − x₀ on xₜ = (1 − t)x₀ + tε, the logit-normal t,
    Euler/Heun with 20 steps, the images seen from the checkpoint; never DDPM or ε-prediction."""
    text = flow_exported.with_suffix(".md").read_text(encoding="utf-8")
    assert text.startswith("# tinyflow: a pretrained diffusion_utils flow-matching model")
    for piece in ("flow-matching model (rectified flow", "velocity u = ε − x₀", "xₜ = (1 − t)·x₀ + t·ε",
                  "logit-normal", "s = 1", 'sampler "euler" with 20 steps', '"heun"',
                  "model, path, config = load_pretrained(", "sampler='euler', steps=20",
                  "Images seen: 64 (4 optimizer steps, batch 16, 2 epochs)", "Commit: `f10a7ed`",
                  "the plain flow-matching loss", "sampler euler with 20 steps"):
        assert piece in text, piece
    for absent in ("DDPM", "noise ε under", "predicts the noise", "ε-prediction", "dpmpp', steps", "min_snr",
                   "loss weighting"):
        assert absent not in text, absent
    uniform = render_card("u", flow_run.config.replace(flow_t="uniform", flow_shift=3.0), {})
    assert "t ~ U(0, 1)" in uniform and "shifted by 3" in uniform and "logit-normal" not in uniform


@pytest.mark.parametrize("kid, verdict", [(0.0512, "tinyflow scores worse than flowers32, 1.5× its KID"),
                                          (0.0350, "The two are level"),
                                          (0.0201, "tinyflow scores better than flowers32, 1.7× lower KID")])
def test_a_card_sets_its_kid_beside_a_baseline_and_says_which_is_better(flow_run, kid, verdict):
    """``baseline`` (the other model's KID ± std, sampler and steps, measured the same way): the card
    gives both at equal network calls and says plainly which is better; within twice the spread, a tie."""
    card = {"kid": kid, "kid_std": 0.0021, "sampler": "euler", "sample_steps": 20, "baseline": FLOW_BASELINE}
    quality = render_card("tinyflow", flow_run.config, card).split("## Quality")[1].split("## Limitations")[0]
    assert "Beside flowers32 at equal network calls (20 per image)" in quality
    assert "0.0343 ± 0.002 (dpmpp, 20 steps)" in quality and verdict in quality
    other_calls = render_card("t", flow_run.config, {**card, "sample_steps": 40})
    assert "at 40 network calls per image against 20" in other_calls


def test_a_flow_file_in_the_weights_folder_is_a_name_and_a_missing_one_says_so(flow_exported, weights_dir):
    """flowers32-flow.pt in weights/ is listed and loads by name; a published name whose file is
    missing is one line that says so and what to do, not 'unknown'."""
    with pytest.raises(CheckpointError) as info:
        load_pretrained("flowers32-flow")
    message = one_line(info.value)
    assert "'flowers32-flow'" in message and "missing" in message and "unknown" not in message
    assert "export" in message
    shutil.copy2(flow_exported, weights_dir / "flowers32-flow.pt")
    assert pretrained_module.available_pretrained() == ("flowers32-flow",)
    model, path, config = load_pretrained("flowers32-flow")
    assert config.objective == "flow" and pretrained_card("flowers32-flow")["baseline"]["name"] == "flowers32"


def test_cli_exports_a_flow_checkpoint_and_samples_it_with_euler_20(flow_run, tmp_path, capsys):
    """export on a flow checkpoint: float16 file and a flow card; sample --pretrained then uses Euler
    with 20 steps unless told otherwise, and takes --sampler heun."""
    out = tmp_path / "export" / "flow.pt"
    assert run_main(["export", "--checkpoint", flow_run.checkpoint_path, "--out", out]) == 0
    assert "flow.md" in capsys.readouterr().out
    text = out.with_suffix(".md").read_text(encoding="utf-8")
    assert "flow-matching model" in text and "velocity u = ε − x₀" in text and "Not measured." in text
    assert pretrained_card(out)["images_seen"] == 64
    assert run_main(["sample", "--pretrained", out, "--n", 2, "--frames", 2, "--no-progress",
                     "--out", tmp_path / "s"]) == 0
    assert "with euler (20 steps" in capsys.readouterr().err
    assert run_main(["sample", "--pretrained", out, "--n", 2, "--frames", 2, "--no-progress", "--sampler", "heun",
                     "--out", tmp_path / "h"]) == 0
    assert "with heun (20 steps" in capsys.readouterr().err
    assert all((tmp_path / folder / name).is_file() for folder in ("s", "h") for name in OUTPUTS)
