"""Decoding images once: crop, resize, and cache the result as one uint8 tensor file.

Decoding a JPEG, center-cropping it to a square and resizing it (antialiased) happens **once**
per image size; the stacked uint8 tensor (N, 3, H, W) is cached with a fingerprint of the files
(names, sizes, modification times), so later runs start in seconds and a changed folder is
decoded again. Files PIL refuses are skipped with one warning that counts them.

Where the cache goes: ``cache_dir`` if given, else ``$DIFFUSION_CACHE_DIR``, else next to the data
when that folder is writable, else ``~/.cache/diffusion_utils``.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path

import torch
from PIL import Image
from torchvision import transforms
from tqdm.auto import tqdm

from ..plumbing.errors import DataError, RunFolderError
from ..plumbing.files import atomic_write, is_writable

CACHE_ENV = "DIFFUSION_CACHE_DIR"
DEFAULT_HOME = Path("~/.cache/diffusion_utils").expanduser()


def image_transform(img_size: int):
    """PIL RGB image → uint8 (3, img_size, img_size): resize the short side (bicubic,
    antialiased), then center-crop."""
    return transforms.Compose([
        transforms.Resize(img_size, interpolation=transforms.InterpolationMode.BICUBIC, antialias=True),
        transforms.CenterCrop(img_size),
        transforms.PILToTensor(),
    ])


def preprocess(image: Image.Image, img_size: int) -> torch.Tensor:
    """PIL image → uint8 (3, img_size, img_size), as every image of a dataset is prepared."""
    return image_transform(img_size)(image.convert("RGB"))


def decode_image(path: Path, transform) -> torch.Tensor | None:
    """``transform`` of the image at ``path`` in RGB, or None if PIL refuses it for any reason
    (not an image, truncated, a decompression bomb, …). Large but legitimate images decode quietly."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                return transform(im.convert("RGB"))
    except Exception:  # PIL raises many kinds (OSError, SyntaxError, DecompressionBombError, ValueError, …)
        return None


def decode_files(files: list[Path], img_size: int, progress: bool, what: str,
                 name: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode, crop and resize each file; files PIL refuses are skipped with one warning that
    names ``what`` (where they are); the progress bar shows ``name``, which holds no path.

    Returns the uint8 images (M, 3, H, W) and int64 (M,): the index into ``files`` of each.
    """
    transform = image_transform(img_size)
    out, kept, bad = [], [], []
    for i, f in enumerate(tqdm(files, desc=f"decoding {name or what} at {img_size}px (once; cached)",
                               disable=not progress)):
        image = decode_image(f, transform)
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


def fingerprint(files: list[Path]) -> str:
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
    tag = hashlib.sha1(str(data_dir.resolve()).encode()).hexdigest()[:8]
    explicit = cache_dir or os.environ.get(CACHE_ENV)
    if explicit:
        return Path(explicit).expanduser() / f"{tag}_{name}"
    parent = data_dir.resolve().parent
    if is_writable(parent):
        return parent / f".diffusion_cache_{name}"
    return DEFAULT_HOME / "cache" / f"{tag}_{name}"


def cached_decode(data_dir: Path, files: list[Path], img_size: int, cache_dir, kind: str,
                  decode) -> tuple[torch.Tensor, torch.Tensor]:
    """The cached (images, kept) if its fingerprint matches ``files``, else ``decode(files)``,
    cached for next time.

    ``decode(files)`` returns uint8 images (M, 3, H, W) and ``kept``, int64 (M,): the index of the
    item each image came from (unreadable items are skipped), so labels can follow the images.
    """
    path = cache_path_for(data_dir, img_size, cache_dir, kind)
    expected = fingerprint(files)
    if path.exists():
        try:
            cached = torch.load(path, weights_only=True)
            if cached.get("fingerprint") == expected and "kept" in cached:
                return cached["images"], cached["kept"]
        except Exception:  # a truncated or foreign file: rebuild it
            pass
    images, kept = decode(files)
    try:
        atomic_write(path, lambda f: torch.save({"images": images, "kept": kept, "fingerprint": expected,
                                                 "img_size": img_size}, f))
    except RunFolderError as err:
        warnings.warn(f"{err}; images will be decoded again next time")
    return images, kept
