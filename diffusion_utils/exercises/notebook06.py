"""Notebook 06's exercises: guidance and SDEdit's start."""

from __future__ import annotations


import torch

from ..editing import sdedit, start_timestep
from ..plumbing.errors import ConfigError
from ..guidance import GuidedModel
from .framework import (Exercise, Mistake, Trial, _Recorder, _as_output, _attempt, _images, _randn, _schedule_device, _view)


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
            Mistake("no_brackets", "the brackets matter: ε_∅ + w·ε_c − ε_∅ is just w·ε_c; write "
                                   "ε_∅ + w·(ε_c − ε_∅)", lambda c, n, w: n + w * c - n),
            Mistake("no_difference", "go w times along the difference ε_c − ε_∅, not along ε_c itself: "
                                     "ε_∅ + w·(ε_c − ε_∅)", lambda c, n, w: n + w * c),
            Mistake("w_minus_one", "w − 1 turns Ho & Salimans' w into this notebook's; the w you are given is "
                                   "already this notebook's: ε_∅ + w·(ε_c − ε_∅)",
                    lambda c, n, w: n + (w - 1) * (c - n)),
            Mistake("average", "guidance extrapolates past ε_c, it does not average: ε_∅ + w·(ε_c − ε_∅) (w = 1 "
                               "gives ε_c, w > 1 goes further)", lambda c, n, w: (c + w * n) / (1 + w)),
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
            Mistake("swapped", "the coefficients are swapped: √ᾱₜ₀ multiplies the image and √(1 − ᾱₜ₀) the noise",
                    start(coef=lambda t: ((1 - ab(t)).sqrt(), ab(t).sqrt()))),
            Mistake("one_minus_sqrt", "√(1 − ᾱₜ₀) is the square root of 1 − ᾱₜ₀, not 1 − √ᾱₜ₀",
                    start(coef=lambda t: (ab(t).sqrt(), 1 - ab(t).sqrt()))),
            Mistake("no_jump", "SDEdit starts from the image noised to t₀: jump there with "
                               "schedule.q_sample(x0, t₀, eps), not from x₀ itself", lambda x0, strength, eps: x0),
            Mistake("pure_noise", "starting from pure noise forgets the image: SDEdit jumps x₀ to t₀, "
                                  "√ᾱₜ₀ x₀ + √(1 − ᾱₜ₀) ε", lambda x0, strength, eps: eps),
            Mistake("over_t_minus_one", "t₀ = strength·T, then − 1 for the code index; strength·(T − 1) rounds to "
                                        "another step for most strengths",
                    start(index=lambda strength: round(strength * (T - 1)))),
        ]
