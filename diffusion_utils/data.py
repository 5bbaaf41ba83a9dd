"""Training images: Oxford Flowers102, any folder of images, or procedurally drawn flowers.

Every source ends up as one uint8 tensor (N, 3, H, W) in memory. Decoding a JPEG, center-cropping
it to a square and resizing it (antialiased) happens **once**; the result is cached as a tensor
file, so later runs start in seconds and no training epoch ever decodes an image. The only
per-epoch augmentation is a random horizontal flip, applied on the fly to whole batches.

Where the cache goes: ``cache_dir`` if given, else ``$DIFFUSION_CACHE_DIR``, else next to the data
when that folder is writable, else ``~/.cache/diffusion_utils``.
"""

from __future__ import annotations

import hashlib
import os
import stat
import sys
import warnings
from pathlib import Path
from typing import Iterator
from urllib.error import URLError

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torchvision import transforms
from torchvision.datasets import Flowers102
from torchvision.datasets.folder import IMG_EXTENSIONS
from torchvision.datasets.utils import download_and_extract_archive, download_url
from tqdm.auto import tqdm

from .errors import DataError

CACHE_ENV = "DIFFUSION_CACHE_DIR"
DEFAULT_HOME = Path("~/.cache/diffusion_utils").expanduser()
# Flowers102's files, tried in order: the address torchvision knows, then the VGG group's mirror.
FLOWERS102_MIRRORS = (
    Flowers102._download_url_prefix,
    "https://thor.robots.ox.ac.uk/flowers/102/",
)
FLOWERS102_SIZE = 8189
SYNTHETIC_DEFAULT_N = 2048


class ImageDataset(torch.utils.data.Dataset):
    """Images held in memory as uint8 (N, 3, H, W); items are float (3, H, W) in [-1, 1].

    ``images`` is the raw tensor (what training batches from); ``source`` says where it came from
    (a path, for files on disk); ``name`` is what it is, without a machine's path (``flowers102``,
    ``synthetic``, a folder's name): what its repr shows, so printed outputs can be shared.
    """

    def __init__(self, images: torch.Tensor, source: str, name: str | None = None):
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be uint8 (N, 3, H, W); got {images.dtype} {tuple(images.shape)}")
        self.images = images
        self.source = source
        self.name = name or source

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> torch.Tensor:
        return to_model_range(self.images[index])

    @property
    def img_size(self) -> int:
        return self.images.shape[-1]

    def __repr__(self) -> str:
        return f"ImageDataset({self.name}: {len(self)} images of {self.img_size}×{self.img_size})"


def to_model_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] → float32 [-1, 1], the range the diffusion model works in."""
    return images.float() / 127.5 - 1.0


# ---------------------------------------------------------------------------------------------
# The entry point
# ---------------------------------------------------------------------------------------------
def load_dataset(source: str, img_size: int = 64, *, root: str | os.PathLike | None = None,
                 max_images: int | None = None, seed: int = 0, download: bool = True,
                 cache_dir: str | os.PathLike | None = None, progress: bool = True) -> ImageDataset:
    """Load training images as an :class:`ImageDataset` of ``img_size`` × ``img_size``.

    Args:
        source: ``"flowers102"`` (all three official splits, 8 189 images), ``"synthetic"``
            (procedurally drawn flowers, no download), or a path to a folder of images (searched
            recursively for .jpg, .png and the other formats PIL reads).
        img_size: output height and width; images are center-cropped to a square and resized.
        root: where Flowers102 lives or is downloaded (torchvision layout:
            ``root/flowers-102/jpg``). Default ``~/.cache/diffusion_utils/datasets``.
        max_images: keep a random subset of this many images (seeded by ``seed``).
        download: allow downloading Flowers102 when it is not under ``root``.
        cache_dir: where the decoded tensor is cached (see the module docstring).
    """
    if source == "flowers102":
        images, where = _load_flowers102(Path(root) if root else DEFAULT_HOME / "datasets",
                                         img_size, download, cache_dir, progress)
        name = "flowers102"
    elif source == "synthetic":
        n = max_images or SYNTHETIC_DEFAULT_N
        return ImageDataset(make_synthetic_flowers(n, img_size, seed=seed), f"synthetic flowers (seed {seed})",
                            f"synthetic (seed {seed})")
    elif _looks_like_path(source):
        folder = Path(source).expanduser()
        images = _load_folder(folder, img_size, cache_dir, progress)
        where, name = str(folder), _folder_name(folder)
    else:
        raise DataError(f"unknown dataset {source!r}: use 'flowers102', 'synthetic' or a path to a "
                        f"folder of images")
    if max_images is not None and max_images < len(images):
        keep = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:max_images]
        images = images[keep.sort().values]
    return ImageDataset(images, where, name)


def _folder_name(folder: Path) -> str:
    """What a folder of images is called in printed output: its name, or ``flowers102`` for the
    ``jpg`` folder of torchvision's Flowers102 layout (beside ``imagelabels.mat``)."""
    return "flowers102" if (folder.parent / "imagelabels.mat").exists() else folder.resolve().name


