"""Is the model copying its training data? Nearest training neighbours, and the held-out test.

A diffusion model that has memorised its training set gives back (near-)copies of training
images instead of new ones. To check, find each sample's *nearest training image* and ask how
close it is. But "close" needs a yardstick: some flowers just look alike. The yardstick is a
set of real images the model never saw (a **held-out** set from the same source, disjoint from
the training images). They are new by construction, so their distances to the training set show
how close a *new* image of this kind sits to its nearest training image:

- samples no closer than held-out images → the samples are as new as unseen photos: no copying;
- samples much closer → they sit on top of training images: the model copies.

:func:`memorisation_test` measures both sets of distances (samples → train, held-out → train)
and compares them, in :class:`MemorisationResult`:

- the **median ratio** median(sample distances) / median(held-out distances): ≈ 1 when the
  samples are as new as unseen images, well below 1 when they copy. Medians, not means, so a
  few odd images do not move it;
- the **near-copy rate**: the fraction of samples closer to their nearest training image than
  the 1st percentile of the held-out distances (the ⌈m/100⌉-th smallest of m) — closer than
  99 % of unseen images get. About 1 % of new images land there by chance; far more than 1 % is
  copying, even when only part of the samples are copies (which barely moves the median);
- a one-sided **Mann–Whitney U** p-value for "sample distances are smaller than held-out
  distances" (a rank test: no assumption on the distances' distribution);
- the **relative distance**, each image's distance to its nearest training image over that to
  its second nearest, compared the same two ways (a near-copy rate and a Mann–Whitney p-value).
  It tells copying from smoothness: a copy sits on *one* training image (relative distance
  ≈ 0.2 for a copy plus a little noise, 0 for an exact one), while a blurry or washed-out image
  sits closer to *every* training image, the nearest and the second nearest alike (≈ 0.95, as
  for unseen images). Blurring unseen images (σ = 1.5 px at 16 px) cuts their median ratio to
  about 0.8 — closer in distance, in pixels and in random-conv features alike — but leaves
  their median relative distance where unseen images' is (0.94; tests/test_memorisation.py);
- a **verdict**, one sentence computed from those numbers (thresholds below).

The thresholds, and why:

- ``ALPHA = 0.01``: a "closer" finding needs p < 0.01, so that chance alone (two random sets from
  one distribution) raises it in 1 run of 100.
- ``COPY_RATIO = 0.8``: "much closer", i.e. copying, is a median ratio below 0.8 (and p < ALPHA).
  Two sets of a few hundred unseen images give medians within a few per cent of each other, so
  0.8 is far outside chance, and it leaves room for the smaller, innocent drops described below.
  Copies of training images with a little noise (σ = 0.05) sit at 0.2–0.35 (the tests).
- ``NEAR_COPY_ALARM = 0.05``: a near-copy rate of 5 % or more — five times the 1 % expected by
  chance — is copying too, when that many near-copies are not chance (p < ALPHA). The p-value is
  exact: if samples and held-out images were exchangeable (no copying), the number of samples
  below the held-out set's j-th smallest distance follows a negative hypergeometric
  distribution. It accounts for the threshold's own noise, which is large with few held-out
  images: with 1 000 held-out images, 5 near-copies among 100 samples are an alarm; with 100
  held-out images (the threshold is then their smallest distance) it takes 7; among 20 samples
  it takes 3 (15 %) either way.
- In between — significantly closer (p < ALPHA) but with a ratio above 0.8, or significantly many
  near-copies but fewer than 5 % — the verdict says "possibly partial memorisation" and points
  at the nearest-neighbour figure (``finding == "closer"``).
- Both of those need the relative distances to be significantly smaller too (p < ALPHA, by
  their Mann–Whitney test or their near-copy count): samples closer to the training set but
  not to any one image in it are called smooth, not copies (``finding == "smooth"``).
- ``FARTHER_RATIO = 1.2``: samples *farther* from the training set than unseen images (ratio
  above 1.2) are not copies either; the verdict says so, and that they differ from real images
  more than real images do — a question for sample quality (KID), not memorisation.

Where the distances are measured (``space``):

- ``"pixels"``: Euclidean distance between the flattened images in [-1, 1]. Exact, needs nothing,
  and finds copies that are pixel for pixel (a copy plus a little noise is still close). It
  favours smooth images (a blurry image sits closer to everything), which the relative
  distances catch; still, look at :func:`plot_nearest_neighbours` before concluding.
- ``"features"``: Euclidean distance between feature vectors of a fixed network
  (:mod:`~diffusion_utils.features`: InceptionV3 by default, or e.g. ``RandomConvFeatures()``),
  which also sees a shifted or recoloured copy as close. Embedding is the slow part (Inception
  on a CPU: a few images a second), so embed the training set once with
  :func:`~diffusion_utils.features.extract_features` and pass the (N, d) features in its place.

How many images? The medians and the p-value settle with a few hundred samples and held-out
images; the 1st percentile of the held-out distances needs ≥ 100 held-out images to mean
anything (with fewer it is just the smallest of them). The held-out images must really be
unseen: a model trained on all 8 189 Flowers102 photos has none, but one trained with
``max_images`` (a seeded random subset, e.g. the 2 048 of the quick presets) leaves the rest.

:func:`nearest_neighbours` is the search underneath: exact k-nearest neighbours, in chunks of
``batch_size`` queries × ``batch_size`` references (``torch.cdist``), so 1 000 samples against the
8 000 training images (each 3 × 64 × 64) fit in a few hundred MB.
"""

