"""Training images: Oxford Flowers102, any folder of images, or procedurally drawn flowers.

:func:`load_dataset` is the one entry point. Every source ends up as one uint8 tensor
(N, 3, H, W) in memory, an :class:`ImageDataset`, with labels when the source has them:
Flowers102's official species (:mod:`~diffusion_utils.data.flowers102`), an image folder's subfolder
names (torchvision's ImageFolder convention), or the petal colour of a synthetic flower
(:mod:`~diffusion_utils.data.synthetic`). Photos are decoded, cropped and resized once and cached
(:mod:`~diffusion_utils.data.image_cache`); training batches come from :mod:`~diffusion_utils.data.batches`.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torchvision.datasets.folder import IMG_EXTENSIONS

from ..plumbing.checks import MAX_SEED, MAX_SIZES, as_int
from ..plumbing.errors import DataError
from ..plumbing.pixels import to_model_range
from .batches import batches_per_epoch, epoch_batches  # noqa: F401  (also importable from here, as scripts do)
from .flowers102 import flowers102_class_names, load_flowers102
from .image_cache import DEFAULT_HOME, cached_decode, decode_files
from .synthetic import SYNTHETIC_CLASS_NAMES, SYNTHETIC_DEFAULT_N, SYNTHETIC_MAX_N, make_synthetic_flowers

SOURCES_HINT = "use 'flowers102', 'synthetic' or a path to a folder of images"


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
        cache_dir: where the decoded tensor is cached (see :mod:`~diffusion_utils.data.image_cache`).
    """
    img_size = as_int("img_size", img_size, 1, MAX_SIZES["img_size"])
    max_images = None if max_images is None else as_int("max_images", max_images, 1)
    seed = as_int("seed", seed, 0, MAX_SEED)
    if not isinstance(source, (str, os.PathLike)) or not os.fspath(source).strip():
        raise DataError(f"the dataset is {source!r}: {SOURCES_HINT}")
    if source == "synthetic":
        n = as_int("max_images (the number of synthetic images)", max_images or SYNTHETIC_DEFAULT_N, 1,
                   SYNTHETIC_MAX_N)
        images, labels = make_synthetic_flowers(n, img_size, seed=seed, return_labels=True)
        return ImageDataset(images, f"synthetic flowers (seed {seed})", labels, list(SYNTHETIC_CLASS_NAMES),
                            name=f"synthetic (seed {seed})")
    if source == "flowers102":
        images, labels, where = load_flowers102(Path(root).expanduser() if root else DEFAULT_HOME / "datasets",
                                                img_size, download, cache_dir, progress)
        names = flowers102_class_names()
    elif isinstance(source, os.PathLike) or looks_like_path(source):
        folder = Path(os.fspath(source)).expanduser()
        images, labels, names = load_folder(folder, img_size, cache_dir, progress)
        where = str(folder)
    else:
        raise DataError(f"unknown dataset {source!r}: {SOURCES_HINT}")
    if max_images is not None and max_images < len(images):
        keep = subset_indices(len(images), max_images, seed)
        images = images[keep]
        labels = labels[keep] if labels is not None else None
    return ImageDataset(images, where, labels, names if labels is not None else None, name=dataset_name(source))


