"""What every figure shares: a batch of images as one grid image, and a figure laid out and saved.

The plots of the notebooks (:mod:`~diffusion_utils.notebook.visualization`) and of the copying test
(:mod:`~diffusion_utils.evaluation.neighbours`, :mod:`~diffusion_utils.evaluation.memorisation`)
finish their figures the same way, so both sides import it from here.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from torchvision.utils import make_grid

from .pixels import to_uint8


def finish_figure(fig: Figure, path: str | os.PathLike | None) -> Figure:
    """Lay ``fig`` out, save it as a PNG at ``path`` (its folder made) if given, and return it."""
    fig.tight_layout()
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=100)
    return fig


def grid_image(images: torch.Tensor, nrow: int | None = None, padding: int = 2) -> np.ndarray:
    """A batch (N, 3, H, W) — uint8, or float in [-1, 1] — as one uint8 HWC grid image."""
    if images.dtype != torch.uint8:
        images = to_uint8(images)
    nrow = nrow or int(np.ceil(np.sqrt(len(images))))
    grid = make_grid(images.cpu(), nrow=nrow, padding=padding, pad_value=255)
    return grid.permute(1, 2, 0).numpy()


__all__ = ["finish_figure", "grid_image"]
