"""Pictures: grids, the looping GIF, loss curves and the epoch table (files and their contents)."""

from __future__ import annotations

import pytest
import numpy as np
import torch
from PIL import Image

from diffusion_utils import (Trajectory, TrainConfig, UNet, grid_image, plot_epoch_table, plot_loss, plot_unet,
                             save_animation, save_gif, save_grid, to_uint8, unet_levels)
from diffusion_utils.notebook.visualization import smooth


def test_to_uint8_and_grid_image():
    """[-1, 1] → [0, 255] (clamped outside); grids of floats equal grids of their uint8 form."""
    x = torch.tensor([-2.0, -1.0, 0.0, 1.0, 3.0]).view(1, 1, 1, 5).expand(1, 3, 1, 5)
    assert to_uint8(x)[0, 0, 0].tolist() == [0, 0, 128, 255, 255]
    images = torch.rand(5, 3, 4, 4) * 2 - 1
    grid = grid_image(images)
    assert grid.dtype == np.uint8 and grid.shape == (2 + 2 * 6, 2 + 3 * 6, 3)  # 3 per row, 2 rows
    np.testing.assert_array_equal(grid, grid_image(to_uint8(images)))
    np.testing.assert_array_equal(grid[2:6, 2:6], to_uint8(images)[0].permute(1, 2, 0).numpy())
    assert (grid[:2] == 255).all()  # white padding


def test_save_grid_writes_that_png(tmp_path):
    images = to_uint8(torch.rand(4, 3, 8, 8) * 2 - 1)
    path = save_grid(images, tmp_path / "deep" / "g.png", nrow=4)
    with Image.open(path) as im:
        np.testing.assert_array_equal(np.asarray(im.convert("RGB")), grid_image(images, nrow=4))


def test_save_animation_loops_and_holds_the_last_frame(tmp_path):
    """n_frames evenly spaced frames from noise to sample, loop=0 (forever), last frame held; each
    frame is the upscaled grid under a white band that holds its label."""
    gen = torch.Generator().manual_seed(0)
    frames = torch.randint(0, 256, (12, 2, 3, 8, 8), dtype=torch.uint8, generator=gen)
    traj = Trajectory(list(range(11, -1, -1)), frames, frames.clone())
    path = save_animation(traj, tmp_path / "a.gif", n_frames=5, scale=2, frame_ms=50, hold_ms=900)
    with Image.open(path) as gif:
        assert gif.n_frames == 5 and gif.info.get("loop") == 0
        first = np.asarray(gif.convert("RGB"))
        band = 16  # the label band: max(16, width / 14) px
        assert first.shape == (band + 2 * (2 + 10), 2 * (2 + 2 * 10), 3)  # 2 images in a row, upscaled ×2
        assert (first[band:band + 4] == 255).all() and (first[:band] < 128).any()  # padding; dark text above
        durations = []
        for i in range(gif.n_frames):
            gif.seek(i)
            durations.append(gif.info["duration"])
    assert durations[:-1] == [50] * 4 and durations[-1] == 900
    assert save_animation(traj, tmp_path / "b.gif", n_frames=100).exists()


def test_loss_plot_and_epoch_table_are_written(tmp_path):
    losses = list(np.linspace(1.0, 0.1, 30))
    fig = plot_loss(losses, tmp_path / "loss.png")
    assert len(fig.axes[0].lines) == 2 and fig.axes[0].get_yscale() == "log"
    grids = {e: to_uint8(torch.rand(4, 3, 8, 8) * 2 - 1) for e in (1, 2, 3)}
    fig = plot_epoch_table(grids, tmp_path / "table.png", columns=2)
    assert [ax.get_title() for ax in fig.axes] == ["Epoch 1", "Epoch 2", "Epoch 3"]
    for name in ("loss.png", "table.png"):
        with Image.open(tmp_path / name) as im:
            assert im.size[0] > 100


def test_smooth_is_bias_corrected():
    """A constant curve stays constant from the first point (no warm-up from zero)."""
    np.testing.assert_allclose(smooth([2.0] * 10), [2.0] * 10)
    assert smooth([1.0, 0.0])[1] < 1.0


