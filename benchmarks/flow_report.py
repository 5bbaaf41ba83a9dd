"""Where ``bench_flow.py`` keeps its finished pieces, and the report made from them.

    python benchmarks/bench_flow.py --out OUT --report       # docs/flow_vs_ddpm.json and .png

The run's folder ``OUT`` holds one file per finished piece (each written atomically, so a killed
run leaves either the whole piece or nothing):

- ``plan.json``: what the run measures (recipes, budgets, calls, n) and the command, written first;
- ``real_features_<n_ref>.pt``: Inception features of the reference and floor photos;
- ``throughput.json``: training images/s of each recipe, with how the machine was kept quiet;
- ``train/<recipe>/snapshot_<images>.pth`` (the training state after that many images) and
  ``info_<images>.json`` (steps, the last epoch's mean loss, seconds);
- ``straightness/<images>/<recipe>.json``;
- ``scores/<images>/<recipe>__<sampler>__<calls>.json``: KID ± std and FID of one setting.

:func:`write_report` reads whatever is there against the plan and writes every number it finds;
an entry the plan names but ``OUT`` lacks is written as ``"missing"``, never estimated.
"""

from __future__ import annotations

import json
import os
import platform
from datetime import date
from pathlib import Path

import torch

from diffusion_utils.plumbing.files import atomic_write

MISSING = "missing"


# ---------------------------------------------------------------------------------------------
# The folder's layout
# ---------------------------------------------------------------------------------------------
def snapshot_path(out: Path, recipe: str, images: int) -> Path:
    return out / "train" / recipe / f"snapshot_{images}.pth"


def train_info_path(out: Path, recipe: str, images: int) -> Path:
    return out / "train" / recipe / f"info_{images}.json"


def score_path(out: Path, images: int, recipe: str, sampler: str, calls: int) -> Path:
    return out / "scores" / str(images) / f"{recipe}__{sampler}__{calls}.json"


def straightness_path(out: Path, images: int, recipe: str) -> Path:
    return out / "straightness" / str(images) / f"{recipe}.json"


def write_json(path: Path, value) -> None:
    """``value`` as indented JSON at ``path``, atomically (the folder is made if needed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda file: file.write((json.dumps(value, indent=1) + "\n").encode()))


def read_json(path: Path):
    """The JSON at ``path``, or :data:`MISSING` when that piece is not finished."""
    return json.loads(path.read_text()) if path.is_file() else MISSING


# ---------------------------------------------------------------------------------------------
# The machine
# ---------------------------------------------------------------------------------------------
def cpu_model() -> str:
    """The CPU's model string, as /proc/cpuinfo gives it (``platform.processor()`` elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def native_bf16() -> bool:
    """Whether the CPU advertises native bfloat16 (``avx512_bf16`` or ``amx_bf16``)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def cpu_name() -> str:
    """How the project names this machine beside its figures, e.g. "2-core AMD EPYC with native bf16"."""
    model = " ".join(w for w in cpu_model().split() if not w.endswith("-Core") and w != "Processor")
    return f"{os.cpu_count()}-core {model} {'with' if native_bf16() else 'without'} native bf16"


# ---------------------------------------------------------------------------------------------
# The answer, in words from the numbers
# ---------------------------------------------------------------------------------------------
def best_of(rows: dict) -> tuple[dict, str, int] | None:
    """The lowest-KID score among ``rows`` (sampler → calls → score), with its sampler and calls."""
    done = [(r, sampler, int(calls)) for sampler, by_calls in rows.items() for calls, r in by_calls.items()
            if r != MISSING]
    return min(done, key=lambda d: d[0]["kid"]) if done else None


def calls_needed(rows: dict) -> int | None:
    """The fewest calls at which some sampler scores within one std of the recipe's own best KID."""
    best = best_of(rows)
    if best is None:
        return None
    limit = best[0]["kid"] + best[0]["kid_std"]
    reach = [int(calls) for by_calls in rows.values() for calls, r in by_calls.items()
             if r != MISSING and r["kid"] <= limit]
    return min(reach)


def compared(a: dict, b: dict) -> str:
    """"better", "worse" or "level": a's KID against b's, apart by more than twice their combined std or not."""
    gap, noise = a["kid"] - b["kid"], 2 * (a["kid_std"] ** 2 + b["kid_std"] ** 2) ** 0.5
    return "level with" if abs(gap) <= noise else ("better than" if gap < 0 else "worse than")


def answer(report: dict) -> str:
    """One or two sentences from the numbers: which objective scores better at each measured budget,
    and how many calls each needs to come within one std of its own best."""
    labels = {recipe: spec["label"] for recipe, spec in report["recipes"].items()}
    sentences, unmeasured = [], []
    for images in report["budgets"]:
        rows = report["results"][str(images)]
        bests = {recipe: best_of(rows[recipe]) for recipe in rows}
        if any(b is None for b in bests.values()) or any(
                r == MISSING for recipe in rows for by_calls in rows[recipe].values() for r in by_calls.values()):
            unmeasured.append(f"{images:,}")
            continue
        flow = min((r for r in bests if r != "diffusion"), key=lambda r: bests[r][0]["kid"])
        f, d = bests[flow], bests["diffusion"]
        names = {recipe: spec["sampler_names"] for recipe, spec in report["recipes"].items()}
        needed = "; ".join(f"{labels[recipe]}: {calls_needed(rows[recipe])}" for recipe in rows)
        sentences.append(
            f"After {images:,} training images, {labels[flow]} (best: {names[flow][f[1]]}, {f[2]} calls) scores KID "
            f"{f[0]['kid']:.3f} ± {f[0]['kid_std']:.3f}, {compared(f[0], d[0])} diffusion's {d[0]['kid']:.3f} ± "
            f"{d[0]['kid_std']:.3f} ({names['diffusion'][d[1]]}, {d[2]} calls). Calls needed to come within one "
            f"std of each recipe's own best: {needed}.")
    if unmeasured:
        sentences.append(f"Not measured yet: the {' and '.join(unmeasured)}-image budget"
                         f"{'s' if len(unmeasured) > 1 else ''}.")
    return " ".join(sentences)


