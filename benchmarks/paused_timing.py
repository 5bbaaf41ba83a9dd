"""Training images/s measured while the machine's long training run is paused, and what else ran meanwhile.

On a 2-core machine a second busy process halves every timing, so ``bench_flow.py`` times the
recipes back to back in one window in which the long run (found by a piece of its command line)
is stopped with SIGSTOP and then continued with SIGCONT. The pause is bounded: the timing stops
starting new rounds after :data:`MAX_TIMING_S`, and a watchdog process continues the long run after
:data:`WATCHDOG_S` even if this process is killed outright. Other processes cannot be paused; how
much CPU time they used in the window (from /proc/stat) is recorded beside the figures, and
:func:`quiet` lets the caller wait for a window in which they are idle.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

MAX_TIMING_S = 90  # no new timing round starts after this many seconds of pause
WATCHDOG_S = 115  # the long run is continued after this many seconds whatever happens
QUIET_CORES = 0.15  # "quiet": the other processes use less than this many cores


def busy_ticks() -> int:
    """CPU time (clock ticks) all processes have spent so far, from /proc/stat (idle and iowait excluded)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(fields) - fields[3] - fields[4]


def process_ticks(pid: int) -> int:
    """utime + stime of process ``pid`` (all its threads), in clock ticks; 0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])


def runs_matching(pattern: str) -> list[int]:
    """Ids of other training processes: command line containing ``pattern`` and `` train ``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in (os.getpid(), os.getppid()):
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if pattern and pattern in cmd and " train " in cmd and "bench_flow" not in cmd:
            found.append(int(entry.name))
    return found


def others_cores(exclude: list[int], seconds: float = 5.0) -> float:
    """Cores the processes other than this one and ``exclude`` kept busy over the next ``seconds``."""
    ids = [os.getpid(), *exclude]
    busy0, own0, t0 = busy_ticks(), sum(process_ticks(p) for p in ids), time.perf_counter()
    time.sleep(seconds)
    busy, own = busy_ticks() - busy0, sum(process_ticks(p) for p in ids) - own0
    return (busy - own) / os.sysconf("SC_CLK_TCK") / (time.perf_counter() - t0)


def quiet(pattern: str) -> bool:
    """Whether, the long run aside, the machine is idle enough to time on (under :data:`QUIET_CORES`)."""
    return others_cores(runs_matching(pattern)) < QUIET_CORES


def timed_with_run_paused(pattern: str, rounds: list) -> dict:
    """Call each function of ``rounds`` (each returns a figure) with the long run paused; returns
    ``{"figures": [...], "conditions": {...}}``, ``None`` for a round skipped to keep the pause short."""
    paused = runs_matching(pattern)
    watchdogs = [subprocess.Popen(["sh", "-c", f"sleep {WATCHDOG_S}; kill -CONT {pid}"], start_new_session=True)
                 for pid in paused]  # continues the run even if this process dies mid-window
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # a plain kill still runs `finally`
    figures = []
    try:
        for pid in paused:
            os.kill(pid, signal.SIGSTOP)
        stopped = time.perf_counter()
        time.sleep(1.0)  # let the stopped run's last time slice pass
        t0, busy0, own0 = time.perf_counter(), busy_ticks(), process_ticks(os.getpid())
        for work in rounds:
            figures.append(work() if time.perf_counter() - stopped < MAX_TIMING_S else None)
        window = time.perf_counter() - t0
        others = (busy_ticks() - busy0 - (process_ticks(os.getpid()) - own0)) / os.sysconf("SC_CLK_TCK")
    finally:
        for pid in paused:
            os.kill(pid, signal.SIGCONT)
        for dog in watchdogs:
            os.killpg(dog.pid, signal.SIGKILL)  # the watchdog's own process group: its shell and its sleep
        signal.signal(signal.SIGTERM, previous)
    alone = others < QUIET_CORES * window
    how = (f"the machine's long training run was paused (SIGSTOP) for the {window:.0f} s window and then resumed"
           if paused else "no long training run was found to pause")
    return {"figures": figures, "conditions": {
        "measured_alone": alone,  # an unpaused long run counts among the others
        "how": f"{how}; other processes used {others:.1f} CPU-seconds in the window "
               f"({others / window:.2f} cores)",
        "window_seconds": window, "other_cpu_seconds": others}}