from __future__ import annotations

import math
import os
import textwrap
import warnings
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn

from .errors import ConfigError
from .features import check_batch_size, default_feature_extractor, extract_features
from .pixels import to_model_range
from .visualization import _finish, grid_image

SPACES = ("pixels", "features")
DEFAULT_CHUNK = 1024  # images per chunk of queries and of references: 1024 × 12 288 float32 ≈ 50 MB at 64 px
NEAR_COPY_PERCENTILE = 1.0  # a near-copy is closer than this percentile of the held-out distances
ALPHA = 0.01  # significance level of every "closer" finding
COPY_RATIO = 0.8  # median ratio below which (with p < ALPHA) the samples copy
NEAR_COPY_ALARM = 0.05  # near-copy rate at or above which (if not chance) the samples copy
FARTHER_RATIO = 1.2  # median ratio above which the samples sit farther than unseen images


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
            :func:`~diffusion_utils.pixels.to_model_range` does); e.g. samples.
        references: images (M, C, H, W) of the same C, H, W; e.g. the training images.
        k: neighbours per query, in [1, M].
        space: ``"pixels"`` (the flattened images in [-1, 1]) or ``"features"`` (the feature
            vectors of ``extractor``; then either set may also be given as (N, d) features from
            :func:`~diffusion_utils.features.extract_features`, and 3 channels are needed).
        extractor: the feature network for ``space="features"`` (``None``: InceptionV3,
            :func:`~diffusion_utils.features.default_feature_extractor`); only used there.
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
    _check_space(space, extractor)
    check_batch_size(batch_size)
    queries, references = _check_set(queries, "queries", space), _check_set(references, "references", space)
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= len(references):
        raise ConfigError(f"k must be an integer in [1, {len(references)}] (the number of references); got {k!r}")
    if space == "pixels" and queries.shape[1:] != references.shape[1:]:
        raise ConfigError(f"queries and references differ in shape (C, H, W): {tuple(queries.shape[1:])} vs "
                          f"{tuple(references.shape[1:])}; compare images of one size")
    if space == "features":
        extractor = _resolve_extractor(extractor, queries, references)
        queries, references = _embed(queries, extractor), _embed(references, extractor)
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
def _check_space(space: str, extractor) -> None:
    if space not in SPACES:
        raise ConfigError(f"space must be 'pixels' or 'features'; got {space!r}")
    if space == "pixels" and extractor is not None:
        raise ConfigError("an extractor is only used with space='features'; pass space='features' or drop it")


def _check_images(x, name: str) -> torch.Tensor:
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


def _is_features(x) -> bool:
    return isinstance(x, torch.Tensor) and x.ndim == 2


def _resolve_extractor(extractor: nn.Module | None, *sets) -> nn.Module | None:
    """``extractor``, or InceptionV3 when some set is images (None when all are features already)."""
    if extractor is None and not all(_is_features(x) for x in sets):
        return default_feature_extractor()
    return extractor


def _check_set(x, name: str, space: str) -> torch.Tensor:
    """Images as :func:`_check_images` wants them, or — in feature space — (N, d) finite float features."""
    if space == "pixels" or not _is_features(x):
        x = _check_images(x, name)
        if space == "features" and x.shape[1] != 3:
            raise ConfigError(f"{name} must have 3 channels for the feature extractor; got shape {tuple(x.shape)}")
        return x
    if len(x) == 0 or x.shape[1] == 0:
        raise ConfigError(f"{name} features are empty (shape {tuple(x.shape)}); pass at least one image")
    if not x.is_floating_point() or not bool(torch.isfinite(x).all()):
        raise ConfigError(f"{name} features (N, d) must be finite floats, as extract_features returns")
    return x.detach()


