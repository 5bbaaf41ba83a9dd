"""Synthetic flowers: drawn with numpy, no download, for tests and offline quick runs.

A synthetic flower's class is its petal colour, so the same data trains a class-conditional model.
"""

from __future__ import annotations

import numpy as np
import torch

SYNTHETIC_DEFAULT_N = 2048
SYNTHETIC_MAX_N = 100_000  # 1.2 GB at 64 px: drawn in memory, so a typo must not ask for more

PETAL_COLOURS = np.array([
    [220, 40, 60], [240, 120, 170], [250, 210, 40], [245, 140, 30], [150, 70, 200],
    [250, 245, 240], [200, 30, 120], [120, 110, 230],
], dtype=np.float32) / 255.0
# A synthetic flower's class is its petal colour (the index into PETAL_COLOURS).
SYNTHETIC_CLASS_NAMES = ("red", "pink", "yellow", "orange", "purple", "white", "magenta", "blue")


def make_synthetic_flowers(n: int, img_size: int = 64, seed: int = 0, return_labels: bool = False):
    """Draw ``n`` flowers as uint8 (n, 3, img_size, img_size); the same seed gives the same images.

    With ``return_labels``, returns ``(images, labels)``: labels int64 (n,) are the petal colours,
    indices into :data:`SYNTHETIC_CLASS_NAMES`.

    Each flower: k petals (5–9) of a random colour whose radius follows
    r(θ) = R·(0.35 + 0.65·|cos(k(θ − φ)/2)|^p), a yellow or brown centre disc, on a blurred green
    background with darker leaf blobs. Drawn at 2× and averaged down, so edges are antialiased.
    """
    rng = np.random.default_rng(seed)
    size = 2 * img_size
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) / size  # coordinates in [0, 1)
    out = np.empty((n, 3, img_size, img_size), dtype=np.uint8)
    labels = np.empty(n, dtype=np.int64)
    for i in range(n):
        # Background: a vertical green gradient plus a few dark leaf blobs.
        top, bottom = rng.uniform(0.15, 0.45, 3) * [0.6, 1.0, 0.5], rng.uniform(0.05, 0.3, 3) * [0.5, 1.0, 0.4]
        canvas = top[:, None, None] * (1 - ys) + bottom[:, None, None] * ys
        for _ in range(rng.integers(2, 5)):
            cx, cy, rad = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.1, 0.3)
            blob = np.exp(-(((xs - cx) ** 2 + (ys - cy) ** 2) / rad ** 2))
            canvas = canvas * (1 - 0.5 * blob) + 0.5 * blob * np.array([0.05, 0.25, 0.05])[:, None, None]
        # The flower.
        cx, cy = rng.uniform(0.35, 0.65, 2)
        radius = rng.uniform(0.25, 0.45)
        k, phase, sharp = rng.integers(5, 10), rng.uniform(0, 2 * np.pi), rng.uniform(0.5, 2.0)
        labels[i] = rng.integers(len(PETAL_COLOURS))
        colour = np.clip(PETAL_COLOURS[labels[i]] + rng.normal(0, 0.06, 3), 0, 1)
        dx, dy = xs - cx, ys - cy
        r, theta = np.hypot(dx, dy), np.arctan2(dy, dx)
        petal_edge = radius * (0.35 + 0.65 * np.abs(np.cos(k * (theta - phase) / 2)) ** sharp)
        petals = r < petal_edge
        shade = 1 - 0.35 * (r / radius)  # petals darken towards their tips
        canvas = np.where(petals[None], colour[:, None, None] * shade[None] + 0.15 * (1 - shade[None]), canvas)
        centre_colour = np.array([0.95, 0.8, 0.1]) if rng.uniform() < 0.6 else np.array([0.35, 0.2, 0.08])
        centre = r < radius * rng.uniform(0.15, 0.28)
        canvas = np.where(centre[None], centre_colour[:, None, None], canvas)
        canvas = np.clip(canvas + rng.normal(0, 0.015, canvas.shape), 0, 1)
        small = canvas.reshape(3, img_size, 2, img_size, 2).mean(axis=(2, 4))  # 2×2 average: antialias
        out[i] = np.round(small * 255).astype(np.uint8)
    if return_labels:
        return torch.from_numpy(out), torch.from_numpy(labels)
    return torch.from_numpy(out)
