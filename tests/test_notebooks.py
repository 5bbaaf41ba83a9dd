"""What every notebook must keep, read from the .ipynb files (no kernel, milliseconds): the same
install cell, imports from the top level of diffusion_utils only, and build-it-yourself checks."""

from __future__ import annotations

import json
import re

import pytest

from conftest import REPO_ROOT

NOTEBOOKS = sorted((REPO_ROOT / "notebooks").glob("0*.ipynb"))


def code_cells(path) -> list[str]:
    cells = json.loads(path.read_text())["cells"]
    return ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]


def test_there_are_eight_notebooks():
    assert [p.name[:2] for p in NOTEBOOKS] == ["01", "02", "03", "04", "05", "06", "07", "08"]


def test_every_install_cell_is_the_same_and_names_the_repository_of_the_colab_badge():
    """%pip from the address written once in the cell, then one line if the import still fails."""
    installs = {code_cells(p)[0] for p in NOTEBOOKS}
    assert len(installs) == 1
    cell = installs.pop()
    repo = re.search(r'REPO = "(https://github.com/[^"]+)"', cell).group(1)
    assert '%pip install -q "diffusion-utils[eval] @ git+{REPO}"' in cell and "!pip" not in cell
    assert "_render_traceback_" in cell and "raise InstallFailed" in cell
    for path in NOTEBOOKS:
        first = "".join(json.loads(path.read_text())["cells"][0]["source"])
        badge = repo.replace("https://github.com/", "https://colab.research.google.com/github/")
        assert f"{badge}/blob/main/notebooks/{path.name}" in first, path.name


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name[:2])
def test_notebooks_import_only_the_top_level_and_check_what_the_reader_writes(path):
    cells = code_cells(path)
    assert not any(re.search(r"(from|import) diffusion_utils\.", c) for c in cells)
    checks = [c for c in cells if c.startswith("# NBVAL_CHECK_OUTPUT") and "your" in c]
    assert checks, "a build-it-yourself cell needs a check cell that compares it with the package"
