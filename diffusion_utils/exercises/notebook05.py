"""Notebook 05's exercises: DDIM's and DPM-Solver++(2M)'s steps."""

from __future__ import annotations


import torch

from ..samplers import DDIM, DPMSolverPP
from .framework import (Exercise, Mistake, Trial, _attempt, _images, _randn, _schedule_device)


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

        def step(direction="implied", wrap=False, target=None, noise_sqrt=True, signal_sqrt=True, implied_at=None,
                 implied_sqrt=True, one_minus_sqrt=False, sign=1):
            def version(x, t, s, x0, eps):
                a_t = ab(t if implied_at is None else implied_at(t, s))
                a_s = schedule.alpha_bars[s] if wrap else ab(s if target is None else target(t, s))
                implied = (x - a_t.sqrt() * x0) / ((1 - a_t).sqrt() if implied_sqrt else 1 - a_t)
                e = implied if direction == "implied" else eps
                noise = 1 - a_s.sqrt() if one_minus_sqrt else (1 - a_s).sqrt() if noise_sqrt else 1 - a_s
                return (a_s.sqrt() if signal_sqrt else a_s) * x0 + sign * noise * e
            return version

        return [
            Mistake("raw_eps", "build the direction term from the ε̂ that the clipped x̂₀ implies, "
                               "(xₜ − √ᾱₜ x̂₀)/√(1 − ᾱₜ), not from the network's ε̂: after clipping they differ, "
                               "and only the implied one keeps xₜ = √ᾱₜ x̂₀ + √(1 − ᾱₜ) ε̂", step(direction="raw")),
            Mistake("wrapped_alpha_bar", "the last step goes to s = −1, the clean image, where ᾱ = 1 "
                                         "(alpha_bar(s) gives it); schedule.alpha_bars[-1] is ᾱ_T, pure noise",
                    step(wrap=True)),
            Mistake("rebuilt_xt", "that rebuilds xₜ itself: eq. 12 re-noises x̂₀ to the target step s, with ᾱₛ, "
                                  "not ᾱₜ", step(target=lambda t, s: t)),
            Mistake("implied_at_s", "the implied ε̂ undoes the jump to t, so it uses ᾱₜ: (xₜ − √ᾱₜ x̂₀)/√(1 − ᾱₜ); "
                                    "ᾱₛ belongs only in the second line", step(implied_at=lambda t, s: s)),
            Mistake("steps_swapped", "ᾱₜ and ᾱₛ are swapped: the implied ε̂ uses ᾱₜ, where xₜ is, and the new point "
                                     "ᾱₛ, where the step goes", step(implied_at=lambda t, s: s, target=lambda t, s: t)),
            Mistake("one_step_back", "DDIM jumps straight to s, which may be many steps away: use ᾱₛ = "
                                     "alpha_bar(s), not alpha_bar(t − 1)", step(target=lambda t, s: t - 1)),
            Mistake("implied_no_sqrt", "divide by the standard deviation √(1 − ᾱₜ), not by 1 − ᾱₜ: "
                                       "ε̂ = (xₜ − √ᾱₜ x̂₀)/√(1 − ᾱₜ)", step(implied_sqrt=False)),
            Mistake("variance_for_std", "the direction's coefficient is a standard deviation, √(1 − ᾱₛ), not "
                                        "the variance 1 − ᾱₛ", step(noise_sqrt=False)),
            Mistake("one_minus_sqrt", "√(1 − ᾱₛ) is the square root of 1 − ᾱₛ, not 1 − √ᾱₛ: "
                                      "(1 - alpha_bar(s)).sqrt()", step(one_minus_sqrt=True)),
            Mistake("signal_no_sqrt", "x̂₀ is scaled by √ᾱₛ, the signal's standard deviation at s, not by ᾱₛ",
                    step(signal_sqrt=False)),
            Mistake("direction_subtracted", "the direction term is added: √ᾱₛ x̂₀ + √(1 − ᾱₛ) ε̂", step(sign=-1)),
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

        def step(lam_scale=0.5, r_inverted=False, exp_sign=-1, ratio_sqrt=True, order=2, last=True, prev_first=False,
                 h_sign=1, signal_at_t=False, sign=-1):
            def lam(t):
                return lam_scale * torch.log(ab(t) / (1 - ab(t)))

            def version(x, t, s, x0, x0_prev, t_prev):
                if s < 0 and last:
                    return x0
                h = h_sign * (lam(s) - lam(t))
                if x0_prev is None or order == 1:
                    d = x0
                else:
                    r = (lam(t) - lam(t_prev)) / h
                    r = 1 / r if r_inverted else r
                    new, old = (x0_prev, x0) if prev_first else (x0, x0_prev)
                    d = (1 + 1 / (2 * r)) * new - 1 / (2 * r) * old
                ratio = (1 - ab(s)) / (1 - ab(t))
                signal = ab(t if signal_at_t else s).sqrt()
                return (ratio.sqrt() if ratio_sqrt else ratio) * x + sign * signal * torch.expm1(exp_sign * h) * d
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
            Mistake("h_sign", "hᵢ = λ_{tᵢ} − λ_{tᵢ₋₁}, the new λ minus the old: λ rises towards the clean image, "
                              "so h > 0 (h = lam(s) - lam(t))", step(h_sign=-1)),
            Mistake("signal_at_t", "the second term is scaled by αₛ = √ᾱₛ at the step's end, not by √ᾱₜ",
                    step(signal_at_t=True)),
            Mistake("second_term_added", "the update subtracts the second term, σₛ/σₜ·xₜ − αₛ(e^(−h) − 1)·D: "
                                         "e^(−h) − 1 < 0, so that adds a share of D", step(sign=1)),
        ]
