"""Notebook 04's exercises: one reverse step (Algorithm 2)."""

from __future__ import annotations

from ..sampling import p_sample
from .framework import (Exercise, Mistake, Trial, _FixedOutput, _attempt, _paper, _randn, _schedule_device)


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

        def step(x0_alpha=False, x0_sqrt=True, x0_noise_sqrt=True, clip=True, ab_prev=None, noise="std",
                 mean_swapped=False, prev_sqrt=True, alpha_sqrt=True, var_factor="beta", sign=1):
            def version(x_t, t, eps_hat, z):
                beta, alpha, ab = s.betas[t], s.alphas[t], s.alpha_bars[t]
                prev = s.alpha_bars_prev[t] if ab_prev is None else ab_prev(t)
                a = alpha if x0_alpha else ab  # what x̂₀'s inversion of the jump uses
                noise_scale = (1 - a).sqrt() if x0_noise_sqrt else 1 - a
                x0_hat = (x_t - noise_scale * eps_hat) / (a.sqrt() if x0_sqrt else a)
                if clip:
                    x0_hat = x0_hat.clamp(-1, 1)
                c0 = (prev.sqrt() if prev_sqrt else prev) * beta / (1 - ab)
                ct = (alpha.sqrt() if alpha_sqrt else alpha) * (1 - prev) / (1 - ab)
                mean = c0 * x_t + ct * x0_hat if mean_swapped else c0 * x0_hat + ct * x_t
                var = (1 - prev) / (1 - ab) * (beta if var_factor == "beta" else alpha)
                scale = {"std": var.sqrt(), "variance": var, "none": 0.0}[noise]
                return mean + sign * scale * z
            return version

        return [
            Mistake("alpha_in_x0", "x̂₀ inverts the jump q(xₜ | x₀) of notebook 01, which uses ᾱₜ "
                                   "(schedule.alpha_bars[t]), not αₜ", step(x0_alpha=True)),
            Mistake("x0_no_sqrt", "x̂₀ = (xₜ − √(1 − ᾱₜ) ε̂) / √ᾱₜ: divide by the square root of ᾱₜ",
                    step(x0_sqrt=False)),
            Mistake("x0_noise_variance", "x̂₀ = (xₜ − √(1 − ᾱₜ) ε̂) / √ᾱₜ: the noise's coefficient is the standard "
                                         "deviation √(1 − ᾱₜ), not the variance", step(x0_noise_sqrt=False)),
            Mistake("no_clip", "clip x̂₀ to [−1, 1] (.clamp(-1, 1)) before μ̃ₜ, as the package's p_sample does "
                               "(unclipped, the step is eq. 11 exactly)", step(clip=False)),
            Mistake("prev_wraps", "at t = 1 your ᾱₜ₋₁ wrapped around: alpha_bars[t − 1] at code index 0 is "
                                  "alpha_bars[−1] = ᾱ_T; use alpha_bars_prev[t], whose first entry is ᾱ₀ = 1",
                    step(ab_prev=lambda t: s.alpha_bars[t - 1])),
            Mistake("mean_swapped", "μ̃ₜ's coefficients are swapped: √ᾱₜ₋₁ βₜ/(1 − ᾱₜ) multiplies x̂₀ and "
                                    "√αₜ (1 − ᾱₜ₋₁)/(1 − ᾱₜ) multiplies xₜ", step(mean_swapped=True)),
            Mistake("prev_no_sqrt", "x̂₀'s coefficient in μ̃ₜ has the square root of ᾱₜ₋₁: √ᾱₜ₋₁ βₜ/(1 − ᾱₜ)",
                    step(prev_sqrt=False)),
            Mistake("alpha_no_sqrt", "xₜ's coefficient in μ̃ₜ has the square root of αₜ: √αₜ (1 − ᾱₜ₋₁)/(1 − ᾱₜ)",
                    step(alpha_sqrt=False)),
            Mistake("alpha_in_variance", "β̃ₜ = (1 − ᾱₜ₋₁)/(1 − ᾱₜ) · βₜ ends with βₜ, not αₜ",
                    step(var_factor="alpha")),
            Mistake("variance_for_std", "z is scaled by the standard deviation σₜ = √β̃ₜ, not by the variance β̃ₜ",
                    step(noise="variance")),
            Mistake("no_noise", "add σₜ z: a reverse step draws from N(μ̃ₜ, σₜ² I) rather than returning its "
                                "mean (σ₁ = 0 makes only the last step noise-free)", step(noise="none")),
            Mistake("noise_subtracted", "add the noise, μ̃ₜ + σₜ z, with the z you are given", step(sign=-1)),
        ]

    def alternatives(self, ctx):
        s = ctx["schedule"]

        def beta_variance(x_t, t, eps_hat, z):  # the package's step with σₜ² = βₜ
            beta, ab, prev = s.betas[t], s.alpha_bars[t], s.alpha_bars_prev[t]
            x0_hat = ((x_t - (1 - ab).sqrt() * eps_hat) / ab.sqrt()).clamp(-1, 1)
            mean = (prev.sqrt() * beta / (1 - ab)) * x0_hat + (s.alphas[t].sqrt() * (1 - prev) / (1 - ab)) * x_t
            return mean + beta.sqrt() * z
        return [Mistake("beta_variance", "σₜ² = βₜ is Ho et al.'s other choice of variance (§3.2: both gave "
                                         "similar samples); this notebook asks for the posterior variance "
                                         "β̃ₜ = (1 − ᾱₜ₋₁)/(1 − ᾱₜ) · βₜ, which is smaller and 0 at the last step, so "
                                         "yours adds a little more noise, most at the last steps", beta_variance)]