def _looks_like_path(source: str) -> bool:
    return os.sep in source or "/" in source or source.startswith(("~", ".")) or Path(source).exists()


# ---------------------------------------------------------------------------------------------
# Decoding and caching
# ---------------------------------------------------------------------------------------------
def preprocess(image: Image.Image, img_size: int) -> torch.Tensor:
    """PIL image → uint8 (3, img_size, img_size): resize the short side (antialiased), center-crop."""
    return _transform(img_size)(image.convert("RGB"))


def _transform(img_size: int):
    return transforms.Compose([
        transforms.Resize(img_size, interpolation=transforms.InterpolationMode.BICUBIC, antialias=True),
        transforms.CenterCrop(img_size),
        transforms.PILToTensor(),
    ])


def _fingerprint(files: list[Path]) -> str:
    """A hash of every file's name, size and modification time: changes when the data changes."""
    digest = hashlib.sha1()
    for f in files:
        st = f.stat()
        digest.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns};".encode())
    return digest.hexdigest()


def _is_writable(folder: Path) -> bool:
    """Writable by its permission bits — root ignores them, but read-only data should stay so."""
    try:
        return os.access(folder, os.W_OK) and bool(folder.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    except OSError:
        return False


def cache_path_for(data_dir: Path, img_size: int, cache_dir=None, kind: str = "folder") -> Path:
    """Where the decoded tensor of ``data_dir`` at ``img_size`` is (or will be) cached.

    ``kind`` ("folder" or "flowers102") keeps the two loaders' caches apart: they read the same
    files in a different order.
    """
    name = f"{kind}_{data_dir.name or 'images'}_{img_size}px.pt"
    explicit = cache_dir or os.environ.get(CACHE_ENV)
    if explicit:
        tag = hashlib.sha1(str(data_dir.resolve()).encode()).hexdigest()[:8]
        return Path(explicit).expanduser() / f"{tag}_{name}"
    parent = data_dir.resolve().parent
    if _is_writable(parent):
        return parent / f".diffusion_cache_{name}"
    tag = hashlib.sha1(str(data_dir.resolve()).encode()).hexdigest()[:8]
    return DEFAULT_HOME / "cache" / f"{tag}_{name}"


def _cached_decode(data_dir: Path, files: list[Path], img_size: int, cache_dir, kind: str,
                   decode) -> torch.Tensor:
    """Return the cached tensor if its fingerprint matches ``files``, else decode and cache."""
    path = cache_path_for(data_dir, img_size, cache_dir, kind)
    fingerprint = _fingerprint(files)
    if path.exists():
        try:
            cached = torch.load(path, weights_only=True)
            if cached.get("fingerprint") == fingerprint:
                return cached["images"]
        except Exception:  # a truncated or foreign file: rebuild it
            pass
    images = decode(files)
    tmp = path.with_name(path.name + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"images": images, "fingerprint": fingerprint, "img_size": img_size}, tmp)
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        warnings.warn(f"could not write the image cache {path} ({err}); images will be decoded again next time")
    return images


