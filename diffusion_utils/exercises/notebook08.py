"""Notebook 08's exercises: flow matching's straight path, its velocity, one training step, one Euler step.

A flow's time t is a float in [0, 1], t = 0 the image and t = 1 the noise (as in
:mod:`~diffusion_utils.flow`); the messages name it as it is ("t = 0.25").
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..flow import FlowPath, flow_loss
from ..model import UNet
from ..samplers import Euler
from .framework import Exercise, Mistake, Trial, _attempt, _flat, _images, _parameter_at, _randn, _WrongType

_TIMES = (0.0, 0.1, 0.25, 0.5, 0.9, 1.0)  # one per image: both ends of the path and between


def _lerp(x0, eps, t):
    """xₜ = (1 − t)·x₀ + t·ε (FlowPath.q_sample) with the learner's argument order; t (B,) in [0, 1]."""
    return FlowPath.q_sample(x0, t, eps)


def _per_image(t: torch.Tensor, index: tuple) -> str:
    return f"image {index[0]} (t = {float(t[index[0]]):g})" if index else ""


class FlowPathExercise(Exercise):
    name = "flow_path"
    N_IMAGES = len(_TIMES)  # 6 images of 8 × 8: the width differs from the batch, so a missed reshape shows

    def size(self, ctx):
        return f"{self.N_IMAGES} images at t = {', '.join(f'{t:g}' for t in _TIMES)}"

    def outcomes(self, version, ctx):
        x0, eps = _images((self.N_IMAGES, 3, 8, 8), 130, "cpu"), _randn((self.N_IMAGES, 3, 8, 8), 131, "cpu")
        t = torch.tensor(_TIMES)
        return [Trial("", _attempt(lambda: version(x0.clone(), eps.clone(), t.clone())),
                      lambda i: _per_image(t, i))]

    def package(self, ctx):
        return _lerp  # FlowPath.q_sample, in the learner's argument order (x0, eps, t)

    def mistakes(self, ctx):
        v = lambda t: t.view(-1, 1, 1, 1)  # noqa: E731
        return [
            Mistake("reversed", "t = 0 is the image and t = 1 the noise: x₀'s weight is (1 − t) and ε's is t",
                    lambda x0, e, t: v(t) * x0 + (1 - v(t)) * e),
            Mistake("square_roots", "those square roots make a variance-preserving path, DDPM's kind; flow "
                                    "matching's path is straight: the weights (1 − t) and t themselves",
                    lambda x0, e, t: (1 - v(t)).sqrt() * x0 + v(t).sqrt() * e),
            Mistake("image_kept", "the image must fade as the noise grows: x₀'s weight is (1 − t), so that "
                                  "x₁ = ε is pure noise", lambda x0, e, t: x0 + v(t) * e),
            Mistake("noise_sign", "the noise is added, + t·ε: the path runs from x₀ to ε, not to −ε",
                    lambda x0, e, t: (1 - v(t)) * x0 - v(t) * e),
            Mistake("trigonometric", "cos and sin make the trigonometric path (Albergo & Vanden-Eijnden's other "
                                     "interpolant); flow matching's is linear in t: (1 − t)·x₀ + t·ε",
                    lambda x0, e, t: torch.cos(math.pi / 2 * v(t)) * x0 + torch.sin(math.pi / 2 * v(t)) * e),
            Mistake("integer_steps", "t is already in [0, 1], not an integer step 0 … 999: use it as it is",
                    lambda x0, e, t: (1 - v(t) / 1000) * x0 + v(t) / 1000 * e),
            Mistake("squared", "the weights are (1 − t) and t, not their squares",
                    lambda x0, e, t: (1 - v(t)) ** 2 * x0 + v(t) ** 2 * e),
            Mistake("not_broadcast", "t holds one value per image, shape (B,): reshape it to (B, 1, 1, 1) with "
                                     "t.view(-1, 1, 1, 1) so it scales every pixel of its image",
                    lambda x0, e, t: (1 - t) * x0 + t * e),
            Mistake("half_reshaped", "t.view(-1, 1) lines the batch up with the image's height: reshape t to "
                                     "(B, 1, 1, 1), one value for every pixel of its image",
                    lambda x0, e, t: (1 - t.view(-1, 1)) * x0 + t.view(-1, 1) * e),
            Mistake("noise_unscaled", "the noise grows with t: its weight is t, so that x₀ is the clean image",
                    lambda x0, e, t: (1 - v(t)) * x0 + e),
            Mistake("difference_reversed", "x₀ + t·(ε − x₀) walks from the image towards the noise; "
                                           "t·(x₀ − ε) walks away from it",
                    lambda x0, e, t: x0 + v(t) * (x0 - e)),
        ]


