"""Make the exercise edition of the notebooks: ``exercises/0N_*.ipynb`` from ``notebooks/0N_*.ipynb``.

The worked notebooks mark the lines a learner is to write with nbgrader's markers, inside code cells:

    def q_sample(x0, t, eps):
        # xₜ = √ᾱₜ x₀ + √(1−ᾱₜ) ε (Ho et al. eq. 4) …      ← what to write: kept in both editions
        ### BEGIN SOLUTION
        a = alpha_bar[t].view(-1, 1, 1, 1)
        return a.sqrt() * x0 + (1 - a).sqrt() * eps
        ### END SOLUTION

The exercise edition replaces each marked block by one stub line that later code can recognise as
"not written yet" (see ``diffusion_utils.exercises``): ``return ...`` inside a function, or
``NAME = ...`` for a block at the top level that ends by assigning NAME. It also clears every output,
drops nbval's ``# NBVAL_CHECK_OUTPUT`` lines, points the Colab badge at the exercise edition, and swaps
the first cell's "*Worked edition: …*" line for the exercise edition's. Everything else is the
worked notebook's, so the two editions cannot drift apart: a test regenerates the exercises and
fails when the committed ones differ.

    python tools/make_exercises.py           # write exercises/ from notebooks/
    python tools/make_exercises.py --check   # exit 1, naming them, if any exercise notebook is stale
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
WORKED, EXERCISES = ROOT / "notebooks", ROOT / "exercises"
BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
WORKED_NOTE = re.compile(r"^\*Worked edition:.*\*$", re.MULTILINE)


class MarkerError(ValueError):
    """A worked notebook's solution markers cannot be turned into a stub."""


def stub_for(block: list[str], indent: str, where: str) -> str:
    """The line that replaces a marked block: ``return ...`` in a function, ``NAME = ...`` at the top level."""
    if indent:
        return f"{indent}return ...  # ✎ your lines here, in place of this one"
    try:
        last = ast.parse("\n".join(block)).body[-1]
    except (SyntaxError, IndexError):
        raise MarkerError(f"{where}: the marked block is not Python code") from None
    if not isinstance(last, ast.Assign):
        raise MarkerError(f"{where}: a top-level marked block must end by assigning the name later cells use")
    targets = ", ".join(ast.unparse(t) for t in last.targets)
    return f"{targets} = ...  # ✎ your line here, in place of the ..."


def blank_solutions(source: str, where: str = "cell") -> tuple[str, int]:
    """``source`` with every marked block replaced by its stub, and how many blocks there were."""
    lines, out, block, indent, count = source.split("\n"), [], None, "", 0
    for line in lines:
        stripped = line.strip()
        if stripped == BEGIN:
            if block is not None:
                raise MarkerError(f"{where}: {BEGIN} inside another marked block")
            block, indent = [], line[: len(line) - len(line.lstrip())]
        elif stripped == END:
            if block is None:
                raise MarkerError(f"{where}: {END} without {BEGIN}")
            body = [b[len(indent):] if b.startswith(indent) else b for b in block]
            out.append(stub_for(body, indent, where))
            block, count = None, count + 1
        elif block is not None:
            block.append(line)
        else:
            out.append(line)
    if block is not None:
        raise MarkerError(f"{where}: {BEGIN} without {END}")
    return "\n".join(out), count


def exercise_note(name: str) -> str:
    return (f"*Exercise edition: the lines marked ✎ are yours to write. Run the check cell after each: it "
            f"says whether your lines match the package's and, if not, where they differ and — for the usual "
            f"mistakes — why. Until a blank is filled, later cells use the package's version and say so, so "
            f"the notebook always runs to the end. The answers are in the worked edition, "
            f"[`notebooks/{name}`](../notebooks/{name}).*")


def exercise_edition(path: Path) -> tuple[nbformat.NotebookNode, int]:
    """The exercise edition of the worked notebook at ``path``, and its number of blanks."""
    nb = nbformat.read(path, as_version=4)
    nb.metadata.pop("widgets", None)  # saved widget state is output
    blanks = 0
    for i, cell in enumerate(nb.cells):
        cell.metadata.pop("execution", None)
        if cell.cell_type != "code":
            continue
        source, n = blank_solutions(cell.source, f"{path.name}, cell {i}")
        lines = source.split("\n")
        if lines and lines[0].strip() == "# NBVAL_CHECK_OUTPUT":
            lines = lines[1:]
        cell.source, cell.outputs, cell.execution_count = "\n".join(lines), [], None
        blanks += n
    first = nb.cells[0]
    if not WORKED_NOTE.search(first.source):
        raise MarkerError(f"{path.name}: its first cell needs a line '*Worked edition: …*', as the other notebooks' "
                          f"have, for the exercise edition's note to replace")
    first.source = WORKED_NOTE.sub(lambda _: exercise_note(path.name), first.source)
    first.source = first.source.replace(f"blob/main/notebooks/{path.name}", f"blob/main/exercises/{path.name}")
    return nb, blanks


def render(path: Path) -> str:
    """The exercise edition of ``path`` as the exact text written to ``exercises/``."""
    return nbformat.writes(exercise_edition(path)[0]) + "\n"


def worked_notebooks() -> list[Path]:
    return sorted(WORKED.glob("0*.ipynb"))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="only report stale exercise notebooks")
    args = parser.parse_args(argv)
    stale, failed = [], []
    for path in worked_notebooks():
        target = EXERCISES / path.name
        try:
            text = render(path)
        except MarkerError as err:  # one line per notebook, and carry on with the others
            print(f"cannot make the exercise edition of {err}", file=sys.stderr)
            failed.append(path)
            continue
        if target.exists() and target.read_text(encoding="utf-8") == text:
            continue
        stale.append(target)
        if not args.check:
            EXERCISES.mkdir(exist_ok=True)
            target.write_text(text, encoding="utf-8")
            blanks = exercise_edition(path)[1]
            print(f"wrote {target.relative_to(ROOT)} ({blanks} blank{'' if blanks == 1 else 's'})")
    extra = sorted(set(p.name for p in EXERCISES.glob("0*.ipynb")) - set(p.name for p in worked_notebooks()))
    if args.check:
        for target in stale:
            print(f"stale: {target.relative_to(ROOT)} (run python tools/make_exercises.py)")
        for name in extra:
            print(f"no worked notebook for exercises/{name}")
        return 1 if stale or extra or failed else 0
    for name in extra:
        print(f"note: exercises/{name} has no worked notebook; remove it")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
