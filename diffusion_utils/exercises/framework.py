"""The check framework: what a verdict holds, how a version is run on the trial inputs, and how
the learner's outcomes are compared with the package's and with each known mistake's."""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from ..plumbing.errors import short_reason

NOT_WRITTEN = Ellipsis  # what a stub returns (``return ...``) or assigns (``alpha_bar = ...``)


# ---------------------------------------------------------------------------------------------
# What a check reports
# ---------------------------------------------------------------------------------------------
@dataclass
class CheckResult:
    """The verdict on one exercise. ``status`` is ``"passed"``, ``"alternative"`` (right, another
    valid way), ``"not written"``, ``"raised"``, ``"wrong type"`` (not a tensor) or
    ``"differs"``; ``mistake`` is the key of the recognised mistake or alternative (None if none);
    ``message`` is what :func:`check_exercise` prints."""

    name: str
    status: str
    message: str
    max_abs: float | None = None
    where: str | None = None
    mistake: str | None = None

    @property
    def passed(self) -> bool:
        """The package's answer, or a valid alternative to it."""
        return self.status in ("passed", "alternative")


@dataclass(frozen=True)
class Mistake:
    """A mistake learners make: ``version`` is the known-wrong code with the learner's signature
    (or, for an exercise whose answer is a value, the wrong value); ``hint`` says what went wrong."""

    key: str
    hint: str
    version: Any


@dataclass
class Trial:
    """One run of a version on one set of inputs: ``value`` is its output as a float64 CPU tensor,
    or the exception it raised. ``locate`` turns an index into ``value`` into words ("t = 500")."""

    label: str
    value: Any
    locate: Callable[[tuple], str] | None = None


class _NotWritten(Exception):
    """The learner's code returned the stub's ``...`` (or raised NotImplementedError). ``blank``:
    the function whose stub it was, when the learner's function called it (a helper still blank)."""

    def __init__(self, blank: str | None = None):
        super().__init__(blank)
        self.blank = blank


class _WrongType(TypeError):
    """The learner's code returned something that is not a tensor (or a number)."""


def _as_output(value) -> torch.Tensor:
    """The learner's return value as a float64 CPU tensor; the stub's ``...`` → :class:`_NotWritten`."""
    if value is NOT_WRITTEN:
        raise _NotWritten()
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", torch.float64)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return torch.tensor(float(value), dtype=torch.float64)
    if value is None:
        raise _WrongType("None: end it with a return line that gives the tensor")
    kind = type(value).__name__
    hint = ": torch.from_numpy(…) makes it one" if kind == "ndarray" else ""
    article = "an" if kind[0].lower() in "aeiou" or kind == "ndarray" else "a"  # an ndarray
    raise _WrongType(f"{article} {kind}, not a tensor{hint}")


def _attempt(run: Callable[[], Any], grad: bool = False):
    """``run()``'s output as a tensor, or the exception it raised (never raised further)."""
    try:
        with torch.set_grad_enabled(grad):
            return _as_output(run())
    except NotImplementedError:
        return _NotWritten()
    except TypeError as err:  # arithmetic on a helper's stub: "... 'ellipsis' and 'float'"
        return _NotWritten(_first_blank(run, grad)) if "ellipsis" in str(err) else err
    except Exception as err:  # the learner's code: reported in one line, never raised
        return err


def _first_blank(run: Callable[[], Any], grad: bool) -> str | None:
    """The name of the first Python function that returned the stub's ``...`` while ``run()`` ran
    again, watched (only after a run met a stub, so a check costs nothing more otherwise)."""
    found: list[str] = []

    def watch(frame, event, arg):
        if event == "return" and arg is NOT_WRITTEN and not found:
            found.append(frame.f_code.co_name)

    previous = sys.getprofile()
    sys.setprofile(watch)
    try:
        with torch.set_grad_enabled(grad):
            run()
    except Exception:  # the same failure as before: only the name was wanted
        pass
    finally:
        sys.setprofile(previous)
    return found[0] if found else None


