"""Live views for notebooks: the denoising slider, the guidance explorer and the training view.

:class:`DenoisingSlider` scrubs through the denoising steps of a generated batch, and
:class:`GuidanceWidget` shows one species at a chosen guidance scale. They are built only from
``IntSlider``, ``FloatSlider``, ``Dropdown``, ``Image``, ``Label``, ``Play``, ``observe`` and
``widgets.link`` — the API that ipywidgets 7.7 (Colab) and 8 (JupyterLab 4) share. Pictures are
PNG bytes swapped into an ``Image`` widget: no re-plotting, no ``Output`` widget (which is what
``interact`` uses, and what breaks under nbval).

:class:`LiveTrainingView` follows a training run in one output area — the loss (raw and
smoothed), samples from fixed noise every few steps, a progress bar — redrawn in place through an
IPython display handle (``display(..., display_id=True)`` then ``handle.update``). JupyterLab,
Colab, VS Code and nbconvert all replace the output in place, so a saved notebook keeps only the
final picture (a PNG that GitHub shows too), and without a front end nothing fails.
"""

from __future__ import annotations

import io
import time

import torch
from matplotlib.figure import Figure
from PIL import Image

from ..guidance import check_guidance_scale, class_ids
from ..plumbing.errors import ConfigError
from ..plumbing.figures import grid_image
from ..plumbing.pixels import to_uint8
from ..sampling import Trajectory, sample
from .visualization import draw_loss, loss_label, trajectory_grids

try:
    import ipywidgets as widgets
except ImportError:  # a one-line message instead of a bare ModuleNotFoundError
    raise ImportError('the notebook widgets need ipywidgets: pip install "diffusion-utils[notebooks]" '
                      '(or pip install ipywidgets)') from None


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
        trajectory: from :func:`~diffusion_utils.sample_trajectory`.
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


