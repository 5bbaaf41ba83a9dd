"""Training images: Oxford Flowers102, any folder of images, or procedurally drawn flowers.

Every source ends up as one uint8 tensor (N, 3, H, W) in memory. Decoding a JPEG, center-cropping
it to a square and resizing it (antialiased) happens **once**; the result is cached as a tensor
file, so later runs start in seconds and no training epoch ever decodes an image. The only
per-epoch augmentation is a random horizontal flip, applied on the fly to whole batches.

Labels come with the images when the source has them: Flowers102's official species labels
(``imagelabels.mat``, 102 classes named in ``flowers102_classes.txt``), an image folder's
subfolder names (torchvision's ImageFolder convention), or the petal colour of a synthetic flower.

Where the cache goes: ``cache_dir`` if given, else ``$DIFFUSION_CACHE_DIR``, else next to the data
when that folder is writable, else ``~/.cache/diffusion_utils``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import warnings
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from PIL import Image
from torchvision import transforms
from torchvision.datasets import Flowers102
from torchvision.datasets.folder import IMG_EXTENSIONS
from torchvision.datasets.utils import download_and_extract_archive, download_url
from tqdm.auto import tqdm

from .config import MAX_SEED, MAX_SIZES, as_int
from .errors import DataError, RunFolderError, short_reason
from .files import atomic_write, check_output_folder, is_writable, missing_folders

CACHE_ENV = "DIFFUSION_CACHE_DIR"
DEFAULT_HOME = Path("~/.cache/diffusion_utils").expanduser()
# Flowers102's files, tried in order: the address torchvision knows, then the VGG group's mirror.
FLOWERS102_MIRRORS = (
    Flowers102._download_url_prefix,
    "https://thor.robots.ox.ac.uk/flowers/102/",
)
FLOWERS102_SIZE = 8189
SYNTHETIC_DEFAULT_N = 2048
SYNTHETIC_MAX_N = 100_000  # 1.2 GB at 64 px: drawn in memory, so a typo must not ask for more


def flowers102_class_names() -> list[str]:
    """The 102 species names of Flowers102, in label order (label 0 is "pink primrose").

    The list the Oxford VGG group's category page gives, as collected with the caffe-oxford102
    models; shipped as ``flowers102_classes.txt`` in the package.
    """
    text = (Path(__file__).parent / "flowers102_classes.txt").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


class ImageDataset(torch.utils.data.Dataset):
    """Images held in memory as uint8 (N, 3, H, W); items are float (3, H, W) in [-1, 1].

    ``images`` is the raw tensor (what training batches from); ``source`` says where it came from
    (a path, for files on disk); ``name`` is what it is, without a machine's path (``flowers102``,
    ``synthetic``, a folder's name): what its repr shows, so printed outputs can be shared.
    ``labels`` (int64 (N,), values in [0, num_classes)) and ``class_names`` (one per class) are
    present when the source has labels, else None and ``num_classes`` is 0.
    """

    def __init__(self, images: torch.Tensor, source: str, labels: torch.Tensor | None = None,
                 class_names: list[str] | None = None, name: str | None = None):
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be uint8 (N, 3, H, W); got {images.dtype} {tuple(images.shape)}")
        if (labels is None) != (class_names is None):
            raise ValueError("labels and class_names come together (both or neither)")
        if labels is not None:
            labels = torch.as_tensor(labels, dtype=torch.long)
            if labels.shape != (len(images),) or labels.min() < 0 or labels.max() >= len(class_names):
                raise ValueError(f"labels must be int64 ({len(images)},) in [0, {len(class_names)}); "
                                 f"got shape {tuple(labels.shape)}")
        self.images = images
        self.source = source
        self.labels = labels
        self.class_names = list(class_names) if class_names is not None else None
        self.name = name or source

    @property
    def num_classes(self) -> int:
        """How many classes the labels name (0 when there are no labels)."""
        return len(self.class_names) if self.class_names is not None else 0

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> torch.Tensor:
        return to_model_range(self.images[index])

    @property
    def img_size(self) -> int:
        return self.images.shape[-1]

    def __repr__(self) -> str:
        classes = f", {self.num_classes} classes" if self.num_classes else ""
        return f"ImageDataset({self.name}: {len(self)} images of {self.img_size}×{self.img_size}{classes})"


def to_model_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] → float32 [-1, 1], the range the diffusion model works in."""
    return images.float() / 127.5 - 1.0