def table(report: dict) -> str:
    """KID ± std by budget, recipe and sampler (rows) and calls (columns), as text."""
    calls = report["calls"]
    lines = ["images seen  recipe, sampler".ljust(52) + "".join(f"{c:>7} calls   " for c in calls)]
    for images in report["budgets"]:
        for recipe, spec in report["recipes"].items():
            for sampler in spec["samplers"]:
                rows = report["results"][str(images)][recipe][sampler]
                cells = "".join(f"{'—':>15}   " if rows[str(c)] == MISSING else
                                f"{rows[str(c)]['kid']:>7.3f} ± {rows[str(c)]['kid_std']:.3f}   " for c in calls)
                lines.append(f"{images:>11,}  {spec['label']}, {spec['sampler_names'][sampler]}".ljust(52) + cells)
    floor = report["floor"]
    if floor != MISSING:
        lines.append(f"real photos against real photos (the floor): KID {floor['kid']:.5f} ± {floor['kid_std']:.5f}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------------------------
def collect(out: Path) -> dict:
    """Every finished number under ``out``, laid out by the plan; unfinished entries are ``"missing"``."""
    plan = read_json(out / "plan.json")
    if plan == MISSING:
        raise SystemExit(f"error: {out} holds no plan.json: start the run (without --report) first, or pass its --out")
    floor = read_json(out / "floor.json")
    results, straightness, training = {}, {}, {}
    for images in plan["budgets"]:
        results[str(images)] = {
            recipe: {sampler: {str(calls): read_json(score_path(out, images, recipe, sampler, calls))
                               for calls in plan["calls"]}
                     for sampler in spec["samplers"]}
            for recipe, spec in plan["recipes"].items()}
        straightness[str(images)] = {recipe: read_json(straightness_path(out, images, recipe))
                                     for recipe in plan["recipes"]}
    for recipe in plan["recipes"]:
        training[recipe] = {str(images): read_json(train_info_path(out, recipe, images)) for images in plan["budgets"]}
    return {
        "title": "Flow matching against the quick DDPM recipe: the same UNet, data and images seen",
        "machine": {"cpu": cpu_model(), "described_as": cpu_name(), "cores": os.cpu_count(),
                    "native_bf16": native_bf16(), "threads": plan["threads"]},
        "torch": torch.__version__,
        "date_started": plan["date"], "date_reported": date.today().isoformat(),
        "command": plan["command"],
        "protocol": plan["protocol"],
        "recipes": plan["recipes"],
        "budgets": plan["budgets"], "calls": plan["calls"], "n": plan["n"], "n_ref": plan["n_ref"],
        "floor": floor,
        "throughput": read_json(out / "throughput.json"),
        "training": training,
        "results": results,
        "straightness": straightness,
    }


def plot(report: dict, path: Path) -> None:
    """KID ± std against network calls per image, one panel per budget, the floor dashed."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    budgets = report["budgets"]
    fig = Figure(figsize=(5.2 * len(budgets), 4.2))
    axes = fig.subplots(1, len(budgets), sharey=True, squeeze=False)[0]
    floor = report["floor"]
    for ax, images in zip(axes, budgets):
        missing = 0
        for recipe, spec in report["recipes"].items():
            for sampler in spec["samplers"]:
                rows = report["results"][str(images)][recipe][sampler]
                done = [(int(c), r) for c, r in rows.items() if r != MISSING]
                missing += len(rows) - len(done)
                if done:
                    done.sort()
                    ax.errorbar([c for c, _ in done], [r["kid"] for _, r in done],
                                yerr=[r["kid_std"] for _, r in done], capsize=3, color=spec["color"],
                                marker="s" if sampler == "heun" else "o", linestyle="--" if sampler == "heun" else "-",
                                label=f"{spec['label']}, {spec['sampler_names'][sampler]}")
        if floor != MISSING:
            ax.axhline(floor["kid"], color="gray", ls=":", label=f"real vs real, the floor (n = {report['n']})")
        ax.set_xscale("log")
        ax.set_xticks(report["calls"])
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
        note = f" ({missing} settings not measured yet)" if missing else ""
        ax.set(xlabel="network calls per image (log scale)", title=f"{images:,} training images{note}")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"KID, Inception ({report['n']} samples vs {report['n_ref']} photos; lower is better)")
    handles, labels = axes[0].get_legend_handles_labels()
    for ax in axes[1:]:  # a panel may hold lines the first lacks
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    if handles:
        axes[-1].legend(handles, labels, fontsize=7)
    fig.suptitle(f"32 px Flowers102, quick UNet: diffusion (v + min-SNR) against flow matching; "
                 f"{report['machine']['described_as']}, float32",
                 fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def write_report(out: Path, to: Path) -> dict:
    """Collect ``out`` and write ``to/flow_vs_ddpm.json`` and ``to/flow_vs_ddpm.png``; returns the report."""
    report = collect(out)
    report["answer"], report["table"] = answer(report), table(report)
    write_json(to / "flow_vs_ddpm.json", report)
    plot(report, to / "flow_vs_ddpm.png")
    return report