def _embed(x: torch.Tensor, extractor: nn.Module | None) -> torch.Tensor:
    """(N, d) features of checked images ``x`` (:func:`extract_features`), or ``x`` if already features."""
    return x if _is_features(x) else extract_features(x, extractor)


# ---------------------------------------------------------------------------------------------
# The test: samples against held-out images
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MemorisationResult:
    """How close samples and held-out real images sit to their nearest training images.

    Attributes:
        sample_distances: float64 (N,), each sample's distance to its nearest training image.
        held_out_distances: float64 (M,), each held-out image's distance to its nearest training image.
        sample_neighbours: int64 (N,), the index of each sample's nearest training image (for
            :func:`plot_nearest_neighbours`).
        sample_median, held_out_median: the medians of the two distance arrays.
        median_ratio: sample_median / held_out_median (≈ 1: as new as unseen images; ≪ 1: copies).
        near_copy_threshold: the 1st percentile of the held-out distances (the ⌈m/100⌉-th smallest).
        near_copy_rate: the fraction of samples closer than that (≈ 1 % by chance).
        near_copy_p_value: the chance of at least that many near-copies if samples and held-out
            images were exchangeable (exact: negative hypergeometric).
        p_value: one-sided Mann–Whitney U test that sample distances are *smaller* than held-out ones.
        sample_relative, held_out_relative: float64 (N,) and (M,), each image's distance to its
            nearest training image over its distance to the second nearest (0 for an exact copy,
            near 1 for an image no closer to one training image than to the next).
        relative_near_copy_rate, relative_near_copy_p_value: as ``near_copy_rate`` and its p-value,
            for those relative distances (below the held-out set's 1st percentile of them).
        relative_p_value: one-sided Mann–Whitney U test that the samples' relative distances are smaller.
        space: ``"pixels"`` or ``"features"``.
        extractor: the feature network's class name (``"precomputed features"`` when all sets were
            features), or ``None`` in pixel space.
        n_train: the number of training images searched.
    """

    sample_distances: np.ndarray
    held_out_distances: np.ndarray
    sample_neighbours: np.ndarray
    sample_median: float
    held_out_median: float
    median_ratio: float
    near_copy_threshold: float
    near_copy_rate: float
    near_copy_p_value: float
    p_value: float
    sample_relative: np.ndarray
    held_out_relative: np.ndarray
    relative_near_copy_rate: float
    relative_near_copy_p_value: float
    relative_p_value: float
    space: str
    extractor: str | None
    n_train: int

    @property
    def finding(self) -> str:
        """``"copies"``, ``"closer"``, ``"smooth"`` or ``"none"``: the verdict's four answers.

        Closer in distance: ``"copies"`` for a median ratio < ``COPY_RATIO`` with p < ``ALPHA``, or a
        near-copy rate ≥ ``NEAR_COPY_ALARM`` that is not chance; ``"closer"`` for significantly
        closer (p < ``ALPHA``) or significantly many near-copies, short of that — both only if the
        relative distances are significantly smaller too (p < ``ALPHA``, by either test), i.e. the
        samples sit on *particular* training images. Otherwise ``"smooth"``: close to all training
        images alike, as blurry images are. ``"none"``: not closer.
        """
        ratio_copies = self.median_ratio < COPY_RATIO and self.p_value < ALPHA
        near_copies = self.near_copy_rate >= NEAR_COPY_ALARM and self.near_copy_p_value < ALPHA
        closer = (self.p_value < ALPHA and self.median_ratio < 1) or self.near_copy_p_value < ALPHA
        particular = self.relative_p_value < ALPHA or self.relative_near_copy_p_value < ALPHA
        if not (ratio_copies or near_copies or closer):
            return "none"
        if not particular:
            return "smooth"
        return "copies" if ratio_copies or near_copies else "closer"

    @property
    def verdict(self) -> str:
        """One sentence from the numbers: do the samples sit closer to the training images than unseen ones?"""
        ratio, near = f"median ratio {self.median_ratio:.2f}", f"{_percent(self.near_copy_rate)} near-copies"
        finding, mostly_closer = self.finding, self.p_value < ALPHA and self.median_ratio < 1
        if finding == "copies" and self.median_ratio < COPY_RATIO:
            return (f"samples sit much closer to the training images than unseen images do ({ratio}, {near}): "
                    f"the model copies its training data")
        if finding == "copies":
            return (f"{_percent(self.near_copy_rate)} of samples are near-copies of a training image (closer than 99% "
                    f"of unseen images get; {ratio}): the model copies some of its training data")
        if finding == "closer" and not mostly_closer:
            return (f"{_percent(self.near_copy_rate)} of samples are near-copies of a training image, more than the 1% "
                    f"chance gives (p = {self.near_copy_p_value:.2g}; {ratio}): possibly partial memorisation — look "
                    f"at the nearest neighbours")
        if finding == "closer":
            return (f"samples sit somewhat closer to the training images than unseen images do ({ratio}, {near}, "
                    f"p = {self.p_value:.2g}): possibly partial memorisation — look at the nearest neighbours")
        if finding == "smooth":
            return (f"samples sit closer to the training images than unseen images do ({ratio}, {near}) but no closer "
                    f"to their nearest than to their second nearest (median ratio of the two "
                    f"{np.median(self.sample_relative):.2f}, unseen images {np.median(self.held_out_relative):.2f}): "
                    f"they are smoother than real images (a smooth image sits close to every training image), not copies")
        if self.median_ratio > FARTHER_RATIO:
            return (f"samples sit farther from the training images than unseen images do ({ratio}, {near}): no sign "
                    f"of copying (but they differ from real images more than real images do)")
        return (f"samples sit no closer to the training images than unseen images do ({ratio}, {near}): "
                f"no sign of copying")

    def __str__(self) -> str:
        where = self.space if self.extractor is None else f"{self.space}, {self.extractor}"
        return (f"{self.verdict}. Nearest-training-image distance ({where}; {self.n_train} training images): "
                f"median {self.sample_median:.4g} for {len(self.sample_distances)} samples vs "
                f"{self.held_out_median:.4g} for {len(self.held_out_distances)} held-out images; "
                f"Mann–Whitney p = {self.p_value:.2g}")


