"""An interactive slider that scrubs through the denoising steps of a generated batch.

Built only from ``IntSlider``, ``Image``, ``Play``, ``observe`` and ``widgets.link`` — the API
that ipywidgets 7.7 (Colab) and 8 (JupyterLab 4) share. Every frame is encoded to PNG once, up
front, so moving the slider only swaps bytes in the ``Image`` widget: no re-plotting, no
``Output`` widget (which is what ``interact`` uses, and what breaks under nbval).
"""

from __future__ import annotations

import io

import ipywidgets as widgets
from PIL import Image

from .sampling import Trajectory
from .visualization import trajectory_grids


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