def _decode_files(files: list[Path], img_size: int, progress: bool, what: str, name: str | None = None) -> torch.Tensor:
    """Decode, crop and resize each file; unreadable files are skipped with one warning that names
    ``what`` (the folder); the progress bar shows ``name``, which holds no path."""
    transform = _transform(img_size)
    out, bad = [], []
    for f in tqdm(files, desc=f"decoding {name or what} at {img_size}px (once; cached)", disable=not progress):
        try:
            with Image.open(f) as im:
                out.append(transform(im.convert("RGB")))
        except (UnidentifiedImageError, OSError, SyntaxError):
            bad.append(f.name)
    if bad:
        warnings.warn(f"skipped {len(bad)} unreadable image(s) in {what}, e.g. {bad[0]}")
    if not out:
        raise DataError(f"none of the {len(files)} files in {what} could be read as an image")
    return torch.stack(out)


# ---------------------------------------------------------------------------------------------
# A folder of images
# ---------------------------------------------------------------------------------------------
def list_images(folder: Path) -> list[Path]:
    """All image files below ``folder`` (recursively), sorted; hidden files are ignored."""
    return sorted(p for p in folder.rglob("*")
                  if p.suffix.lower() in IMG_EXTENSIONS and p.is_file() and not p.name.startswith("."))


def _load_folder(folder: Path, img_size: int, cache_dir, progress: bool) -> torch.Tensor:
    if not folder.is_dir():
        raise DataError(f"image folder {folder} does not exist; pass --data with a folder of images, "
                        f"'flowers102' or 'synthetic'")
    files = list_images(folder)
    if not files:
        raise DataError(f"no images ({', '.join(IMG_EXTENSIONS[:4])}, …) found in {folder}; "
                        f"pass --data with a folder of images, 'flowers102' or 'synthetic'")
    return _cached_decode(folder, files, img_size, cache_dir, "folder",
                          lambda fs: _decode_files(fs, img_size, progress, str(folder), _folder_name(folder)))


# ---------------------------------------------------------------------------------------------
# Oxford Flowers102
# ---------------------------------------------------------------------------------------------
def download_flowers102(root: Path, mirrors=FLOWERS102_MIRRORS) -> None:
    """Download Flowers102 into ``root/flowers-102`` (torchvision layout), trying each mirror.

    Raises :class:`DataError` with a one-line message naming the offline alternatives when every
    mirror fails.
    """
    base = root / "flowers-102"
    errors = []
    for prefix in mirrors:
        try:
            archive, md5 = Flowers102._file_dict["image"]
            if not (base / "jpg").is_dir():
                download_and_extract_archive(prefix + archive, str(base), md5=md5)
            for key in ("label", "setid"):
                filename, md5 = Flowers102._file_dict[key]
                download_url(prefix + filename, str(base), md5=md5)
            return
        except (URLError, OSError, RuntimeError, ValueError) as err:
            errors.append(f"{prefix}: {str(err).splitlines()[0] if str(err) else type(err).__name__}")
    raise DataError(f"could not download Flowers102 ({'; '.join(errors)}); work offline with "
                    f"--data /path/to/a/folder/of/images or --data synthetic")


def _flowers102_present(root: Path) -> bool:
    try:
        Flowers102(str(root), split="train", download=False)
        return True
    except RuntimeError:
        return False


