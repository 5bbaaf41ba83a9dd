"""Interactive widgets: a slider through the denoising steps, and a guidance-scale explorer.

Built only from ``IntSlider``, ``FloatSlider``, ``Dropdown``, ``Image``, ``Label``, ``Play``,
``observe`` and ``widgets.link`` — the API that ipywidgets 7.7 (Colab) and 8 (JupyterLab 4)
share. Pictures are PNG bytes swapped into an ``Image`` widget: no re-plotting, no ``Output``
widget (which is what ``interact`` uses, and what breaks under nbval).
"""

from __future__ import annotations

import io

import ipywidgets as widgets
import torch
from PIL import Image

from .errors import ConfigError
from .guidance import check_guidance_scale, class_ids
from .sampling import Trajectory, sample
from .visualization import grid_image, trajectory_grids


def encode_png(array) -> bytes:
    """uint8 HWC array → PNG bytes."""
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


class DenoisingSlider(widgets.VBox):
    """Slider + Play button + image: frame k of a :class:`Trajectory`, k = 0 (noise) … F−1 (clean).

    Attributes: ``slider``, ``play``, ``image``, ``label`` (the widgets) and ``png_frames`` (the
    encoded frames, one per trajectory frame). Set ``slider.value`` to move programmatically.

    Args:
        trajectory: from ``sample(..., return_trajectory=True)``.
        max_images: how many images of the batch to show.
        nrow: images per row of the grid.
        scale: upscale factor for display (the images are only 32–64 px).
        with_x0: show the network's current guess x̂₀ next to xₜ.
        interval_ms: time per frame when playing.
    """

    def __init__(self, trajectory: Trajectory, max_images: int = 16, nrow: int | None = None,
                 scale: int = 3, with_x0: bool = True, interval_ms: int = 60):
        self.trajectory = trajectory
        grids = trajectory_grids(trajectory, max_images, nrow, with_x0=with_x0)
        # Upscale with nearest-neighbour before encoding: a browser would blur a stretched image.
        self.png_frames = [encode_png(g.repeat(scale, 0).repeat(scale, 1)) for g in grids]
        last = len(self.png_frames) - 1
        self.slider = widgets.IntSlider(value=0, min=0, max=last, step=1, description="step",
                                        continuous_update=True, readout=False,
                                        layout=widgets.Layout(width="420px"))
        self.play = widgets.Play(value=0, min=0, max=last, step=1, interval=interval_ms,
                                 description="Play the denoising")
        widgets.link((self.play, "value"), (self.slider, "value"))
        self.image = widgets.Image(value=self.png_frames[0], format="png")
        self.label = widgets.Label()
        self.slider.observe(self._show, names="value")
        caption = "left: xₜ, right: the network's guess x̂₀" if with_x0 else "xₜ"
        super().__init__([widgets.HBox([self.play, self.slider, self.label]), self.image,
                          widgets.Label(caption)])
        self._show({"new": 0})

    def _show(self, change) -> None:
        k = change["new"]
        self.image.value = self.png_frames[k]
        t = self.trajectory.timesteps[k]
        self.label.value = f"t = {t}" + (" (pure noise)" if k == 0 else " (final sample)" if t == 0 else "")


def denoising_slider(trajectory: Trajectory, **kwargs) -> DenoisingSlider:
    """Build a :class:`DenoisingSlider` (see its arguments)."""
    return DenoisingSlider(trajectory, **kwargs)


class GuidanceWidget(widgets.VBox):
    """Species dropdown + guidance-scale slider + image: samples of that class at that w.

    The starting noise is drawn once from ``seed``, so moving the slider changes only the guidance
    (and the dropdown only the class): what you see is the effect of w, not of new noise. Each
    (class, w) is sampled on first view — a deterministic sampler, a few images — and kept, so going
    back is instant. Attributes: ``dropdown``, ``slider``, ``image``, ``label`` and ``pngs`` (the
    encoded grids by (class id, w)). Set ``dropdown.value`` / ``slider.value`` to move them in code.

    Args:
        model, schedule: a class-conditional model (``model.num_classes > 0``) and its schedule.
        classes: the choices, names or ids (default: every class of the model).
        n: images per view, from seeds fixed by ``seed``.
        scales: (min, max, step) of the guidance slider; ``value`` its starting position.
        sampler, steps: a deterministic sampler keeps the noise → image map fixed.
        scale: upscale factor for display; nrow: images per row.
    """

    def __init__(self, model, schedule, classes=None, n: int = 8, seed: int = 0, value: float = 1.0,
                 scales: tuple[float, float, float] = (0.0, 8.0, 0.5), sampler: str = "dpmpp",
                 steps: int = 20, scale: int = 3, nrow: int | None = None):
        names = list(getattr(model, "class_names", ()))
        choices = list(classes) if classes is not None else list(range(getattr(model, "num_classes", 0)))
        if not choices:
            class_ids(0, model, 1)  # an unconditional model: a one-line ConfigError that says so
            raise ConfigError("GuidanceWidget needs at least one class to choose from")
        ids = class_ids(choices, model, len(choices)).tolist()  # a one-line ConfigError if one is wrong
        options = [(names[i] if i < len(names) else f"class {i}", i) for i in ids]
        self.names = dict((i, name) for name, i in options)
        low, high, step = (check_guidance_scale(v) for v in scales)
        self.model, self.schedule = model, schedule
        self.sampler, self.steps, self.scale, self.nrow = sampler, steps, scale, nrow
        size = model.img_size
        self.x_T = torch.randn(n, getattr(model, "in_channels", 3), size, size,
                               generator=torch.Generator().manual_seed(seed))
        self.pngs: dict[tuple[int, float], bytes] = {}
        self.dropdown = widgets.Dropdown(options=options, value=ids[0], description="species")
        self.slider = widgets.FloatSlider(value=check_guidance_scale(value), min=low, max=high, step=step,
                                          description="guidance w", continuous_update=False,
                                          readout_format=".1f", layout=widgets.Layout(width="420px"))
        self.image = widgets.Image(format="png")
        self.label = widgets.Label()
        self.dropdown.observe(self._show, names="value")
        self.slider.observe(self._show, names="value")
        super().__init__([widgets.HBox([self.dropdown, self.slider]), self.image, self.label])
        self._show(None)

    def render(self, class_id: int, w: float) -> bytes:
        """The PNG of ``n`` samples of ``class_id`` at guidance ``w`` (sampled once, then kept)."""
        key = (int(class_id), float(w))
        if key not in self.pngs:
            images = sample(self.model, self.schedule, len(self.x_T), sampler=self.sampler, steps=self.steps,
                            x_T=self.x_T, classes=int(class_id), guidance_scale=w, progress=False)
            grid = grid_image(images, self.nrow)
            self.pngs[key] = encode_png(grid.repeat(self.scale, 0).repeat(self.scale, 1))
        return self.pngs[key]

    def _show(self, _change) -> None:
        class_id, w = self.dropdown.value, self.slider.value
        self.image.value = self.render(class_id, w)
        what = "unconditional" if w == 0 else "conditional, no guidance" if w == 1 else \
            "more typical, less varied" if w > 1 else "between unconditional and conditional"
        self.label.value = f"{self.names[class_id]}, w = {w:g} ({what}); same noise at every setting"


def guidance_widget(model, schedule, **kwargs) -> GuidanceWidget:
    """Build a :class:`GuidanceWidget` (see its arguments)."""
    return GuidanceWidget(model, schedule, **kwargs)
