"""Batches for training: one epoch of shuffled, randomly flipped images, replayable from any batch.

The only augmentation is a random horizontal flip, applied on the fly to whole batches of the
uint8 images held in memory (:class:`~diffusion_utils.data.data.ImageDataset`); nothing is decoded
during training.
"""

from __future__ import annotations

from typing import Iterator

import torch

from ..plumbing.distributed import shard_slice
from ..plumbing.pixels import to_model_range


def batches_per_epoch(n_images: int, batch_size: int) -> int:
    """Full batches per epoch (the remainder is dropped; one short batch if n < batch_size)."""
    return max(1, n_images // batch_size)


def epoch_batches(images: torch.Tensor, batch_size: int, generator: torch.Generator,
                  start: int = 0, labels: torch.Tensor | None = None,
                  shard: tuple[int, int] = (0, 1)) -> Iterator:
    """Yield one epoch of shuffled, randomly h-flipped float batches (B, 3, H, W) in [-1, 1].

    ``images``: uint8 (N, 3, H, W). The shuffle and every flip are drawn from ``generator`` up
    front, so restoring its state and passing ``start`` (batches already done) replays the rest of
    an interrupted epoch exactly. With ``labels`` (int64 (N,)), yields ``(x, y)`` pairs instead,
    y the batch's labels (B,). ``shard=(rank, world_size)``: yield only this rank's
    B / world_size rows of each batch (the shuffle is the same on every rank, as with
    ``DistributedSampler``; B must split evenly).
    """
    n = len(images)
    order = torch.randperm(n, generator=generator)
    flip = torch.rand(n, generator=generator) < 0.5
    for b in range(start, batches_per_epoch(n, batch_size)):
        idx = order[b * batch_size:(b + 1) * batch_size]
        idx = idx[shard_slice(len(idx), shard)]  # this rank's rows of the batch
        x = to_model_range(images[idx])
        x = torch.where(flip[idx, None, None, None], x.flip(-1), x)
        yield x if labels is None else (x, labels[idx])
