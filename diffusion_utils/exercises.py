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
  noise-conditioning augmentation.

Timesteps ``t`` passed to the learner's functions are code indices (0 … T−1); the messages name
the paper's step t + 1, as the notebooks' figures do.
"""

from __future__ import annotations

import copy
import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from .editing import sdedit, start_timestep
from .errors import ConfigError, short_reason
from .guidance import GuidedModel
from .model import ResidualBlock, sinusoidal_embedding
from .samplers import DDIM, DPMSolverPP
from .sampling import p_sample
from .schedule import NoiseSchedule
from .superres import noised_condition
from .training import TrainState, make_ema, train_step

NOT_WRITTEN = Ellipsis  # what a stub returns (``return ...``) or assigns (``alpha_bar = ...``)


# ---------------------------------------------------------------------------------------------
# What a check reports
# ---------------------------------------------------------------------------------------------
@dataclass
class CheckResult:
    """The verdict on one exercise. ``status`` is ``"passed"``, ``"not written"``, ``"raised"``
    or ``"differs"``; ``mistake`` is the key of the recognised mistake (None if none);
    ``message`` is what :func:`check_exercise` prints."""

    name: str
    status: str
    message: str
    max_abs: float | None = None
    where: str | None = None
    mistake: str | None = None

    @property
    def passed(self) -> bool:
        return self.status == "passed"


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
    """The learner's code returned the stub's ``...`` (or raised NotImplementedError)."""


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
    raise _WrongType(f"a {type(value).__name__}, not a tensor")


def _attempt(run: Callable[[], Any], grad: bool = False):
    """``run()``'s output as a tensor, or the exception it raised (never raised further)."""
    try:
        with torch.set_grad_enabled(grad):
            return _as_output(run())
    except NotImplementedError:
        return _NotWritten()
    except TypeError as err:  # arithmetic on a helper's stub: "... 'ellipsis' and 'float'"
        return _NotWritten() if "ellipsis" in str(err) else err
    except Exception as err:  # the learner's code: reported in one line, never raised
        return err


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


# ---- 01 · ᾱ and the jump ---------------------------------------------------------------------
class AlphaBar(Exercise):
    name, needs, tolerance, is_value = "alpha_bar", ("schedule",), 1e-6, True

    def size(self, ctx):
        return f"{ctx['schedule'].n_steps} timesteps"

    def outcomes(self, version, ctx):
        return [Trial("", _attempt(lambda: version), lambda i: _paper(i[0]) if i else "")]

    def package(self, ctx):
        return ctx["schedule"].alpha_bars

    def mistakes(self, ctx):
        betas = ctx["schedule"].betas
        right = torch.cumprod(1 - betas, dim=0)
        return [
            Mistake("alpha", "that is αₜ = 1 − βₜ, the share of one step; ᾱₜ multiplies them all up to t: "
                             "torch.cumprod(1 - betas, dim=0)", 1 - betas),
            Mistake("product_of_betas", "a product of the βs: ᾱₜ multiplies the αₛ = 1 − βₛ, the share each "
                                        "step keeps", torch.cumprod(betas, dim=0)),
            Mistake("sum", "1 − Σβₛ only approximates ∏(1 − βₛ) while the βs are small: multiply "
                           "(torch.cumprod), don't add", 1 - torch.cumsum(betas, dim=0)),
            Mistake("shifted", "off by one step: index 0 must hold ᾱ₁ = 1 − β₁ (code index t is the paper's "
                               "step t + 1); yours has ᾱ₀ = 1 there", torch.cat([torch.ones(1, device=betas.device),
                                                                               right[:-1]])),
            Mistake("sqrt", "that is √ᾱₜ, the signal's scale; ᾱₜ itself is the product, with no square root",
                    right.sqrt()),
        ]


def _jump_trial(version, ctx, steps, n_images: int, seed: int, letter: str) -> list[Trial]:
    """A version of the jump xₛ = √ᾱₛ x + √(1−ᾱₛ) ε run once on ``n_images`` images, each at every
    code step of ``steps`` (one batch, the step varying along it: a missing reshape shows)."""
    device = _schedule_device(ctx)
    steps = [t for t in steps if t < ctx["schedule"].n_steps]
    x = _images((n_images, 3, 12, 12), seed, device).repeat(len(steps), 1, 1, 1)  # width 12 ≠ batch size
    t = torch.tensor(steps, device=device).repeat_interleave(n_images)
    eps = _randn(x.shape, seed + 1, device)
    return [Trial("", _attempt(lambda: version(x.clone(), t.clone(), eps.clone())),
                  lambda i: f"{letter} = {int(t[i[0]]) + 1}" if i else "")]


def _jump_mistakes(schedule, sub: str, names: str) -> list[Mistake]:
    """The mistakes of any jump √ᾱ x + √(1−ᾱ) ε; ``sub`` is the step's subscript (ₜ, ₛ) and ``names``
    what the learner indexes ᾱ with."""
    ab, alphas = schedule.alpha_bars, schedule.alphas
    return [
        Mistake("alpha", f"α{sub} = 1 − β{sub} is one step's share; the jump uses ᾱ{sub}, the product of all of them "
                         f"up to that step ({names})",
                lambda x, t, e: _view(alphas, t).sqrt() * x + (1 - _view(alphas, t)).sqrt() * e),
        Mistake("noise_variance", f"the noise's coefficient is a standard deviation, √(1 − ᾱ{sub}); (1 − ᾱ{sub}) is "
                                  f"its variance", lambda x, t, e: _view(ab, t).sqrt() * x + (1 - _view(ab, t)) * e),
        Mistake("swapped", f"the coefficients are swapped: √ᾱ{sub} multiplies the image and √(1 − ᾱ{sub}) the noise",
                lambda x, t, e: (1 - _view(ab, t)).sqrt() * x + _view(ab, t).sqrt() * e),
    ]


