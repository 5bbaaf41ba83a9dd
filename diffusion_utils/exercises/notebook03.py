"""Notebook 03's exercises: one training step and the EMA."""

from __future__ import annotations

import copy
from collections import OrderedDict
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..schedule import NoiseSchedule
from ..training import TrainState, make_ema, train_step
from .framework import (_WrongType, Exercise, Mistake, NOT_WRITTEN, Trial, _NotWritten, _attempt, _flat, _gen, _images, _parameter_at)


class TrainingStep(Exercise):
    # Compared: each step's loss and the gradient it hands to optimizer.step() (after clipping), every
    # step starting from the package's weights at that step. Not the weights after several AdamW
    # steps: Adam divides by √v, so a gradient that rounding moves by 1e-9 can flip a near-zero
    # weight's update by the whole lr, and a right answer would fail. Loss and gradient are float32
    # sums over the batch; another order of the same arithmetic moves them by ~1e-7.
    name, needs, tolerance, falls_back = "training_step", ("config",), 1e-5, False
    STEPS, BATCH = 3, 8
    SMALL = dict(img_size=16, base_channels=8, channel_mults=(1, 2), num_res_blocks=1, attention_levels=(1,),
                 time_emb_dim=16)

    def size(self, ctx):
        return f"the loss and the clipped gradient of each of {self.STEPS} steps of a small UNet on {self.BATCH} images"

    def config(self, ctx):
        """Algorithm 1 as the notebook's config sets it (schedule, lr, clipping, seed), on a small UNet."""
        return ctx["config"].replace(**self.SMALL, prediction="eps", loss_weighting="none", lr_warmup_steps=0,
                                     lr_decay="none", bf16=False, num_classes=0, p_uncond=0.0, device="cpu")

    def batch(self):
        return _images((self.BATCH, 3, 16, 16), 3, "cpu")

    def _trials(self, step_once: Callable[[int], Any], model: nn.Module, optimizer, weights: list[dict]) -> list[Trial]:
        """Run ``step_once(n)`` for every step n, each from ``weights[n]``; record what optimizer.step() is given."""
        given: list[torch.Tensor] = []
        real_step = optimizer.step

        def watched_step(*args, **kwargs):  # the gradient this update uses, as the learner's code left it
            given.append(torch.cat([torch.zeros(p.numel(), dtype=torch.float64) if p.grad is None
                                    else p.grad.detach().reshape(-1).double() for p in model.parameters()]))
            return real_step(*args, **kwargs)

        optimizer.step = watched_step
        trials, (_, starts) = [], _flat(model)
        locate = lambda i: "" if not i else "in the loss" if i[0] == 0 else _parameter_at(  # noqa: E731
            [(o + 1, name) for o, name in starts], i[0], "in the gradient")
        try:
            for n in range(self.STEPS):
                with torch.no_grad():
                    model.load_state_dict(weights[n])  # the package's weights before step n + 1
                torch.manual_seed(n)  # the same dropout masks (if any) for every version
                before = len(given)
                loss = _attempt(lambda: step_once(n), grad=True)
                if not isinstance(loss, BaseException) and len(given) == before:
                    loss = _WrongType("no update: call optimizer.step() after loss.backward()")
                if isinstance(loss, BaseException):
                    trials.append(Trial(f"step {n + 1}", loss))
                    break
                trials.append(Trial(f"step {n + 1}", torch.cat([loss.reshape(1), given[-1]]), locate))
        finally:
            optimizer.step = real_step
        return trials

    def _package_run(self, ctx) -> tuple[TrainState, list[dict]]:
        """A fresh package state, and its weights before each step of the package's own run."""
        config, batch = self.config(ctx), self.batch()
        state = TrainState(config, torch.device("cpu"))
        weights = [copy.deepcopy(state.model.state_dict())]
        for _ in range(self.STEPS - 1):
            train_step(state, batch.clone())
            weights.append(copy.deepcopy(state.model.state_dict()))
        return TrainState(config, torch.device("cpu")), weights

    def outcomes(self, version, ctx):
        config = self.config(ctx)
        fresh, weights = self._package_run(ctx)
        model = copy.deepcopy(fresh.model)
        optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        generator = _gen(config.seed + 1)  # the seed of the package's noise generator
        batch = self.batch()
        return self._trials(lambda n: version(model, optimizer, batch.clone(), generator), model, optimizer, weights)

    def expected(self, ctx):
        state, weights = self._package_run(ctx)
        batch = self.batch()
        return self._trials(lambda n: train_step(state, batch.clone()), state.model, state.optimizer, weights)

    def package(self, ctx):
        return None  # later cells train with the package's train(), not with this function

    def mistakes(self, ctx):
        schedule, clip = NoiseSchedule.from_config(self.config(ctx)), ctx["config"].grad_clip

        def step(draw_t=None, eps_first=False, target="eps", clean_input=False, clip_grad=True, zero_grad="before",
                 reduction="mean"):
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
                loss = F.mse_loss(model(x0 if clean_input else x_t, t), eps if target == "eps" else x0,
                                  reduction=reduction)
                if zero_grad == "before":
                    optimizer.zero_grad()
                loss.backward()
                if zero_grad == "after":
                    optimizer.zero_grad()
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
                                    "gradient is added to the last one's", step(zero_grad=None)),
            Mistake("zero_grad_late", "optimizer.zero_grad() goes before loss.backward(): after it, it wipes the "
                                      "gradient just computed, and optimizer.step() gets zeros",
                    step(zero_grad="after")),
            Mistake("t_inclusive", "torch.randint's upper end is excluded: torch.randint(0, schedule.n_steps, …) "
                                   "draws the T code indices 0 … T − 1; n_steps + 1 also draws T, past the end",
                    step(draw_t=lambda g, n: torch.randint(0, schedule.n_steps + 1, (n,), generator=g))),
            Mistake("one_t", "draw one t per image, torch.randint(…, (len(x0),), …), not one for the whole batch",
                    step(draw_t=lambda g, n: torch.randint(0, schedule.n_steps, (1,), generator=g))),
            Mistake("summed", "average the squared error over every pixel of the batch (F.mse_loss's default "
                              "mean), not its sum", step(reduction="sum")),
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

        def ema(decay, swap=False, whole=False):
            @torch.no_grad()
            def version(ema_model, model, n):
                d = decay(n)
                for p_ema, p in zip(ema_model.parameters(), model.parameters()):
                    keep, take = (1 - d, d) if swap else (d, 1 if whole else 1 - d)
                    p_ema.mul_(keep).add_(p, alpha=take)
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
            Mistake("n_plus_2", "the formula uses n + 1, not n + 2: the first update (n = 0) has d = 0 and copies "
                                "the weights", ema(lambda n: min(d_max, (1 - 1 / (n + 2)) ** (gamma + 1)))),
            Mistake("power_outside", "raise (1 − 1/(n+1)) to the power γ + 1 first, then cap it: "
                                     "min(d_max, (1 − 1/(n+1))^(γ+1)); yours raises the cap too",
                    ema(lambda n: min(d_max, 1 - 1 / (n + 1)) ** (gamma + 1))),
            Mistake("not_in_place", "the average did not change: update p_ema itself, in place, "
                                    "p_ema.mul_(d).add_(p, alpha=1 - d) (p_ema = … only rebinds the name)",
                    lambda ema_model, model, n: None),
            Mistake("whole_weights", "take 1 − d of the new weights, not all of them: "
                                     "p_ema.mul_(d).add_(p, alpha=1 - d)", ema(right, whole=True)),
        ]
