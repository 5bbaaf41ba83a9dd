"""bfloat16 autocast while training: ``bf16="auto"`` follows the hardware, True and False override,
and a resumed run stays in the dtype it started in (plumbing.precision, TrainState)."""

from __future__ import annotations

import pytest
import torch

import diffusion_utils.plumbing.precision as precision
from diffusion_utils import ConfigError, TrainConfig, load_checkpoint, load_dataset, save_checkpoint, train
from diffusion_utils.cli import build_parser, train_command, train_overrides
from diffusion_utils.training import TrainState, train_step

from conftest import tiny_config

EPYC = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni\n"
SAPPHIRE_RAPIDS = "flags\t\t: fpu avx512f amx_bf16 amx_tile\n"
XEON = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_vnni\nbugs\t\t: spectre_v1\n"


@pytest.mark.parametrize("cpuinfo, native", [(EPYC, True), (SAPPHIRE_RAPIDS, True), (XEON, False), ("", False),
                                              ("model name\t: avx512_bf16 in a name, not a flag\n", False)])
def test_native_bf16_is_read_from_the_cpu_flags(cpuinfo, native):
    assert precision.cpu_reports_native_bf16(cpuinfo) is native


@pytest.mark.parametrize("flag, pays, expected", [(True, True, True), (True, False, False), (False, True, False)])
def test_auto_needs_both_the_flag_and_a_probe_that_pays(monkeypatch, flag, pays, expected):
    monkeypatch.setattr(precision, "cpu_reports_native_bf16", lambda: flag)
    monkeypatch.setattr(precision, "bf16_pays_on_cpu", lambda threads: pays)
    assert precision.use_bf16("auto", torch.device("cpu")) is expected
    assert precision.use_bf16(True, torch.device("cpu")) is True  # an explicit choice wins either way
    assert precision.use_bf16(False, torch.device("cpu")) is False
    assert precision.use_bf16(True, torch.device("mps")) is False  # MPS trains in float32


def test_the_probe_times_both_dtypes_and_compares_them(monkeypatch):
    seconds = {None: 0.05, torch.bfloat16: 0.03}
    monkeypatch.setattr(precision, "_seconds_per_step", lambda dtype: seconds[dtype])
    precision.bf16_pays_on_cpu.cache_clear()
    assert precision.bf16_pays_on_cpu(1)
    seconds[torch.bfloat16] = 0.048  # 1.04×: not worth bfloat16's rounding
    precision.bf16_pays_on_cpu.cache_clear()
    assert not precision.bf16_pays_on_cpu(1)
    precision.bf16_pays_on_cpu.cache_clear()


def test_the_probe_really_runs_in_both_dtypes():
    assert 0 < precision._seconds_per_step(None, repeats=1) < 10
    assert 0 < precision._seconds_per_step(torch.bfloat16, repeats=1) < 10


def test_bf16_is_auto_by_default_and_takes_only_true_false_or_auto():
    assert TrainConfig().bf16 == "auto" and TrainConfig.preset("quick").bf16 == "auto"
    for good in (True, False, "auto"):
        assert TrainConfig(bf16=good).bf16 == good
    for bad in ("on", "yes", 1, None):
        with pytest.raises(ConfigError, match="bf16 must be True, False or 'auto'"):
            TrainConfig(bf16=bad)


def test_the_cli_flag_sets_it_and_train_command_writes_it_back():
    for word, value in (("auto", "auto"), ("on", True), ("off", False)):
        args = build_parser().parse_args(["train", "--preset", "quick", "--bf16", word])
        assert train_overrides(args)["bf16"] == value
        command = train_command(TrainConfig.preset("quick", bf16=value))
        assert (f"--bf16 {word}" in command) is (word != "auto"), command


def test_training_in_bf16_autocast_runs_the_network_in_bfloat16(monkeypatch):
    state = TrainState(tiny_config(bf16=True), torch.device("cpu"))
    dtypes = []
    state.model.stem.register_forward_hook(lambda module, args, out: dtypes.append(out.dtype))
    train_step(state, torch.rand(16, 3, 16, 16) * 2 - 1)
    assert state.autocast_dtype == torch.bfloat16 and dtypes == [torch.bfloat16]
    assert all(p.dtype == torch.float32 for p in state.model.parameters())  # the weights stay float32


@pytest.mark.parametrize("probe_then, probe_now", [(True, False), (False, True)])
def test_an_auto_run_resumes_in_the_dtype_it_started_in(monkeypatch, tmp_path, probe_then, probe_now):
    """The probe decides once, at the start; resumed on the same kind of device the run keeps that
    dtype, even where a new probe would decide otherwise, and continues bit-exactly."""
    monkeypatch.setattr(precision, "cpu_reports_native_bf16", lambda: True)
    monkeypatch.setattr(precision, "bf16_pays_on_cpu", lambda threads: probe_then)
    cfg = tiny_config(bf16="auto")
    batches = [torch.rand(16, 3, 16, 16, generator=torch.Generator().manual_seed(i)) * 2 - 1 for i in range(3)]
    a = TrainState(cfg, torch.device("cpu"))
    assert (a.autocast_dtype == torch.bfloat16) is probe_then
    train_step(a, batches[0])
    path = save_checkpoint(tmp_path / "ck.pth", a.state_dict(a.data_rng.get_state()))
    uninterrupted = [train_step(a, x) for x in batches[1:]]  # before b: a new state reseeds torch
    monkeypatch.setattr(precision, "bf16_pays_on_cpu", lambda threads: probe_now)
    b = TrainState(cfg, torch.device("cpu"))
    b.load_state_dict(load_checkpoint(path))
    assert b.autocast_dtype == a.autocast_dtype
    assert [train_step(b, x) for x in batches[1:]] == uninterrupted


def test_an_explicit_choice_on_resume_is_honoured(tmp_path):
    a = TrainState(tiny_config(bf16=True), torch.device("cpu"))
    path = save_checkpoint(tmp_path / "ck.pth", a.state_dict(a.data_rng.get_state()))
    b = TrainState(tiny_config(bf16=False), torch.device("cpu"))
    b.load_state_dict(load_checkpoint(path))
    assert b.autocast_dtype is None


def test_a_checkpoint_from_before_the_dtype_was_recorded_resumes_in_float32_on_the_cpu(tmp_path, monkeypatch):
    """Then bf16=True (the default) meant "on a native-bf16 GPU": it reads as "auto", and the run
    continues in float32 on the CPU as it began, even on a CPU with native bfloat16."""
    monkeypatch.setattr(precision, "cpu_reports_native_bf16", lambda: True)
    monkeypatch.setattr(precision, "bf16_pays_on_cpu", lambda threads: True)
    data = load_dataset("synthetic", 16, max_images=32, seed=0)
    train(tiny_config(bf16=False, max_images=32), tmp_path, dataset=data, progress=False)
    state = torch.load(tmp_path / "diffusion_unet_pixels.pth", weights_only=True)
    del state["precision"]
    state["config"]["bf16"] = True
    torch.save(state, tmp_path / "diffusion_unet_pixels.pth")
    loaded = load_checkpoint(tmp_path / "diffusion_unet_pixels.pth")
    assert loaded["config"].bf16 == "auto"
    resumed = TrainState(loaded["config"], torch.device("cpu"))
    assert resumed.autocast_dtype == torch.bfloat16  # a new run with this config would use bfloat16 here …
    resumed.load_state_dict(loaded)
    assert resumed.autocast_dtype is None  # … but this one began in float32 and stays there
