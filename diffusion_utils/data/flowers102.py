"""Oxford Flowers102 (Nilsback & Zisserman 2008): 8 189 photos of 102 species, with their labels.

The layout on disk is torchvision's (``root/flowers-102/jpg/image_NNNNN.jpg``, ``imagelabels.mat``,
``setid.mat``), so a copy torchvision downloaded is used as it is; but it is read here with
public functions only (``scipy.io.loadmat`` and torchvision's download helpers), not through
``torchvision.datasets.Flowers102``'s private attributes. All three official splits are used, in
the order train, val, test; labels are 0-based, named by :func:`flowers102_class_names`.
"""

from __future__ import annotations

import shutil
import sys
import warnings
from pathlib import Path

import torch
from torchvision.datasets.utils import check_integrity, download_and_extract_archive, download_url
from tqdm.auto import tqdm

from ..plumbing.errors import DataError, short_reason
from ..plumbing.files import check_output_folder, missing_folders
from .image_cache import cached_decode, decode_image, image_transform

# Flowers102's files, tried in order: the Oxford VGG group's page, then its mirror.
FLOWERS102_MIRRORS = (
    "https://www.robots.ox.ac.uk/~vgg/data/flowers/102/",
    "https://thor.robots.ox.ac.uk/flowers/102/",
)
FLOWERS102_FILES = {  # name and MD5 of each file, as published
    "images": ("102flowers.tgz", "52808999861908f626f3c1f4e79d11fa"),
    "labels": ("imagelabels.mat", "e0620be6f572b9609742df49c70aed4d"),
    "splits": ("setid.mat", "a5357ecc9cb78c4bef273ce3793fc85c"),
}
SPLITS = (("train", "trnid"), ("val", "valid"), ("test", "tstid"))  # split, its key in setid.mat
FLOWERS102_SIZE = 8189


def flowers102_class_names() -> list[str]:
    """The 102 species names of Flowers102, in label order (label 0 is "pink primrose").

    The list the Oxford VGG group's category page gives, as collected with the caffe-oxford102
    models; shipped as ``flowers102_classes.txt`` in the package.
    """
    text = (Path(__file__).parent / "flowers102_classes.txt").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


def flowers102_present(root: Path) -> bool:
    """Whether ``root/flowers-102`` holds the image folder and both label files (checked by MD5)."""
    base = root / "flowers-102"
    return (base / "jpg").is_dir() and all(check_integrity(str(base / name), md5) for key, (name, md5)
                                          in FLOWERS102_FILES.items() if key != "images")


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
                archive, md5 = FLOWERS102_FILES["images"]
                if not (base / "jpg").is_dir():
                    download_and_extract_archive(prefix + archive, str(base), md5=md5)
                for key in ("labels", "splits"):
                    filename, md5 = FLOWERS102_FILES[key]
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


def official_order(base: Path) -> tuple[list[int], torch.Tensor]:
    """The image ids of the train, val and test splits in that order (setid.mat), and each one's
    0-based label (imagelabels.mat is 1-based), int64 (8 189,)."""
    from scipy.io import loadmat

    try:
        splits = loadmat(base / FLOWERS102_FILES["splits"][0], squeeze_me=True)
        labels = loadmat(base / FLOWERS102_FILES["labels"][0], squeeze_me=True)["labels"]
        ids = [int(i) for _, key in SPLITS for i in splits[key]]
    except Exception as err:  # present by MD5, so this is a disk fault
        raise DataError(f"the Flowers102 label files in {base} cannot be read ({short_reason(err)}); delete "
                        f"that folder and download again") from None
    return ids, torch.tensor([int(labels[i - 1]) - 1 for i in ids], dtype=torch.long)


def load_flowers102(root: Path, img_size: int, download: bool, cache_dir, progress: bool):
    """(images uint8 (N, 3, img_size, img_size), labels int64 (N,), where) of the copy under
    ``root``, downloaded first if absent and ``download``; missing or unreadable photos are left
    out with one warning that counts them."""
    base = root / "flowers-102"
    if not flowers102_present(root):
        if not download:
            raise DataError(f"Flowers102 is not in {base}; allow downloading, or use "
                            f"--data /path/to/images or --data synthetic")
        check_output_folder(base, what="download folder (--data-root)")
        print(f"Downloading Flowers102 (~330 MB) into {base} …", file=sys.stderr)
        download_flowers102(root)
        if not flowers102_present(root):
            raise DataError(f"Flowers102 in {base} is incomplete after download; delete that folder and try again")
    jpg = base / "jpg"
    ids, labels = official_order(base)

    def decode(_files):
        transform, out, kept = image_transform(img_size), [], []
        for index, image_id in enumerate(tqdm(ids, desc=f"decoding Flowers102 at {img_size}px (once; cached)",
                                              disable=not progress)):
            image = decode_image(jpg / f"image_{image_id:05d}.jpg", transform)
            if image is not None:  # absent, unreadable, or refused by PIL (e.g. a decompression bomb)
                out.append(image)
                kept.append(index)
        if len(out) < len(ids):
            warnings.warn(f"{len(ids) - len(out)} of {FLOWERS102_SIZE} Flowers102 images are missing or "
                          f"unreadable in {jpg}; using the {len(out)} that load")
        if not out:
            raise DataError(f"no Flowers102 images could be read from {jpg}")
        return torch.stack(out), torch.tensor(kept, dtype=torch.long)

    images, kept = cached_decode(jpg, sorted(jpg.glob("image_*.jpg")), img_size, cache_dir, "flowers102", decode)
    return images, labels[kept], f"Flowers102 ({jpg})"