# ---------------------------------------------------------------------------------------------
# The entry point
# ---------------------------------------------------------------------------------------------
def load_dataset(source: str | os.PathLike, img_size: int = 64, *, root: str | os.PathLike | None = None,
                 max_images: int | None = None, seed: int = 0, download: bool = True,
                 cache_dir: str | os.PathLike | None = None, progress: bool = True) -> ImageDataset:
    """Load training images as an :class:`ImageDataset` of ``img_size`` × ``img_size``.

    Args:
        source: ``"flowers102"`` (all three official splits, 8 189 images), ``"synthetic"``
            (procedurally drawn flowers, no download), or a path (``str`` or ``os.PathLike``) to
            a folder of images (searched recursively for .jpg, .png and the other formats PIL
            reads; files PIL refuses are skipped with one warning that counts them).
        img_size: output height and width; images are center-cropped to a square and resized.
        root: where Flowers102 lives or is downloaded (torchvision layout:
            ``root/flowers-102/jpg``). Default ``~/.cache/diffusion_utils/datasets``.
        max_images: keep a random subset of this many images (seeded by ``seed``); for
            ``"synthetic"``, the number drawn (at most 100 000).
        download: allow downloading Flowers102 when it is not under ``root``.
        cache_dir: where the decoded tensor is cached (see the module docstring).
    """
    img_size = as_int("img_size", img_size, 1, MAX_SIZES["img_size"])
    max_images = None if max_images is None else as_int("max_images", max_images, 1)
    seed = as_int("seed", seed, 0, MAX_SEED)
    if not isinstance(source, (str, os.PathLike)) or not os.fspath(source).strip():
        raise DataError(f"the dataset is {source!r}: use 'flowers102', 'synthetic' or a path to a folder of images")
    if source == "flowers102":
        images, labels, where = _load_flowers102(Path(root).expanduser() if root else DEFAULT_HOME / "datasets",
                                                 img_size, download, cache_dir, progress)
        names, name = flowers102_class_names(), "flowers102"
    elif source == "synthetic":
        n = as_int("max_images (the number of synthetic images)", max_images or SYNTHETIC_DEFAULT_N, 1,
                   SYNTHETIC_MAX_N)
        images, labels = make_synthetic_flowers(n, img_size, seed=seed, return_labels=True)
        return ImageDataset(images, f"synthetic flowers (seed {seed})", labels, list(SYNTHETIC_CLASS_NAMES),
                            name=f"synthetic (seed {seed})")
    elif isinstance(source, os.PathLike) or _looks_like_path(source):
        folder = Path(os.fspath(source)).expanduser()
        images, labels, names = _load_folder(folder, img_size, cache_dir, progress)
        where, name = str(folder), _folder_name(folder)
    else:
        raise DataError(f"unknown dataset {source!r}: use 'flowers102', 'synthetic' or a path to a "
                        f"folder of images")
    if max_images is not None and max_images < len(images):
        keep = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:max_images].sort().values
        images = images[keep]
        labels = labels[keep] if labels is not None else None
    return ImageDataset(images, where, labels, names if labels is not None else None, name=name)


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
    if is_writable(parent):
        return parent / f".diffusion_cache_{name}"
    tag = hashlib.sha1(str(data_dir.resolve()).encode()).hexdigest()[:8]
    return DEFAULT_HOME / "cache" / f"{tag}_{name}"