def subset_indices(n: int, max_images: int, seed: int) -> torch.Tensor:
    """The indices (sorted, int64) of the ``max_images`` of ``n`` images that ``load_dataset`` keeps
    with ``seed``: the first ``max_images`` of a seeded random permutation."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:max_images].sort().values


def load_held_out(source: str | os.PathLike, img_size: int = 64, *, max_images: int | None = None, seed: int = 0,
                  root: str | os.PathLike | None = None, n: int | None = None, download: bool = True,
                  cache_dir: str | os.PathLike | None = None, progress: bool = True) -> ImageDataset:
    """The images ``load_dataset(source, img_size, max_images=max_images, seed=seed)`` left out: a
    held-out set for a model trained on that subset (same source, disjoint from it).

    A run with ``max_images`` trains on a seeded random subset of its source (notebook 03's quick
    preset: 2 048 Flowers102 photos); the rest are photos of the same kind that the model never saw,
    the fair yardstick of :func:`~diffusion_utils.evaluation.memorisation.memorisation_test`. For a photo
    source the complement is computed from the same file list, so pass what the run was given
    (its ``config.data``, ``config.data_root``, ``config.max_images``, ``config.seed``) on a machine
    holding the same files. For ``"synthetic"`` (drawn, not sampled from a list) the held-out
    flowers are the next ones the same seed draws after the ``max_images`` trained on.

    Args:
        source, img_size, root, download, cache_dir, progress: as for :func:`load_dataset`.
        max_images: the training run's ``max_images`` (for a photo source: without it, or when it
            is not below the source's size, every image was trained on and none is held out).
        seed: the training run's seed.
        n: at most this many held-out images (a seeded random pick of the complement, in order);
            ``None``: all of them. For ``"synthetic"``: how many to draw (default: as many as were
            trained on).

    Returns:
        An :class:`ImageDataset` of the held-out images (and their labels, when the source has them).

    Raises:
        DataError: no image was held out (``max_images`` is None or covers the whole source) — then
            use the leave-one-out yardstick (``memorisation_test(samples, train_images)``).
    """
    seed = as_int("seed", seed, 0, MAX_SEED)
    n = None if n is None else as_int("n (the number of held-out images)", n, 1)
    if source == "synthetic":  # drawn one after another from one generator: the next ones are new
        trained = SYNTHETIC_DEFAULT_N if max_images is None else as_int("max_images", max_images, 1)
        count = as_int("max_images + n (synthetic images drawn)", trained + (n or trained), 1, SYNTHETIC_MAX_N)
        drawn = load_dataset("synthetic", img_size, max_images=count, seed=seed)
        return ImageDataset(drawn.images[trained:], f"synthetic flowers (seed {seed}) after the first {trained}",
                            drawn.labels[trained:], drawn.class_names, name=f"synthetic (seed {seed}), held out")
    if max_images is None:
        raise DataError(f"{dataset_name(source)} was used whole (max_images=None), so no image is held out; "
                        f"use the leave-one-out yardstick: memorisation_test(samples, train_images)")
    max_images = as_int("max_images", max_images, 1)
    full = load_dataset(source, img_size, root=root, download=download, cache_dir=cache_dir, progress=progress)
    if max_images >= len(full):
        raise DataError(f"max_images={max_images} covers all {len(full)} images of {full.name}, so none is held out; "
                        f"use the leave-one-out yardstick: memorisation_test(samples, train_images)")
    left = torch.ones(len(full), dtype=torch.bool)
    left[subset_indices(len(full), max_images, seed)] = False
    rest = left.nonzero().squeeze(1)
    if n is not None and n < len(rest):  # a seeded pick of the complement, in order
        rest = rest[subset_indices(len(rest), n, seed)]
    labels = full.labels[rest] if full.labels is not None else None
    return ImageDataset(full.images[rest], full.source, labels, full.class_names, name=f"{full.name}, held out")


def dataset_name(source: str | os.PathLike) -> str:
    """What a data source is called where others will read it (printed output, a model card):
    ``flowers102`` and ``synthetic`` as they are, a folder by its own name — never by its path —
    and the ``jpg`` folder of torchvision's Flowers102 layout as ``flowers102``."""
    text = os.fspath(source)
    if text in ("flowers102", "synthetic"):
        return text
    folder = Path(text).expanduser()
    if folder.parent.name == "flowers-102" or (folder.parent / "imagelabels.mat").exists():
        return "flowers102"
    return folder.resolve().name or text


def looks_like_path(source: str) -> bool:
    """Whether a ``--data`` string names a folder rather than a dataset."""
    return os.sep in source or "/" in source or source.startswith(("~", ".")) or Path(source).exists()


# ---------------------------------------------------------------------------------------------
# A folder of images
# ---------------------------------------------------------------------------------------------
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


def load_folder(folder: Path, img_size: int, cache_dir, progress: bool):
    """(images, labels or None, class names or None) of a folder of images."""
    also = "pass --data with a folder of images, 'flowers102' or 'synthetic'"
    if folder.is_file():
        raise DataError(f"{folder} is a file, not a folder of images; {also}")
    if not folder.is_dir():
        raise DataError(f"image folder {folder} does not exist; {also}")
    files = list_images(folder)
    if not files:
        raise DataError(f"no images ({', '.join(IMG_EXTENSIONS[:4])}, …) found in {folder}; {also}")
    images, kept = cached_decode(folder, files, img_size, cache_dir, "folder",
                                 lambda fs: decode_files(fs, img_size, progress, str(folder), dataset_name(folder)))
    classes = folder_classes(folder, files)
    if classes is None:
        return images, None, None
    labels, names = classes
    return images, labels[kept], names