class LiveTrainingView:
    """One output area that shows a training run as it goes: the loss per step and its moving
    average, the EMA model's samples from fixed noise every ``every`` steps, and a progress bar.

    Give its two methods to :func:`~diffusion_utils.train` as hooks::

        view = LiveTrainingView(every=40)
        result = train(config, "outputs", on_start=view.start, on_step=view.step, progress=False)

    Args:
        every: draw new samples every this many steps (and at the last step).
        n_images: samples per grid, always from the same starting noise (seeded by ``seed``).
        sampler, steps: how the grids are sampled (a few calls of a fast sampler: cheap).
        min_seconds: redraw the loss at most this often — and never so often that drawing takes
            more than a twentieth of the time (a redraw costs more than a small training step).
        display: ``display(obj, display_id=True)`` → a handle with ``update(obj)`` (default:
            IPython's); tests pass a fake.
    """

    def __init__(self, every: int = 40, n_images: int = 8, sampler: str = "dpmpp", steps: int = 10,
                 seed: int = 0, min_seconds: float = 2.0, display=None):
        self.every, self.n_images, self.sampler, self.steps = every, n_images, sampler, steps
        self.seed, self.min_seconds = seed, min_seconds
        self._display = display
        self.state = self.handle = self.grid = None
        self.grid_step = self.total_steps = self.draws = 0
        self._last_draw = self._start = self._draw_seconds = 0.0

    def start(self, state, total_steps: int) -> None:
        """``train``'s ``on_start`` hook: remember the run and show its first picture."""
        self.state, self.total_steps = state, total_steps
        size = state.config.img_size
        self.noise = torch.randn(self.n_images, getattr(state.model, "in_channels", 3), size, size,
                                 generator=torch.Generator().manual_seed(self.seed))
        self._start, self._first_step = time.perf_counter(), state.step
        display = self._display
        if display is None:
            from IPython.display import display
        self.handle = display(self._snapshot(), display_id=True)
        self._last_draw = time.perf_counter()

    def step(self, step: int, loss: float) -> None:
        """``train``'s ``on_step`` hook: new samples every ``every`` steps; redraw when due."""
        last = step >= self.total_steps
        if step % self.every == 0 or last:
            images = sample(self.state.ema.module, self.state.schedule, self.n_images, sampler=self.sampler,
                            steps=self.steps, x_T=self.noise, bf16=self.state.config.bf16, progress=False)
            self.grid, self.grid_step = to_uint8(images), step
        wait = max(self.min_seconds, 20 * self._draw_seconds)
        if last or self.grid_step == step or time.perf_counter() - self._last_draw >= wait:
            if self.handle is not None:
                self.handle.update(self._snapshot())
            self._last_draw = time.perf_counter()

    def figure(self) -> Figure:
        """The current picture: loss curve | latest samples, and a progress bar under both."""
        state, total = self.state, max(self.total_steps, 1)
        fig = Figure(figsize=(9, 3.6))
        grid_spec = fig.add_gridspec(2, 2, height_ratios=[12, 1], width_ratios=[3, 2])
        ax_loss, ax_grid, ax_bar = (fig.add_subplot(grid_spec[0, 0]), fig.add_subplot(grid_spec[0, 1]),
                                    fig.add_subplot(grid_spec[1, :]))
        if state.losses:
            draw_loss(ax_loss, state.losses, loss_label(state.config.prediction, state.config.loss_weighting))
        else:
            ax_loss.text(0.5, 0.5, "the loss appears after the first step", ha="center", transform=ax_loss.transAxes)
            ax_loss.set(xticks=[], yticks=[])
        ax_loss.set_title("loss", fontsize=10)
        if self.grid is not None:
            ax_grid.imshow(grid_image(self.grid, nrow=4), interpolation="nearest")
            ax_grid.set_title(f"EMA samples at step {self.grid_step} (same noise each time)", fontsize=9)
        else:
            ax_grid.set_title(f"samples every {self.every} steps", fontsize=9)
        ax_grid.axis("off")
        done = state.step / total
        ax_bar.barh([0], [done], color="tab:green")
        ax_bar.set(xlim=(0, 1), yticks=[], xticks=[])
        ax_bar.text(0.5, 0, self.progress_text(), ha="center", va="center", fontsize=9)
        fig.tight_layout()
        return fig

    def progress_text(self) -> str:
        """``step 160/320 (50%) · epoch 5/10 · loss 0.0521 · 1 min 4 s, ~1 min 4 s left``."""
        state, total = self.state, max(self.total_steps, 1)
        elapsed = time.perf_counter() - self._start
        done_here = state.step - self._first_step
        left = elapsed / done_here * (total - state.step) if done_here else float("nan")
        loss = f" · loss {state.losses[-1]:.4f}" if state.losses else ""
        epoch = min(state.epoch + 1, state.config.num_epochs)
        time_left = f", ~{_duration(left)} left" if state.step < total and done_here else ""
        return (f"step {state.step}/{total} ({100 * state.step / total:.0f}%) · epoch {epoch}/"
                f"{state.config.num_epochs}{loss} · {_duration(elapsed)}{time_left}")

    def _snapshot(self) -> "_Picture":
        start = time.perf_counter()
        self.draws += 1
        buffer = io.BytesIO()
        self.figure().savefig(buffer, format="png", dpi=80)
        self._draw_seconds = time.perf_counter() - start
        return _Picture(buffer.getvalue(), f"training: {self.progress_text()}")


class _Picture:
    """A PNG with a one-line text fallback (what a terminal, or a reader without images, sees)."""

    def __init__(self, png: bytes, text: str):
        self.png, self.text = png, text

    def _repr_png_(self) -> bytes:
        return self.png

    def __repr__(self) -> str:
        return self.text


def _duration(seconds: float) -> str:
    if seconds != seconds:  # NaN: not known yet
        return "?"
    minutes, seconds = divmod(int(round(seconds)), 60)
    return f"{minutes} min {seconds} s" if minutes else f"{seconds} s"
