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

Feature extractors. ``feature_extractor=None`` uses torchmetrics' InceptionV3 (the torch-fidelity
port of the TF weights the papers used; needs ``pip install torch-fidelity``, and its ~90 MB of
weights download once on first use into ``torch.hub.get_dir()``). Any ``nn.Module`` mapping a
batch of images (B, 3, H, W) to features (B, d) can be passed instead; it receives float32 images
in [0, 1] at their stored resolution (or uint8 in [0, 255] if it has ``input_dtype =
torch.uint8``) — resizing to the size it was built for is the extractor's own business (the
Inception extractor resizes to 299×299 itself). :class:`RandomConvFeatures` is a small fixed
random conv net: offline, deterministic and fast on a CPU, for tests and quick checks. Random conv
features are a known cheap proxy that ranks blur, colour shifts and missing structure sensibly,
but its numbers are only comparable with other numbers from the same ``RandomConvFeatures``
(same ``num_features`` and ``seed``), never with published FID/KID.

The distance maths is torchmetrics' (:class:`~torchmetrics.image.kid.KernelInceptionDistance` and
:class:`~torchmetrics.image.fid.FrechetInceptionDistance`); this module converts the package's
image formats, feeds images in batches, checks set sizes and turns failures into one-line errors.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from functools import lru_cache

import torch
from torch import nn

from .config import resolve_device
from .errors import ConfigError, DiffusionError
from .sampling import to_uint8

INCEPTION_FEATURES = 2048
DEFAULT_BATCH_SIZE = 64
KID_MAX_SUBSET_SIZE = 1000


