"""Exercises: the lines a learner writes, checked against the package's, with a diagnosis.

Every numbered notebook comes in two editions made from one source by ``tools/make_exercises.py``:
``notebooks/`` (worked: every line written) and ``exercises/`` (the lines between
``### BEGIN SOLUTION`` and ``### END SOLUTION`` replaced by a stub that returns ``...``). After each
blank, a cell calls :func:`check_exercise`, which

1. runs the learner's function and the package's on the same inputs and seeds (fresh copies for
   each, so nothing the learner's code does in place can leak into the comparison);
2. prints ``✓ NAME matches the package (max |Δ| = … on …)``, ``✗ not written yet: …``,
   ``✗ NAME raised …`` or ``✗ NAME differs from the package: max |Δ| = … at …``;
3. on a difference, runs each **known-wrong version** of the exercise (the mistakes learners make:
   αₜ where ᾱₜ belongs, a variance where a standard deviation belongs, an index off by one, …) on
   the same inputs, and when one of them gives exactly the learner's output, prints its hint;
4. returns what later cells use: the learner's version when it matches, else the package's, and
   says so in one line (``using the package's q_sample: yours is not written yet``).

An exception in the learner's code becomes a one-line ✗ with its type and message, never a
traceback, and a check passes only within a tolerance far below what any mistake changes. The
check leaves the global random state as it found it.

The exercises, by the name the notebook gives the learner's function (its signature in brackets):

- 01 ``alpha_bar`` (a tensor (T,)) and ``q_sample`` (x0, t, eps) — ᾱ and the jump q(xₜ | x₀);
- 02 ``embed`` (t, d) — the sinusoidal time embedding; ``add_time_embedding`` (block, h, t_emb) —
  the residual block's time injection;
- 03 ``training_step`` (model, optimizer, x0, generator) — one step of Algorithm 1;
  ``ema_update`` (ema_model, model, n) — the power-function EMA;
- 04 ``reverse_step`` (x_t, t, eps_hat, z) — one step of Algorithm 2;
- 05 ``ddim_step`` (x, t, s, x0, eps) and ``dpmpp_step`` (x, t, s, x0, x0_prev, t_prev);
- 06 ``guided_eps`` (eps_c, eps_null, w) — classifier-free guidance; ``sdedit_start``
  (x0, strength, eps) — SDEdit's starting point x_t₀;
- 07 ``condition_input`` (x_t, z_s) — an upsampler's input; ``noised_condition`` (z, s, noise) —
  noise-conditioning augmentation;
- 08 ``flow_path`` (x0, eps, t) — the straight path xₜ = (1 − t)x₀ + tε; ``flow_velocity`` (x0, eps)
  — its velocity; ``flow_training_step`` (model, x0, generator) — one batch's flow-matching loss;
  ``euler_step`` (x, t, t_next, u) — one Euler step of the flow's ODE.

The framework (verdicts, running a version, comparing, recognising a mistake) is
:mod:`~diffusion_utils.exercises.framework`; each notebook's exercises are one module,
``notebook01`` … ``notebook08``.

Timesteps ``t`` passed to the learner's functions in 01–07 are code indices (0 … T−1); the
messages name the paper's step t + 1, as the notebooks' figures do. A flow's t (08) is a float in [0, 1].
"""

from __future__ import annotations

import torch

from ..plumbing.errors import ConfigError
from .framework import CheckResult, Exercise, verdict
from .notebook01 import AlphaBar, QSample
from .notebook02 import AddTimeEmbedding, Embed
from .notebook03 import EmaUpdate, TrainingStep
from .notebook04 import ReverseStep
from .notebook05 import DdimStep, DpmppStep
from .notebook06 import GuidedEps, SdeditStart
from .notebook07 import ConditionInput, NoisedCondition
from .notebook08 import EulerStep, FlowPathExercise, FlowTrainingStep, FlowVelocity

# Every exercise, in the order the notebooks meet them, by the name the notebook gives the learner's function.
EXERCISES: dict[str, Exercise] = {ex.name: ex for ex in (
    AlphaBar(), QSample(), Embed(), AddTimeEmbedding(), TrainingStep(), EmaUpdate(), ReverseStep(),
    DdimStep(), DpmppStep(), GuidedEps(), SdeditStart(), ConditionInput(), NoisedCondition(),
    FlowPathExercise(), FlowVelocity(), FlowTrainingStep(), EulerStep())}


def run_check(name: str, yours, **context) -> CheckResult:
    """Check ``yours`` (the learner's function, or value for ``alpha_bar``) against the package's
    version of exercise ``name``, and return the verdict without printing it. ``context``: what
    the exercise needs (``schedule=``, ``config=``, ``model=``; a one-line :class:`ConfigError`
    names what is missing). The global random state is left as it was."""
    if name not in EXERCISES:
        raise ConfigError(f"unknown exercise {name!r}; the exercises are {', '.join(EXERCISES)}")
    ex = EXERCISES[name]
    missing = [key for key in ex.needs if context.get(key) is None]
    if missing:
        raise ConfigError(f"check_exercise({name!r}, …) needs {', '.join(f'{k}=' for k in missing)}: "
                          f"pass the {' and the '.join(missing)} your {name} uses")
    with torch.random.fork_rng(devices=[]):
        return verdict(ex, yours, context)


def check_exercise(name: str, yours, **context):
    """Check the learner's ``yours`` for exercise ``name``, print the verdict (one line, and a hint
    when the mistake is a known one), and return what later cells should use: ``yours`` when it
    matches the package, else the package's version, announced in one line. Exercises that no
    later cell uses return ``yours`` either way. See :func:`run_check` for ``context``."""
    result = run_check(name, yours, **context)
    print(result.message)
    ex = EXERCISES[name]
    if result.passed or not ex.falls_back:
        return yours
    why = {"not written": "yours is not written yet", "raised": "yours raised an error",
           "wrong type": "yours does not return a tensor"}.get(result.status, "yours differs from it")
    print(f"using the package's {name}: {why}")
    return ex.package(context)