class FlowVelocity(Exercise):
    name = "flow_velocity"

    def size(self, ctx):
        return "4 images"

    def outcomes(self, version, ctx):
        x0, eps = _images((4, 3, 8, 8), 132, "cpu"), _randn((4, 3, 8, 8), 133, "cpu")
        return [Trial("", _attempt(lambda: version(x0.clone(), eps.clone())),
                      lambda i: f"image {i[0]}" if i else "")]

    def package(self, ctx):
        return FlowPath.velocity

    def mistakes(self, ctx):
        return [
            Mistake("reversed", "the velocity is dxₜ/dt: t runs from the image (t = 0) to the noise (t = 1), so "
                                "u = ε − x₀, not x₀ − ε", lambda x0, e: x0 - e),
            Mistake("noise", "ε is DDPM's target; a flow model learns the velocity along the path, "
                             "d/dt[(1 − t)·x₀ + t·ε] = ε − x₀", lambda x0, e: e),
            Mistake("image", "x₀ is the end of the path; the target is its velocity, ε − x₀", lambda x0, e: x0),
            Mistake("minus_image", "the noise's part is missing: d/dt[t·ε] = ε, so u = ε − x₀", lambda x0, e: -x0),
            Mistake("sum", "x₀'s weight (1 − t) falls as t grows, so its derivative enters with a minus: ε − x₀",
                    lambda x0, e: e + x0),
            Mistake("halved", "the path goes the whole way from x₀ to ε in one unit of t: u = ε − x₀, no ½",
                    lambda x0, e: (e - x0) / 2),
            Mistake("both_negated", "d/dt[t·ε] = +ε: u = ε − x₀, only x₀ enters with a minus", lambda x0, e: -e - x0),
            Mistake("per_step", "t runs over [0, 1], not over 1 000 integer steps: u = ε − x₀, not divided by 1000",
                    lambda x0, e: (e - x0) / 1000),
        ]


