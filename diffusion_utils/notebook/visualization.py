"""Pictures: sample grids, the per-epoch table, loss curves, schedule plots and the denoising GIF.

Figures are built with ``matplotlib.figure.Figure`` (not pyplot), so nothing depends on a GUI
backend or global state: they are saved when given a path and returned, and a notebook shows a
returned figure as the cell's output.
"""

from __future__ import annotations

import os
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import torch
from matplotlib.figure import Figure
from PIL import Image as PILImage, ImageDraw, ImageFont

from ..model import unet_levels
from ..plumbing.figures import finish_figure, grid_image
from ..plumbing.pixels import to_uint8
from ..sampling import Trajectory


def save_grid(images: torch.Tensor, path: str | os.PathLike, nrow: int | None = None) -> Path:
    """Save a batch as a PNG grid (the original project's ``samples_grid.png``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(path, grid_image(images, nrow))
    return path


def show_images(images: torch.Tensor, title: str = "", nrow: int | None = None,
                size: float = 5.0) -> Figure:
    """A figure of a batch as a grid, for notebooks."""
    fig = Figure(figsize=(size, size))
    ax = fig.add_subplot()
    ax.imshow(grid_image(images, nrow), interpolation="nearest")
    ax.set_title(title)
    ax.axis("off")
    return finish_figure(fig, None)


def save_large_sample(image: torch.Tensor, path: str | os.PathLike, title: str = "") -> Path:
    """One generated image shown large (``generated_pixel_diffusion.png``). image: (3, H, W)."""
    fig = Figure(figsize=(4, 4.3))
    ax = fig.add_subplot()
    ax.imshow(grid_image(image[None], padding=0), interpolation="nearest")
    ax.set_title(title, fontsize=9)
    ax.axis("off")
    finish_figure(fig, path)
    return Path(path)


def smooth(values, weight: float = 0.98) -> np.ndarray:
    """Exponential moving average of a curve (TensorBoard-style, bias-corrected)."""
    values = np.asarray(values, dtype=np.float64)
    out, running = np.empty_like(values), 0.0
    for i, v in enumerate(values):
        running = weight * running + (1 - weight) * v
        out[i] = running / (1 - weight ** (i + 1))
    return out


def loss_label(prediction: str = "eps", weighting: str = "none") -> str:
    """What a run's loss measures, for an axis: ``MSE(ε, ε̂)`` (Ho et al.), ``MSE(v, v̂)``, and either
    with ``min-SNR-weighted`` in front (``TrainConfig.prediction`` and ``loss_weighting``)."""
    symbol = {"eps": "ε", "v": "v"}.get(prediction, prediction)
    mse = f"MSE({symbol}, {symbol}̂)"
    return mse if weighting == "none" else f"{weighting.replace('_', '-').replace('snr', 'SNR')}-weighted {mse}"


def draw_loss(ax, losses, label: str = "MSE(ε, ε̂)") -> None:
    """The per-step loss (faint) and its moving average on ``ax``, log scale, ``label`` on its axis
    (:func:`loss_label`): :func:`plot_loss` and the live training view draw the same curve."""
    steps = np.arange(1, len(losses) + 1)
    ax.plot(steps, losses, alpha=0.25, lw=0.8, label="per step")
    window = max(5.0, len(losses) / 40)  # about 2.5% of the run: smooth, yet not lagging behind
    ax.plot(steps, smooth(losses, 1 - 1 / window), lw=1.8, label="moving average")
    ax.set_yscale("log")
    ax.set_xlabel("optimiser step")
    ax.set_ylabel(label)
    ax.grid(alpha=0.3)
    ax.legend()


def plot_loss(losses, path: str | os.PathLike | None = None, title: str = "Training loss",
              label: str = "MSE(ε, ε̂)") -> Figure:
    """The per-step loss (faint) and its moving average, on a log scale; ``label`` says what it
    measures (:func:`loss_label` of the run's config)."""
    fig = Figure(figsize=(7, 3.5))
    ax = fig.add_subplot()
    draw_loss(ax, losses, label)
    ax.set_title(title)
    return finish_figure(fig, path)


def plot_epoch_table(epoch_grids: dict[int, torch.Tensor], path: str | os.PathLike | None = None,
                     columns: int = 5) -> Figure:
    """The original project's table: the same starting noise, sampled after each saved epoch."""
    epochs = sorted(epoch_grids)
    rows = int(np.ceil(len(epochs) / columns))
    cols = min(columns, len(epochs))
    fig = Figure(figsize=(2.0 * cols, 2.2 * rows))
    for i, epoch in enumerate(epochs):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.imshow(grid_image(epoch_grids[epoch]), interpolation="nearest")
        ax.set_title(f"Epoch {epoch}")
        ax.axis("off")
    fig.suptitle("Samples from fixed noise as training proceeds")
    return finish_figure(fig, path)


def trajectory_grids(trajectory: Trajectory, max_images: int = 16, nrow: int | None = None,
                     with_x0: bool = False) -> list[np.ndarray]:
    """One uint8 HWC grid per frame (first ``max_images`` images); ``with_x0`` puts the
    network's x̂₀ guess to the right of the noisy xₜ."""
    grids = []
    for k in range(len(trajectory)):
        left = grid_image(trajectory.frames[k, :max_images], nrow)
        if with_x0:
            right = grid_image(trajectory.x0_frames[k, :max_images], nrow)
            gap = np.full((left.shape[0], 8, 3), 255, dtype=np.uint8)
            left = np.concatenate([left, gap, right], axis=1)
        grids.append(left)
    return grids


def frame_indices(total: int, n_frames: int, late: bool = False) -> list[int]:
    """``min(n_frames, total)`` distinct increasing indices into ``total`` frames, first and last
    included; ``late=True`` bunches them towards the end (position 1 − (1 − u)², slope 2(1 − u))."""
    n = min(n_frames, total)
    u = np.linspace(0, 1, n)
    position = np.round((1 - (1 - u) ** 2 if late else u) * (total - 1)).astype(int)
    keep = []
    for i, p in enumerate(position):  # nudge collisions apart so exactly n frames remain
        lowest = keep[-1] + 1 if keep else 0
        keep.append(int(min(max(p, lowest), total - n + i)))
    return keep


def save_animation(trajectory: Trajectory, path: str | os.PathLike, n_frames: int = 40,
                   max_images: int = 16, scale: int | None = None, frame_ms: int = 80,
                   hold_ms: int = 1500, late: bool = True, min_width: int = 256) -> Path:
    """The denoising process as a looping GIF (``diffusion_animation.gif``), each frame labelled t.

    ``n_frames`` frames from pure noise to the samples; the last is held for ``hold_ms`` so the
    result can be seen before the loop restarts. ``late=True`` spaces the frames more densely
    towards the end of the trajectory, where the image actually forms (with the linear schedule
    the first half of the steps all look like noise); ``late=False`` spaces them evenly.
    ``scale``: nearest-neighbour upscaling (default: the smallest that makes the GIF at least
    ``min_width`` pixels wide, so 32 px images stay visible).
    """
    return save_stages_animation([("", trajectory)], path, n_frames, max_images, scale, frame_ms, hold_ms, late,
                                 min_width)


def save_stages_animation(stages: list[tuple[str, Trajectory]], path: str | os.PathLike, n_frames: int = 40,
                          max_images: int = 16, scale: int | None = None, frame_ms: int = 80,
                          hold_ms: int = 1500, late: bool = True, min_width: int = 256) -> Path:
    """One GIF of several denoising runs in a row, e.g. a cascade's two stages, each frame labelled
    with its stage's name and t: ``stages`` is ``[(name, trajectory), …]``; ``n_frames`` per stage.

    Every stage is shown at the same width: a smaller stage (32 px) is upscaled by nearest
    neighbour to the size of the largest (64 px), so the frames line up and the blur of the small
    image is visible as blocks rather than hidden by interpolation.
    """
    largest = max(trajectory.frames.shape[-1] for _, trajectory in stages)
    stage_grids = []
    for name, trajectory in stages:
        zoom = largest // trajectory.frames.shape[-1]  # nearest neighbour: 32 px shows as 2 × 2 blocks
        frames = trajectory.frames[:, :max_images].repeat_interleave(zoom, -1).repeat_interleave(zoom, -2)
        stage_grids.append((name, trajectory.timesteps, [grid_image(f) for f in frames]))
    scale = scale or max(1, -(-min_width // stage_grids[0][2][0].shape[1]))
    frames = []
    for name, timesteps, grids in stage_grids:
        label = f"{name}: t = {{}}" if name else "t = {}"
        frames += [_label_frame(grids[k].repeat(scale, 0).repeat(scale, 1), label.format(timesteps[k]))
                   for k in frame_indices(len(timesteps), n_frames, late)]
    return save_gif(frames, path, frame_ms, hold_ms)


def save_gif(frames, path: str | os.PathLike, frame_ms: int = 80, hold_ms: int | None = None,
             scale: int = 1, bounce: bool = False) -> Path:
    """A looping GIF of ``frames``: uint8 HWC arrays, or a batch of images (F, 3, H, W) (uint8 or
    in [-1, 1]), one per frame — e.g. an interpolation strip. Each frame is upscaled ``scale``×
    (nearest neighbour); ``hold_ms`` holds the last frame; ``bounce`` plays back to the start."""
    if torch.is_tensor(frames):
        frames = [grid_image(image[None], padding=0) for image in frames]
    frames = [np.asarray(f).repeat(scale, 0).repeat(scale, 1) for f in frames]
    durations = [frame_ms] * len(frames)
    if hold_ms is not None:
        durations[-1] = hold_ms
    if bounce:
        frames, durations = frames + frames[-2:0:-1], durations + [frame_ms] * (len(frames) - 2)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(path, np.stack(frames), extension=".gif", duration=durations, loop=0)
    return path


def _label_frame(image: np.ndarray, text: str) -> np.ndarray:
    """``image`` (H, W, 3) uint8 under a white band that holds ``text``."""
    band = max(16, image.shape[1] // 14)
    canvas = PILImage.new("RGB", (image.shape[1], image.shape[0] + band), "white")
    canvas.paste(PILImage.fromarray(image), (0, band))
    try:
        font = ImageFont.load_default(size=int(band * 0.75))  # Pillow ≥ 10.1: a scalable font
    except TypeError:
        font = ImageFont.load_default()
    ImageDraw.Draw(canvas).text((4, band // 8), text, fill="black", font=font)
    return np.asarray(canvas)


def plot_schedules(schedules: dict, path: str | os.PathLike | None = None) -> Figure:
    """ᾱₜ and log SNR(t) for several named :class:`NoiseSchedule` objects, side by side."""
    fig = Figure(figsize=(10, 3.5))
    ax_ab, ax_snr = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    for name, schedule in schedules.items():
        t = np.arange(1, schedule.n_steps + 1)
        ax_ab.plot(t, schedule.alpha_bars.cpu().numpy(), label=name)
        ax_snr.plot(t, np.log10(schedule.signal_to_noise().cpu().numpy()), label=name)
    ax_ab.set(xlabel="t", ylabel="ᾱₜ (signal variance kept)", title="ᾱₜ = ∏ (1 − βₛ)")
    ax_snr.set(xlabel="t", ylabel="log₁₀ SNR(t)", title="SNR(t) = ᾱₜ / (1 − ᾱₜ)")
    for ax in (ax_ab, ax_snr):
        ax.grid(alpha=0.3)
        ax.legend()
    return finish_figure(fig, path)


def plot_image_rows(rows: dict[str, torch.Tensor], column_titles: list[str], size: float = 1.3) -> Figure:
    """A table of images: one row per name, (N, 3, H, W) each, with a title per column."""
    n_rows, n_cols = len(rows), len(column_titles)
    fig = Figure(figsize=(size * n_cols + 1.2, size * n_rows + 0.4))
    for r, (name, images) in enumerate(rows.items()):
        for c in range(n_cols):
            ax = fig.add_subplot(n_rows, n_cols, r * n_cols + c + 1)
            ax.imshow(grid_image(images[c:c + 1], padding=0), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(column_titles[c], fontsize=9)
            if c == 0:
                ax.set_ylabel(name, fontsize=9)
    return finish_figure(fig, None)


def plot_time_embedding(embedding: torch.Tensor, path: str | os.PathLike | None = None) -> Figure:
    """Heat map of sinusoidal time embeddings: one row per timestep, one column per dimension."""
    fig = Figure(figsize=(8, 3.5))
    ax = fig.add_subplot()
    image = ax.imshow(embedding.cpu().numpy(), aspect="auto", cmap="RdBu_r", vmin=-1, vmax=1,
                      interpolation="nearest")
    ax.set_xlabel("embedding dimension (sin half | cos half)")
    ax.set_ylabel("timestep t")
    ax.set_title("Sinusoidal time embedding")
    fig.colorbar(image, ax=ax, fraction=0.03)
    return finish_figure(fig, path)


def plot_sampler_comparison(runs, path: str | os.PathLike | None = None, real_kid=None) -> Figure:
    """KID (± std) and seconds per image against network calls, one line per fast sampler, with
    the 1000-step DDPM as a dashed reference. ``runs``: :class:`~diffusion_utils.evaluation.evaluation.SamplerRun` list.
    ``real_kid``: a :class:`~diffusion_utils.KIDResult` of real images against the same reference,
    drawn as a dotted line: the floor a perfect sampler would reach at this sample size."""
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    fig = Figure(figsize=(10, 3.8))
    ax_kid, ax_time = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    for sampler, marker in (("ddim", "o"), ("dpmpp", "s")):
        rs = sorted((r for r in runs if r.sampler == sampler), key=lambda r: r.steps)
        if not rs:
            continue
        ax_kid.errorbar([r.steps for r in rs], [r.kid.mean for r in rs], yerr=[r.kid.std for r in rs],
                        marker=marker, capsize=3, label=SAMPLER_NAMES[sampler])
        ax_time.plot([r.steps for r in rs], [r.seconds_per_image for r in rs], marker=marker,
                     label=SAMPLER_NAMES[sampler])
    for ddpm in (r for r in runs if r.sampler == "ddpm"):
        ax_kid.axhline(ddpm.kid.mean, color="k", ls="--", label=f"DDPM, {ddpm.steps} steps (± std shaded)")
        ax_kid.axhspan(ddpm.kid.mean - ddpm.kid.std, ddpm.kid.mean + ddpm.kid.std, color="k", alpha=0.1)
        ax_time.axhline(ddpm.seconds_per_image, color="k", ls="--", label=f"DDPM, {ddpm.steps} steps")
    if real_kid is not None:
        ax_kid.axhline(real_kid.mean, color="tab:green", ls=":", label="real vs real (the floor)")
    first = runs[0]
    ax_kid.set(ylabel="KID (lower is better)",
               title=f"Quality: {first.kid.n_generated} samples, {first.kid.extractor}")
    ax_time.set(yscale="log", ylabel="seconds per image", title="Time")
    steps = sorted({r.steps for r in runs if r.sampler != "ddpm"})
    for ax in (ax_kid, ax_time):
        ax.set_xscale("log")
        ax.set_xticks(steps)
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("network calls per image")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return finish_figure(fig, path)


SAMPLER_NAMES = {"ddim": "DDIM (η=0)", "dpmpp": "DPM-Solver++(2M)", "ddpm": "DDPM ancestral (1000 steps; 250 respaced)"}


def plot_sampler_curve(table: dict, path: str | os.PathLike | None = None) -> Figure:
    """KID (± std) against network calls per image (log axis) for every sampler of a measured
    curve — ``benchmarks/bench_samplers.py``'s JSON (``docs/sampler_kid.json``): ``table["rows"]``
    with ``sampler``, ``steps``, ``kid``, ``kid_std``; ``table["floors"]`` the real-vs-real floor
    per sample count, the largest drawn as a dashed line."""
    from matplotlib.ticker import ScalarFormatter

    fig = Figure(figsize=(7, 4.2))
    ax = fig.add_subplot(1, 1, 1)
    for sampler in sorted({r["sampler"] for r in table["rows"]}):
        rows = sorted((r for r in table["rows"] if r["sampler"] == sampler), key=lambda r: r["steps"])
        ax.errorbar([r["steps"] for r in rows], [r["kid"] for r in rows], yerr=[r["kid_std"] for r in rows],
                    marker="o", capsize=3, linestyle="none" if sampler == "ddpm" else "-",
                    label=SAMPLER_NAMES.get(sampler, sampler))
    floors = table.get("floors", {})
    if floors:
        n = max(floors, key=int)
        ax.axhline(floors[n]["kid"], color="gray", ls="--", label=f"real vs real, the floor (n = {n})")
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.set(xlabel="network calls per image (log scale)", ylabel="KID, Inception (lower is better)",
           title=f"{table.get('weights', 'model')}: quality against sampling cost, {table.get('img_size', '?')} px")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return finish_figure(fig, path)


def plot_unet(model, path: str | os.PathLike | None = None) -> Figure:
    """A diagram of ``model`` (a :class:`~diffusion_utils.UNet`), drawn from its real levels.

    The U: the down path on the left (one box per resolution level: size, channels, residual
    blocks, attention), the middle at the bottom, the up path on the right, and a skip arrow
    from each level of the way down to the same level of the way up.
    """
    from matplotlib.patches import FancyBboxPatch

    levels = unet_levels(model)
    n = len(levels)
    fig = Figure(figsize=(9, 1.1 * n + 1.8))
    ax = fig.add_subplot()
    w, h = 2.6, 0.62

    def box(x, y, text, colour):
        ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0.03",
                                    facecolor=colour, edgecolor="0.3"))
        ax.text(x, y, text, ha="center", va="center", fontsize=8)

    def arrow(x0, y0, x1, y1, **style):
        ax.annotate("", (x1, y1), (x0, y0), arrowprops=dict(arrowstyle="->", color="0.3", **style))

    def label(info, blocks):
        attn = " + attention" if info["attention"] else ""
        return f"{info['size']}×{info['size']} · {info['channels']} ch\n{blocks} res block{'s' * (blocks > 1)}{attn}"

    x_down = [1.6 + 0.9 * i for i in range(n)]
    x_up = [x_down[-1] * 2 + 4.6 - x for x in x_down]
    ys = [-1.15 * i for i in range(n)]
    for i, info in enumerate(levels):
        colour = "#f6d7a7" if info["attention"] else "#cde3f5"
        box(x_down[i], ys[i], label(info, info["down_blocks"]), colour)
        box(x_up[i], ys[i], label(info, info["up_blocks"]), colour)
        arrow(x_down[i] + w / 2, ys[i], x_up[i] - w / 2, ys[i], ls="--")
        ax.text((x_down[i] + x_up[i]) / 2, ys[i] + 0.08, "skip (concatenate)", ha="center", fontsize=7, color="0.4")
        if i + 1 < n:
            arrow(x_down[i], ys[i] - h / 2, x_down[i + 1], ys[i + 1] + h / 2)
            ax.text(x_down[i] - 0.2, (ys[i] + ys[i + 1]) / 2, "↓ stride-2 conv", ha="right", fontsize=7)
            arrow(x_up[i + 1], ys[i + 1] + h / 2, x_up[i], ys[i] - h / 2)
            ax.text(x_up[i] + 0.2, (ys[i] + ys[i + 1]) / 2, "↑ upsample", ha="left", fontsize=7)
    y_mid, x_mid = ys[-1] - 1.15, (x_down[-1] + x_up[-1]) / 2
    mid_ch = model.mid1.conv1.out_channels
    box(x_mid, y_mid, f"middle · {levels[-1]['size']}×{levels[-1]['size']} · {mid_ch} ch\nres, attention, res", "#f6d7a7")
    arrow(x_down[-1], ys[-1] - h / 2, x_mid - w / 4, y_mid + h / 2)
    arrow(x_mid + w / 4, y_mid + h / 2, x_up[-1], ys[-1] - h / 2)
    size, c = model.img_size, model.in_channels
    ax.text(x_down[0], ys[0] + 0.75, f"xₜ ({c}×{size}×{size}) → stem conv", ha="center", fontsize=8)
    ax.text(x_up[0], ys[0] + 0.75, f"head → ε̂ ({c}×{size}×{size})", ha="center", fontsize=8)
    ax.text(x_mid, y_mid - 0.75, "t → sinusoidal embedding → MLP → added in every residual block",
            ha="center", fontsize=8, style="italic")
    ax.set_xlim(min(x_down) - w / 2 - 1.3, max(x_up) + w / 2 + 1.1)
    ax.set_ylim(y_mid - 1.0, ys[0] + 1.0)
    ax.axis("off")
    ax.set_title(f"The UNet, drawn from the model: {n} levels, {sum(p.numel() for p in model.parameters()):,} parameters")
    return finish_figure(fig, path)