def _percent(x: float) -> str:
    return f"{x:.0%}" if x == 0 or x >= 0.1 else f"{x:.1%}"


def memorisation_test(samples: torch.Tensor, train_images: torch.Tensor, held_out_images: torch.Tensor, *,
                      space: str = "pixels", extractor: nn.Module | None = None,
                      batch_size: int = DEFAULT_CHUNK) -> MemorisationResult:
    """Do the samples sit closer to the training images than real images the model never saw?

    Args:
        samples: generated images (N, 3, H, W), float in [-1, 1] or uint8 (N ≥ 2; a few hundred+).
        train_images: the images the model was trained on (M ≥ 2, (M, 3, H, W)).
        held_out_images: real images from the same source that were *not* trained on (≥ 2;
            ≥ 100 for the near-copy rate to mean anything).
        space, extractor, batch_size: as for :func:`nearest_neighbours`; with
            ``space="features"`` any of the three sets may be (N, d) features from
            :func:`~diffusion_utils.features.extract_features` (each image set is embedded once).

    Returns:
        :class:`MemorisationResult`: both distance arrays, their medians and ratio, the near-copy
        rate, the p-values and ``verdict`` (thresholds in the module docstring).

    Raises:
        ConfigError: as for :func:`nearest_neighbours`, or fewer than 2 samples, training or held-out
            images, or held-out images of which half or more are in the training set. (A UserWarning
            when a few of them are: the held-out set should be disjoint from the training set.)
    """
    from scipy.stats import mannwhitneyu

    _check_space(space, extractor)
    check_batch_size(batch_size)
    samples, train_images, held_out_images = (
        _check_set(x, name, space) for x, name in
        ((samples, "samples"), (train_images, "train_images"), (held_out_images, "held_out_images")))
    for x, name in ((samples, "samples"), (train_images, "training images"), (held_out_images, "held-out images")):
        if len(x) < 2:
            raise ConfigError(f"the memorisation test needs at least 2 {name} (a few hundred for clear numbers); "
                              f"got {len(x)}")
    name = None
    if space == "features":  # embed each set once (the training set serves both searches)
        extractor = _resolve_extractor(extractor, samples, train_images, held_out_images)
        name = type(extractor).__name__ if extractor is not None else "precomputed features"
        samples, train_images, held_out_images = (_embed(x, extractor) for x in (samples, train_images, held_out_images))
    sample_nn = nearest_neighbours(samples, train_images, k=2, space=space, batch_size=batch_size)
    held_nn = nearest_neighbours(held_out_images, train_images, k=2, space=space, batch_size=batch_size)
    sample_d, held_d = sample_nn.distances[:, 0].numpy(), held_nn.distances[:, 0].numpy()

    held_median = float(np.median(held_d))
    in_train = int((held_d == 0).sum())
    if held_median == 0:
        raise ConfigError(f"{in_train} of the {len(held_d)} held-out images are also in the training set; held-out "
                          f"images must be ones the model never trained on")
    if in_train:
        warnings.warn(f"{in_train} of the {len(held_d)} held-out images are identical to a training image; the held-out "
                      f"set should be disjoint from the training set", UserWarning, stacklevel=2)
    sample_rel, held_rel = _relative(sample_nn.distances), _relative(held_nn.distances)
    threshold, near_rate, near_p = _near_copies(sample_d, held_d)
    _, rel_rate, rel_p = _near_copies(sample_rel, held_rel)
    return MemorisationResult(
        sample_distances=sample_d, held_out_distances=held_d, sample_neighbours=sample_nn.indices[:, 0].numpy(),
        sample_median=float(np.median(sample_d)), held_out_median=held_median,
        median_ratio=float(np.median(sample_d)) / held_median,
        near_copy_threshold=threshold, near_copy_rate=near_rate, near_copy_p_value=near_p,
        p_value=float(mannwhitneyu(sample_d, held_d, alternative="less").pvalue),
        sample_relative=sample_rel, held_out_relative=held_rel,
        relative_near_copy_rate=rel_rate, relative_near_copy_p_value=rel_p,
        relative_p_value=float(mannwhitneyu(sample_rel, held_rel, alternative="less").pvalue),
        space=space, extractor=name, n_train=len(train_images))