class FeatureExtractorError(DiffusionError):
    """The default InceptionV3 feature extractor could not be set up (package or weights missing)."""


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
            comparable).
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
# Feature extractors
# ---------------------------------------------------------------------------------------------
class RandomConvFeatures(nn.Module):
    """A fixed, randomly initialised conv net with global average pooling: a cheap offline extractor.

    Three 3×3 conv + ReLU layers (3 → 32 → 64 → ``num_features`` channels; strides 1, 2, 2), then
    the mean of each channel over the image. The weights are drawn once from a generator seeded
    with ``seed``, so the same arguments give the same features on any machine, and never trained.
    Half of the first layer's filters are zero-mean (they respond to edges and texture, not to flat
    colour); the other half are unconstrained but 10× weaker (they carry colour and brightness).
    Without that split the colour responses dominate the features and blur goes nearly unseen.

    It works at any resolution (no resize) and satisfies torchmetrics' custom-feature contract:
    ``forward`` maps (B, 3, H, W) images to (B, ``num_features``) features, and ``num_features``
    is an attribute. Input: float images in [0, 1] (what :func:`compute_kid` and
    :func:`compute_fid` pass) or uint8 in [0, 255].

    Numbers computed with it are comparable only with numbers from the same
    ``RandomConvFeatures(num_features, seed)`` at the same resolution and sample count — never
    with published FID/KID, which use InceptionV3.
    """

    def __init__(self, num_features: int = 64, seed: int = 0):
        super().__init__()
        if not isinstance(num_features, int) or num_features < 1:
            raise ConfigError(f"num_features must be a positive integer; got {num_features!r}")
        self.num_features = num_features
        self.seed = seed
        widths = (3, 32, 64, num_features)
        self.convs = nn.ModuleList(nn.Conv2d(c_in, c_out, 3, stride=1 if i == 0 else 2, padding=1)
                                   for i, (c_in, c_out) in enumerate(zip(widths[:-1], widths[1:])))
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for i, conv in enumerate(self.convs):
                fan_in = conv.in_channels * 9
                weight = torch.randn(conv.weight.shape, generator=generator) * (2.0 / fan_in) ** 0.5  # He init
                if i == 0:
                    half = conv.out_channels // 2
                    weight[:half] -= weight[:half].mean(dim=(2, 3), keepdim=True)  # edge/texture filters
                    weight[half:] *= 0.1  # weak colour filters
                conv.weight.copy_(weight)
                conv.bias.copy_(torch.randn(conv.bias.shape, generator=generator) * 0.1)
        self.requires_grad_(False)
        self.eval()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) float in [0, 1] or uint8 → (B, num_features) float32."""
        x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
        x = x * 2 - 1
        for conv in self.convs:
            x = torch.relu(conv(x))
        return x.mean(dim=(2, 3))

    def extra_repr(self) -> str:
        return f"num_features={self.num_features}, seed={self.seed}"


@lru_cache(maxsize=1)
def default_feature_extractor() -> nn.Module:
    """torchmetrics' InceptionV3 (2048-d pool features), built once per process.

    Needs the ``torch-fidelity`` package; the weights download on first use. Raises
    :class:`FeatureExtractorError` (a :class:`DiffusionError`) with a one-line message otherwise.
    """
    from torchmetrics.image.fid import NoTrainInceptionV3

    try:
        model = NoTrainInceptionV3(name="inception-v3-compat", features_list=[str(INCEPTION_FEATURES)])
    except ModuleNotFoundError:
        raise FeatureExtractorError(
            "the default KID/FID feature extractor (InceptionV3) needs the torch-fidelity package: "
            "pip install torch-fidelity (its weights then download on first use), or pass "
            "feature_extractor=<any nn.Module>, e.g. RandomConvFeatures() for offline numbers") from None
    except (OSError, RuntimeError, EOFError, ValueError) as err:  # URLError is an OSError
        reason = str(err).splitlines()[0] if str(err) else ""
        raise FeatureExtractorError(
            f"could not load the InceptionV3 weights for KID/FID ({type(err).__name__}: {reason}); they "
            f"download once on first use (~90 MB into {os.path.join(torch.hub.get_dir(), 'checkpoints')}), so "
            f"connect to the internet, "
            f"or pass feature_extractor=<any nn.Module>, e.g. RandomConvFeatures() for offline numbers") from None
    model.num_features = INCEPTION_FEATURES
    model.input_dtype = torch.uint8
    return model


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
            Floats are quantised to uint8 exactly like saved images (:func:`to_uint8`), so both
            forms give the same number. The two sets may have different sizes.
        feature_extractor: ``None`` for InceptionV3 (needs torch-fidelity; weights download on
            first use), or any ``nn.Module`` mapping (B, 3, H, W) float32 images in [0, 1] to
            (B, d) features (see the module docstring), e.g. :class:`RandomConvFeatures`.
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
            images have the wrong shape, dtype or range.
        FeatureExtractorError: the default extractor could not be set up.
    """
    from torchmetrics.image.kid import KernelInceptionDistance

    generated = _check_images(generated, "generated")
    reference = _check_images(reference, "reference")
    n_gen, n_ref = len(generated), len(reference)
    n_min = min(n_gen, n_ref)
    if n_min < 2:
        raise ConfigError(f"KID needs at least 2 images in each set; got {n_gen} generated and "
                          f"{n_ref} reference (a few hundred or more give a usable number)")
    if subset_size is None:
        subset_size = min(KID_MAX_SUBSET_SIZE, max(2, n_min // 2))
    if not isinstance(subset_size, int) or not 2 <= subset_size <= n_min:
        raise ConfigError(f"subset_size must be an integer in [2, {n_min}] (the smaller set has {n_min} "
                          f"images); got {subset_size!r}")
    if not isinstance(subsets, int) or subsets < 1:
        raise ConfigError(f"subsets must be a positive integer; got {subsets!r}")
    _check_batch_size(batch_size)

    extractor = feature_extractor if feature_extractor is not None else default_feature_extractor()
    with _Features(extractor, device, generated[:1]) as features:
        with warnings.catch_warnings():  # "will save all extracted features in buffer": that's the point
            warnings.filterwarnings("ignore", message=".*save all extracted features.*")
            metric = KernelInceptionDistance(feature=features, subsets=subsets, subset_size=subset_size)
        features.feed(metric, generated, reference, batch_size)
    with torch.random.fork_rng(devices=[]):  # subsets are drawn with torch.randperm
        torch.manual_seed(seed)
        mean, std = metric.compute()
    return KIDResult(mean=float(mean), std=float(std), subset_size=subset_size, subsets=subsets,
                     n_generated=n_gen, n_reference=n_ref, extractor=type(extractor).__name__)


def compute_fid(generated: torch.Tensor, reference: torch.Tensor, feature_extractor: nn.Module | None = None,
                *, batch_size: int = DEFAULT_BATCH_SIZE, device=None) -> float:
    """Fréchet Inception Distance between ``generated`` and ``reference`` images.

    Arguments as for :func:`compute_kid`. Each set needs at least 2 images (for a covariance);
    with no more images than feature dimensions (2048 for Inception) the covariance is rank
    deficient and a warning says so — FID is biased upwards at small N, so compare only FIDs
    computed with the same N, and expect ~10k+ images for numbers comparable to papers.

    Returns:
        FID as a Python float (≥ 0 up to round-off; 0 for two identical sets).
    """
    from torchmetrics.image.fid import FrechetInceptionDistance

    generated = _check_images(generated, "generated")
    reference = _check_images(reference, "reference")
    n_gen, n_ref = len(generated), len(reference)
    if min(n_gen, n_ref) < 2:
        raise ConfigError(f"FID needs at least 2 images in each set (for a covariance); got {n_gen} "
                          f"generated and {n_ref} reference (~10k+ give numbers comparable to papers)")
    _check_batch_size(batch_size)

    extractor = feature_extractor if feature_extractor is not None else default_feature_extractor()
    with _Features(extractor, device, generated[:1]) as features:
        metric = FrechetInceptionDistance(feature=features)
        features.feed(metric, generated, reference, batch_size)
    dims = metric.real_features_sum.shape[0]
    if min(n_gen, n_ref) <= dims:
        warnings.warn(f"FID with {min(n_gen, n_ref)} images per set and {dims}-d features: the covariance is "
                      f"rank deficient and FID is dominated by its small-sample bias; use more images than "
                      f"{dims}, or KID", UserWarning, stacklevel=2)
    return float(metric.compute())


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------
def _check_images(images, name: str) -> torch.Tensor:
    """Validate a set of images (N, 3, H, W), uint8 [0, 255] or float [-1, 1]; return it detached."""
    if not isinstance(images, torch.Tensor):
        raise ConfigError(f"{name} images must be a torch.Tensor (N, 3, H, W); got {type(images).__name__}")
    if images.ndim != 4 or images.shape[1] != 3:
        raise ConfigError(f"{name} images must have shape (N, 3, H, W); got {tuple(images.shape)}")
    if len(images) == 0:
        raise ConfigError(f"{name} images are empty; KID/FID need at least 2 images per set")
    images = images.detach()
    if images.dtype == torch.uint8:
        return images
    if not images.is_floating_point():
        raise ConfigError(f"{name} images must be uint8 in [0, 255] or float in [-1, 1]; got {images.dtype}")
    lo, hi = float(images.min()), float(images.max())
    if lo < -1.01 or hi > 1.01:
        raise ConfigError(f"float {name} images must be in [-1, 1] (the model's range); got values in "
                          f"[{lo:.3g}, {hi:.3g}] — pass uint8 for [0, 255] or images * 2 - 1 for [0, 1]")
    if lo >= 0 and len(images) > 1:
        warnings.warn(f"float {name} images have no negative values; floats are read as [-1, 1] — if these "
                      f"are in [0, 1], pass images * 2 - 1", UserWarning, stacklevel=3)
    return images


def _check_batch_size(batch_size) -> None:
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer; got {batch_size!r}")


class _Features(nn.Module):
    """Wraps an extractor for torchmetrics: uint8 batches in, (B, d) float64 features out.

    Converts each uint8 batch to what the extractor takes (float32 [0, 1], or uint8 if it has
    ``input_dtype = torch.uint8``), gives it the ``num_features`` attribute torchmetrics reads
    (probing one image when the extractor has none), and — used as a context manager — keeps the
    extractor in eval mode on ``device`` while it is in use, restoring its train/eval mode after.
    """

    def __init__(self, extractor: nn.Module, device, probe: torch.Tensor):
        super().__init__()
        self.extractor = extractor
        self.device = _resolve_device(device, extractor)
        self.uint8 = getattr(extractor, "input_dtype", None) == torch.uint8
        self.was_training = extractor.training
        extractor.to(self.device)
        extractor.eval()
        num_features = getattr(extractor, "num_features", None)
        if num_features is None:
            with torch.no_grad():
                num_features = self(_as_uint8(probe).to(self.device)).shape[1]
        self.num_features = int(num_features)

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        features = self.extractor(batch if self.uint8 else batch.float() / 255.0)
        return features.reshape(len(batch), -1).double()  # float64 for the kernel and covariance sums

    @torch.no_grad()
    def feed(self, metric, generated: torch.Tensor, reference: torch.Tensor, batch_size: int) -> None:
        """Run both sets through ``metric.update`` in batches of ``batch_size``."""
        metric.to(self.device)
        for images, real in ((reference, True), (generated, False)):
            for start in range(0, len(images), batch_size):
                metric.update(_as_uint8(images[start:start + batch_size]).to(self.device), real=real)

    def __enter__(self) -> "_Features":
        return self

    def __exit__(self, *exc) -> None:
        self.extractor.train(self.was_training)


def _as_uint8(images: torch.Tensor) -> torch.Tensor:
    """uint8 as is; [-1, 1] floats quantised exactly as saved images are (:func:`to_uint8`)."""
    return images if images.dtype == torch.uint8 else to_uint8(images)


def _resolve_device(device, extractor: nn.Module) -> torch.device:
    """``device`` if given; else (None or "auto") the GPU the extractor's weights are on, else CUDA
    if available, else CPU.

    Not MPS by default: torchmetrics' FID keeps its statistics in float64, which MPS lacks.
    """
    if device is not None and str(device) != "auto":
        return resolve_device(str(device))  # a one-line ConfigError for a missing CUDA/MPS
    param = next(extractor.parameters(), None)
    if param is not None and param.device.type != "cpu":
        return param.device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