def _load_flowers102(root: Path, img_size: int, download: bool, cache_dir, progress: bool):
    if not _flowers102_present(root):
        if not download:
            raise DataError(f"Flowers102 is not in {root / 'flowers-102'}; allow downloading, or use "
                            f"--data /path/to/images or --data synthetic")
        print(f"Downloading Flowers102 (~330 MB) into {root / 'flowers-102'} …", file=sys.stderr)
        download_flowers102(root)
        if not _flowers102_present(root):
            raise DataError(f"Flowers102 in {root / 'flowers-102'} is incomplete after download; "
                            f"delete that folder and try again")
    jpg = root / "flowers-102" / "jpg"
    splits = [Flowers102(str(root), split=s, download=False, transform=_transform(img_size))
              for s in ("train", "val", "test")]
    files = sorted(jpg.glob("image_*.jpg"))

    def decode(_files):
        out, missing = [], 0
        for split in splits:
            for i in tqdm(range(len(split)), desc=f"decoding Flowers102 {split._split} at {img_size}px (once; cached)",
                          disable=not progress):
                try:
                    out.append(split[i][0])
                except (UnidentifiedImageError, OSError, SyntaxError):  # absent or unreadable file
                    missing += 1
        if missing:
            warnings.warn(f"{missing} of {FLOWERS102_SIZE} Flowers102 images are missing or unreadable in "
                          f"{jpg}; using the {len(out)} that load")
        if not out:
            raise DataError(f"no Flowers102 images could be read from {jpg}")
        return torch.stack(out)

    return _cached_decode(jpg, files, img_size, cache_dir, "flowers102", decode), f"Flowers102 ({jpg})"


# ---------------------------------------------------------------------------------------------
# Synthetic flowers: drawn with numpy, no download, for tests and offline quick runs
# ---------------------------------------------------------------------------------------------
PETAL_COLOURS = np.array([
    [220, 40, 60], [240, 120, 170], [250, 210, 40], [245, 140, 30], [150, 70, 200],
    [250, 245, 240], [200, 30, 120], [120, 110, 230],
], dtype=np.float32) / 255.0


def make_synthetic_flowers(n: int, img_size: int = 64, seed: int = 0) -> torch.Tensor:
    """Draw ``n`` flowers as uint8 (n, 3, img_size, img_size); the same seed gives the same images.

    Each flower: k petals (5–9) of a random colour whose radius follows
    r(θ) = R·(0.35 + 0.65·|cos(k(θ − φ)/2)|^p), a yellow or brown centre disc, on a blurred green
    background with darker leaf blobs. Drawn at 2× and averaged down, so edges are antialiased.
    """
    rng = np.random.default_rng(seed)
    size = 2 * img_size
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) / size  # coordinates in [0, 1)
    out = np.empty((n, 3, img_size, img_size), dtype=np.uint8)
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
        colour = np.clip(PETAL_COLOURS[rng.integers(len(PETAL_COLOURS))] + rng.normal(0, 0.06, 3), 0, 1)
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
    return torch.from_numpy(out)


# ---------------------------------------------------------------------------------------------
# Batches for training
# ---------------------------------------------------------------------------------------------
def batches_per_epoch(n_images: int, batch_size: int) -> int:
    """Full batches per epoch (the remainder is dropped; one short batch if n < batch_size)."""
    return max(1, n_images // batch_size)


def epoch_batches(images: torch.Tensor, batch_size: int, generator: torch.Generator,
                  start: int = 0) -> Iterator[torch.Tensor]:
    """Yield one epoch of shuffled, randomly h-flipped float batches (B, 3, H, W) in [-1, 1].

    The shuffle and every flip are drawn from ``generator`` up front, so restoring its state and
    passing ``start`` (batches already done) replays the rest of an interrupted epoch exactly.
    """
    n = len(images)
    order = torch.randperm(n, generator=generator)
    flip = torch.rand(n, generator=generator) < 0.5
    for b in range(start, batches_per_epoch(n, batch_size)):
        idx = order[b * batch_size:(b + 1) * batch_size]
        x = to_model_range(images[idx])
        yield torch.where(flip[idx, None, None, None], x.flip(-1), x)
