"""Notebook 01's exercises: ᾱ and the jump q(xₜ | x₀)."""

from __future__ import annotations


import torch


from .framework import (Exercise, Mistake, Trial, _attempt, _images, _paper, _randn, _schedule_device, _view)


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
            Mistake("squared", "ᾱₜ is the product ∏(1 − βₛ) itself, not its square", right ** 2),
            Mistake("sum_of_alphas", "a sum of the αs grows past 1; ᾱₜ multiplies them: torch.cumprod, not "
                                     "torch.cumsum", torch.cumsum(1 - betas, dim=0)),
            Mistake("one_minus_product", "1 − ∏βₛ is not ∏(1 − βₛ): take 1 − β first, then the cumulative product",
                    1 - torch.cumprod(betas, dim=0)),
            Mistake("one_number", "torch.prod gives one number, ᾱ_T; ᾱ needs one value per step: torch.cumprod(…, "
                                  "dim=0) keeps every partial product", torch.prod(1 - betas)),
            Mistake("exponential", "e^(−Σβₛ) is the continuous-time approximation of ∏(1 − βₛ); the schedule's ᾱₜ "
                                   "is the product itself: torch.cumprod(1 - betas, dim=0)",
                    torch.exp(-torch.cumsum(betas, dim=0))),
        ]


def _jump_trial(version, ctx, steps, n_images: int, seed: int, letter: str, first: int = 1) -> list[Trial]:
    """A version of the jump xₛ = √ᾱₛ x + √(1−ᾱₛ) ε run once on ``n_images`` images, each at every
    code step of ``steps`` (one batch, the step varying along it: a missing reshape shows). Messages
    number the steps from ``first``: 1 for the paper's t (01), 0 for 07's condition levels s."""
    device = _schedule_device(ctx)
    steps = [t for t in steps if t < ctx["schedule"].n_steps]
    x = _images((n_images, 3, 12, 12), seed, device).repeat(len(steps), 1, 1, 1)  # width 12 ≠ batch size
    t = torch.tensor(steps, device=device).repeat_interleave(n_images)
    eps = _randn(x.shape, seed + 1, device)
    return [Trial("", _attempt(lambda: version(x.clone(), t.clone(), eps.clone())),
                  lambda i: f"{letter} = {int(t[i[0]]) + first}" if i else "")]


def _jump_mistakes(schedule, sub: str, names: str, x: str) -> list[Mistake]:
    """The mistakes of any jump √ᾱ x + √(1−ᾱ) ε; ``sub`` is the step's subscript (ₜ, ₛ), ``names``
    what the learner indexes ᾱ with and ``x`` the image's symbol (x₀, z)."""
    ab, alphas = schedule.alpha_bars, schedule.alphas
    a = lambda t: _view(ab, t)  # noqa: E731
    return [
        Mistake("alpha", f"α{sub} = 1 − β{sub} is one step's share; the jump uses ᾱ{sub}, the product of all of them "
                         f"up to that step ({names})",
                lambda x, t, e: _view(alphas, t).sqrt() * x + (1 - _view(alphas, t)).sqrt() * e),
        Mistake("noise_variance", f"the noise's coefficient is a standard deviation, √(1 − ᾱ{sub}); (1 − ᾱ{sub}) is "
                                  f"its variance", lambda x, t, e: a(t).sqrt() * x + (1 - a(t)) * e),
        Mistake("swapped", f"the coefficients are swapped: √ᾱ{sub} multiplies the image and √(1 − ᾱ{sub}) the noise",
                lambda x, t, e: (1 - a(t)).sqrt() * x + a(t).sqrt() * e),
        Mistake("no_square_roots", f"ᾱ{sub} and 1 − ᾱ{sub} are the variances of the two parts: {x}'s and ε's "
                                   f"coefficients are their square roots, √ᾱ{sub} and √(1 − ᾱ{sub})",
                lambda x, t, e: a(t) * x + (1 - a(t)) * e),
        Mistake("one_minus_sqrt", f"√(1 − ᾱ{sub}) is the square root of 1 − ᾱ{sub}, not 1 − √ᾱ{sub}: "
                                  f"(1 - a).sqrt()", lambda x, t, e: a(t).sqrt() * x + (1 - a(t).sqrt()) * e),
        Mistake("noise_subtracted", f"the noise is added: √ᾱ{sub} {x} + √(1 − ᾱ{sub}) ε, with the ε you are given",
                lambda x, t, e: a(t).sqrt() * x - (1 - a(t)).sqrt() * e),
        Mistake("no_shrink", f"the jump also shrinks the image: √ᾱ{sub} {x} + √(1 − ᾱ{sub}) ε, so that the "
                             f"variance stays 1", lambda x, t, e: x + (1 - a(t)).sqrt() * e),
        Mistake("not_broadcast", f"{names} holds one value per image, shape (B,): reshape it to (B, 1, 1, 1) with "
                                 f".view(-1, 1, 1, 1) so it scales every pixel of its image",
                lambda x, t, e: ab[t].sqrt() * x + (1 - ab[t]).sqrt() * e),
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
        return _jump_mistakes(ctx["schedule"], "ₜ", "alpha_bar[t]", "x₀") + [
            Mistake("signal_no_sqrt", "the image's coefficient is √ᾱₜ (ᾱₜ is the share of its variance)",
                    lambda x0, t, eps: _view(ab, t) * x0 + (1 - _view(ab, t)).sqrt() * eps),
            Mistake("paper_index", "t is already the code index (the paper's step t + 1): index alpha_bar "
                                   "with t itself, not t − 1",
                    lambda x0, t, eps: _view(ab, t - 1).sqrt() * x0 + (1 - _view(ab, t - 1)).sqrt() * eps),
            Mistake("next_index", "alpha_bar[t + 1] runs past the end at the last step: t is already the code "
                                  "index, so index alpha_bar with t itself",
                    lambda x0, t, eps: _view(ab, t + 1).sqrt() * x0 + (1 - _view(ab, t + 1)).sqrt() * eps),
        ]
