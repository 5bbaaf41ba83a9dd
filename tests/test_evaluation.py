"""Comparing samplers (diffusion_utils.evaluation.evaluation) and the helpers notebooks 04/05 lean on:
``evaluate_samplers``, ``plot_sampler_comparison``, ``load_trained_or_pretrained``."""

from __future__ import annotations

import pytest
import torch

from diffusion_utils import (NoiseSchedule, RandomConvFeatures, export_pretrained, load_trained_or_pretrained,
                             fewest_calls_matching, make_synthetic_flowers, plot_sampler_comparison,
                             plot_sampler_curve)
from diffusion_utils.evaluation.evaluation import evaluate_samplers

from conftest import tiny_unet


def test_evaluate_samplers_same_seeds_timing_and_kid():
    """Every setting gets n uint8 images, a positive wall time and a KID with its std; the
    deterministic samplers start from the same noise, so DDIM and DPM-Solver++ with all steps agree
    closely, while DDPM (stochastic) differs; `matches` compares against one std of the reference."""
    model = tiny_unet(16)
    schedule = NoiseSchedule.linear(20)
    reference = make_synthetic_flowers(24, 16, seed=1)
    runs = evaluate_samplers(model, schedule, reference, [("ddpm", 20), ("ddim", 20), ("dpmpp", 20), ("ddim", 3)],
                             n=12, feature_extractor=RandomConvFeatures(16), batch_size=5, progress=False)
    assert [(r.sampler, r.steps) for r in runs] == [("ddpm", 20), ("ddim", 20), ("dpmpp", 20), ("ddim", 3)]
    for r in runs:
        assert r.images.shape == (12, 3, 16, 16) and r.images.dtype == torch.uint8
        assert r.seconds > 0 and r.seconds_per_image == r.seconds / 12
        assert r.kid.n_generated == 12 and r.kid.n_reference == 24 and r.kid.std >= 0
    ddpm, ddim, dpmpp, ddim3 = runs
    assert (ddim.images.float() - dpmpp.images.float()).abs().mean() < (ddim.images.float() - ddpm.images.float()).abs().mean()
    assert ddim.label == "DDIM-20" and dpmpp.label == "DPM-Solver++-20"
    assert ddpm.matches(ddpm)
    far = type(ddim3)(ddim3.sampler, ddim3.steps, ddim3.images, ddim3.seconds,
                      type(ddim3.kid)(**{**ddim3.kid.__dict__, "mean": ddpm.kid.mean + 10 * ddpm.kid.std + 1}))
    assert not far.matches(ddpm)


def test_evaluate_samplers_is_reproducible():
    """Same seed → the same images for a stochastic sampler, batch by batch."""
    model = tiny_unet(16)
    schedule = NoiseSchedule.linear(20)
    reference = make_synthetic_flowers(8, 16, seed=1)
    kwargs = dict(feature_extractor=RandomConvFeatures(8), batch_size=3, progress=False, seed=7)
    a = evaluate_samplers(model, schedule, reference, [("ddpm", 20)], 7, **kwargs)[0]
    b = evaluate_samplers(model, schedule, reference, [("ddpm", 20)], 7, **kwargs)[0]
    assert torch.equal(a.images, b.images) and a.kid.mean == b.kid.mean


def test_plot_sampler_comparison_draws_both_panels(tmp_path):
    model = tiny_unet(16)
    runs = evaluate_samplers(model, NoiseSchedule.linear(20), make_synthetic_flowers(8, 16), [("ddpm", 20), ("ddim", 2), ("ddim", 4), ("dpmpp", 4)],
                             6, RandomConvFeatures(8), progress=False)
    fig = plot_sampler_comparison(runs, tmp_path / "cmp.png")
    kid_ax, time_ax = fig.axes
    assert kid_ax.get_xscale() == "log" and list(kid_ax.get_xticks()) == [2, 4]
    assert {t.get_text() for t in kid_ax.get_legend().get_texts()} >= {"DDIM (η=0)", "DPM-Solver++(2M)"}
    assert (tmp_path / "cmp.png").stat().st_size > 0


def test_load_trained_or_pretrained_prefers_the_checkpoint_and_never_trains(trained_run, tmp_path, monkeypatch, capsys):
    """An existing checkpoint is loaded (EMA weights, its own config) and named; a missing or
    unreadable one falls back to the pretrained file, says so, and trains nothing."""
    model, schedule, trained = load_trained_or_pretrained(trained_run.checkpoint_path)
    assert trained.img_size == trained_run.config.img_size and schedule.n_steps == trained.n_steps
    assert "Showing the model notebook 03 trained" in capsys.readouterr().out

    exported = export_pretrained(trained_run.checkpoint_path, tmp_path / "mine.pt", {"images_seen": 1234})
    monkeypatch.setattr("diffusion_utils.run.train_step", lambda *a, **k: pytest.fail("must not train"))
    for missing_or_bad in (tmp_path / "nb" / "diffusion_unet_pixels.pth", exported.with_suffix(".md")):
        model, schedule, config = load_trained_or_pretrained(missing_or_bad, pretrained=str(exported))
        out = capsys.readouterr().out
        assert "Showing the pretrained" in out and "1,234 training images seen" in out
        assert config.img_size == trained_run.config.img_size and not model.training
    assert not (tmp_path / "nb").exists()


CURVE = {"weights": "m", "img_size": 16, "floors": {"500": {"kid": 0.001, "kid_std": 0.001}, "1000": {"kid": 0.0, "kid_std": 0.001}},
         "rows": [{"setting": "ddpm-1000", "sampler": "ddpm", "steps": 1000, "kid": 0.030, "kid_std": 0.002},
                  {"setting": "ddpm-250", "sampler": "ddpm", "steps": 250, "kid": 0.031, "kid_std": 0.002},
                  {"setting": "ddim-5", "sampler": "ddim", "steps": 5, "kid": 0.060, "kid_std": 0.002},
                  {"setting": "ddim-20", "sampler": "ddim", "steps": 20, "kid": 0.033, "kid_std": 0.002},
                  {"setting": "ddim-50", "sampler": "ddim", "steps": 50, "kid": 0.029, "kid_std": 0.002},
                  {"setting": "dpmpp-5", "sampler": "dpmpp", "steps": 5, "kid": 0.050, "kid_std": 0.002},
                  {"setting": "dpmpp-10", "sampler": "dpmpp", "steps": 10, "kid": 0.040, "kid_std": 0.002}]}


def test_fewest_calls_matching_reads_the_reference_error_bar():
    """The fewest calls within DDPM-1000's KID ± std per sampler: DDIM at 50 (20 is 0.003 off, one
    std is 0.002), DDPM at 250, DPM-Solver++ at none; a wider bar lets DDIM-20 in."""
    assert fewest_calls_matching(CURVE["rows"]) == {"ddim": 50, "ddpm": 250, "dpmpp": None}
    wide = [{**r, "kid_std": 0.004} if r["setting"] == "ddpm-1000" else r for r in CURVE["rows"]]
    assert fewest_calls_matching(wide)["ddim"] == 20


def test_plot_sampler_curve_one_line_per_sampler_and_the_floor(tmp_path):
    fig = plot_sampler_curve(CURVE, tmp_path / "curve.png")
    (ax,) = fig.axes
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert ax.get_xscale() == "log" and len(labels) == 4  # ddim, dpmpp, ddpm, the floor
    assert "real vs real, the floor (n = 1000)" in labels and "DDIM (η=0)" in labels
    assert (tmp_path / "curve.png").stat().st_size > 0
