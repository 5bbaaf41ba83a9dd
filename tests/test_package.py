"""The package's shape (docs/package.md draws it): the ideas at the root, the support in folders, and
an import graph, read from the source with ast, that has no cycles and keeps the rules below;
notebooks import only the top level."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from conftest import REPO_ROOT

PACKAGE = REPO_ROOT / "diffusion_utils"

# The maths: the modules at the root that a reader reads for the algorithm.
MATHS = ("schedule", "flow", "model", "loss", "samplers", "sampling", "guidance", "superres", "editing",
         "interpolation", "ode_paths")
# The only support the maths may import: the one-line errors and the shared checks of numbers.
MATHS_MAY_IMPORT = ("plumbing.errors", "plumbing.checks")
# Support the maths needs beyond those, each with its reason. An entry no module needs any more fails
# the test, so the list stays the list of real exceptions.
MATHS_EXCEPTIONS = {
    ("flow", "plumbing.distributed"): "flow_loss draws t, ε and the label drops for the whole global batch and "
                                      "keeps this process's rows (shard_slice), so N processes train what one would",
    ("loss", "plumbing.distributed"): "diffusion_loss draws t, ε and the label drops for the whole global batch "
                                      "and keeps this process's rows (shard_slice)",
    ("superres", "plumbing.distributed"): "training_pair draws the crop offsets for the whole global batch and "
                                          "keeps this process's rows (shard_slice)",
    ("sampling", "plumbing.pixels"): "sample_trajectory keeps its frames as uint8 on the CPU (to_uint8)",
    ("sampling", "plumbing.precision"): "sample runs the network in bfloat16 autocast only where the hardware "
                                        "computes it natively (bf16_available)",
}
NOTEBOOK_SIDE = ("notebook", "exercises")
SUPPORT = ("data", "evaluation", "pretrained", "plumbing")


def folder_of(module: str) -> str:
    """The folder a module (dotted, relative to the package) sits in; "" for the root."""
    return module.rpartition(".")[0].split(".")[0]


def package_modules(package: Path = PACKAGE) -> dict[str, Path]:
    """Every module of the package, dotted and relative to it (``"schedule"``, ``"data.batches"``,
    ``"exercises"`` for a folder's ``__init__.py``; the root's own ``__init__`` and ``__main__`` are
    ``""`` and ``"__main__"``) → its file."""
    modules = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """module → the package's modules it imports: every ``from .x import …``, ``from .. import x``,
    ``import diffusion_utils.x`` and ``from diffusion_utils.x import …`` anywhere in the file
    (imports inside functions too), resolved to the module they load."""
    modules = package_modules(package)
    name = package.name
    graph = {}
    for module, path in modules.items():
        here = module.split(".") if module else []
        if path.name != "__init__.py":
            here = here[:-1]  # the package the file sits in
        found = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = here[: len(here) - (node.level - 1)]
                    target = base + (node.module.split(".") if node.module else [])
                elif node.module and node.module.split(".")[0] == name:
                    target = node.module.split(".")[1:]
                else:
                    continue
                for alias in node.names:  # from .plumbing import distributed: the submodule
                    sub = ".".join(target + [alias.name])
                    found.add(sub if sub in modules else ".".join(target))
            elif isinstance(node, ast.Import):
                found |= {".".join(a.name.split(".")[1:]) for a in node.names if a.name.split(".")[0] == name}
        found.discard(module)
        unknown = found - set(modules)
        assert not unknown, f"{path.relative_to(package.parent)} imports {sorted(unknown)}, which do not exist"
        graph[module] = found
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of imports (its modules, the first repeated at the end), or None."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def layering_problems(graph: dict[str, set[str]], exceptions: dict = MATHS_EXCEPTIONS) -> list[str]:
    """Every import that breaks a rule of docs/package.md's "What imports what", in words."""
    problems = []
    cycle = find_cycle(graph)
    if cycle:
        problems.append("an import cycle: " + " → ".join(m or "__init__" for m in cycle))
    used = set()
    for module, imports in sorted(graph.items()):
        folder = folder_of(module) if "." in module else (module if module in NOTEBOOK_SIDE + SUPPORT else "")
        for target in sorted(imports):
            target_folder = folder_of(target) if "." in target else (target if target in NOTEBOOK_SIDE + SUPPORT else "")
            if module in MATHS:
                if target_folder == "" and target not in MATHS:
                    problems.append(f"{module} (maths) imports {target}, a module at the root that is not maths")
                elif target_folder and target not in MATHS_MAY_IMPORT:
                    if (module, target) in exceptions:
                        used.add((module, target))
                    else:
                        problems.append(f"{module} (maths) imports {target}; the maths may import only "
                                        f"{', '.join(MATHS_MAY_IMPORT)} of the support")
            if folder in SUPPORT and target_folder in NOTEBOOK_SIDE:
                problems.append(f"{module} (support) imports {target}, on the notebook side")
            if folder == "plumbing" and target_folder and target_folder != "plumbing":
                problems.append(f"{module} (plumbing) imports {target}, from another folder")
    problems += [f"the exception {module} → {target} is no longer needed; remove it"
                 for module, target in sorted(set(exceptions) - used)]
    return problems


