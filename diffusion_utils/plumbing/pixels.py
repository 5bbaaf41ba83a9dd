"""Pixels: the two ranges an image lives in, and drawing many images a batch at a time.

The model works in float32 [-1, 1]; files, grids and feature extractors take uint8 [0, 255].
:func:`to_model_range` and :func:`to_uint8` are the only two conversions between them, so an
image saved to disk and the same image scored by KID are the same numbers.
"""

from __future__ import annotations

from typing import Callable

import torch


def to_model_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] → float32 [-1, 1], the range the diffusion model works in: x / 127.5 − 1."""
    return images.float() / 127.5 - 1.0


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] floats (…, C, H, W) → uint8 in [0, 255] on the CPU (values outside are clamped)."""
    return ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()


def draw_in_batches(draw: Callable[[int, int], torch.Tensor], n: int, batch_size: int) -> torch.Tensor:
    """``n`` images as uint8 (n, C, H, W) on the CPU, drawn ``batch_size`` at a time.

    ``draw(start, size)`` returns images start … start + size − 1 as floats in [-1, 1]; it decides
    where their randomness comes from (one generator for all batches, or one seed per batch) and
    may keep anything else it makes (e.g. the first batch's trajectory). Only one batch of floats
    is held at a time, so memory stays flat for any ``n``.
    """
    return torch.cat([to_uint8(draw(start, min(batch_size, n - start))) for start in range(0, n, batch_size)])


__all__ = ["to_model_range", "to_uint8", "draw_in_batches"]
