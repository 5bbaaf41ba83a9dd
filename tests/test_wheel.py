"""The wheel: what Colab and ``pip install git+…`` install is a built wheel, not this checkout.

The wheel is built from a copy of the package's files (so no ``build/`` lands in the checkout),
must hold every module, the pretrained weights with their model cards and the 102 species names,
and must work on its own: a fresh interpreter that imports the package from the unpacked wheel
(not from this checkout) loads the shipped weights and samples from them.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import REPO_ROOT

PACKAGE = REPO_ROOT / "diffusion_utils"


def _builds_without_isolation() -> bool:
    """Whether this environment's setuptools can build a wheel itself (70.1 and later, or with the
    ``wheel`` package); otherwise pip builds in an isolated environment from the package registry."""
    if importlib.util.find_spec("wheel") is not None:
        return True
    version = importlib.metadata.version("setuptools").split(".")
    return tuple(int(part) for part in version[:2] if part.isdigit()) >= (70, 1)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("wheel")
    source = work / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO_ROOT / name, source / name)
    shutil.copytree(PACKAGE, source / "diffusion_utils", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", str(source), "-w", str(work / "dist")]
    if _builds_without_isolation():
        command += ["--no-build-isolation", "--no-index"]
    built = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr[-2000:]
    (path,) = (work / "dist").glob("diffusion_utils-*.whl")
    return path


@pytest.mark.slow
def test_the_wheel_holds_every_module_the_weights_their_cards_and_the_class_names(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = [p.relative_to(REPO_ROOT).as_posix() for p in sorted(PACKAGE.rglob("*.py"))]
    shipped += [p.relative_to(REPO_ROOT).as_posix() for p in sorted((PACKAGE / "pretrained" / "weights").iterdir())
                if p.suffix in (".pt", ".md")]
    assert any(name.endswith(".pt") for name in shipped) and any(name.endswith(".md") for name in shipped)
    assert "diffusion_utils/data/flowers102_classes.txt" in names
    missing = [name for name in shipped if name not in names]
    assert not missing, f"not in the wheel: {missing}"


@pytest.mark.slow
def test_load_pretrained_works_from_the_unpacked_wheel(wheel, tmp_path):
    """A new interpreter, outside this checkout, imports the package from the wheel alone."""
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    script = (
        "import torch, diffusion_utils as du\n"
        "from diffusion_utils.data.flowers102 import flowers102_class_names\n"
        "print(du.__file__)\n"
        "print(','.join(du.PRETRAINED))\n"
        "name = 'flowers32'\n"
        "model, schedule, config = du.load_pretrained(name)\n"
        "assert du.pretrained_card(name)['images_seen'] > 0\n"
        "images = du.sample(model, schedule, 1, sampler='ddim', steps=2, progress=False,\n"
        "                   generator=torch.Generator().manual_seed(0))\n"
        "assert images.shape == (1, 3, config.img_size, config.img_size) and torch.isfinite(images).all()\n"
        "print(len(flowers102_class_names()))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(site), "OMP_NUM_THREADS": "1"}
    ran = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)
    assert ran.returncode == 0, ran.stderr[-2000:]
    location, pretrained, classes = ran.stdout.split()
    assert Path(location).is_relative_to(site)
    assert "flowers32" in pretrained.split(",") and classes == "102"
    assert (site / "diffusion_utils" / "pretrained" / "weights" / "flowers32.md").is_file()