class FlowTrainingStep(Exercise):
    # The loss and its gradient at the same weights, not weights after optimiser steps: both are a
    # float32 mean over 6 144 squared errors, so another order of the same arithmetic moves them by
    # ~1e-7; every mistake below moves the loss by 1e-2 or more.
    name, needs, tolerance, falls_back = "flow_training_step", ("config",), 1e-5, False
    BATCHES, BATCH = 2, 8

    def size(self, ctx):
        return f"the loss and its gradient for {self.BATCHES} batches of {self.BATCH} images on a small flow UNet"

    def model(self) -> UNet:
        """A small flow UNet with every weight drawn (none at zero), so every parameter has a gradient."""
        torch.manual_seed(140)  # inside the check's fork_rng: the caller's random state is untouched
        net = UNet(base_channels=8, channel_mults=(1, 2), num_res_blocks=1, attention_levels=(), time_emb_dim=16,
                   img_size=16, objective="flow")
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())) * 0.05)
        return net

    def _trials(self, loss_of) -> list[Trial]:
        model, trials = self.model(), []
        for b in range(self.BATCHES):
            x0, generator = _images((self.BATCH, 3, 16, 16), 141 + b, "cpu"), torch.Generator().manual_seed(150 + b)
            loss = _attempt(lambda: _loss_and_gradient(loss_of(model, x0.clone(), generator), model), grad=True)
            _, starts = _flat(model)
            trials.append(Trial(f"batch {b + 1}", loss,
                                lambda i, s=starts: "" if not i else "in the loss" if i[0] == 0
                                else _parameter_at([(o + 1, n) for o, n in s], i[0])))
        return trials

    def outcomes(self, version, ctx):
        return self._trials(version)

    def expected(self, ctx):
        path = FlowPath("uniform")
        return self._trials(lambda model, x0, g: flow_loss(model, path, x0, generator=g))

    def package(self, ctx):
        return None  # later cells train with the package's train(), not with this function

    def mistakes(self, ctx):
        def step(t_of=lambda g, n: torch.rand(n, generator=g), eps_first=False, target=FlowPath.velocity,
                 x_in=_lerp, time_in=lambda t: t, loss=F.mse_loss):
            def version(model, x0, g):
                if eps_first:
                    eps = torch.randn(x0.shape, generator=g)
                    t = t_of(g, len(x0))
                else:
                    t = t_of(g, len(x0))
                    eps = torch.randn(x0.shape, generator=g)
                return loss(model(x_in(x0, eps, t), time_in(t)), target(x0, eps))
            return version

        return [
            Mistake("eps_first", "draw t first, then ε: the package draws them from the generator in that order, "
                                 "so the same seed gives the same t and ε", step(eps_first=True)),
            Mistake("reversed_target", "the target is the velocity ε − x₀ (t runs from the image to the noise), "
                                       "not x₀ − ε", step(target=lambda x0, e: x0 - e)),
            Mistake("noise_target", "a flow model predicts the velocity ε − x₀, not the noise ε (DDPM's target)",
                    step(target=lambda x0, e: e)),
            Mistake("image_target", "a flow model predicts the velocity ε − x₀, not the clean image x₀",
                    step(target=lambda x0, e: x0)),
            Mistake("clean_input", "the network sees the point on the path, flow_path(x0, eps, t), not the clean x₀",
                    step(x_in=lambda x0, e, t: x0)),
            Mistake("time_scaled", "pass t as it is, in [0, 1]: the flow UNet multiplies it by 1000 for its time "
                                   "embedding itself", step(time_in=lambda t: t * 1000)),
            Mistake("time_reversed", "tell the network the t you moved along the path with: model(x_t, t), "
                                     "not 1 − t", step(time_in=lambda t: 1 - t)),
            Mistake("normal_t", "t ~ U(0, 1) is torch.rand; torch.randn draws a normal value, most of it outside "
                                "[0, 1]", step(t_of=lambda g, n: torch.randn(n, generator=g))),
            Mistake("one_t", "draw one t per image, torch.rand(len(x0), …), not one for the whole batch",
                    step(t_of=lambda g, n: torch.rand(1, generator=g).expand(n))),
            Mistake("summed", "average the squared error over every pixel of the batch (F.mse_loss's mean), "
                              "not its sum", step(loss=lambda a, b: ((a - b) ** 2).sum())),
            Mistake("per_image_sum", "average over the pixels too: F.mse_loss(…) is the mean over every number",
                    step(loss=lambda a, b: ((a - b) ** 2).sum(dim=(1, 2, 3)).mean())),
            Mistake("absolute", "the loss is the squared error (F.mse_loss), not the absolute error",
                    step(loss=F.l1_loss)),
            Mistake("item", "return the loss tensor itself: .item() makes it a float, which has no gradient "
                            "for the caller's backward()", step(loss=lambda a, b: F.mse_loss(a, b).item())),
            Mistake("integer_t", "a flow's t is a float in [0, 1], torch.rand(len(x0), …), not DDPM's integer step",
                    step(t_of=lambda g, n: torch.randint(0, 1000, (n,), generator=g))),
            Mistake("path_swapped", "flow_path takes (x0, eps, t): with eps first, t = 0 is the noise and the "
                                    "path runs backwards", step(x_in=lambda x0, e, t: _lerp(e, x0, t))),
        ]

    def alternatives(self, ctx):
        def logit_normal(model, x0, g):
            t = torch.sigmoid(torch.randn(len(x0), generator=g))
            eps = torch.randn(x0.shape, generator=g)
            return F.mse_loss(model(_lerp(x0, eps, t), t), FlowPath.velocity(x0, eps))
        return [Mistake("logit_normal", "t = sigmoid(n), n ~ N(0, 1), is the logit-normal draw of Esser et al. "
                                        "2024 (flow_t='logit_normal', what this notebook's config trains with); "
                                        "the exercise asks for t ~ U(0, 1), and the rest of your step is the "
                                        "package's", logit_normal)]