# ---------------------------------------------------------------------------------------------
# The exercises
# ---------------------------------------------------------------------------------------------
class Exercise:
    """One exercise: how to run a version of it on the trial inputs, the package's version, and
    the known mistakes. Subclasses set the class attributes and implement :meth:`outcomes`,
    :meth:`package` and :meth:`mistakes`."""

    name = ""
    needs: tuple[str, ...] = ()  # keyword arguments check_exercise must be given
    tolerance = 1e-5  # max |Δ| allowed, absolute; every known mistake changes far more
    is_value = False  # the learner writes a value (alpha_bar), not a function
    falls_back = True  # later cells use it: on failure they get the package's version

    def size(self, ctx: dict) -> str:
        """What the ✓ line says it compared on."""
        raise NotImplementedError

    def outcomes(self, version, ctx: dict) -> list[Trial]:
        """Run ``version`` (the learner's signature) on every trial's inputs, made afresh."""
        raise NotImplementedError

    def package(self, ctx: dict):
        """The package's version, with the learner's signature (what later cells fall back to)."""
        raise NotImplementedError

    def expected(self, ctx: dict) -> list[Trial]:
        """The package's outcomes on the same trials."""
        return self.outcomes(self.package(ctx), ctx)

    def mistakes(self, ctx: dict) -> list[Mistake]:
        raise NotImplementedError

    def alternatives(self, ctx: dict) -> list[Mistake]:
        """Answers that differ from the package's and are right all the same (another choice the
        literature makes): each gets a ✓ that says how it differs, never a ✗."""
        return []


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _images(shape, seed: int, device) -> torch.Tensor:
    """Uniform values in [-1, 1] (the data's range), drawn on the CPU with ``seed``."""
    return (torch.rand(shape, generator=_gen(seed)) * 2 - 1).to(device)


def _randn(shape, seed: int, device) -> torch.Tensor:
    return torch.randn(shape, generator=_gen(seed)).to(device)


def _paper(t: int) -> str:
    """A code timestep as the paper's step: "t = 500" for index 499; −1 is the clean image, 0."""
    return f"t = {t + 1}"


def _schedule_device(ctx: dict):
    return ctx["schedule"].betas.device


def _view(values: torch.Tensor, t) -> torch.Tensor:
    return values[t].view(-1, 1, 1, 1)


class _FixedOutput(nn.Module):
    """A stand-in ε-network whose output is given: the package's samplers do their arithmetic on
    it exactly as on a real network's."""

    def __init__(self, output: torch.Tensor):
        super().__init__()
        self.output = output
        self.anchor = nn.Parameter(torch.zeros(0, device=output.device))  # samplers read the device
        self.prediction = "eps"
        self.img_size = output.shape[-1]
        self.in_channels = output.shape[1]

    def forward(self, x, t, y=None):
        return self.output


class _Recorder(nn.Module):
    """A stand-in network that records its first input and predicts zero noise."""

    def __init__(self, img_size: int, device):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(0, device=device))
        self.prediction, self.img_size, self.in_channels = "eps", img_size, 3
        self.first_input: torch.Tensor | None = None

    def forward(self, x, t, y=None):
        if self.first_input is None:
            self.first_input = x.clone()
        return torch.zeros_like(x)



def _flat(module: nn.Module) -> tuple[torch.Tensor, list[tuple[int, str]]]:
    """All parameters as one float64 vector, and where each parameter starts in it."""
    starts, values, offset = [], [], 0
    for name, p in module.named_parameters():
        starts.append((offset, name))
        values.append(p.detach().reshape(-1).to("cpu", torch.float64))
        offset += p.numel()
    return torch.cat(values), starts


def _parameter_at(starts: list[tuple[int, str]], index: int, first: str = "") -> str:
    for offset, name in reversed(starts):
        if index >= offset:
            return f"in {name}"
    return first


