"""Training images: synthetic flowers, a folder of images (with its decode cache), Flowers102.

Flowers102 tests never touch the network: the download functions are monkeypatched, and the
real images come from the shared 64 px copy beside the repository (tests skip without it).
Nothing is ever written into that copy: every load passes ``cache_dir`` inside tmp_path.
"""

from __future__ import annotations

import shutil
import urllib.error
import urllib.request
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import diffusion_utils.data.data as data
import diffusion_utils.data.flowers102 as flowers102
import diffusion_utils.data.image_cache as image_cache
from diffusion_utils import (ConfigError, DataError, DiffusionError, ImageDataset, load_dataset, load_held_out,
                             make_synthetic_flowers)
from diffusion_utils.data.batches import epoch_batches
from diffusion_utils.data.data import subset_indices
from diffusion_utils.data.flowers102 import FLOWERS102_MIRRORS
from diffusion_utils.data.image_cache import cache_path_for, preprocess


def one_line(err: BaseException) -> str:
    message = str(err)
    assert message and "\n" not in message, repr(message)
    return message


# ---------------------------------------------------------------------------------------------
# Synthetic flowers
# ---------------------------------------------------------------------------------------------
def test_synthetic_shape_dtype_and_determinism():
    """uint8 (N, 3, S, S); the same seed gives the same images, another seed others."""
    a = load_dataset("synthetic", 16, max_images=6, seed=0)
    b = load_dataset("synthetic", 16, max_images=6, seed=0)
    c = load_dataset("synthetic", 16, max_images=6, seed=1)
    assert isinstance(a, ImageDataset) and len(a) == 6 and a.img_size == 16
    assert a.images.shape == (6, 3, 16, 16) and a.images.dtype == torch.uint8
    assert torch.equal(a.images, b.images) and not torch.equal(a.images, c.images)
    assert len({img.numpy().tobytes() for img in a.images}) == 6, "images within a batch differ"
    assert torch.equal(a.images, make_synthetic_flowers(6, 16, seed=0))
    # items are float in [-1, 1]
    item = a[0]
    assert item.dtype == torch.float32 and item.shape == (3, 16, 16)
    assert item.min() >= -1 and item.max() <= 1
    torch.testing.assert_close(item, a.images[0].float() / 127.5 - 1)


def test_synthetic_max_images_and_size():
    """max_images sets the count; a larger image size works too; images use the colour range."""
    ds = load_dataset("synthetic", 32, max_images=3, seed=4)
    assert ds.images.shape == (3, 3, 32, 32)
    assert ds.images.float().std() > 20  # not a flat colour


def test_unknown_dataset_name_raises_data_error():
    """A name that is neither a known dataset nor a path is a one-line DataError."""
    with pytest.raises(DataError) as info:
        load_dataset("nosuchset", 16)
    assert "nosuchset" in one_line(info.value) and "synthetic" in str(info.value)


def test_epoch_batches_shuffle_flip_and_resume():
    """One epoch: full batches in [-1, 1]; replaying from a saved generator state with start=k
    yields exactly the remaining batches (what mid-epoch resume relies on)."""
    images = make_synthetic_flowers(10, 8, seed=0)
    gen = torch.Generator().manual_seed(0)
    state = gen.get_state()
    full = list(epoch_batches(images, 4, gen))
    assert len(full) == 2 and all(b.shape == (4, 3, 8, 8) for b in full)  # the remainder is dropped
    assert all(b.min() >= -1 and b.max() <= 1 for b in full)
    gen.set_state(state)
    rest = list(epoch_batches(images, 4, gen, start=1))
    assert len(rest) == 1 and torch.equal(rest[0], full[1])
    # every batch image is a dataset image or its mirror
    pool = {img.numpy().tobytes() for img in images.float() / 127.5 - 1}
    pool |= {img.flip(-1).numpy().tobytes() for img in images.float() / 127.5 - 1}
    assert all(img.numpy().tobytes() in pool for b in full for img in b)