def _loss_and_gradient(loss, model: nn.Module) -> torch.Tensor:
    """The loss and d loss / d θ for every parameter, as one float64 vector (the loss first)."""
    if not isinstance(loss, torch.Tensor) or loss.grad_fn is None:
        kind = "a tensor without a gradient" if isinstance(loss, torch.Tensor) else f"a {type(loss).__name__}"
        raise _WrongType(f"{kind}: return the loss tensor itself (not loss.item()), so its gradient can be checked")
    if loss.numel() != 1:
        raise _WrongType(f"a tensor of shape {tuple(loss.shape)}, not one number: average the squared error")
    grads = torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)
    flat = [torch.zeros(p.numel(), dtype=torch.float64) if g is None else g.detach().reshape(-1).double()
            for p, g in zip(model.parameters(), grads)]
    return torch.cat([loss.detach().double().reshape(1), *flat])


class EulerStep(Exercise):
    name = "euler_step"
    STEPS = ((1.0, 0.9), (0.5, 0.45), (0.2, 0.0))  # uneven on purpose: a shifted grid is uneven too

    def size(self, ctx):
        return f"4 images × {len(self.STEPS)} steps ({', '.join(f't = {t:g} → {s:g}' for t, s in self.STEPS)})"

    def outcomes(self, version, ctx):
        trials = []
        for k, (t, s) in enumerate(self.STEPS):
            x, u = _randn((4, 3, 8, 8), 160 + k, "cpu"), _randn((4, 3, 8, 8), 170 + k, "cpu")
            trials.append(Trial(f"t = {t:g} → {s:g}", _attempt(lambda: version(x.clone(), t, s, u.clone()))))
        return trials

    def package(self, ctx):
        euler = Euler(FlowPath())
        return lambda x, t, t_next, u: euler.step(x, t, t_next, u)[0]

    def mistakes(self, ctx):
        return [
            Mistake("dt_sign", "t runs from 1 down to 0, so Δt = t_next − t is negative: x + (t_next − t)·u walks "
                               "against the velocity, towards the image", lambda x, t, s, u: x + (t - s) * u),
            Mistake("no_dt", "scale the velocity by the step's length Δt = t_next − t; a whole u is the way "
                             "from the image to the noise", lambda x, t, s, u: x - u),
            Mistake("jump", "x − t·u is the jump to x̂₀, all the way to t = 0; one step goes only to t_next: "
                            "x + (t_next − t)·u", lambda x, t, s, u: x - t * u),
            Mistake("fixed_dt", "use this step's own Δt = t_next − t: the grid need not be even (a time shift "
                                "bends it), so 1/20 is not every step's length", lambda x, t, s, u: x - u / 20),
            Mistake("next_time", "the step's length is t_next − t, not t_next: x + (t_next − t)·u",
                    lambda x, t, s, u: x - s * u),
            Mistake("next_time_added", "x + t_next·u walks towards the noise: the step's length is t_next − t, "
                                       "negative as t falls, so x + (t_next − t)·u",
                    lambda x, t, s, u: x + s * u),
            Mistake("no_x", "start from x: the step is x plus the change, x + (t_next − t)·u",
                    lambda x, t, s, u: (s - t) * u),
            Mistake("whole_u", "scale the velocity by the step's length Δt = t_next − t (negative: t falls); "
                               "x + u adds the whole way from the image to the noise", lambda x, t, s, u: x + u),
            Mistake("swapped", "the velocity is what Δt scales: x + (t_next − t)·u, not u + (t_next − t)·x",
                    lambda x, t, s, u: u + (s - t) * x),
        ]
