"""The widgets: each denoising-slider position shows that frame of a real sampling trajectory; the
guidance widget shows the samples of the chosen class and guidance scale from fixed noise; the
live training view is one display, updated in place, ending on the run's last step."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.utils import make_grid

from diffusion_utils import (ConfigError, DenoisingSlider, GuidanceWidget, LiveTrainingView, NoiseSchedule,
                             denoising_slider, guidance_widget, load_dataset, sample, sample_trajectory, train)

from conftest import tiny_config, tiny_unet

SCALE = 2


@pytest.fixture(scope="module")
def trajectory():
    """A 4-image, 6-step DDIM trajectory of a tiny random UNet: 7 frames, t = 20 … 0."""
    traj = sample_trajectory(tiny_unet(16), NoiseSchedule.linear(20, 1e-3, 0.3), 4, sampler="ddim", steps=6,
                             generator=torch.Generator().manual_seed(0), progress=False)
    assert len(traj) == 7
    return traj


def decode(png) -> np.ndarray:
    png = bytes(png)  # ipywidgets 8 stores Image.value as a memoryview
    assert png.startswith(b"\x89PNG")
    with Image.open(io.BytesIO(png)) as im:
        return np.asarray(im.convert("RGB"))


def upscaled_grid(images: torch.Tensor) -> np.ndarray:
    """The 2×2 grid of four uint8 images (2 px white padding), upscaled like the slider does."""
    grid = make_grid(images, nrow=2, padding=2, pad_value=255).permute(1, 2, 0).numpy()
    return grid.repeat(SCALE, 0).repeat(SCALE, 1)


@pytest.mark.parametrize("k", [0, 1, 3, 6])
def test_slider_value_shows_that_frame(trajectory, k):
    """slider.value = k puts frame k in the image: xₜ on the left, x̂₀ on the right, white between;
    the label names that frame's timestep."""
    widget = DenoisingSlider(trajectory, max_images=4, scale=SCALE, with_x0=True)
    if k == 0:  # move away first so that setting 0 is a real change
        widget.slider.value = 2
    widget.slider.value = k
    assert bytes(widget.image.value) == widget.png_frames[k]
    shown = decode(widget.image.value)
    left, right = upscaled_grid(trajectory.frames[k]), upscaled_grid(trajectory.x0_frames[k])
    assert shown.shape[0] == left.shape[0] and shown.shape[1] > left.shape[1] + right.shape[1]
    np.testing.assert_array_equal(shown[:, :left.shape[1]], left)
    np.testing.assert_array_equal(shown[:, -right.shape[1]:], right)
    assert (shown[:, left.shape[1]:-right.shape[1]] == 255).all()
    t = trajectory.timesteps[k]
    assert widget.label.value.startswith(f"t = {t}")
    if k == 0:
        assert t == 20 and "pure noise" in widget.label.value
    if k == len(trajectory) - 1:
        assert t == 0 and "final sample" in widget.label.value


def test_every_frame_is_encoded_once_and_distinct(trajectory):
    """One PNG per frame, in order; consecutive frames differ (the images change as noise is removed)."""
    widget = denoising_slider(trajectory, max_images=4, scale=SCALE, with_x0=False)
    assert len(widget.png_frames) == len(trajectory)
    assert widget.slider.min == 0 and widget.slider.max == len(trajectory) - 1 == widget.play.max
    for k in range(len(trajectory)):
        np.testing.assert_array_equal(decode(widget.png_frames[k]), upscaled_grid(trajectory.frames[k]))
    assert len(set(widget.png_frames)) == len(trajectory)


def test_play_is_linked_to_the_slider(trajectory):
    """Moving the Play widget moves the slider (and so the image), and vice versa."""
    widget = DenoisingSlider(trajectory, max_images=4, scale=SCALE)
    assert bytes(widget.image.value) == widget.png_frames[0] and widget.slider.value == 0
    widget.play.value = 4
    assert widget.slider.value == 4 and bytes(widget.image.value) == widget.png_frames[4]
    assert widget.label.value.startswith(f"t = {trajectory.timesteps[4]}")
    widget.slider.value = 5
    assert widget.play.value == 5


def test_max_images_limits_the_grid(trajectory):
    """max_images=1 shows only the first image of the batch."""
    widget = DenoisingSlider(trajectory, max_images=1, scale=1, with_x0=False)
    widget.slider.value = 3
    expected = make_grid(trajectory.frames[3][:1], nrow=1, padding=2, pad_value=255).permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(decode(widget.image.value), expected)