# ---------------------------------------------------------------------------------------------
# A folder of images
# ---------------------------------------------------------------------------------------------
S = 16
RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def _bands(width, height, colours, vertical):
    """An image split into equal bands of the given colours (left→right or top→bottom)."""
    a = np.zeros((height, width, 3), dtype=np.uint8)
    n = len(colours)
    for i, c in enumerate(colours):
        if vertical:
            a[:, i * width // n:(i + 1) * width // n] = c
        else:
            a[i * height // n:(i + 1) * height // n] = c
    return a


def _gradient(width, height):
    """A smooth image (red grows left→right, green top→bottom), so resampling details hardly matter."""
    x = np.linspace(0, 255, width)[None, :].repeat(height, 0)
    y = np.linspace(0, 255, height)[:, None].repeat(width, 1)
    return np.dstack([x, y, (x + y) / 2]).round().astype(np.uint8)


@pytest.fixture
def image_folder(tmp_path) -> tuple[Path, dict[str, np.ndarray]]:
    """Ten files of various sizes, shapes, modes and formats (one in a subfolder), one corrupt
    .jpg, and two files the loader must ignore. Returns the folder and the exact 16 px result
    expected for some of the files."""
    folder = tmp_path / "images"
    (folder / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    exact = rng.integers(0, 256, (S, S, 3), dtype=np.uint8)
    Image.fromarray(exact).save(folder / "a_exact.png")  # already S×S: kept as is
    Image.fromarray(_bands(3 * S, S, [RED, GREEN, BLUE], vertical=True)).save(folder / "b_wide.png")
    Image.fromarray(_bands(S, 3 * S, [RED, BLUE, RED], vertical=False)).save(folder / "c_tall.png")
    Image.fromarray(_gradient(100, 60)).save(folder / "d_big.jpg", quality=95)
    Image.fromarray(_gradient(24, 40)).save(folder / "e_portrait.JPEG", quality=95)
    Image.fromarray(_gradient(20, 20)[..., 0], mode="L").save(folder / "f_gray.png")
    Image.fromarray(np.dstack([_gradient(30, 20), np.full((20, 30), 128, np.uint8)]), mode="RGBA").save(folder / "g_rgba.png")
    Image.fromarray(_gradient(5, 7)).save(folder / "h_tiny.bmp")
    Image.fromarray(_bands(2 * S, 2 * S, [GREEN], vertical=True)).save(folder / "sub" / "i_nested.png")
    (folder / "j_broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg" + bytes(rng.integers(0, 256, 200, dtype=np.uint8)))
    (folder / "notes.txt").write_text("not an image")
    Image.fromarray(exact).save(folder / ".hidden.png")
    expected = {
        "a_exact.png": exact,
        "b_wide.png": np.broadcast_to(np.array(GREEN, np.uint8), (S, S, 3)),  # the middle third
        "c_tall.png": np.broadcast_to(np.array(BLUE, np.uint8), (S, S, 3)),
        "i_nested.png": np.broadcast_to(np.array(GREEN, np.uint8), (S, S, 3)),
    }
    return folder, expected


VALID = ["a_exact.png", "b_wide.png", "c_tall.png", "d_big.jpg", "e_portrait.JPEG", "f_gray.png",
         "g_rgba.png", "h_tiny.bmp", "i_nested.png"]  # sorted by path: sub/i_nested.png sorts last


def test_image_folder_is_decoded_center_cropped_and_skips_a_corrupt_file(image_folder, tmp_path):
    """Every readable image (recursively) becomes uint8 (3, S, S): short side resized, center
    cropped; a corrupt file is skipped with a warning; hidden and non-image files are ignored."""
    folder, expected = image_folder
    with pytest.warns(UserWarning, match=r"skipped 1 unreadable image.*j_broken\.jpg"):
        ds = load_dataset(str(folder), S, cache_dir=tmp_path / "cache", progress=False)
    assert ds.images.shape == (len(VALID), 3, S, S) and ds.images.dtype == torch.uint8
    as_hwc = ds.images.permute(0, 2, 3, 1).numpy()
    for name, want in expected.items():
        np.testing.assert_array_equal(as_hwc[VALID.index(name)], want, err_msg=name)
    # the others match decoding the file by hand: resize the short side to S, crop the centre
    for name in ("d_big.jpg", "e_portrait.JPEG", "f_gray.png", "g_rgba.png", "h_tiny.bmp"):
        with Image.open(folder / name) as im:
            rgb = im.convert("RGB")
            w, h = rgb.size
            scale = S / min(w, h)
            resized = rgb.resize((max(S, round(w * scale)), max(S, round(h * scale))), Image.BICUBIC)
            left, top = (resized.width - S) // 2, (resized.height - S) // 2
            by_hand = np.asarray(resized.crop((left, top, left + S, top + S)))
        diff = np.abs(as_hwc[VALID.index(name)].astype(int) - by_hand.astype(int))
        assert diff.mean() < 4, (name, diff.mean())  # resampling details differ, the crop may not
    assert "images" in ds.source
    assert repr(ds) == f"ImageDataset(images: {len(ds)} images of {S}×{S})"  # the folder's name, not its path


def test_folder_cache_is_written_reused_and_invalidated(image_folder, tmp_path, monkeypatch):
    """The first load decodes and writes one cache file into cache_dir (nothing into the data
    folder); the second load reads the cache (decoding would raise); adding a file invalidates it."""
    folder, _ = image_folder
    cache = tmp_path / "cache"
    before = sorted(p.relative_to(folder) for p in folder.rglob("*"))
    calls = []
    real_decode = data.decode_files

    def counting_decode(files, *args, **kwargs):
        calls.append(len(files))
        return real_decode(files, *args, **kwargs)

    monkeypatch.setattr(data, "decode_files", counting_decode)
    with pytest.warns(UserWarning):
        first = load_dataset(str(folder), S, cache_dir=cache, progress=False)
    assert calls == [10]
    cached = list(cache.iterdir())
    assert len(cached) == 1 and cached[0].suffix == ".pt" and cached[0] == cache_path_for(folder, S, cache)
    assert sorted(p.relative_to(folder) for p in folder.rglob("*")) == before  # data folder untouched

    def refuse(*args, **kwargs):
        raise AssertionError("decoded again although the cache is valid")

    monkeypatch.setattr(data, "decode_files", refuse)
    second = load_dataset(str(folder), S, cache_dir=cache, progress=False)
    assert torch.equal(first.images, second.images)

    # a new file changes the fingerprint: decode again, now with one more image
    Image.fromarray(np.zeros((S, S, 3), np.uint8)).save(folder / "k_new.png")
    with pytest.raises(AssertionError, match="decoded again"):
        load_dataset(str(folder), S, cache_dir=cache, progress=False)
    monkeypatch.setattr(data, "decode_files", counting_decode)
    with pytest.warns(UserWarning):
        third = load_dataset(str(folder), S, cache_dir=cache, progress=False)
    assert calls == [10, 11] and len(third) == len(first) + 1
    assert len(list(cache.iterdir())) == 1  # the one cache file was replaced, no temp file left

    # a different size is a different cache entry
    with pytest.warns(UserWarning):
        assert load_dataset(str(folder), 8, cache_dir=cache, progress=False).img_size == 8
    assert len(list(cache.iterdir())) == 2


def test_corrupt_cache_file_is_rebuilt(image_folder, tmp_path):
    """A truncated cache file is not trusted: the images are decoded again."""
    folder, _ = image_folder
    cache = tmp_path / "cache"
    with pytest.warns(UserWarning):
        first = load_dataset(str(folder), S, cache_dir=cache, progress=False)
    path = cache_path_for(folder, S, cache)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.warns(UserWarning):
        again = load_dataset(str(folder), S, cache_dir=cache, progress=False)
    assert torch.equal(first.images, again.images)


def test_cache_location_rules(tmp_path, monkeypatch):
    """cache_dir wins, then $DIFFUSION_CACHE_DIR, then beside the data if writable, else the home
    cache — never inside a read-only data folder's parent."""
    folder = tmp_path / "parent" / "imgs"
    folder.mkdir(parents=True)
    assert cache_path_for(folder, 16, tmp_path / "c").parent == tmp_path / "c"
    monkeypatch.setenv("DIFFUSION_CACHE_DIR", str(tmp_path / "env"))
    assert cache_path_for(folder, 16).parent == tmp_path / "env"
    monkeypatch.delenv("DIFFUSION_CACHE_DIR")
    assert cache_path_for(folder, 16).parent == tmp_path / "parent"
    monkeypatch.setattr(image_cache, "DEFAULT_HOME", tmp_path / "home")
    (tmp_path / "parent").chmod(0o555)
    try:
        assert cache_path_for(folder, 16).is_relative_to(tmp_path / "home")
    finally:
        (tmp_path / "parent").chmod(0o755)


def test_folder_max_images_is_a_seeded_subset(image_folder, tmp_path):
    """max_images keeps a random subset of the images, the same for the same seed, in order."""
    folder, _ = image_folder
    kw = dict(cache_dir=tmp_path / "cache", progress=False)
    with pytest.warns(UserWarning):
        full = load_dataset(str(folder), S, **kw).images
    rows = {img.numpy().tobytes(): i for i, img in enumerate(full)}
    picks = {}
    for seed in (0, 0, 1, 2):
        sub = load_dataset(str(folder), S, max_images=4, seed=seed, **kw).images
        assert sub.shape == (4, 3, S, S)
        idx = [rows[img.numpy().tobytes()] for img in sub]
        assert idx == sorted(idx) and len(set(idx)) == 4
        picks.setdefault(seed, idx)
        assert picks[seed] == idx
    assert len({tuple(v) for v in picks.values()}) > 1, "different seeds should pick different subsets"
    assert len(load_dataset(str(folder), S, max_images=100, **kw)) == len(full)


def test_held_out_is_the_complement_of_the_max_images_subset(image_folder, tmp_path):
    """load_held_out returns exactly the images a max_images/seed run left out: with the training
    subset they partition the source, in order, the same for the same seed; n picks among them."""
    folder, _ = image_folder
    kw = dict(cache_dir=tmp_path / "cache", progress=False)
    with pytest.warns(UserWarning, match="skipped 1"):
        full = load_dataset(str(folder), S, **kw)
    for seed in (0, 1, 7):
        train = load_dataset(str(folder), S, max_images=4, seed=seed, **kw)
        held = load_held_out(str(folder), S, max_images=4, seed=seed, **kw)
        kept = subset_indices(len(full), 4, seed)
        rest = torch.tensor([i for i in range(len(full)) if i not in set(kept.tolist())])
        assert torch.equal(train.images, full.images[kept])  # what training used ...
        assert torch.equal(held.images, full.images[rest])  # ... and everything else
        assert len(train) + len(held) == len(full) and len(held) == len(full) - 4
        assert torch.equal(load_held_out(str(folder), S, max_images=4, seed=seed, **kw).images, held.images)
        pick = load_held_out(str(folder), S, max_images=4, seed=seed, n=3, **kw)
        assert len(pick) == 3 and torch.equal(pick.images, load_held_out(str(folder), S, max_images=4, seed=seed,
                                                                          n=3, **kw).images)
        rows = [img.numpy().tobytes() for img in held.images]
        assert all(img.numpy().tobytes() in rows for img in pick.images)
    assert held.name == "images, held out" and str(folder) not in repr(held)
    other = load_held_out(str(folder), S, max_images=4, seed=1, **kw).images
    assert not torch.equal(other, load_held_out(str(folder), S, max_images=4, seed=0, **kw).images)


def test_synthetic_held_out_flowers_are_the_next_ones_drawn():
    train = load_dataset("synthetic", S, max_images=20, seed=3)
    held = load_held_out("synthetic", S, max_images=20, seed=3, n=10)
    assert held.images.shape == (10, 3, S, S) and held.labels.shape == (10,)
    assert torch.equal(held.images, make_synthetic_flowers(30, S, seed=3)[20:])
    trained_rows = {img.numpy().tobytes() for img in train.images}
    assert not any(img.numpy().tobytes() in trained_rows for img in held.images)  # disjoint
    assert torch.equal(load_held_out("synthetic", S, max_images=20, seed=3, n=10).images, held.images)
    assert len(load_held_out("synthetic", S, max_images=20, seed=3)) == 20  # as many as were trained on


@pytest.mark.parametrize("max_images", [None, 9, 100])
def test_no_held_out_images_when_every_image_was_trained_on(image_folder, tmp_path, max_images):
    """A run on the whole source left nothing out: one line that points at the leave-one-out yardstick."""
    folder, _ = image_folder
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the corrupt file's warning
        with pytest.raises(DataError) as info:
            load_held_out(str(folder), S, max_images=max_images, cache_dir=tmp_path / "cache", progress=False)
    assert "leave-one-out" in one_line(info.value) and str(folder) not in str(info.value)


@pytest.mark.parametrize("case", ["empty", "only_junk", "missing"])
def test_empty_or_missing_folder_raises_one_line_data_error(tmp_path, case):
    """A folder without images, or no folder at all, is a one-line DataError that names it."""
    folder = tmp_path / case
    if case != "missing":
        folder.mkdir()
    if case == "only_junk":
        (folder / "readme.txt").write_text("x")
    with pytest.raises(DataError) as info:
        load_dataset(str(folder), S, cache_dir=tmp_path / "cache", progress=False)
    message = one_line(info.value)
    assert str(folder) in message and "--data" in message


def test_folder_of_only_corrupt_images_raises_data_error(tmp_path):
    """If no file decodes, that is a DataError (one line, no warning beside it), not an empty dataset."""
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "x.png").write_bytes(b"nope")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(DataError) as info:
            load_dataset(str(folder), S, cache_dir=tmp_path / "cache", progress=False)
    assert "x.png" in one_line(info.value)


# ---------------------------------------------------------------------------------------------
# Flowers102, offline
# ---------------------------------------------------------------------------------------------
def _flowers_copy(shared_parent: Path, dest_parent: Path, n_images: int = 60) -> Path:
    """A torchvision-layout copy with both .mat files and the first ``n_images`` JPEGs."""
    src, dst = shared_parent / "flowers-102", dest_parent / "flowers-102"
    (dst / "jpg").mkdir(parents=True)
    for name in ("imagelabels.mat", "setid.mat"):
        shutil.copy2(src / name, dst / name)
    for f in sorted((src / "jpg").glob("image_*.jpg"))[:n_images]:
        shutil.copy2(f, dst / "jpg" / f.name)
    return dest_parent


def _split_ids(base: Path) -> dict[str, list[int]]:
    from scipy.io import loadmat

    ids = loadmat(base / "setid.mat", squeeze_me=True)
    return {split: [int(i) for i in ids[key]] for split, key in
            (("train", "trnid"), ("val", "valid"), ("test", "tstid"))}


def test_flowers102_loads_the_present_images_of_all_three_splits(flowers_root, tmp_path):
    """With download=False, a partial local copy loads every present image, from the train,
    val and test splits in that order, and warns about the missing ones."""
    root = _flowers_copy(flowers_root, tmp_path / "fl")
    with pytest.warns(UserWarning, match=r"of 8189 Flowers102 images are missing"):
        ds = load_dataset("flowers102", S, root=root, download=False, cache_dir=tmp_path / "cache",
                          progress=False)
    jpg = root / "flowers-102" / "jpg"
    present = {int(f.stem.split("_")[1]) for f in jpg.glob("*.jpg")}
    order = [i for split in _split_ids(root / "flowers-102").values() for i in split if i in present]
    assert len(ds) == len(present) == 60
    assert all(any(i in present for i in ids) for ids in _split_ids(root / "flowers-102").values())
    expected = torch.stack([preprocess(Image.open(jpg / f"image_{i:05d}.jpg"), S) for i in order])
    assert torch.equal(ds.images, expected)
    # Each image keeps its official label (imagelabels.mat is 1-based; ours are 0-based).
    from scipy.io import loadmat

    official = loadmat(root / "flowers-102" / "imagelabels.mat", squeeze_me=True)["labels"]
    assert ds.labels.tolist() == [int(official[i - 1]) - 1 for i in order]
    assert ds.num_classes == 102 and ds.class_names[0] == "pink primrose" and ds.class_names[53] == "sunflower"
    assert "Flowers102" in ds.source
    assert repr(ds) == f"ImageDataset(flowers102: 60 images of {S}×{S}, 102 classes)"  # no path in printed outputs
    as_folder = load_dataset(str(jpg), S, cache_dir=tmp_path / "cache", progress=False)
    assert as_folder.name == "flowers102" and str(jpg) in as_folder.source  # its jpg folder: still flowers102
    assert not any(p.name.startswith(".diffusion_cache") for p in root.rglob("*"))


def test_flowers102_missing_without_download_raises(tmp_path):
    """download=False and nothing under root: a one-line DataError naming the offline options."""
    with pytest.raises(DataError) as info:
        load_dataset("flowers102", S, root=tmp_path / "empty", download=False, cache_dir=tmp_path / "c")
    message = one_line(info.value)
    assert "--data" in message and "synthetic" in message


def test_flowers102_offline_download_tries_every_mirror(tmp_path, monkeypatch):
    """With no network, both mirrors are tried and the DataError is one line that names the
    offline alternatives (--data a folder, --data synthetic)."""
    tried = []

    def offline(url, *args, **kwargs):
        tried.append(url)
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(flowers102, "download_and_extract_archive", offline)
    monkeypatch.setattr(flowers102, "download_url", offline)
    with pytest.raises(DataError) as info:
        load_dataset("flowers102", S, root=tmp_path / "root", download=True, cache_dir=tmp_path / "c",
                     progress=False)
    for mirror in FLOWERS102_MIRRORS:
        assert any(url.startswith(mirror) for url in tried), (mirror, tried)
    assert len(FLOWERS102_MIRRORS) == 2 and len(tried) == 2
    message = one_line(info.value)
    assert "--data" in message and "synthetic" in message
    assert all(m in message for m in FLOWERS102_MIRRORS)


def test_flowers102_download_falls_back_to_the_second_mirror(flowers_root, tmp_path, monkeypatch):
    """The first mirror fails, the second "downloads" (copies the local layout): the load succeeds."""
    src = flowers_root / "flowers-102"
    tried = []

    def fake_archive(url, download_root, md5=None, **kwargs):
        tried.append(url)
        if url.startswith(FLOWERS102_MIRRORS[0]):
            raise urllib.error.URLError("offline")
        assert url == FLOWERS102_MIRRORS[1] + "102flowers.tgz"
        (Path(download_root) / "jpg").mkdir(parents=True)
        for f in sorted((src / "jpg").glob("image_*.jpg"))[:20]:
            shutil.copy2(f, Path(download_root) / "jpg" / f.name)

    def fake_url(url, root, md5=None, **kwargs):
        tried.append(url)
        if url.startswith(FLOWERS102_MIRRORS[0]):
            raise urllib.error.URLError("offline")
        name = url.rsplit("/", 1)[1]
        shutil.copy2(src / name, Path(root) / name)

    monkeypatch.setattr(flowers102, "download_and_extract_archive", fake_archive)
    monkeypatch.setattr(flowers102, "download_url", fake_url)
    with pytest.warns(UserWarning, match="missing"):
        ds = load_dataset("flowers102", S, root=tmp_path / "root", download=True, cache_dir=tmp_path / "c",
                          progress=False)
    assert len(ds) == 20
    assert tried[0].startswith(FLOWERS102_MIRRORS[0])
    assert any(u.endswith("setid.mat") for u in tried) and any(u.endswith("imagelabels.mat") for u in tried)


def test_real_shared_flowers102_copy(flowers_root, tmp_path):
    """The shared 64 px copy: all 7 985 present images load (204 missing), cached in tmp_path;
    max_images then takes a seeded subset of them; the shared folder is left unchanged."""
    base = flowers_root / "flowers-102"
    before = sorted(p.name for p in base.iterdir()) + sorted(p.name for p in flowers_root.iterdir())
    cache = tmp_path / "cache"
    with pytest.warns(UserWarning, match=r"204 of 8189 Flowers102 images are missing or unreadable.*using the 7985 that load"):
        ds = load_dataset("flowers102", 32, root=flowers_root, download=False, cache_dir=cache, progress=False)
    assert ds.images.shape == (7985, 3, 32, 32) and ds.images.dtype == torch.uint8
    sub = load_dataset("flowers102", 32, root=flowers_root, download=False, cache_dir=cache,
                       max_images=50, seed=3, progress=False)  # from the cache: no warning, no decoding
    assert len(sub) == 50
    full_rows = {img.numpy().tobytes() for img in ds.images}
    assert all(img.numpy().tobytes() in full_rows for img in sub.images)
    # the quick preset's 2 048 and the photos it never saw: disjoint, together all of them, with their labels
    train = load_dataset("flowers102", 32, root=flowers_root, download=False, cache_dir=cache, max_images=2048,
                         progress=False)
    held = load_held_out("flowers102", 32, root=flowers_root, download=False, cache_dir=cache, max_images=2048,
                         progress=False)
    assert len(held) == 7985 - 2048 and held.num_classes == 102
    kept = subset_indices(7985, 2048, 0)
    rest = torch.ones(7985, dtype=torch.bool)
    rest[kept] = False
    assert torch.equal(train.images, ds.images[kept]) and torch.equal(held.images, ds.images[rest])
    assert torch.equal(held.labels, ds.labels[rest])
    after = sorted(p.name for p in base.iterdir()) + sorted(p.name for p in flowers_root.iterdir())
    assert before == after


# ---------------------------------------------------------------------------------------------
# What notebooks and users pass, and images PIL refuses
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["decompression bomb", "truncated png", "not an image", "empty file"])
def test_images_pil_refuses_are_skipped_with_one_counting_warning(kind, tmp_path, monkeypatch):
    """Whatever PIL refuses (here a decompression bomb, a truncated PNG, text, nothing) is skipped:
    one warning that counts the skipped files; large images PIL only warns about decode quietly."""
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(2):
        Image.fromarray(_gradient(8, 8)).save(folder / f"ok{i}.png")  # 64 pixels
    Image.fromarray(_gradient(12, 12)).save(folder / "large_but_fine.png")  # 144: above the limit, below twice it
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    bad = folder / "bad.png"
    if kind == "decompression bomb":
        Image.fromarray(_gradient(32, 32)).save(bad)  # 1024 > 2 × 100 pixels: PIL raises DecompressionBombError
    elif kind == "truncated png":
        Image.fromarray(_gradient(8, 8)).save(bad)
        bad.write_bytes(bad.read_bytes()[:60])
    else:
        bad.write_bytes(b"" if kind == "empty file" else b"hello")
    with pytest.warns(UserWarning) as record:
        ds = load_dataset(folder, S, cache_dir=tmp_path / "cache", progress=False)
    assert len(ds) == 3
    messages = [str(w.message) for w in record]
    assert messages == [f"skipped 1 unreadable image(s) in {folder}, e.g. bad.png"]


def test_paths_and_numpy_numbers_are_accepted(image_folder, tmp_path):
    """load_dataset takes a pathlib.Path (or any os.PathLike) and numpy integers, as notebooks pass them."""
    folder, _ = image_folder
    kw = dict(cache_dir=tmp_path / "cache", progress=False)
    with pytest.warns(UserWarning, match="skipped 1"):
        as_path = load_dataset(folder, np.int64(S), max_images=np.int32(4), seed=np.uint8(1), **kw)
    assert torch.equal(as_path.images, load_dataset(str(folder), S, max_images=4, seed=1, **kw).images)
    assert len(load_dataset("synthetic", np.int64(8), max_images=np.int64(3))) == 3


@pytest.mark.parametrize("source", ["", "   "])
def test_an_empty_data_source_is_refused_not_the_current_folder(source, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Image.fromarray(_gradient(8, 8)).save(tmp_path / "stray.png")  # would be trained on if '' meant '.'
    with pytest.raises(DataError) as info:
        load_dataset(source, S, cache_dir=tmp_path / "cache", progress=False)
    assert "flowers102" in one_line(info.value) and "synthetic" in str(info.value)


@pytest.mark.parametrize("kwargs, field", [
    (dict(img_size=True), "img_size"), (dict(img_size=16.0), "img_size"), (dict(img_size=10 ** 6), "img_size"),
    (dict(max_images=0), "max_images"), (dict(max_images="10"), "max_images"), (dict(seed=-1), "seed"),
    (dict(max_images=10 ** 9), "max_images"),  # synthetic images are drawn in memory: a range, not terabytes
])
def test_bad_counts_name_the_argument_and_the_range(kwargs, field):
    with pytest.raises(ConfigError) as info:
        load_dataset("synthetic", **{"img_size": S, **kwargs})
    assert one_line(info.value).startswith(field)


@pytest.mark.parametrize("partial", [False, True])
def test_a_failed_download_leaves_no_folders_behind(partial, tmp_path, monkeypatch):
    """No network (urllib itself fails, under torchvision's real download functions), or a
    download that breaks off after writing part of the archive: every folder the attempt
    created is removed again, and the error is one line."""

    def offline(request, *args, **kwargs):
        if partial:
            folder = tmp_path / "root" / "deeper" / "flowers-102"
            (folder / "102flowers.tgz").write_bytes(b"half an archive")
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    (tmp_path / "keep").mkdir()
    with pytest.raises(DataError) as info:
        load_dataset("flowers102", S, root=tmp_path / "root" / "deeper", download=True, cache_dir=tmp_path / "c",
                     progress=False)
    assert "could not download" in one_line(info.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep"]


@pytest.mark.parametrize("case", ["data root below a file", "data is a file"])
def test_a_file_where_a_folder_belongs_is_one_line_before_any_download(case, tmp_path, monkeypatch):
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: pytest.fail("tried to download"))
    (tmp_path / "file").write_text("x")
    with pytest.raises(DiffusionError) as info:
        if case == "data is a file":
            load_dataset(tmp_path / "file", S, cache_dir=tmp_path / "c", progress=False)
        else:
            load_dataset("flowers102", S, root=tmp_path / "file" / "root", cache_dir=tmp_path / "c", progress=False)
    assert "is a file" in one_line(info.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_the_package_reads_no_private_attribute_of_torchvision():
    """Flowers102 is read with public functions only. No module of the package reads an underscore
    attribute of anything imported from torchvision (``Flowers102._file_dict``, …) nor the private
    attributes of its dataset objects (a split's ``_labels``), which a release may rename at will."""
    import ast

    dataset_privates = {"_labels", "_split", "_file_dict", "_download_url_prefix", "_image_files", "_splits_map",
                        "_base_folder", "_images_folder"}
    for path in sorted(Path(data.__file__).parent.glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        from_torchvision = {alias.asname or alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                            and (node.module or "").startswith("torchvision") for alias in node.names}
        from_torchvision |= {(alias.asname or alias.name).split(".")[0] for node in ast.walk(tree)
                             if isinstance(node, ast.Import) for alias in node.names
                             if alias.name.startswith("torchvision")}
        for node in ast.walk(tree):
            if not isinstance(node, ast.Attribute) or not node.attr.startswith("_") or node.attr.startswith("__"):
                continue
            base = node.value
            while isinstance(base, ast.Attribute):
                base = base.value
            where = f"{path.name}:{node.lineno} reads {node.attr}"
            assert node.attr not in dataset_privates, where
            assert not (isinstance(base, ast.Name) and base.id in from_torchvision), where
