"""The package's shape: modules import only modules below them (docs/package.md's table, read from
the bottom up), so the import graph has no cycles; notebooks import only the top level."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import nbformat

from conftest import REPO_ROOT

PACKAGE = REPO_ROOT / "diffusion_utils"


def documented_order() -> list[str]:
    """The modules and folders in the order of docs/package.md's table (bottom layer first)."""
    text = (REPO_ROOT / "docs" / "package.md").read_text(encoding="utf-8")
    return re.findall(r"^\| `(\w+)(?:\.py|/)` \|", text, flags=re.MULTILINE)


def package_parts() -> list[str]:
    """The package's top-level modules and folders (a folder with an __init__.py counts as one part)."""
    modules = [p.stem for p in PACKAGE.glob("*.py") if p.stem not in ("__init__", "__main__")]
    return sorted(modules + [p.parent.name for p in PACKAGE.glob("*/__init__.py")])


def relative_imports(part: str) -> set[str]:
    """The package's top-level parts that ``part`` imports (``from .x import …``, ``from . import x``;
    inside a folder, ``from ..x import …``; imports within the folder itself don't count)."""
    folder = PACKAGE / part
    files, depth = (sorted(folder.glob("*.py")), 2) if folder.is_dir() else ([PACKAGE / f"{part}.py"], 1)
    found = set()
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level == depth:
                found |= {node.module.split(".")[0]} if node.module else {alias.name for alias in node.names}
    return found


def test_every_module_imports_only_modules_below_it():
    order = documented_order()
    assert sorted(order) == package_parts(), "docs/package.md's table must list every module and folder once"
    for module in order:
        above = [name for name in relative_imports(module) if order.index(name) >= order.index(module)]
        assert not above, f"{module} imports {above}, which docs/package.md places above it"


def test_notebooks_import_only_the_top_level():
    for folder in ("notebooks", "exercises"):
        for path in sorted((REPO_ROOT / folder).glob("*.ipynb")):
            code = "\n".join(c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code")
            deep = re.findall(r"(?:from|import)\s+diffusion_utils\.\w+", code)
            assert not deep, f"{path.relative_to(REPO_ROOT)}: {deep}"


def test_every_test_the_troubleshooting_table_names_exists():
    """Each row of docs/troubleshooting.md names the tests that hold it; they must exist."""
    text = (REPO_ROOT / "docs" / "troubleshooting.md").read_text(encoding="utf-8")
    named = re.findall(r"`(test_\w+\.py)::(\w+)`", text)
    assert len(named) >= 20
    for file, name in named:
        source = (REPO_ROOT / "tests" / file).read_text(encoding="utf-8")
        assert re.search(rf"^def {name}\(", source, flags=re.MULTILINE), f"{file}::{name} does not exist"


def reader_texts():
    """What users read: the README, docs/, the model cards, the notebooks' markdown."""
    for path in [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md")),
                 *sorted((PACKAGE / "pretrained" / "weights").glob("*.md"))]:
        yield path, path.read_text(encoding="utf-8")
    for folder in ("notebooks", "exercises"):
        for path in sorted((REPO_ROOT / folder).glob("*.ipynb")):
            cells = nbformat.read(path, as_version=4).cells
            yield path, "\n".join(c.source for c in cells if c.cell_type == "markdown")


def test_what_users_read_links_to_files_that_exist():
    for path, text in reader_texts():
        if path.suffix != ".md":
            continue
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)|src=\"([^\"]+)\"", text):
            target = next(t for t in target if t)
            if not target.startswith(("http://", "https://")):
                assert (path.parent / target).exists(), f"{path.relative_to(REPO_ROOT)} links to missing {target}"



def test_the_package_and_the_cli_work_without_ipywidgets():
    """ipywidgets is a notebook extra: importing the package and the CLI's help need none of it,
    and the first use of a widget says in one line what to install."""
    code = "\n".join([
        "import sys",
        "sys.modules['ipywidgets'] = None  # any import of ipywidgets now raises ImportError",
        "import diffusion_utils",
        "assert 'ipywidgets' not in [m for m, v in sys.modules.items() if v is not None]",
        "try:",
        "    diffusion_utils.DenoisingSlider",
        "except ImportError as err:",
        "    print('widget:', err)",
        "import runpy",
        "for argv in (['--help'], ['sample', '--help']):  # python -m diffusion_utils …",
        "    sys.argv = ['diffusion_utils', *argv]",
        "    try:",
        "        runpy.run_module('diffusion_utils', run_name='__main__', alter_sys=True)",
        "    except SystemExit as exit:",
        "        assert exit.code == 0, exit.code",
    ])
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "widget: the notebook widgets need ipywidgets: pip install" in done.stdout
    assert "--pretrained" in done.stdout and "train" in done.stdout
