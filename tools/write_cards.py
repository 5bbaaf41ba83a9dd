"""Write the shipped model cards, ``diffusion_utils/pretrained/weights/NAME.md``, from what ``NAME.pt`` stores
(its config and card facts) and from ``docs/memorisation.json`` (their "Is it copying?" section).

The card's facts live in the weights file; the copying test's numbers live in the JSON that
``benchmarks/bench_memorisation.py`` writes. Both go through :func:`diffusion_utils.pretrained.cards.render_card`,
and a test regenerates the cards and fails when the committed ones differ, so a card cannot drift
from either.

    python tools/write_cards.py           # rewrite the cards of the shipped diffusion models
    python tools/write_cards.py --check   # exit 1, naming them, if any card is stale
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from diffusion_utils import load_pretrained, pretrained_card
from diffusion_utils.pretrained.cards import render_card

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = ROOT / "diffusion_utils" / "pretrained" / "weights"
MEMORISATION = ROOT / "docs" / "memorisation.json"
CARDS = ("flowers32", "sr64", "flowers32-flow")  # every shipped model
COPYING_MEASURED = ("flowers32", "sr64")  # the models docs/memorisation.json measured (flowers32 alone, and as sr64's base)


def memorisation() -> dict | None:
    """docs/memorisation.json, with ``figures``: its folder as a link from a card (``../../docs``)."""
    if not MEMORISATION.exists():
        return None
    measured = json.loads(MEMORISATION.read_text(encoding="utf-8"))
    return {**measured, "figures": Path(os.path.relpath(MEMORISATION.parent, WEIGHTS)).as_posix()}


def render(name: str, measured: dict | None = None) -> str:
    """The card of the shipped ``name``: its stored facts, and the copying test of ``measured``."""
    _, _, config = load_pretrained(name)
    return render_card(name, config, {**pretrained_card(name), "memorisation": measured})


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="only report stale cards")
    args = parser.parse_args(argv)
    measured, stale = memorisation(), []
    for name in CARDS:
        target, text = WEIGHTS / f"{name}.md", render(name, measured)
        if target.exists() and target.read_text(encoding="utf-8") == text:
            continue
        stale.append(target)
        if not args.check:
            target.write_text(text, encoding="utf-8")
    for target in stale:
        print(f"{'stale' if args.check else 'wrote'}: {target.relative_to(ROOT)}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