def documented_modules() -> list[str]:
    """The modules docs/package.md's tables list (``schedule.py``, ``data/batches.py``, ``exercises/``)."""
    text = (REPO_ROOT / "docs" / "package.md").read_text(encoding="utf-8")
    return re.findall(r"^\| `([\w/]+?(?:\.py|/))` \|", text, flags=re.MULTILINE)


def test_docs_map_lists_every_module_once():
    listed = documented_modules()
    modules = {m for m in package_modules() if m not in ("", "__main__") and not folder_of(m) == "exercises"}
    modules -= set(SUPPORT + ("notebook",))  # the folders' __init__.py: a docstring each, no code
    expected = sorted(m.replace(".", "/") + ("/" if m == "exercises" else ".py") for m in modules)
    assert sorted(listed) == expected, "docs/package.md's tables must list every module once"
    for folder in SUPPORT + ("notebook",):  # and the folders' __init__.py hold only their docstring
        body = ast.parse((PACKAGE / folder / "__init__.py").read_text(encoding="utf-8")).body
        assert len(body) == 1 and isinstance(body[0], ast.Expr), f"{folder}/__init__.py holds code"


def test_the_import_graph_keeps_the_layering():
    graph = import_graph()
    assert graph["sampling"] >= {"plumbing.errors", "samplers"}  # the graph is read, not empty
    problems = layering_problems(graph)
    assert not problems, "\n".join(problems)


def test_the_layering_check_finds_what_breaks_it(tmp_path):
    """The check fails on a package that breaks each rule: a cycle, maths importing the data and the
    run, support importing the notebook side, plumbing importing another folder, a stale exception."""
    package = tmp_path / "diffusion_utils"
    files = {
        "__init__.py": "from .schedule import NoiseSchedule\n",
        "schedule.py": "from .plumbing.errors import ConfigError\nfrom .data.batches import epoch_batches\n",
        "model.py": "def f():\n    from .run import go\n",
        "run.py": "from .model import f\n",
        "data/__init__.py": "",
        "data/batches.py": "from ..notebook import visualization\n",
        "notebook/__init__.py": "",
        "notebook/visualization.py": "",
        "plumbing/__init__.py": "",
        "plumbing/errors.py": "import diffusion_utils.data.batches\n",
    }
    for name, text in files.items():
        (package / name).parent.mkdir(parents=True, exist_ok=True)
        (package / name).write_text(text, encoding="utf-8")
    graph = import_graph(package)
    assert graph["notebook"] == set() and graph["data.batches"] == {"notebook.visualization"}
    problems = "\n".join(layering_problems(graph, exceptions={("flow", "plumbing.pixels"): "stale"}))
    for expected in ("an import cycle: model → run → model",
                     "schedule (maths) imports data.batches",
                     "model (maths) imports run, a module at the root that is not maths",
                     "data.batches (support) imports notebook.visualization, on the notebook side",
                     "plumbing.errors (plumbing) imports data.batches, from another folder",
                     "the exception flow → plumbing.pixels is no longer needed"):
        assert expected in problems, problems
    (package / "schedule.py").write_text("from .plumbing.nothing import x\n", encoding="utf-8")
    with pytest.raises(AssertionError, match="do not exist"):
        import_graph(package)


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


def test_the_readme_runs_the_tests_with_the_line_ci_runs():
    """The README's first screen holds the test command, and .ci/run runs that very line; plain
    `pytest` runs the notebooks too, because the nbval options live in pyproject.toml."""
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    ci_line = next(line for line in (REPO_ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
                   if line.startswith("pip install"))
    first_screen = readme[:readme.index("\n## ", readme.index("## Quick start") + 1)]
    assert ci_line in first_screen.splitlines()
    assert "pip install -e" in first_screen and "sample --pretrained flowers32" in first_screen
    assert "will be published" in first_screen
    addopts = re.search(r'^addopts = "(.*)"$', (REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"), re.M)
    assert "--nbval-lax" in addopts.group(1).split()


def test_no_file_of_the_package_is_ignored_by_git():
    """A folder name such as data/ in .gitignore must not hide a module of the package: a clean
    checkout (and the wheel built from it) would lack it."""
    if not (REPO_ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    files = [str(p.relative_to(REPO_ROOT)) for p in PACKAGE.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    done = subprocess.run(["git", "check-ignore", "--no-index", "--stdin"], input="\n".join(files), cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=60)
    ignored = done.stdout.split()
    assert not ignored, f"git ignores {ignored}; add a ! line for them to .gitignore"
