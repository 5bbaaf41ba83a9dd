"""Running the suite on several workers (pytest-xdist's ``-n``, set in pyproject.toml's addopts).

Here, at the repository's root, so that it holds however pytest is called (``pytest``,
``pytest notebooks/03_training.ipynb``, ``pytest tests/test_x.py``).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Each worker gets its share of the cores, and so do the notebook kernels it starts (they inherit
# this variable): workers that each used every core would only fight over them.
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    os.environ.setdefault("OMP_NUM_THREADS",
                          str(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))))

# Notebooks read what earlier notebooks wrote: 04, 05 and 08 sample or compare 03's model in
# notebooks/outputs/, so those four run as one unit, in order, on one worker.
NOTEBOOK_CHAIN = ("03", "04", "05", "08")


def work_unit(nodeid: str, default: str) -> str:
    """What runs together, in collection order, on one worker: a notebook's cells (they share one
    kernel), 03's chain as one unit, and otherwise ``default`` (a test file)."""
    path = Path(nodeid.split("::", 1)[0])
    if path.suffix != ".ipynb":
        return default
    return "notebooks " + "-".join(NOTEBOOK_CHAIN) if path.name[:2] in NOTEBOOK_CHAIN else path.as_posix()


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist, when it is installed
def pytest_xdist_make_scheduler(config, log):
    # Not --dist loadgroup: with pytest ≥ 9 its xdist_group marks no longer reach the scheduler.
    from xdist.scheduler import LoadScopeScheduling

    class NotebookAwareScheduling(LoadScopeScheduling):
        """LoadScope's work units (a test file), with a notebook's cells and 03's chain kept whole.
        The largest units start first (xdist's --loadscope-reorder, on by default)."""

        def _split_scope(self, nodeid: str) -> str:
            return work_unit(nodeid, super()._split_scope(nodeid))

    return NotebookAwareScheduling(config, log)