class QSample(Exercise):
    name, needs = "q_sample", ("schedule",)
    TIMESTEPS = (0, 99, 499, 899, 999)  # code indices: the paper's 1, 100, 500, 900, 1000
    N_IMAGES = 8

    def size(self, ctx):
        return f"{self.N_IMAGES} images × {len(self.TIMESTEPS)} timesteps"

    def outcomes(self, version, ctx):
        return _jump_trial(version, ctx, self.TIMESTEPS, self.N_IMAGES, 1, "t")

    def package(self, ctx):
        return ctx["schedule"].q_sample

    def mistakes(self, ctx):
        ab = ctx["schedule"].alpha_bars
        return _jump_mistakes(ctx["schedule"], "ₜ", "alpha_bar[t]") + [
            Mistake("no_square_roots", "eq. 4 gives the mean's scale and the variance: x_t needs their square "
                                       "roots, √ᾱₜ x₀ + √(1 − ᾱₜ) ε",
                    lambda x0, t, eps: _view(ab, t) * x0 + (1 - _view(ab, t)) * eps),
            Mistake("signal_no_sqrt", "the image's coefficient is √ᾱₜ (ᾱₜ is the share of its variance)",
                    lambda x0, t, eps: _view(ab, t) * x0 + (1 - _view(ab, t)).sqrt() * eps),
            Mistake("paper_index", "t is already the code index (the paper's step t + 1): index alpha_bar "
                                   "with t itself, not t − 1",
                    lambda x0, t, eps: _view(ab, t - 1).sqrt() * x0 + (1 - _view(ab, t - 1)).sqrt() * eps),
            Mistake("not_broadcast", "alpha_bar[t] holds one value per image, shape (B,): reshape it to "
                                     "(B, 1, 1, 1) with .view(-1, 1, 1, 1) so it scales every pixel of its image",
                    lambda x0, t, eps: ab[t].sqrt() * x0 + (1 - ab[t]).sqrt() * eps),
        ]