def _cached_decode(data_dir: Path, files: list[Path], img_size: int, cache_dir, kind: str,
                   decode) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the cached (images, kept) if its fingerprint matches ``files``, else decode and cache.

    ``decode(files)`` returns uint8 images (M, 3, H, W) and ``kept``, int64 (M,): the index of the
    item each image came from (unreadable items are skipped), so labels can follow the images.
    """
    path = cache_path_for(data_dir, img_size, cache_dir, kind)
    fingerprint = _fingerprint(files)
    if path.exists():
        try:
            cached = torch.load(path, weights_only=True)
            if cached.get("fingerprint") == fingerprint and "kept" in cached:
                return cached["images"], cached["kept"]
        except Exception:  # a truncated or foreign file: rebuild it
            pass
    images, kept = decode(files)
    try:
        atomic_write(path, lambda f: torch.save({"images": images, "kept": kept, "fingerprint": fingerprint,
                                                 "img_size": img_size}, f))
    except RunFolderError as err:
        warnings.warn(f"{err}; images will be decoded again next time")
    return images, kept


def _decode_files(files: list[Path], img_size: int, progress: bool, what: str,
                  name: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode, crop and resize each file; files PIL refuses are skipped with one warning that
    names ``what`` (the folder); the progress bar shows ``name``, which holds no path.

    Returns the images and the indices (into ``files``) of those that loaded.
    """
    transform = _transform(img_size)
    out, kept, bad = [], [], []
    for i, f in enumerate(tqdm(files, desc=f"decoding {name or what} at {img_size}px (once; cached)",
                               disable=not progress)):
        image = _decoded(lambda: Image.open(f), transform)
        if image is None:
            bad.append(f.name)
        else:
            out.append(image)
            kept.append(i)
    if not out:
        raise DataError(f"none of the {len(files)} files in {what} could be read as an image (e.g. {bad[0]}); "
                        f"pass --data with a folder of images, 'flowers102' or 'synthetic'")
    if bad:
        warnings.warn(f"skipped {len(bad)} unreadable image(s) in {what}, e.g. {bad[0]}")
    return torch.stack(out), torch.tensor(kept, dtype=torch.long)


