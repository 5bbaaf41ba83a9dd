"""Nearest training neighbours: which training images a sample (or any image) sits closest to.

:func:`nearest_neighbours` is an exact k-nearest-neighbour search by Euclidean distance, in pixel
space (the flattened images in [-1, 1]) or in the feature space of a fixed network
(:mod:`~diffusion_utils.evaluation.features`). It runs in chunks of ``batch_size`` queries × ``batch_size``
references (``torch.cdist``), so 1 000 samples against the 8 000 Flowers102 photos (each
3 × 64 × 64) fit in a few hundred MB; the winners are then measured again in float64.

:func:`leave_one_out_neighbours` searches a set against itself, each image's own row left out: the
nearest *other* images. :mod:`~diffusion_utils.evaluation.memorisation` builds its test on both, and
:func:`plot_nearest_neighbours` shows samples above the training images they sit closest to.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn

from ..plumbing.errors import ConfigError
from ..plumbing.figures import finish_figure, grid_image
from ..plumbing.pixels import to_model_range
from .features import check_batch_size, default_feature_extractor, extract_features

SPACES = ("pixels", "features")
DEFAULT_CHUNK = 1024  # images per chunk of queries and of references: 1024 × 12 288 float32 ≈ 50 MB at 64 px

# ---------------------------------------------------------------------------------------------
# Nearest neighbours
# ---------------------------------------------------------------------------------------------
class Neighbours(NamedTuple):
    """Each query's k nearest references, nearest first: ``indices, distances = nearest_neighbours(...)``.

    Attributes:
        indices: int64 (N, k), indices into the references.
        distances: float64 (N, k), Euclidean distances, ascending along each row.
    """

    indices: torch.Tensor
    distances: torch.Tensor


def nearest_neighbours(queries: torch.Tensor, references: torch.Tensor, k: int = 1, *, space: str = "pixels",
                       extractor: nn.Module | None = None, batch_size: int = DEFAULT_CHUNK) -> Neighbours:
    """The ``k`` nearest references of each query, by Euclidean distance in pixel or feature space.

    Args:
        queries: images (N, C, H, W), float in [-1, 1] or uint8 in [0, 255] (read as
            :func:`~diffusion_utils.plumbing.pixels.to_model_range` does); e.g. samples.
        references: images (M, C, H, W) of the same C, H, W; e.g. the training images.
        k: neighbours per query, in [1, M].
        space: ``"pixels"`` (the flattened images in [-1, 1]) or ``"features"`` (the feature
            vectors of ``extractor``; then either set may also be given as (N, d) features from
            :func:`~diffusion_utils.evaluation.features.extract_features`, and 3 channels are needed).
        extractor: the feature network for ``space="features"`` (``None``: InceptionV3,
            :func:`~diffusion_utils.evaluation.features.default_feature_extractor`); only used there.
        batch_size: queries and references per distance block (bounds memory; the result does
            not depend on it).

    Returns:
        :class:`Neighbours` ``(indices, distances)``: int64 and float64 (N, k) CPU tensors, nearest
        first. The search runs in float32 (``torch.cdist``); the k winners' distances are then
        measured again exactly in float64, so an exact copy is at distance 0.0. (Two references
        within float32 round-off of each other may come in either order.)

    Raises:
        ConfigError: bad ``space``, ``k`` or ``batch_size``, sets that are empty or differ in
            shape, images out of range, or an extractor given for pixel space.
    """
    check_space(space, extractor)
    check_batch_size(batch_size)
    queries, references = check_set(queries, "queries", space), check_set(references, "references", space)
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= len(references):
        raise ConfigError(f"k must be an integer in [1, {len(references)}] (the number of references); got {k!r}")
    if space == "pixels" and queries.shape[1:] != references.shape[1:]:
        raise ConfigError(f"queries and references differ in shape (C, H, W): {tuple(queries.shape[1:])} vs "
                          f"{tuple(references.shape[1:])}; compare images of one size")
    if space == "features":
        extractor = resolve_extractor(extractor, queries, references)
        queries, references = embed_set(queries, extractor), embed_set(references, extractor)
        if queries.shape[1] != references.shape[1]:
            raise ConfigError(f"queries and references features differ in dimension ({queries.shape[1]} vs "
                              f"{references.shape[1]}); compute both with the same feature extractor")

    indices, distances = [], []
    for start in range(0, len(queries), batch_size):
        query_exact = _rows(queries, slice(start, start + batch_size), torch.float64)
        query = query_exact.float()
        best_d = torch.full((len(query), k), float("inf"))
        best_i = torch.zeros((len(query), k), dtype=torch.long)
        for ref_start in range(0, len(references), batch_size):
            block = torch.cdist(query, _rows(references, slice(ref_start, ref_start + batch_size), torch.float32))
            block_i = torch.arange(ref_start, ref_start + block.shape[1]).expand_as(block)
            best_d, pick = torch.cat([best_d, block], dim=1).topk(k, dim=1, largest=False)
            best_i = torch.cat([best_i, block_i], dim=1).gather(1, pick)
        exact = _exact_distances(query_exact, references, best_i)
        order = torch.sort(exact, dim=1, stable=True).indices  # re-sort by the exact distances
        indices.append(best_i.gather(1, order))
        distances.append(exact.gather(1, order))
    return Neighbours(torch.cat(indices), torch.cat(distances))


def leave_one_out_neighbours(images: torch.Tensor, k: int = 1, *, space: str = "pixels",
                             extractor: nn.Module | None = None, batch_size: int = DEFAULT_CHUNK) -> Neighbours:
    """Each image's ``k`` nearest *other* images of the same set: the search of ``images`` against
    themselves, with each image's own row left out.

    Args:
        images: (M, C, H, W) images as for :func:`nearest_neighbours` (or, with ``space="features"``,
            (M, d) features), M ≥ k + 1.
        k, space, extractor, batch_size: as for :func:`nearest_neighbours`.

    Returns:
        :class:`Neighbours` (M, k): indices into ``images`` (never a row's own index) and distances,
        nearest first. An image with an exact duplicate in the set finds it at distance 0.0.
    """
    check_space(space, extractor)
    images = check_set(images, "images", space)
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k < len(images):
        raise ConfigError(f"k must be an integer in [1, {len(images) - 1}] (the other images); got {k!r}")
    if space == "features":  # embed once: the set is both queries and references
        images = embed_set(images, resolve_extractor(extractor, images))
    found = nearest_neighbours(images, images, k + 1, space=space, batch_size=batch_size)
    own = found.indices == torch.arange(len(images))[:, None]
    # Each image finds itself among its k + 1 nearest (at 0.0), unless k + 1 others lie within float32
    # round-off of it: then they are all others, and the farthest of them goes instead.
    own[~own.any(dim=1), -1] = True
    keep = ~own
    return Neighbours(found.indices[keep].view(len(images), k), found.distances[keep].view(len(images), k))


def _rows(x: torch.Tensor, index, dtype: torch.dtype) -> torch.Tensor:
    """Rows ``index`` of images (flattened, in [-1, 1]) or of features, as ``dtype`` on the CPU."""
    rows = x[index].cpu()
    if rows.dtype == torch.uint8:
        rows = to_model_range(rows)
    return rows.reshape(len(rows), -1).to(dtype)


def _exact_distances(query: torch.Tensor, references: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """float64 ‖query[i] − references[index[i, j]]‖ for each i, j: one neighbour rank at a time."""
    columns = [(query - _rows(references, index[:, j], torch.float64)).norm(dim=1) for j in range(index.shape[1])]
    return torch.stack(columns, dim=1)


# ---------------------------------------------------------------------------------------------
# Checking inputs, and embedding them
# ---------------------------------------------------------------------------------------------
def check_space(space: str, extractor) -> None:
    if space not in SPACES:
        raise ConfigError(f"space must be 'pixels' or 'features'; got {space!r}")
    if space == "pixels" and extractor is not None:
        raise ConfigError("an extractor is only used with space='features'; pass space='features' or drop it")


def check_images(x, name: str) -> torch.Tensor:
    """Images (N, C, H, W), uint8 or finite floats in [-1, 1], non-empty; returned detached."""
    if not isinstance(x, torch.Tensor):
        raise ConfigError(f"{name} must be a torch.Tensor of images (N, C, H, W); got {type(x).__name__}")
    if x.ndim != 4:
        raise ConfigError(f"{name} must be images (N, C, H, W); got shape {tuple(x.shape)}")
    if len(x) == 0:
        raise ConfigError(f"{name} are empty (shape {tuple(x.shape)}); pass at least one image")
    x = x.detach()
    if x.dtype == torch.uint8:
        return x
    if not x.is_floating_point():
        raise ConfigError(f"{name} must be uint8 in [0, 255] or float in [-1, 1]; got {x.dtype}")
    if not bool(torch.isfinite(x).all()):
        raise ConfigError(f"{name} contain NaN or infinite values")
    lo, hi = float(x.min()), float(x.max())
    if lo < -1.01 or hi > 1.01:
        raise ConfigError(f"float {name} must be in [-1, 1] (the model's range); got values in [{lo:.3g}, {hi:.3g}] "
                          f"— pass images * 2 - 1 for [0, 1]")
    return x


def is_features(x) -> bool:
    return isinstance(x, torch.Tensor) and x.ndim == 2


def resolve_extractor(extractor: nn.Module | None, *sets) -> nn.Module | None:
    """``extractor``, or InceptionV3 when some set is images (None when all are features already)."""
    if extractor is None and not all(is_features(x) for x in sets):
        return default_feature_extractor()
    return extractor


def check_set(x, name: str, space: str) -> torch.Tensor:
    """Images as :func:`check_images` wants them, or — in feature space — (N, d) finite float features."""
    if space == "pixels" or not is_features(x):
        x = check_images(x, name)
        if space == "features" and x.shape[1] != 3:
            raise ConfigError(f"{name} must have 3 channels for the feature extractor; got shape {tuple(x.shape)}")
        return x
    if len(x) == 0 or x.shape[1] == 0:
        raise ConfigError(f"{name} features are empty (shape {tuple(x.shape)}); pass at least one image")
    if not x.is_floating_point() or not bool(torch.isfinite(x).all()):
        raise ConfigError(f"{name} features (N, d) must be finite floats, as extract_features returns")
    return x.detach()


def embed_set(x: torch.Tensor, extractor: nn.Module | None) -> torch.Tensor:
    """(N, d) features of checked images ``x`` (:func:`extract_features`), or ``x`` if already features."""
    return x if is_features(x) else extract_features(x, extractor)


# ---------------------------------------------------------------------------------------------
# The figure: samples above their nearest training images
# ---------------------------------------------------------------------------------------------
def plot_nearest_neighbours(samples: torch.Tensor, train_images: torch.Tensor, indices,
                            path: str | os.PathLike | None = None, n: int = 8, *, distances=None) -> Figure:
    """The first ``n`` samples (top row), each above its nearest training images, nearest first.

    ``indices``: (N, k) or (N,) indices into ``train_images``, e.g. ``nearest_neighbours(...).indices``
    or ``MemorisationResult.sample_neighbours``; ``distances`` (same shape), if given, label each
    neighbour. To see the most suspicious samples, pass them sorted: ``order = distances[:, 0].argsort()``,
    then ``samples[order]``, ``indices[order]``. Saved as a PNG at ``path`` if given; returns the figure.
    """
    indices = _cpu_tensor(indices).long()
    indices = indices[:, None] if indices.ndim == 1 else indices
    if distances is not None:
        distances = _cpu_tensor(distances).double().reshape(indices.shape)
    if not isinstance(n, int) or n < 1:
        raise ConfigError(f"n must be a positive integer; got {n!r}")
    samples, train_images = check_images(samples, "samples"), check_images(train_images, "train_images")
    if indices.ndim != 2 or len(indices) != len(samples):
        raise ConfigError(f"indices must be (N, k) or (N,) with N = {len(samples)} (one row per sample); got shape "
                          f"{tuple(indices.shape)}")
    if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= len(train_images)):
        raise ConfigError(f"indices must be in [0, {len(train_images)}) (the training images); got values in "
                          f"[{int(indices.min())}, {int(indices.max())}]")
    n, k = min(n, len(samples)), indices.shape[1]
    fig = Figure(figsize=(1.3 * n + 1.2, 1.45 * (k + 1) + 0.6))
    for c in range(n):
        for r in range(k + 1):
            ax = fig.add_subplot(k + 1, n, r * n + c + 1)
            image = samples[c:c + 1] if r == 0 else train_images[int(indices[c, r - 1])][None]
            ax.imshow(grid_image(image, padding=0), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"sample {c}", fontsize=8)
            else:
                label = f"train #{int(indices[c, r - 1])}"
                if distances is not None:
                    label += f"\nd = {float(distances[c, r - 1]):.3g}"
                ax.set_xlabel(label, fontsize=7)
            if c == 0:
                ax.set_ylabel("sample" if r == 0 else "nearest" if r == 1 else f"{_ordinal(r)} nearest", fontsize=8)
    fig.suptitle(f"Each sample (top) and its {'nearest training image' if k == 1 else f'{k} nearest training images'} "
                 f"(below)", fontsize=10)
    return finish_figure(fig, path)


def _cpu_tensor(x) -> torch.Tensor:
    return x.detach().cpu() if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))


def _ordinal(r: int) -> str:
    return f"{r}{'nd' if r == 2 else 'rd' if r == 3 else 'th'}"


__all__ = ["Neighbours", "leave_one_out_neighbours", "nearest_neighbours", "plot_nearest_neighbours"]