# ---- 02 · the time embedding and where it enters ------------------------------------------
class Embed(Exercise):
    name, tolerance = "embed", 2e-4  # float32 sin/cos of angles up to 999: rounding reaches ~1e-4
    WIDTHS = (128, 32)
    T = 1000

    def size(self, ctx):
        return f"t = 0 … {self.T - 1} at d = {' and '.join(map(str, self.WIDTHS))}"

    def outcomes(self, version, ctx):
        t = torch.arange(self.T)
        trials = []
        for d in self.WIDTHS:
            def locate(i, d=d):
                return f"t = {i[0]}, dimension {i[1]} (a {'sine' if i[1] < d // 2 else 'cosine'})" if i else ""
            trials.append(Trial(f"d = {d}", _attempt(lambda: version(t.clone(), d)), locate))
        return trials

    def package(self, ctx):
        return sinusoidal_embedding

    def mistakes(self, ctx):
        def make(freqs, combine):
            def version(t, d):
                angles = t.float()[:, None] * freqs(d)[None, :]
                return combine(torch.sin(angles), torch.cos(angles))
            return version

        def right(d):
            return 10000 ** (-torch.arange(d // 2) / (d // 2))

        concat = lambda s, c: torch.cat([s, c], dim=1)  # noqa: E731
        return [
            Mistake("cos_first", "sines first, then cosines: [sin(t·ω₀) … | cos(t·ω₀) …]",
                    make(right, lambda s, c: torch.cat([c, s], dim=1))),
            Mistake("positive_exponent", "ωᵢ = 10000^(−i/(d/2)) has a minus sign: the frequencies fall from 1 to "
                                         "1/10000, so most dimensions vary slowly with t",
                    make(lambda d: 10000 ** (torch.arange(d // 2) / (d // 2)), concat)),
            Mistake("over_d", "the exponent divides i by d/2 (the number of frequencies), not by d",
                    make(lambda d: 10000 ** (-torch.arange(d // 2) / d), concat)),
            Mistake("interleaved", "the original Transformer interleaves sin and cos; this package puts all the "
                                   "sines first, then all the cosines (torch.cat on dim 1)",
                    make(right, lambda s, c: torch.stack([s, c], dim=2).flatten(1))),
            Mistake("divided", "the angle is t·ωᵢ, t times the frequency, not t/ωᵢ",
                    lambda t, d: concat(*(f(t.float()[:, None] / right(d)[None, :]) for f in (torch.sin, torch.cos)))),
        ]


class AddTimeEmbedding(Exercise):
    name, falls_back = "add_time_embedding", False
    BLOCKS = ((16, 16), (32, 16))  # (channels, time_emb_dim): equal widths, then a projection that must map

    def size(self, ctx):
        return f"4 images × {len(self.BLOCKS)} residual blocks"

    def trial_inputs(self, k: int):
        """A package ResidualBlock with random weights, its input, and the h it computes before and
        after adding the time embedding (read with hooks on conv1's output and norm2's input)."""
        channels, emb_dim = self.BLOCKS[k]
        torch.manual_seed(10 + k)
        block = ResidualBlock(channels, channels, emb_dim).eval()
        x, t_emb = _randn((4, channels, 6, 6), 20 + k, "cpu"), _randn((4, emb_dim), 30 + k, "cpu")
        seen = {}
        hooks = [block.conv1.register_forward_hook(lambda m, i, o: seen.setdefault("h", o.detach().clone())),
                 block.norm2.register_forward_pre_hook(lambda m, i: seen.setdefault("injected", i[0].detach().clone()))]
        with torch.no_grad():
            block(x, t_emb)
        for hook in hooks:
            hook.remove()
        return block, seen["h"], t_emb, seen["injected"]

    def outcomes(self, version, ctx):
        trials = []
        for k, (channels, emb_dim) in enumerate(self.BLOCKS):
            block, h, t_emb, _ = self.trial_inputs(k)
            trials.append(Trial(f"a block of {channels} channels with a {emb_dim}-wide embedding",
                                _attempt(lambda: version(block, h.clone(), t_emb.clone())),
                                lambda i: f"channel {i[1]} of image {i[0]}" if len(i) > 1 else ""))
        return trials

    def expected(self, ctx):
        return [Trial(f"a block of {c} channels with a {e}-wide embedding", _as_output(self.trial_inputs(k)[3]))
                for k, (c, e) in enumerate(self.BLOCKS)]

    def package(self, ctx):
        return None  # no later cell uses it

    def mistakes(self, ctx):
        return [
            Mistake("no_projection", "project the embedding first: block.time_proj maps its time_emb_dim numbers "
                                     "to one number per channel",
                    lambda block, h, e: h + e[:, :, None, None]),
            Mistake("no_silu", "the package applies SiLU to the embedding before projecting it: "
                               "block.time_proj(F.silu(t_emb))",
                    lambda block, h, e: h + block.time_proj(e)[:, :, None, None]),
            Mistake("silu_after", "SiLU goes before the projection, not after it: block.time_proj(F.silu(t_emb))",
                    lambda block, h, e: h + F.silu(block.time_proj(e))[:, :, None, None]),
            Mistake("multiplied", "the embedding is added to the feature map (one shift per channel), not "
                                  "multiplied with it",
                    lambda block, h, e: h * block.time_proj(F.silu(e))[:, :, None, None]),
            Mistake("wrong_axes", "the projection is (B, C): index it [:, :, None, None] so that each channel's "
                                  "number is added to every pixel of that channel",
                    lambda block, h, e: h + block.time_proj(F.silu(e))[:, None, None, :]),
        ]


# ---- 03 · one training step and the EMA ----------------------------------------------------
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


class TrainingStep(Exercise):
    name, needs, tolerance, falls_back = "training_step", ("config",), 1e-5, False
    STEPS, BATCH = 3, 8
    SMALL = dict(img_size=16, base_channels=8, channel_mults=(1, 2), num_res_blocks=1, attention_levels=(1,),
                 time_emb_dim=16)

    def size(self, ctx):
        return f"the losses and weights of {self.STEPS} steps of a small UNet on {self.BATCH} images"

    def config(self, ctx):
        """Algorithm 1 as the notebook's config sets it (schedule, lr, clipping, seed), on a small UNet."""
        return ctx["config"].replace(**self.SMALL, prediction="eps", loss_weighting="none", lr_warmup_steps=0,
                                     lr_decay="none", bf16=False, num_classes=0, p_uncond=0.0, device="cpu")

    def batch(self):
        return _images((self.BATCH, 3, 16, 16), 3, "cpu")

    def _trials(self, step_once: Callable[[int], Any], model: nn.Module) -> list[Trial]:
        trials = []
        for n in range(self.STEPS):
            torch.manual_seed(n)  # the same dropout masks (if any) for every version
            loss = _attempt(lambda: step_once(n), grad=True)
            if isinstance(loss, BaseException):
                trials.append(Trial(f"step {n + 1}", loss))
                break
            weights, starts = _flat(model)
            trials.append(Trial(f"step {n + 1}", torch.cat([loss.reshape(1), weights]),
                                lambda i, s=starts: "" if not i else "in the loss" if i[0] == 0
                                else _parameter_at([(o + 1, name) for o, name in s], i[0])))
        return trials

    def outcomes(self, version, ctx):
        config = self.config(ctx)
        model = copy.deepcopy(TrainState(config, torch.device("cpu")).model)  # the package's initial weights
        optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        generator = _gen(config.seed + 1)  # the seed of the package's noise generator
        batch = self.batch()
        return self._trials(lambda n: version(model, optimizer, batch.clone(), generator), model)

    def expected(self, ctx):
        state = TrainState(self.config(ctx), torch.device("cpu"))
        batch = self.batch()
        return self._trials(lambda n: train_step(state, batch.clone()), state.model)

    def package(self, ctx):
        return None  # later cells train with the package's train(), not with this function

    def mistakes(self, ctx):
        schedule, clip = NoiseSchedule.from_config(self.config(ctx)), ctx["config"].grad_clip

        def step(draw_t=None, eps_first=False, target="eps", clean_input=False, clip_grad=True, zero_grad=True):
            def version(model, optimizer, x0, generator):
                def t_draw():
                    return draw_t(generator, len(x0)) if draw_t else torch.randint(
                        0, schedule.n_steps, (len(x0),), generator=generator)
                if eps_first:
                    eps = torch.randn(x0.shape, generator=generator)
                    t = t_draw()
                else:
                    t = t_draw()
                    eps = torch.randn(x0.shape, generator=generator)
                x_t = schedule.q_sample(x0, t, eps)
                loss = F.mse_loss(model(x0 if clean_input else x_t, t), eps if target == "eps" else x0)
                if zero_grad:
                    optimizer.zero_grad()
                loss.backward()
                if clip_grad:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
                optimizer.step()
                return loss.item()
            return version

        return [
            Mistake("paper_t", "t ~ U{1…T} in the paper is the code index 0 … T − 1: "
                               "torch.randint(0, schedule.n_steps, …)",
                    step(draw_t=lambda g, n: torch.randint(1, schedule.n_steps + 1, (n,), generator=g))),
            Mistake("eps_first", "draw t first, then ε: the package draws them from the generator in that order, "
                                 "so the same seed gives the same t and ε",
                    step(eps_first=True)),
            Mistake("x0_target", "the network is trained to predict the noise ε (Algorithm 1, line 5), not the "
                                 "clean image x₀", step(target="x0")),
            Mistake("clean_input", "the network sees the noisy xₜ = q_sample(x0, t, eps), not the clean x₀",
                    step(clean_input=True)),
            Mistake("no_clipping", "clip the gradient norm at config.grad_clip before optimizer.step(), as Ho et "
                                   "al. do: torch.nn.utils.clip_grad_norm_", step(clip_grad=False)),
            Mistake("no_zero_grad", "call optimizer.zero_grad() before loss.backward(): without it each step's "
                                    "gradient is added to the last one's", step(zero_grad=False)),
        ]


class EmaUpdate(Exercise):
    name, needs, tolerance, falls_back = "ema_update", ("config",), 1e-6, False
    UPDATES = (0, 1, 5, 100, 5000)  # n: how many updates came before

    def size(self, ctx):
        return f"{len(self.UPDATES)} updates, n = {', '.join(map(str, self.UPDATES))}"

    def net(self, seed: int) -> nn.Module:
        torch.manual_seed(seed)
        return nn.Sequential(OrderedDict(conv=nn.Conv2d(3, 4, 3), proj=nn.Linear(4, 2)))

    def _trial(self, n: int, update: Callable[[nn.Module, nn.Module], nn.Module]) -> Trial:
        ema, model = self.net(100 + n), self.net(200 + n)  # the old average and the new weights
        result = _attempt(lambda: _flat(update(ema, model))[0])
        _, starts = _flat(ema)
        return Trial(f"n = {n}", result, lambda i: _parameter_at(starts, i[0]) if i else "")

    def outcomes(self, version, ctx):
        def run(n):
            def update(ema, model):
                if version(ema, model, n) is NOT_WRITTEN:
                    raise _NotWritten()
                return ema
            return update
        return [self._trial(n, run(n)) for n in self.UPDATES]

    def expected(self, ctx):
        config = ctx["config"]

        def run(n):
            def update(ema, model):
                averaged = make_ema(ema, config.ema_decay, config.ema_gamma)  # starts as a copy of ema
                averaged.n_averaged.fill_(n)
                averaged.update_parameters(model)
                return averaged.module
            return update
        return [self._trial(n, run(n)) for n in self.UPDATES]

    def package(self, ctx):
        return None

    def mistakes(self, ctx):
        d_max, gamma = ctx["config"].ema_decay, ctx["config"].ema_gamma

        def ema(decay, swap=False):
            @torch.no_grad()
            def version(ema_model, model, n):
                d = decay(n)
                for p_ema, p in zip(ema_model.parameters(), model.parameters()):
                    p_ema.mul_(1 - d).add_(p, alpha=d) if swap else p_ema.mul_(d).add_(p, alpha=1 - d)
            return version

        right = lambda n: min(d_max, (1 - 1 / (n + 1)) ** (gamma + 1))  # noqa: E731
        return [
            Mistake("swapped", "keep d of the old average and take 1 − d of the new weights: "
                               "θ_ema ← d·θ_ema + (1 − d)·θ", ema(right, swap=True)),
            Mistake("exponent_gamma", "the exponent is γ + 1 (config.ema_gamma + 1), not γ",
                    ema(lambda n: min(d_max, (1 - 1 / (n + 1)) ** gamma))),
            Mistake("no_cap", "cap the decay at d_max = config.ema_decay: d = min(d_max, (1 − 1/(n+1))^(γ+1))",
                    ema(lambda n: (1 - 1 / (n + 1)) ** (gamma + 1))),
            Mistake("max_not_min", "min, not max: the decay grows from 0 and stops at d_max",
                    ema(lambda n: max(d_max, (1 - 1 / (n + 1)) ** (gamma + 1)))),
            Mistake("n_not_n_plus_1", "the formula uses n + 1: the first update (n = 0) has d = 0 and copies "
                                      "the weights", ema(lambda n: min(d_max, (1 - 1 / n) ** (gamma + 1)))),
            Mistake("fixed_decay", "the decay grows with n, (1 − 1/(n+1))^(γ+1) capped at d_max; a fixed d_max "
                                   "would remember the random initial weights for hundreds of steps",
                    ema(lambda n: d_max)),
        ]


# ---- 04 · one reverse step ----------------------------------------------------------------
class ReverseStep(Exercise):
    # 5e-4: at t = 1, 1 − ᾱ₁ = 1e-4 computed in float32 is off by 1.6e-4 relative, and x̂₀'s
    # coefficient there is 1; every mistake below changes the step by 2e-3 or (much) more.
    name, needs, tolerance = "reverse_step", ("schedule",), 5e-4
    TIMESTEPS = (999, 500, 10, 0)

    def size(self, ctx):
        return f"4 images × {len(self.TIMESTEPS)} timesteps (t = {', '.join(str(t + 1) for t in self.TIMESTEPS)})"

    def outcomes(self, version, ctx):
        device = _schedule_device(ctx)
        trials = []
        for t in self.TIMESTEPS:
            x_t, eps, z = (_randn((4, 3, 8, 8), 40 + 3 * t + k, device) for k in range(3))
            trials.append(Trial(_paper(t), _attempt(lambda: version(x_t.clone(), t, eps.clone(), z.clone()))))
        return trials

    def package(self, ctx):
        schedule = ctx["schedule"]

        def reverse_step(x_t, t, eps_hat, z):
            return p_sample(_FixedOutput(eps_hat), schedule, x_t, t, noise=z)  # clip_x0=True, σₜ² = β̃ₜ
        return reverse_step

    def mistakes(self, ctx):
        s = ctx["schedule"]

        def step(x0_alpha=False, x0_sqrt=True, clip=True, ab_prev=None, noise="std"):
            def version(x_t, t, eps_hat, z):
                beta, alpha, ab = s.betas[t], s.alphas[t], s.alpha_bars[t]
                prev = s.alpha_bars_prev[t] if ab_prev is None else ab_prev(t)
                a = alpha if x0_alpha else ab  # what x̂₀'s inversion of the jump uses
                x0_hat = (x_t - (1 - a).sqrt() * eps_hat) / (a.sqrt() if x0_sqrt else a)
                if clip:
                    x0_hat = x0_hat.clamp(-1, 1)
                mean = (prev.sqrt() * beta / (1 - ab)) * x0_hat + (alpha.sqrt() * (1 - prev) / (1 - ab)) * x_t
                var = (1 - prev) / (1 - ab) * beta
                scale = {"std": var.sqrt(), "variance": var, "beta": beta.sqrt(), "none": 0.0}[noise]
                return mean + scale * z
            return version

        return [
            Mistake("alpha_in_x0", "x̂₀ inverts the jump q(xₜ | x₀) of notebook 01, which uses ᾱₜ "
                                   "(schedule.alpha_bars[t]), not αₜ", step(x0_alpha=True)),
            Mistake("x0_no_sqrt", "x̂₀ = (xₜ − √(1 − ᾱₜ) ε̂) / √ᾱₜ: divide by the square root of ᾱₜ",
                    step(x0_sqrt=False)),
            Mistake("no_clip", "clip x̂₀ to [−1, 1] (.clamp(-1, 1)) before μ̃ₜ, as the package's p_sample does "
                               "(unclipped, the step is eq. 11 exactly)", step(clip=False)),
            Mistake("prev_wraps", "at t = 1 your ᾱₜ₋₁ wrapped around: alpha_bars[t − 1] at code index 0 is "
                                  "alpha_bars[−1] = ᾱ_T; use alpha_bars_prev[t], whose first entry is ᾱ₀ = 1",
                    step(ab_prev=lambda t: s.alpha_bars[t - 1])),
            Mistake("variance_for_std", "z is scaled by the standard deviation σₜ = √β̃ₜ, not by the variance β̃ₜ",
                    step(noise="variance")),
            Mistake("beta_variance", "σₜ² = βₜ is Ho et al.'s other choice; the package (and the formula above) "
                                     "uses the posterior variance β̃ₜ = (1 − ᾱₜ₋₁)/(1 − ᾱₜ) · βₜ, which is 0 at the "
                                     "last step, so no noise is added there", step(noise="beta")),
            Mistake("no_noise", "add σₜ z: a reverse step draws from N(μ̃ₜ, σₜ² I) rather than returning its "
                                "mean (σ₁ = 0 makes only the last step noise-free)", step(noise="none")),
        ]


# ---- 05 · DDIM and DPM-Solver++(2M) steps -----------------------------------------------------
def _alpha_bar_at(schedule, t: int) -> torch.Tensor:
    """ᾱ at code step t; 1 at t = −1 (the clean image)."""
    return schedule.alpha_bars[t] if t >= 0 else torch.tensor(1.0, device=schedule.betas.device)


def _clipped_x0(schedule, x, t: int, eps):
    tt = torch.full((len(x),), t, device=x.device)
    return schedule.predict_x0(x, tt, eps).clamp(-1, 1)


def _arrow(t: int, s: int) -> str:
    return f"t = {t + 1} → {s + 1}"


class DdimStep(Exercise):
    name, needs = "ddim_step", ("schedule",)
    STEPS = ((999, 899), (499, 299), (99, -1))

    def size(self, ctx):
        return f"4 images × {len(self.STEPS)} steps ({', '.join(_arrow(t, s) for t, s in self.STEPS)})"

    def outcomes(self, version, ctx):
        device, schedule = _schedule_device(ctx), ctx["schedule"]
        trials = []
        for t, s in self.STEPS:
            x, eps = _randn((4, 3, 8, 8), 60 + t, device), _randn((4, 3, 8, 8), 61 + t, device)
            x0 = _clipped_x0(schedule, x, t, eps)
            trials.append(Trial(_arrow(t, s), _attempt(lambda: version(x.clone(), t, s, x0.clone(), eps.clone()))))
        return trials

    def package(self, ctx):
        schedule = ctx["schedule"]

        def ddim_step(x, t, s, x0, eps):  # the package computes x̂₀ from ε̂ itself (the same clipped x̂₀)
            return DDIM(schedule, "eps", clip_x0=True).step(x, t, s, eps)[0]
        return ddim_step

    def mistakes(self, ctx):
        schedule = ctx["schedule"]
        ab = lambda t: _alpha_bar_at(schedule, t)  # noqa: E731

        def step(direction="implied", wrap=False, target=None, noise_sqrt=True, signal_sqrt=True):
            def version(x, t, s, x0, eps):
                a_t = ab(t)
                a_s = ab(t if target == "t" else s) if not wrap else schedule.alpha_bars[s]
                implied = (x - a_t.sqrt() * x0) / (1 - a_t).sqrt()
                e = implied if direction == "implied" else eps
                return (a_s.sqrt() if signal_sqrt else a_s) * x0 + ((1 - a_s).sqrt() if noise_sqrt else 1 - a_s) * e
            return version

        return [
            Mistake("raw_eps", "build the direction term from the ε̂ that the clipped x̂₀ implies, "
                               "(xₜ − √ᾱₜ x̂₀)/√(1 − ᾱₜ), not from the network's ε̂: after clipping they differ, "
                               "and only the implied one keeps xₜ = √ᾱₜ x̂₀ + √(1 − ᾱₜ) ε̂", step(direction="raw")),
            Mistake("wrapped_alpha_bar", "the last step goes to s = −1, the clean image, where ᾱ = 1 "
                                         "(alpha_bar(s) gives it); schedule.alpha_bars[-1] is ᾱ_T, pure noise",
                    step(wrap=True)),
            Mistake("rebuilt_xt", "that rebuilds xₜ itself: eq. 12 re-noises x̂₀ to the target step s, with ᾱₛ, "
                                  "not ᾱₜ", step(target="t")),
            Mistake("variance_for_std", "the direction's coefficient is a standard deviation, √(1 − ᾱₛ), not "
                                        "the variance 1 − ᾱₛ", step(noise_sqrt=False)),
            Mistake("signal_no_sqrt", "x̂₀ is scaled by √ᾱₛ, the signal's standard deviation at s, not by ᾱₛ",
                    step(signal_sqrt=False)),
        ]


class DpmppStep(Exercise):
    name, needs = "dpmpp_step", ("schedule",)
    STEPS = ((999, 799, None), (799, 599, 999), (99, -1, 299))  # (t, s, t_prev): first, middle, last

    def size(self, ctx):
        return "4 images × 3 steps (the first, a middle and the last)"

    def outcomes(self, version, ctx):
        device, schedule = _schedule_device(ctx), ctx["schedule"]
        trials = []
        for t, s, t_prev in self.STEPS:
            x, eps = _randn((4, 3, 8, 8), 80 + t, device), _randn((4, 3, 8, 8), 81 + t, device)
            x0 = _clipped_x0(schedule, x, t, eps)
            x0_prev = None if t_prev is None else _images((4, 3, 8, 8), 82 + t, device)
            label = _arrow(t, s) + (" (the first step)" if t_prev is None else " (the last step)" if s < 0 else "")
            trials.append(Trial(label, _attempt(lambda: version(
                x.clone(), t, s, x0.clone(), None if x0_prev is None else x0_prev.clone(), t_prev))))
        return trials

    def package(self, ctx):
        schedule = ctx["schedule"]

        def dpmpp_step(x, t, s, x0, x0_prev, t_prev):
            return DPMSolverPP(schedule).update(x, t, s, x0, x0_prev, t_prev)
        return dpmpp_step

    def mistakes(self, ctx):
        schedule = ctx["schedule"]
        ab = lambda t: _alpha_bar_at(schedule, t)  # noqa: E731

        def step(lam_scale=0.5, r_inverted=False, exp_sign=-1, ratio_sqrt=True, order=2, last=True, prev_first=False):
            def lam(t):
                return lam_scale * torch.log(ab(t) / (1 - ab(t)))

            def version(x, t, s, x0, x0_prev, t_prev):
                if s < 0 and last:
                    return x0
                h = lam(s) - lam(t)
                if x0_prev is None or order == 1:
                    d = x0
                else:
                    r = (lam(t) - lam(t_prev)) / h
                    r = 1 / r if r_inverted else r
                    new, old = (x0_prev, x0) if prev_first else (x0, x0_prev)
                    d = (1 + 1 / (2 * r)) * new - 1 / (2 * r) * old
                ratio = (1 - ab(s)) / (1 - ab(t))
                return (ratio.sqrt() if ratio_sqrt else ratio) * x - ab(s).sqrt() * torch.expm1(exp_sign * h) * d
            return version

        return [
            Mistake("full_log_snr", "λ is half the log-SNR: λₜ = log(√ᾱₜ / √(1 − ᾱₜ)) = ½ log(ᾱₜ / (1 − ᾱₜ))",
                    step(lam_scale=1.0)),
            Mistake("r_inverted", "rᵢ = h_{i−1} / hᵢ: the previous step's length over this one's",
                    step(r_inverted=True)),
            Mistake("exp_sign", "the factor is e^(−h) − 1, torch.expm1(-h): h > 0 as λ rises towards the clean "
                                "image", step(exp_sign=1)),
            Mistake("variance_ratio", "the first term scales xₜ by σₛ/σₜ, a ratio of standard deviations: "
                                      "√(1 − ᾱₛ)/√(1 − ᾱₜ)", step(ratio_sqrt=False)),
            Mistake("first_order_only", "from the second step on, D mixes in the previous x̂₀: "
                                        "D = (1 + 1/(2r)) x̂₀ − 1/(2r) x̂₀_prev (only the first step has D = x̂₀)",
                    step(order=1)),
            Mistake("weights_swapped", "the current x̂₀ gets the weight 1 + 1/(2r) and the previous one −1/(2r)",
                    step(prev_first=True)),
            Mistake("no_last_step", "the last step (s = −1: ᾱ = 1, λ = ∞) returns the clean-image guess x̂₀ "
                                    "itself; the formula there divides by zero", step(last=False)),
        ]


# ---- 06 · guidance and SDEdit's start --------------------------------------------------------
class GuidedEps(Exercise):
    # 1e-4: GuidedModel runs both branches as one batch of 2B, whose rounding w = 7.5 multiplies
    name, needs, tolerance, falls_back = "guided_eps", ("model",), 1e-4, False
    SCALES = (0.0, 1.0, 3.0, 7.5)

    def size(self, ctx):
        return f"2 images × {len(self.SCALES)} guidance scales (w = {', '.join(f'{w:g}' for w in self.SCALES)})"

    def inputs(self, ctx):
        model = ctx["model"]
        if not getattr(model, "num_classes", 0):
            raise ConfigError("guided_eps needs a class-conditional model (model.num_classes > 0)")
        device = next(model.parameters()).device
        x = _randn((2, getattr(model, "in_channels", 3), model.img_size, model.img_size), 90, device)
        t = torch.tensor([500, 200], device=device)
        c = torch.tensor([0, 1 % model.num_classes], device=device)
        return model, x, t, c

    def _with_model(self, ctx, run):
        model, x, t, c = self.inputs(ctx)
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                return run(model, x, t, c)
        finally:
            model.train(was_training)

    def outcomes(self, version, ctx):
        def run(model, x, t, c):
            eps_c, eps_null = model(x, t, c), model(x, t, torch.full_like(c, model.null_class))
            return [Trial(f"w = {w:g}", _attempt(lambda: version(eps_c.clone(), eps_null.clone(), w)))
                    for w in self.SCALES]
        return self._with_model(ctx, run)

    def expected(self, ctx):
        return self._with_model(ctx, lambda model, x, t, c: [
            Trial(f"w = {w:g}", _as_output(GuidedModel(model, c, w)(x, t))) for w in self.SCALES])

    def package(self, ctx):
        return None

    def mistakes(self, ctx):
        return [
            Mistake("their_w", "that is Ho & Salimans' form (1 + w)·ε_c − w·ε_∅, whose w is ours minus 1: here "
                               "w = 0 is unconditional and w = 1 the plain conditional model",
                    lambda c, n, w: c + w * (c - n)),
            Mistake("wrong_branch", "the weight is applied to the wrong branch: start from ε_∅ and go w times "
                                    "along (ε_c − ε_∅)", lambda c, n, w: c + w * (n - c)),
            Mistake("reversed", "the direction is ε_c − ε_∅, towards the class; yours points away from it",
                    lambda c, n, w: n + w * (n - c)),
            Mistake("no_base", "add the step to ε_∅: without it, w = 0 gives zero instead of the unconditional "
                               "prediction", lambda c, n, w: w * (c - n)),
        ]


class SdeditStart(Exercise):
    name, needs = "sdedit_start", ("schedule",)
    STRENGTHS = (0.2, 0.5, 0.8, 1.0)

    def size(self, ctx):
        return f"2 images × {len(self.STRENGTHS)} strengths"

    def label(self, strength, ctx):
        return f"strength {strength:g} (t₀ = {start_timestep(strength, ctx['schedule'].n_steps) + 1})"

    def outcomes(self, version, ctx):
        device = _schedule_device(ctx)
        x0, eps = _images((2, 3, 8, 8), 95, device), _randn((2, 3, 8, 8), 96, device)
        return [Trial(self.label(s, ctx), _attempt(lambda: version(x0.clone(), s, eps.clone())))
                for s in self.STRENGTHS]

    def package(self, ctx):
        schedule = ctx["schedule"]

        def sdedit_start(x0, strength, eps):  # what sdedit hands the sampler: its first network input
            recorder = _Recorder(x0.shape[-1], x0.device)
            sdedit(recorder, schedule, x0, strength, steps=1, noise=eps, progress=False)
            return recorder.first_input
        return sdedit_start

    def mistakes(self, ctx):
        s = ctx["schedule"]
        T = s.n_steps

        def start(index=lambda strength: round(strength * T) - 1, coef=None):
            def version(x0, strength, eps):
                t0 = torch.full((len(x0),), index(strength), device=x0.device)
                if coef is None:
                    return s.q_sample(x0, t0, eps)
                a, b = coef(t0)
                return a * x0 + b * eps
            return version

        ab = lambda t: _view(s.alpha_bars, t)  # noqa: E731
        return [
            Mistake("paper_index", "t₀ = strength·T is the paper's step; its code index is t₀ − 1 "
                                   "(strength 1 → index T − 1)", start(index=lambda strength: round(strength * T))),
            Mistake("reversed_strength", "strength 1 means starting from pure noise: t₀ = strength·T, so a larger "
                                         "strength adds more noise",
                    start(index=lambda strength: round((1 - strength) * T) - 1)),
            Mistake("noise_variance", "the noise's coefficient is the standard deviation √(1 − ᾱₜ₀), not the "
                                      "variance", start(coef=lambda t: (ab(t).sqrt(), 1 - ab(t)))),
            Mistake("alpha", "the jump uses ᾱₜ₀ (schedule.alpha_bars), the product over all steps up to t₀, not "
                             "one step's αₜ₀", start(coef=lambda t: (_view(s.alphas, t).sqrt(),
                                                                      (1 - _view(s.alphas, t)).sqrt()))),
            Mistake("no_shrink", "the jump also shrinks the image: √ᾱₜ₀ x₀ + √(1 − ᾱₜ₀) ε",
                    start(coef=lambda t: (torch.ones_like(ab(t)), (1 - ab(t)).sqrt()))),
        ]


# ---- 07 · an upsampler's input ---------------------------------------------------------------
class ConditionInput(Exercise):
    name = "condition_input"

    def size(self, ctx):
        return "4 images, xₜ and z_s of 3 channels each"

    def outcomes(self, version, ctx):
        x_t, z_s = _randn((4, 3, 8, 8), 110, "cpu"), _images((4, 3, 8, 8), 111, "cpu")
        return [Trial("", _attempt(lambda: version(x_t.clone(), z_s.clone())),
                      lambda i: f"channel {i[1]} of image {i[0]}" if len(i) > 1 else "")]

    def package(self, ctx):
        return lambda x_t, z_s: torch.cat([x_t, z_s], dim=1)  # what the UNet's stem reads (cond_channels=3)

    def mistakes(self, ctx):
        return [
            Mistake("reversed", "xₜ comes first, then the condition: the network's first 3 input channels are xₜ",
                    lambda x, z: torch.cat([z, x], dim=1)),
            Mistake("batch_axis", "concatenate on the channel axis, dim=1: dim=0 would make 2B images of 3 channels",
                    lambda x, z: torch.cat([x, z], dim=0)),
            Mistake("added", "the condition rides along as 3 extra channels (torch.cat on dim 1), not added to xₜ",
                    lambda x, z: x + z),
            Mistake("stacked", "torch.stack makes a new axis; torch.cat([x_t, z_s], dim=1) joins the channels",
                    lambda x, z: torch.stack([x, z], dim=1)),
        ]


class NoisedCondition(Exercise):
    name, needs = "noised_condition", ("schedule",)
    LEVELS = (0, 99, 249, 499)

    def size(self, ctx):
        return f"2 images × {len(self.LEVELS)} noise levels s"

    def outcomes(self, version, ctx):
        return _jump_trial(version, ctx, self.LEVELS, 2, 120, "s")

    def package(self, ctx):
        schedule = ctx["schedule"]
        return lambda z, s, noise: noised_condition(schedule, z, s, noise)

    def mistakes(self, ctx):
        return _jump_mistakes(ctx["schedule"], "ₛ", "schedule.alpha_bars[s]") + [
            Mistake("clean", "z_s is z noised to level s, √ᾱₛ z + √(1 − ᾱₛ) ε′: the noise is what makes the "
                             "upsampler forgive the base model's mistakes", lambda z, s, e: z),
        ]


EXERCISES: dict[str, Exercise] = {ex.name: ex for ex in (
    AlphaBar(), QSample(), Embed(), AddTimeEmbedding(), TrainingStep(), EmaUpdate(), ReverseStep(),
    DdimStep(), DpmppStep(), GuidedEps(), SdeditStart(), ConditionInput(), NoisedCondition())}


# ---------------------------------------------------------------------------------------------
# Comparing
# ---------------------------------------------------------------------------------------------
def _difference(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """|a − b| elementwise, where equal values (inf included) and NaN in both count 0, NaN in one ∞."""
    d = (a - b).abs()
    d = torch.where((a == b) | (a.isnan() & b.isnan()), torch.zeros_like(d), d)
    return torch.nan_to_num(d, nan=math.inf)


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
    return "0" if x == 0 else f"{x:.2g}"


def _place(trial: Trial, index: tuple) -> str:
    inner = trial.locate(index) if trial.locate else ""
    return ", ".join(p for p in (trial.label, inner) if p)


def _recognise(ex: Exercise, mine: list[Trial], ctx: dict) -> Mistake | None:
    for mistake in ex.mistakes(ctx):
        if _same(mine, ex.outcomes(mistake.version, ctx), ex.tolerance):
            return mistake
    return None


def _verdict(ex: Exercise, yours, ctx: dict) -> CheckResult:
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
    if any(isinstance(t.value, _NotWritten) for t in mine):
        return not_written
    want = ex.expected(ctx)
    for got, expected in zip(mine, want):
        if isinstance(got.value, BaseException):
            err = got.value
            where = f" at {got.label}" if got.label else ""
            message = (f"✗ {name} {'is' if ex.is_value else 'returned'} {err}{where}" if isinstance(err, _WrongType)
                       else f"✗ {name} raised {type(err).__name__}{where}: {short_reason(err)}")
            return _with_hint(CheckResult(name, "raised", message, where=got.label or None), ex, mine, ctx)
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
    place = _place(worst_trial, worst_index) if worst_trial is not None else ""
    nan = " (NaN in yours)" if math.isinf(worst) else ""
    message = (f"✗ {name} differs from the package: max |Δ| = {_number(worst)}{nan}"
               f"{' at ' + place if place else ''} (allowed: {_number(ex.tolerance)})")
    return _with_hint(CheckResult(name, "differs", message, max_abs=worst, where=place or None), ex, mine, ctx)


def _with_hint(result: CheckResult, ex: Exercise, mine: list[Trial], ctx: dict) -> CheckResult:
    mistake = _recognise(ex, mine, ctx)
    if mistake is not None:
        result.mistake = mistake.key
        result.message += f"\n  hint: {mistake.hint}"
    return result


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
        return _verdict(ex, yours, context)


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
    why = {"not written": "yours is not written yet", "raised": "yours raised an error"}.get(
        result.status, "yours differs from it")
    print(f"using the package's {name}: {why}")
    return ex.package(context)