# ---------------------------------------------------------------------------------------------
# A folder of images
# ---------------------------------------------------------------------------------------------
def _decoded(open_image, transform):
    """``transform(open_image().convert("RGB"))``, or None if PIL refuses the image for any reason
    (not an image, truncated, a decompression bomb, …). Large but legitimate images decode quietly."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with open_image() as im:
                return transform(im.convert("RGB"))
    except Exception:  # PIL raises many kinds (OSError, SyntaxError, DecompressionBombError, ValueError, …)
        return None


def list_images(folder: Path) -> list[Path]:
    """All image files below ``folder`` (recursively), sorted; hidden files are ignored."""
    return sorted(p for p in folder.rglob("*")
                  if p.suffix.lower() in IMG_EXTENSIONS and p.is_file() and not p.name.startswith("."))


def folder_classes(folder: Path, files: list[Path]) -> tuple[torch.Tensor, list[str]] | None:
    """Labels by subfolder (torchvision's ImageFolder convention), or None.

    When every image sits below a first-level subfolder of ``folder`` and there are at least two
    such subfolders, each subfolder is a class (sorted names → labels 0, 1, …); otherwise the
    folder has no labels. Returns (labels int64 (len(files),), class names).
    """
    parts = [f.relative_to(folder).parts for f in files]
    if any(len(p) < 2 for p in parts):
        return None
    names = sorted({p[0] for p in parts})
    if len(names) < 2:
        return None
    index = {name: i for i, name in enumerate(names)}
    return torch.tensor([index[p[0]] for p in parts], dtype=torch.long), names


def _load_folder(folder: Path, img_size: int, cache_dir, progress: bool):
    """(images, labels or None, class names or None) of a folder of images."""
    if folder.is_file():
        raise DataError(f"{folder} is a file, not a folder of images; pass --data with a folder of images, "
                        f"'flowers102' or 'synthetic'")
    if not folder.is_dir():
        raise DataError(f"image folder {folder} does not exist; pass --data with a folder of images, "
                        f"'flowers102' or 'synthetic'")
    files = list_images(folder)
    if not files:
        raise DataError(f"no images ({', '.join(IMG_EXTENSIONS[:4])}, …) found in {folder}; "
                        f"pass --data with a folder of images, 'flowers102' or 'synthetic'")
    images, kept = _cached_decode(folder, files, img_size, cache_dir, "folder",
                                  lambda fs: _decode_files(fs, img_size, progress, str(folder), _folder_name(folder)))
    classes = folder_classes(folder, files)
    if classes is None:
        return images, None, None
    labels, names = classes
    return images, labels[kept], names


# ---------------------------------------------------------------------------------------------
# Oxford Flowers102
# ---------------------------------------------------------------------------------------------
def download_flowers102(root: Path, mirrors=FLOWERS102_MIRRORS) -> None:
    """Download Flowers102 into ``root/flowers-102`` (torchvision layout), trying each mirror.

    Raises :class:`DataError` with a one-line message naming the offline alternatives when every
    mirror fails; the folders a failed (or interrupted) download created are removed again.
    """
    base = root / "flowers-102"
    created, done, errors = missing_folders(base), False, []
    try:
        for prefix in mirrors:
            try:
                archive, md5 = Flowers102._file_dict["image"]
                if not (base / "jpg").is_dir():
                    download_and_extract_archive(prefix + archive, str(base), md5=md5)
                for key in ("label", "setid"):
                    filename, md5 = Flowers102._file_dict[key]
                    download_url(prefix + filename, str(base), md5=md5)
                done = True
                return
            except Exception as err:  # the network, the disk, a corrupt archive: try the next mirror
                errors.append(f"{prefix}: {short_reason(err)}")
    finally:
        if not done and created:
            shutil.rmtree(created[0], ignore_errors=True)
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
        check_output_folder(root / "flowers-102", what="download folder (--data-root)")
        print(f"Downloading Flowers102 (~330 MB) into {root / 'flowers-102'} …", file=sys.stderr)
        download_flowers102(root)
        if not _flowers102_present(root):
            raise DataError(f"Flowers102 in {root / 'flowers-102'} is incomplete after download; "
                            f"delete that folder and try again")
    jpg = root / "flowers-102" / "jpg"
    splits = [Flowers102(str(root), split=s, download=False, transform=_transform(img_size))
              for s in ("train", "val", "test")]
    files = sorted(jpg.glob("image_*.jpg"))

    # Official labels (imagelabels.mat, 0-based in torchvision) in the same train, val, test order.
    labels = torch.tensor([label for split in splits for label in split._labels], dtype=torch.long)

    def decode(_files):
        out, kept, missing, index = [], [], 0, 0
        for split in splits:
            for i in tqdm(range(len(split)), desc=f"decoding Flowers102 {split._split} at {img_size}px (once; cached)",
                          disable=not progress):
                try:
                    out.append(split[i][0])
                    kept.append(index)
                except Exception:  # absent, unreadable, or refused by PIL (e.g. a decompression bomb)
                    missing += 1
                index += 1
        if missing:
            warnings.warn(f"{missing} of {FLOWERS102_SIZE} Flowers102 images are missing or unreadable in "
                          f"{jpg}; using the {len(out)} that load")
        if not out:
            raise DataError(f"no Flowers102 images could be read from {jpg}")
        return torch.stack(out), torch.tensor(kept, dtype=torch.long)

    images, kept = _cached_decode(jpg, files, img_size, cache_dir, "flowers102", decode)
    return images, labels[kept], f"Flowers102 ({jpg})"


# ---------------------------------------------------------------------------------------------
# Synthetic flowers: drawn with numpy, no download, for tests and offline quick runs
# ---------------------------------------------------------------------------------------------
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


# ---------------------------------------------------------------------------------------------
# Batches for training
# ---------------------------------------------------------------------------------------------
def batches_per_epoch(n_images: int, batch_size: int) -> int:
    """Full batches per epoch (the remainder is dropped; one short batch if n < batch_size)."""
    return max(1, n_images // batch_size)


def epoch_batches(images: torch.Tensor, batch_size: int, generator: torch.Generator,
                  start: int = 0, labels: torch.Tensor | None = None,
                  shard: tuple[int, int] = (0, 1)) -> Iterator:
    """Yield one epoch of shuffled, randomly h-flipped float batches (B, 3, H, W) in [-1, 1].

    The shuffle and every flip are drawn from ``generator`` up front, so restoring its state and
    passing ``start`` (batches already done) replays the rest of an interrupted epoch exactly.
    With ``labels`` (int64 (N,)), yields ``(x, y)`` pairs instead, y the batch's labels (B,).
    ``shard=(rank, world_size)``: yield only this rank's B / world_size rows of each batch (the
    shuffle is the same on every rank, as with ``DistributedSampler``; B must split evenly).
    """
    n = len(images)
    order = torch.randperm(n, generator=generator)
    flip = torch.rand(n, generator=generator) < 0.5
    rank, world_size = shard
    for b in range(start, batches_per_epoch(n, batch_size)):
        idx = order[b * batch_size:(b + 1) * batch_size]
        per_rank = len(idx) // world_size
        idx = idx[rank * per_rank:(rank + 1) * per_rank]
        x = to_model_range(images[idx])
        x = torch.where(flip[idx, None, None, None], x.flip(-1), x)
        yield x if labels is None else (x, labels[idx])