# ---------------------------------------------------------------------------------------------
# The guidance widget: species dropdown + guidance slider, fixed noise
@pytest.fixture(scope="module")
def guided_widget():
    model = tiny_unet(16, num_classes=3, class_names=("red rose", "sunflower", "daisy"))
    schedule = NoiseSchedule.linear(20, 1e-3, 0.3)
    widget = GuidanceWidget(model, schedule, classes=["sunflower", "daisy"], n=2, seed=3, value=1.0,
                            scales=(0, 4, 0.5), steps=3, scale=1, nrow=2)
    return widget, model, schedule


def test_guidance_widget_shows_those_samples_from_the_fixed_noise(guided_widget):
    widget, model, schedule = guided_widget
    assert [label for label, _ in widget.dropdown.options] == ["sunflower", "daisy"]
    assert widget.dropdown.value == 1 and widget.slider.value == 1.0
    x_T = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    for class_id, w in ((1, 1.0), (2, 3.0), (2, 0.0)):
        widget.dropdown.value, widget.slider.value = class_id, w
        expected = sample(model, schedule, 2, sampler="dpmpp", steps=3, x_T=x_T, classes=class_id,
                          guidance_scale=w, progress=False)
        grid = make_grid(((expected + 1) * 127.5).round().to(torch.uint8), nrow=2, padding=2, pad_value=255)
        np.testing.assert_array_equal(decode(widget.image.value), grid.permute(1, 2, 0).numpy())
        assert widget.label.value.startswith(f"{('sunflower', 'daisy')[class_id - 1]}, w = {w:g}")


def test_moving_the_guidance_slider_changes_the_image_and_going_back_restores_it(guided_widget):
    widget, _, _ = guided_widget
    widget.dropdown.value, widget.slider.value = 1, 1.0
    first = bytes(widget.image.value)
    widget.slider.value = 4.0
    assert bytes(widget.image.value) != first and "more typical" in widget.label.value
    widget.dropdown.value = 2
    assert bytes(widget.image.value) not in (first, widget.pngs[(1, 4.0)])
    widget.dropdown.value, widget.slider.value = 1, 1.0
    assert bytes(widget.image.value) == first  # cached: the same bytes, no resampling


def test_guidance_widget_refuses_bad_classes_and_unconditional_models():
    schedule = NoiseSchedule.linear(20, 1e-3, 0.3)
    model = tiny_unet(16, num_classes=3, class_names=("red rose", "sunflower", "daisy"))
    with pytest.raises(ConfigError, match="unknown class"):
        GuidanceWidget(model, schedule, classes=["tulip"], steps=2)
    with pytest.raises(ConfigError, match="unconditional"):
        guidance_widget(tiny_unet(16), schedule, steps=2)
    with pytest.raises(ConfigError, match="guidance_scale"):
        GuidanceWidget(model, schedule, scales=(0, float("inf"), 1), steps=2)


class FakeDisplay:
    """Stands in for IPython's display(obj, display_id=True) and the handle's update(obj)."""

    def __init__(self):
        self.shown, self.updates = [], []

    def __call__(self, obj, display_id=False):
        assert display_id is True
        self.shown.append(obj)
        return self

    def update(self, obj):
        self.updates.append(obj)


def test_live_training_view_follows_the_run_in_one_display(tmp_path):
    """train's hooks drive the view: one display, updated in place; samples from the EMA model at
    every `every` steps and at the last; the last picture shows the last step and the full loss."""
    fake = FakeDisplay()
    view = LiveTrainingView(every=3, n_images=4, steps=2, min_seconds=3600, display=fake)
    dataset = load_dataset("synthetic", 16, max_images=64, seed=0)
    grid_steps = []
    step = view.step
    view.step = lambda s, loss: (step(s, loss), grid_steps.append(view.grid_step))
    result = train(tiny_config(max_images=64, num_epochs=2), tmp_path, dataset=dataset, progress=False,
                   on_start=view.start, on_step=view.step)
    assert len(fake.shown) == 1 and view.total_steps == len(result.losses) == 8
    assert sorted(set(grid_steps) - {0}) == [3, 6, 8]  # every 3 steps, and the last
    assert len(fake.updates) == 3  # min_seconds is huge: a redraw only with new samples
    last = fake.updates[-1]
    assert repr(last).startswith("training: step 8/8 (100%) · epoch 2/2 · loss ")
    with Image.open(io.BytesIO(last._repr_png_())) as im:
        assert 500 <= im.size[0] <= 1000  # laptop-sized
    loss_axes = view.figure().axes[0]
    assert len(loss_axes.lines[0].get_xdata()) == 8  # raw loss, every step; and its moving average
    assert len(loss_axes.lines) == 2
    ema_samples = sample(result.ema_model, result.schedule, 4, sampler="dpmpp", steps=2, x_T=view.noise,
                         progress=False)
    assert torch.equal(view.grid, ((ema_samples.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8))