def test_frame_indices_are_distinct_increasing_and_bunch_late():
    """Exactly min(n, total) distinct increasing indices with both ends; late spacing puts more
    of them in the second half of the trajectory than even spacing does."""
    from diffusion_utils.notebook.visualization import frame_indices

    for total, n in [(11, 11), (11, 20), (101, 30), (1001, 40), (4, 3), (2, 2)]:
        for late in (False, True):
            idx = frame_indices(total, n, late)
            assert len(idx) == min(n, total) and idx[0] == 0 and idx[-1] == total - 1
            assert all(b > a for a, b in zip(idx, idx[1:]))
    even, late = frame_indices(1001, 40, False), frame_indices(1001, 40, True)
    assert sum(i > 500 for i in late) > sum(i > 500 for i in even)


def test_save_gif_of_an_image_strip_bounces(tmp_path):
    """One image per frame, upscaled; bounce plays 0 1 2 3 2 1 and loops."""
    strip = torch.linspace(-1, 1, 4)[:, None, None, None].expand(4, 3, 4, 4)
    path = save_gif(strip, tmp_path / "strip.gif", frame_ms=60, scale=3, bounce=True)
    with Image.open(path) as gif:
        assert gif.n_frames == 6 and gif.info.get("loop") == 0
        values = []
        for i in range(gif.n_frames):
            gif.seek(i)
            frame = np.asarray(gif.convert("RGB"))
            assert frame.shape == (12, 12, 3)
            values.append(int(frame[0, 0, 0]))
    assert values == [0, 85, 170, 255, 170, 85]


def test_save_animation_is_at_least_256_px_wide_and_labels_each_frame_with_t(tmp_path):
    """By default a 32 px batch is upscaled to ≥ 256 px; frames with different t differ in the band."""
    frames = torch.full((3, 4, 3, 32, 32), 90, dtype=torch.uint8)
    traj = Trajectory([1000, 500, 0], frames, frames.clone())
    with Image.open(save_animation(traj, tmp_path / "c.gif", n_frames=3, late=False)) as gif:
        bands = []
        for i in range(gif.n_frames):
            gif.seek(i)
            frame = np.asarray(gif.convert("RGB"))
            assert frame.shape[1] >= 256
            bands.append(frame[:16])
    assert not np.array_equal(bands[0], bands[1]) and not np.array_equal(bands[1], bands[2])


def test_plot_unet_draws_every_level_of_the_real_model():
    """unet_levels reads the levels from the modules; the diagram has a box per level and path."""
    model = UNet.from_config(TrainConfig.preset("quick"))
    levels = unet_levels(model)
    assert [(lv["size"], lv["channels"], lv["down_blocks"], lv["up_blocks"], lv["attention"]) for lv in levels] == [
        (32, 32, 1, 2, False), (16, 64, 1, 2, False), (8, 64, 1, 2, True)]
    texts = [t.get_text() for t in plot_unet(model).axes[0].texts]
    for size, channels in ((32, 32), (16, 64), (8, 64)):
        assert sum(t.startswith(f"{size}×{size} · {channels} ch") for t in texts) == 2  # down and up
    assert any(t.startswith("middle · 8×8 · 64 ch") for t in texts)


@pytest.mark.parametrize("prediction, weighting, label", [
    ("eps", "none", "MSE(ε, ε̂)"), ("v", "none", "MSE(v, v̂)"),
    ("eps", "min_snr", "min-SNR-weighted MSE(ε, ε̂)"), ("v", "min_snr", "min-SNR-weighted MSE(v, v̂)")])
def test_the_loss_axis_says_what_the_run_trains(prediction, weighting, label):
    from diffusion_utils import loss_label
    assert loss_label(prediction, weighting) == label
    assert plot_loss([1.0, 0.5, 0.2], label=label).axes[0].get_ylabel() == label


def test_loss_png_is_labelled_by_the_runs_config(tmp_path, monkeypatch, make_config):
    import diffusion_utils.notebook.run_figures as run_figures
    from diffusion_utils import train
    seen = []
    monkeypatch.setattr(run_figures, "plot_loss", lambda losses, path, label: seen.append(label))
    train(make_config(prediction="v", loss_weighting="min_snr", max_images=16), tmp_path, progress=False)
    assert seen == ["min-SNR-weighted MSE(v, v̂)"]
