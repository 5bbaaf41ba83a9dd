"""Write docs/exercises.md's list of what each check names, from the registry the tests exercise.

Every known mistake of every exercise (``diffusion_utils.exercises``, each one written into the worked
lines and recognised in ``tests/test_exercises.py``) and every valid alternative, one table per
notebook, then how many of the wrong answers in ``tests/fixtures/learner_mistakes.py`` (written apart
from the registry) the checks name, measured by running them, between the two marker lines of
docs/exercises.md. A test regenerates the tables and fails when the committed ones differ, so neither
the list nor the rate can drift from the checks.

    python tools/exercise_table.py           # rewrite the tables in docs/exercises.md
    python tools/exercise_table.py --check   # exit 1 if they are stale
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from diffusion_utils import NoiseSchedule, TrainConfig, UNet
from diffusion_utils.exercises import EXERCISES

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the wrong answers run in the tests' learner cells
from fixtures.learner_mistakes import named_rates, verdicts  # noqa: E402
DOC = ROOT / "docs" / "exercises.md"
BEGIN = "<!-- the tables below are written by python tools/exercise_table.py -->"
END = "<!-- end of the written tables -->"


def context(name: str) -> dict:
    """What each check is given in its notebook (the hints do not depend on the values)."""
    torch.manual_seed(0)
    return {"schedule": NoiseSchedule.linear(1000),
            "config": TrainConfig.preset("quick-flow" if name == "flow_training_step" else "quick"),
            "model": UNet(base_channels=8, channel_mults=(1, 2), num_res_blocks=1, attention_levels=(),
                          time_emb_dim=16, img_size=16, num_classes=3).eval()}


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def tables() -> str:
    """The markdown: per notebook, each exercise's mistakes and valid alternatives with what the check says."""
    by_notebook: dict[str, list] = {}
    for ex in EXERCISES.values():
        by_notebook.setdefault(type(ex).__module__.rsplit("notebook", 1)[1], []).append(ex)
    out = []
    total = 0
    for number, exercises in by_notebook.items():
        title = sys.modules[type(exercises[0]).__module__].__doc__.split("\n")[0]
        title = title.split(": ", 1)[1].rstrip(".") if ": " in title else title
        named = sum(len(ex.mistakes(context(ex.name))) for ex in exercises)
        total += named
        out += [f"### {number} · {title}", "",
                f"{named} mistakes named across {len(exercises)} exercise{'s' if len(exercises) > 1 else ''}.", "",
                "| exercise | the mistake | the check's hint |", "|---|---|---|"]
        for ex in exercises:
            ctx = context(ex.name)
            for m in ex.mistakes(ctx):
                out.append(f"| `{ex.name}` | `{m.key}` | {cell(m.hint)} |")
            for m in ex.alternatives(ctx):
                out.append(f"| `{ex.name}` | `{m.key}` (valid: ✓) | {cell(m.hint)} |")
        out.append("")
    header = [f"{total} known mistakes in {len(EXERCISES)} exercises, each written into the worked lines the way a "
              "learner writes it and recognised by its own hint in `tests/test_exercises.py`; valid alternatives "
              "get a ✓ that says how they differ.", ""]
    return "\n".join(header + out + rates()).rstrip("\n") + "\n"


def percent(named: int, written: int) -> str:
    return f"{named} of {written} ({100 * named / written:.0f} %)"


def rates() -> list[str]:
    """The named rate of the wrong answers written apart from the registry, per notebook and overall,
    and the answers no hint names."""
    measured = named_rates()
    missed = [f"`{name}`: {what}" for name, what, result in verdicts() if result.mistake is None]
    return ["### How often a wrong answer is named", "",
            "`tests/fixtures/learner_mistakes.py` holds wrong answers written the way learners write them, about "
            "ten per exercise, as edits of the worked lines and apart from the list above (some are mistakes the "
            "list has, some are not). Every one of them gets a ✗; this is how many also get a hint:", "",
            "| notebook | named |", "|---|---|",
            *(f"| {key} | {percent(*measured[key])} |" for key in measured if key != "all"),
            f"| **all** | **{percent(*measured['all'])}** |", "",
            f"The ones no hint names get the ✗ alone, with the size and place of the difference or the error "
            f"they raised: {'; '.join(missed)}.", ""]


def render(text: str) -> str:
    """``text`` (docs/exercises.md) with the part between the markers replaced by :func:`tables`."""
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{DOC.name} lacks the marker lines {BEGIN!r} and {END!r}")
    head, rest = text.split(BEGIN, 1)
    return f"{head}{BEGIN}\n\n{tables()}\n{END}{rest.split(END, 1)[1]}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/exercises.md's tables are stale")
    args = parser.parse_args(argv)
    text = DOC.read_text(encoding="utf-8")
    new = render(text)
    if args.check:
        if new != text:
            print("stale: docs/exercises.md (run python tools/exercise_table.py)")
            return 1
        return 0
    DOC.write_text(new, encoding="utf-8")
    print(f"wrote the tables of {DOC.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