def _relative(distances: torch.Tensor) -> np.ndarray:
    """Nearest over second-nearest distance, per row of (N, 2) distances (0 when both are 0)."""
    d = distances.numpy()
    return np.divide(d[:, 0], d[:, 1], out=np.zeros(len(d)), where=d[:, 1] > 0)


def _near_copies(sample: np.ndarray, held_out: np.ndarray) -> tuple[float, float, float]:
    """The held-out 1st percentile (its ⌈m/100⌉-th smallest value), the fraction of ``sample``
    below it, and the exact p-value of at least that many if the two sets were exchangeable."""
    from scipy.stats import nhypergeom

    n, m = len(sample), len(held_out)
    rank = max(1, math.ceil(m * NEAR_COPY_PERCENTILE / 100))
    threshold = float(np.sort(held_out)[rank - 1])
    count = int((sample < threshold).sum())
    # Samples drawn (from the pooled, shuffled n + m) before the rank-th held-out value: negative hypergeometric.
    return threshold, count / n, float(nhypergeom.sf(count - 1, n + m, n, rank))


# ---------------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------------
def plot_memorisation(result: MemorisationResult, path: str | os.PathLike | None = None, ax=None) -> Figure:
    """The two distance distributions as overlaid histograms, their medians dashed, the near-copy
    threshold dotted, the verdict as the title. Drawn into ``ax`` if given (its figure is then laid
    out too), else into a new figure; saved as a PNG at ``path`` if given; returns the figure."""
    fig = Figure(figsize=(7, 4)) if ax is None else ax.figure
    ax = fig.add_subplot() if ax is None else ax
    bins = np.histogram_bin_edges(np.concatenate([result.sample_distances, result.held_out_distances]), bins=40)
    for distances, median, label, colour in (
            (result.held_out_distances, result.held_out_median, "held-out real images → train", "tab:blue"),
            (result.sample_distances, result.sample_median, "samples → train", "tab:orange")):
        ax.hist(distances, bins=bins, density=True, alpha=0.5, color=colour, label=f"{label} ({len(distances)})")
        ax.axvline(median, color=colour, ls="--", label=f"median {median:.4g}")
    ax.axvline(result.near_copy_threshold, color="k", ls=":",
               label=f"near-copy threshold (held-out {NEAR_COPY_PERCENTILE:g}st percentile)")
    where = "pixels, [-1, 1]" if result.extractor is None else f"features, {result.extractor}"
    ax.set_xlabel(f"distance to the nearest of {result.n_train} training images ({where})")
    ax.set_ylabel("density")
    ax.set_title(textwrap.fill(result.verdict[0].upper() + result.verdict[1:], 80), fontsize=9)
    ax.legend(fontsize=8)
    return _finish(fig, path)


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
    samples, train_images = _check_images(samples, "samples"), _check_images(train_images, "train_images")
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
    return _finish(fig, path)


def _cpu_tensor(x) -> torch.Tensor:
    return x.detach().cpu() if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))


def _ordinal(r: int) -> str:
    return f"{r}{'nd' if r == 2 else 'rd' if r == 3 else 'th'}"


__all__ = ["MemorisationResult", "Neighbours", "memorisation_test", "nearest_neighbours", "plot_memorisation",
           "plot_nearest_neighbours"]