# ---------------------------------------------------------------------------------------------
# Comparing
# ---------------------------------------------------------------------------------------------
def _difference(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """|a − b| elementwise, where equal values (inf included) and NaN in both count 0, NaN in one ∞."""
    d = (a - b).abs()
    d = torch.where((a == b) | (a.isnan() & b.isnan()), torch.zeros_like(d), d)
    return torch.nan_to_num(d, nan=math.inf, posinf=math.inf)  # inf stays inf, not the largest float


def _non_finite(trial: Trial, index: tuple) -> str:
    """What the learner's value is where the difference is infinite: " (NaN in yours)", " (inf in yours)"."""
    value = float(trial.value[index]) if trial.value.ndim else float(trial.value)
    return " (NaN in yours)" if math.isnan(value) else " (inf in yours)" if math.isinf(value) else ""


def _same(mine: list[Trial], theirs: list[Trial], tolerance: float) -> bool:
    """Whether two runs gave the same outcomes: the same exceptions, or tensors within ``tolerance``."""
    if len(mine) != len(theirs):
        return False
    for a, b in zip(mine, theirs):
        if isinstance(a.value, BaseException) or isinstance(b.value, BaseException):
            if type(a.value) is not type(b.value) or str(a.value) != str(b.value):
                return False
        elif a.value.shape != b.value.shape or (a.value.numel() and _difference(a.value, b.value).max() > tolerance):
            return False
    return True


def _number(x: float) -> str:
    return "0" if x == 0 else "inf" if math.isinf(x) else f"{x:.2g}"


def _place(trial: Trial, index: tuple) -> str:
    inner = trial.locate(index) if trial.locate else ""
    return ", ".join(p for p in (trial.label, inner) if p)


def _recognise(ex: Exercise, mine: list[Trial], ctx: dict, candidates: list[Mistake] | None = None) -> Mistake | None:
    """The first of ``candidates`` (default: the exercise's known mistakes) whose outcomes are the learner's."""
    for mistake in ex.mistakes(ctx) if candidates is None else candidates:
        if _same(mine, ex.outcomes(mistake.version, ctx), ex.tolerance):
            return mistake
    return None


def verdict(ex: Exercise, yours, ctx: dict) -> CheckResult:
    name = ex.name
    stub = (f'replace the ... in "{name} = ..." with your line' if ex.is_value
            else f"replace the ... in {name} with your lines")
    not_written = CheckResult(name, "not written", f"✗ not written yet: {stub}, run that cell, then this one")
    if yours is NOT_WRITTEN:
        return not_written
    if not ex.is_value and not callable(yours):
        return CheckResult(name, "raised", f"✗ {name} is not a function (it is {type(yours).__name__}): define it "
                                           f"with def {name}(…) in the cell above")
    mine = ex.outcomes(yours, ctx)
    blanks = [t.value for t in mine if isinstance(t.value, _NotWritten)]
    if blanks:
        helper = next((b.blank for b in blanks if b.blank not in (None, name, "<lambda>")), None)
        if helper is not None:  # the learner's function is written; a function it calls is still blank
            return CheckResult(name, "not written", f"✗ not written yet: {name} calls {helper}, which is still a "
                                                    f"blank: replace the ... in {helper} with your lines, run that "
                                                    f"cell, then this one")
        return not_written
    want = ex.expected(ctx)
    for got, expected in zip(mine, want):
        if isinstance(got.value, BaseException):
            err = got.value
            where = f" at {got.label}" if got.label else ""
            wrong_type = isinstance(err, _WrongType)
            message = (f"✗ {name} {'is' if ex.is_value else 'returned'} {err}{where}" if wrong_type
                       else f"✗ {name} raised {type(err).__name__}{where}: {short_reason(err)}")
            return _with_hint(CheckResult(name, "wrong type" if wrong_type else "raised", message,
                                          where=got.label or None), ex, mine, ctx)
        if got.value.shape != expected.value.shape:
            what = "has" if ex.is_value else "returns a tensor of"
            where = f" (at {got.label})" if got.label else ""
            message = (f"✗ {name} {what} shape {tuple(got.value.shape)} where the package's has shape "
                       f"{tuple(expected.value.shape)}{where}")
            return _with_hint(CheckResult(name, "differs", message, where=got.label or None), ex, mine, ctx)
    worst, worst_trial, worst_index = 0.0, None, ()
    for got, expected in zip(mine, want):
        if not got.value.numel():
            continue
        d = _difference(got.value, expected.value)
        flat = int(d.argmax())
        if worst_trial is None or d.reshape(-1)[flat] > worst:
            worst, worst_trial = float(d.reshape(-1)[flat]), got
            worst_index = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), d.shape)) if d.ndim else ()
    if worst <= ex.tolerance and len(mine) == len(want):
        return CheckResult(name, "passed", f"✓ {name} matches the package (max |Δ| = {_number(worst)} on "
                                           f"{ex.size(ctx)})", max_abs=worst)
    alternative = _recognise(ex, mine, ctx, ex.alternatives(ctx))
    if alternative is not None:  # right, written another valid way: its own verdict, never a ✗
        return CheckResult(name, "alternative", f"✓ {name} is a valid alternative: {alternative.hint}",
                           max_abs=worst, mistake=alternative.key)
    place = _place(worst_trial, worst_index) if worst_trial is not None else ""
    nan = _non_finite(worst_trial, worst_index) if math.isinf(worst) else ""
    message = (f"✗ {name} differs from the package: max |Δ| = {_number(worst)}{nan}"
               f"{' at ' + place if place else ''} (allowed: {_number(ex.tolerance)})")
    return _with_hint(CheckResult(name, "differs", message, max_abs=worst, where=place or None), ex, mine, ctx)


def _with_hint(result: CheckResult, ex: Exercise, mine: list[Trial], ctx: dict) -> CheckResult:
    mistake = _recognise(ex, mine, ctx)
    if mistake is not None:
        result.mistake = mistake.key
        result.message += f"\n  hint: {mistake.hint}"
    return result


