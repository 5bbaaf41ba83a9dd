"""Is the model copying its training data? Nearest training neighbours, and the held-out test.

A diffusion model that has memorised its training set gives back (near-)copies of training
images instead of new ones. To check, find each sample's *nearest training image* and ask how
close it is. But "close" needs a yardstick: some flowers just look alike. The yardstick is a
set of real images the model never saw (a **held-out** set from the same source, disjoint from
the training images). They are new by construction, so their distances to the training set show
how close a *new* image of this kind sits to its nearest training image:

- samples no closer than held-out images → the samples are as new as unseen photos: no copying;
- samples much closer → they sit on top of training images: the model copies.

A model trained on every image of its source has no held-out image; for it the yardstick is
**leave-one-out** (below): each training image's distance to its nearest *other* training image.

:func:`memorisation_test` measures both sets of distances (samples → train, yardstick → train)
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
  (:mod:`~diffusion_utils.evaluation.features`: InceptionV3 by default, or e.g. ``RandomConvFeatures()``),
  which also sees a shifted or recoloured copy as close. Embedding is the slow part (Inception
  on a CPU: a few images a second), so embed the training set once with
  :func:`~diffusion_utils.evaluation.features.extract_features` and pass the (N, d) features in its place.

The yardstick (``held_out_images``):

- **held-out images**: real images of the same source that the model never trained on, e.g. the
  photos a ``max_images`` run left out (:func:`~diffusion_utils.data.data.load_held_out` loads exactly
  those: the quick presets train on a seeded 2 048 of Flowers102's photos, which leaves the rest).
- **leave-one-out** (``held_out_images=None``), for a model trained on every image (such as the
  shipped ``flowers32``, trained on all of Flowers102): each training image in turn plays the
  unseen one, and its distance to its nearest *other* training image
  (:func:`~diffusion_utils.evaluation.neighbours.leave_one_out_neighbours`) is the yardstick. That is
  exactly the held-out distance of a photo of the same source to a training set of M − 1
  images, so it is fair: the yardstick never involves the model, only how real images of this
  kind lie among each other, and it answers "how close does a *real* image sit to its nearest
  training image?" with every real image there is. One reference fewer lengthens nearest
  distances by a negligible amount (they shrink like M^(−1/d) with the data's dimension d: a
  change near 1/(M·d), at most 0.02 % for M ≥ 5 000). Two things differ from a random
  held-out set, both small for thousands of images: an image with a near-duplicate in the data
  always finds it among the others (a held-out photo only when the duplicate was trained on),
  which lowers the yardstick's low tail — the near-copy threshold — a little, so slightly fewer
  samples count as near-copies; and mutual nearest neighbours share one distance, so the M
  yardstick distances are not independent. Measured, that does not skew the p-values: over 40
  draws of synthetic flowers (400 training, 100 fresh "samples", 16 px), the leave-one-out
  p-values spread as a held-out set's do (median 0.49 against 0.48, 1 of 40 below 0.01 with
  either), and tests/test_memorisation.py checks that fresh images pass and copies are still
  caught against the leave-one-out yardstick.
  The verdict names the yardstick it used.

How many images? The medians and the p-value settle with a few hundred samples and yardstick
images; the 1st percentile of the yardstick distances needs ≥ 100 of them to mean anything
(with fewer it is just the smallest). Leave-one-out costs an M × M search: for the 7 985
Flowers102 photos at 64 px, about a minute on one CPU core.

:func:`~diffusion_utils.evaluation.neighbours.nearest_neighbours` is the search underneath (exact, chunked;
it and :func:`~diffusion_utils.evaluation.neighbours.plot_nearest_neighbours` live in
:mod:`~diffusion_utils.evaluation.neighbours` and are importable from here too).
"""

from __future__ import annotations

import math
import os
import textwrap
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn

from ..plumbing.errors import ConfigError
from ..plumbing.figures import finish_figure
from .features import check_batch_size
from .neighbours import (DEFAULT_CHUNK, Neighbours, check_set, check_space, embed_set, leave_one_out_neighbours,
                         nearest_neighbours, plot_nearest_neighbours, resolve_extractor)

YARDSTICKS = ("held-out", "leave-one-out")
NEAR_COPY_PERCENTILE = 1.0  # a near-copy is closer than this percentile of the yardstick's distances
ALPHA = 0.01  # significance level of every "closer" finding
COPY_RATIO = 0.8  # median ratio below which (with p < ALPHA) the samples copy
NEAR_COPY_ALARM = 0.05  # near-copy rate at or above which (if not chance) the samples copy
FARTHER_RATIO = 1.2  # median ratio above which the samples sit farther than unseen images


# ---------------------------------------------------------------------------------------------
# The test: samples against a yardstick of real images
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MemorisationResult:
    """How close samples and the yardstick's real images sit to their nearest training images.

    The ``held_out_*`` fields hold the yardstick: held-out images' distances to the training set,
    or with ``yardstick == "leave-one-out"`` each training image's distance to the *other* ones.

    Attributes:
        sample_distances: float64 (N,), each sample's distance to its nearest training image.
        held_out_distances: float64 (M,), each yardstick image's distance to its nearest training image.
        sample_neighbours: int64 (N,), the index of each sample's nearest training image (for
            :func:`plot_nearest_neighbours`).
        sample_median, held_out_median: the medians of the two distance arrays.
        median_ratio: sample_median / held_out_median (≈ 1: as new as unseen images; ≪ 1: copies).
        near_copy_threshold: the 1st percentile of the yardstick distances (the ⌈m/100⌉-th smallest).
        near_copy_rate: the fraction of samples closer than that (≈ 1 % by chance).
        near_copy_p_value: the chance of at least that many near-copies if samples and yardstick
            images were exchangeable (exact: negative hypergeometric).
        p_value: one-sided Mann–Whitney U test that sample distances are *smaller* than the yardstick's.
        sample_relative, held_out_relative: float64 (N,) and (M,), each image's distance to its
            nearest training image over its distance to the second nearest (0 for an exact copy,
            near 1 for an image no closer to one training image than to the next).
        relative_near_copy_rate, relative_near_copy_p_value: as ``near_copy_rate`` and its p-value,
            for those relative distances (below the yardstick's 1st percentile of them).
        relative_p_value: one-sided Mann–Whitney U test that the samples' relative distances are smaller.
        space: ``"pixels"`` or ``"features"``.
        extractor: the feature network's class name (``"precomputed features"`` when all sets were
            features), or ``None`` in pixel space.
        n_train: the number of training images searched.
        yardstick: ``"held-out"`` (unseen images) or ``"leave-one-out"`` (the training images
            against each other; see the module docstring).
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
    yardstick: str = "held-out"

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
        """One sentence from the numbers: do the samples sit closer to the training images than real
        images do — unseen ones, or (leave-one-out) each training image to the others? It names its yardstick."""
        loo = self.yardstick == "leave-one-out"
        than = "the training images sit to one another" if loo else "unseen images do"  # the yardstick, in words
        real = "training images get to another one" if loo else "unseen images get"
        ratio = f"{self.yardstick} yardstick; median ratio {self.median_ratio:.2f}"
        near = f"{_percent(self.near_copy_rate)} near-copies"
        finding, mostly_closer = self.finding, self.p_value < ALPHA and self.median_ratio < 1
        if finding == "copies" and self.median_ratio < COPY_RATIO:
            return (f"samples sit much closer to the training images than {than} ({ratio}, {near}): "
                    f"the model copies its training data")
        if finding == "copies":
            return (f"{_percent(self.near_copy_rate)} of samples are near-copies of a training image (closer than 99% "
                    f"of {real}; {ratio}): the model copies some of its training data")
        if finding == "closer" and not mostly_closer:
            return (f"{_percent(self.near_copy_rate)} of samples are near-copies of a training image, more than the 1% "
                    f"chance gives (p = {self.near_copy_p_value:.2g}; {ratio}): possibly partial memorisation — look "
                    f"at the nearest neighbours")
        if finding == "closer":
            return (f"samples sit somewhat closer to the training images than {than} ({ratio}, {near}, "
                    f"p = {self.p_value:.2g}): possibly partial memorisation — look at the nearest neighbours")
        if finding == "smooth":
            return (f"samples sit closer to the training images than {than} ({ratio}, {near}) but no closer "
                    f"to their nearest than to their second nearest (median ratio of the two "
                    f"{np.median(self.sample_relative):.2f}, real images {np.median(self.held_out_relative):.2f}): "
                    f"they are smoother than real images (a smooth image sits close to every training image), not copies")
        if self.median_ratio > FARTHER_RATIO:
            return (f"samples sit farther from the training images than {than} ({ratio}, {near}): no sign "
                    f"of copying (but they differ from real images more than real images do)")
        return f"samples sit no closer to the training images than {than} ({ratio}, {near}): no sign of copying"

    def __str__(self) -> str:
        where = self.space if self.extractor is None else f"{self.space}, {self.extractor}"
        yardstick = (f"{len(self.held_out_distances)} training images, each against the others"
                     if self.yardstick == "leave-one-out" else f"{len(self.held_out_distances)} held-out images")
        return (f"{self.verdict}. Nearest-training-image distance ({where}; {self.n_train} training images): "
                f"median {self.sample_median:.4g} for {len(self.sample_distances)} samples vs "
                f"{self.held_out_median:.4g} for {yardstick}; Mann–Whitney p = {self.p_value:.2g}")


def _percent(x: float) -> str:
    return f"{x:.0%}" if x == 0 or x >= 0.1 else f"{x:.1%}"


def memorisation_test(samples: torch.Tensor, train_images: torch.Tensor, held_out_images: torch.Tensor | None = None,
                      *, space: str = "pixels", extractor: nn.Module | None = None,
                      batch_size: int = DEFAULT_CHUNK) -> MemorisationResult:
    """Do the samples sit closer to the training images than real images of the same kind do?

    Args:
        samples: generated images (N, 3, H, W), float in [-1, 1] or uint8 (N ≥ 2; a few hundred+).
        train_images: the images the model was trained on (M ≥ 2, or ≥ 3 for leave-one-out; (M, 3, H, W)).
        held_out_images: real images from the same source that were *not* trained on (≥ 2;
            ≥ 100 for the near-copy rate to mean anything), e.g. from
            :func:`~diffusion_utils.data.data.load_held_out`. ``None``: the model trained on every image
            there is, so the yardstick is leave-one-out — each training image's distance to its
            nearest other training image (why that is fair: the module docstring).
        space, extractor, batch_size: as for :func:`nearest_neighbours`; with
            ``space="features"`` any of the sets may be (N, d) features from
            :func:`~diffusion_utils.evaluation.features.extract_features` (each image set is embedded once).

    Returns:
        :class:`MemorisationResult`: both distance arrays, their medians and ratio, the near-copy
        rate, the p-values and ``verdict`` (thresholds in the module docstring), and which
        ``yardstick`` was used.

    Raises:
        ConfigError: as for :func:`nearest_neighbours`, or too few samples, training or held-out
            images, held-out images of which half or more are in the training set, or (leave-one-out)
            a training set of which half or more are exact duplicates. (A UserWarning when a few
            held-out images are in the training set: the held-out set should be disjoint from it.)
    """
    from scipy.stats import mannwhitneyu

    loo = held_out_images is None
    check_space(space, extractor)
    check_batch_size(batch_size)
    samples, train_images = check_set(samples, "samples", space), check_set(train_images, "train_images", space)
    held_out = None if loo else check_set(held_out_images, "held_out_images", space)
    least_train = 3 if loo else 2  # leave-one-out: each training image needs two others (nearest, second nearest)
    for x, name, least in ((samples, "samples", 2), (train_images, "training images", least_train),
                           (held_out, "held-out images", 2)):
        if x is not None and len(x) < least:
            raise ConfigError(f"the memorisation test needs at least {least} {name} (a few hundred for clear "
                              f"numbers); got {len(x)}")
    name = None
    if space == "features":  # embed each set once (the training set serves both searches)
        extractor = resolve_extractor(extractor, *(x for x in (samples, train_images, held_out) if x is not None))
        name = type(extractor).__name__ if extractor is not None else "precomputed features"
        samples, train_images = embed_set(samples, extractor), embed_set(train_images, extractor)
        held_out = None if loo else embed_set(held_out, extractor)
    sample_nn = nearest_neighbours(samples, train_images, k=2, space=space, batch_size=batch_size)
    held_nn = (leave_one_out_neighbours(train_images, k=2, space=space, batch_size=batch_size) if loo else
               nearest_neighbours(held_out, train_images, k=2, space=space, batch_size=batch_size))
    sample_d, held_d = sample_nn.distances[:, 0].numpy(), held_nn.distances[:, 0].numpy()
    held_median = _check_yardstick(held_d, loo)
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
        space=space, extractor=name, n_train=len(train_images), yardstick=YARDSTICKS[loo])


def _check_yardstick(distances: np.ndarray, loo: bool) -> float:
    """The yardstick distances' median, after checking that they are not mostly zero (training images
    among the held-out ones, or — leave-one-out — duplicated in the training set)."""
    median, zero = float(np.median(distances)), int((distances == 0).sum())
    if loo and median == 0:
        raise ConfigError(f"{zero} of the {len(distances)} training images have an exact duplicate among them; "
                          f"the leave-one-out yardstick needs distinct images: remove the duplicates")
    if median == 0:
        raise ConfigError(f"{zero} of the {len(distances)} held-out images are also in the training set; held-out "
                          f"images must be ones the model never trained on")
    if zero and not loo:  # leave-one-out: a duplicated photo is part of the data, as it would be for a held-out one
        warnings.warn(f"{zero} of the {len(distances)} held-out images are identical to a training image; the held-out "
                      f"set should be disjoint from the training set", UserWarning, stacklevel=3)
    return median


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
    yardstick = ("training images → the other training images (leave-one-out)" if result.yardstick == "leave-one-out"
                 else "held-out real images → train")
    bins = np.histogram_bin_edges(np.concatenate([result.sample_distances, result.held_out_distances]), bins=40)
    for distances, median, label, colour in (
            (result.held_out_distances, result.held_out_median, yardstick, "tab:blue"),
            (result.sample_distances, result.sample_median, "samples → train", "tab:orange")):
        ax.hist(distances, bins=bins, density=True, alpha=0.5, color=colour, label=f"{label} ({len(distances)})")
        ax.axvline(median, color=colour, ls="--", label=f"median {median:.4g}")
    ax.axvline(result.near_copy_threshold, color="k", ls=":",
               label=f"near-copy threshold (the real images' {NEAR_COPY_PERCENTILE:g}st percentile)")
    where = "pixels, [-1, 1]" if result.extractor is None else f"features, {result.extractor}"
    ax.set_xlabel(f"distance to the nearest of {result.n_train} training images ({where})")
    ax.set_ylabel("density")
    ax.set_title(textwrap.fill(result.verdict[0].upper() + result.verdict[1:], 80), fontsize=9)
    ax.legend(fontsize=8)
    return finish_figure(fig, path)


__all__ = ["MemorisationResult", "Neighbours", "leave_one_out_neighbours", "memorisation_test", "nearest_neighbours",
           "plot_memorisation", "plot_nearest_neighbours"]
