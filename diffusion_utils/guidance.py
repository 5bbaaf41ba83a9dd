"""Classifier-free guidance (Ho & Salimans 2022): steering a class-conditional model at sampling time.

A class-conditional network trained with label dropout predicts two things from one set of
weights: ε_θ(xₜ, t, c) for a class c and ε_θ(xₜ, t, ∅) with the "no class" token. Guidance mixes
them at every sampler step:

    ε̂ = ε_θ(xₜ, t, ∅) + w · (ε_θ(xₜ, t, c) − ε_θ(xₜ, t, ∅))

w = 0 is the unconditional model, w = 1 the plain conditional model, and w > 1 pushes samples
towards what makes them look like class c — more typical, less diverse. (Ho & Salimans write
(1 + w')ε_c − w'ε_∅; their w' is our w − 1.) The mix is linear, so it is the same whether the
network outputs ε or v: :class:`GuidedModel` mixes the raw output and the samplers convert it as
usual. Both branches run as one batched network call.
"""

from __future__ import annotations

import difflib
import math

import torch

from .plumbing.errors import ConfigError


def class_ids(classes, model: torch.nn.Module, n: int) -> torch.Tensor:
    """Class ids (n,) int64 for ``classes``: one id or name for all n images, or one per image.

    Names are matched case-insensitively against ``model.class_names``; ids must be in
    [0, num_classes). Raises :class:`ConfigError` (one line, with close matches) otherwise.
    """
    num_classes = getattr(model, "num_classes", 0)
    if not num_classes:
        raise ConfigError("this model is unconditional (trained without labels): it cannot sample a "
                          "class; train on labelled data or drop the class")
    items = [classes] if isinstance(classes, (str, int)) or (torch.is_tensor(classes) and classes.ndim == 0) \
        else list(classes)
    if len(items) not in (1, n):
        raise ConfigError(f"give one class for all {n} images or one per image; got {len(items)}")
    ids = [_class_id(item, model) for item in items]
    return torch.tensor(ids * n if len(ids) == 1 else ids, dtype=torch.long)


def _class_id(item, model) -> int:
    names = list(getattr(model, "class_names", ()))
    if isinstance(item, str) and not item.strip().lstrip("-").isdigit():
        lowered = [name.lower() for name in names]
        if item.strip().lower() in lowered:
            return lowered.index(item.strip().lower())
        close = difflib.get_close_matches(item.strip().lower(), lowered, n=3, cutoff=0.6)
        hint = f"did you mean {', '.join(repr(names[lowered.index(c)]) for c in close)}?" if close \
            else f"the {len(names)} names start {', '.join(repr(x) for x in names[:4])}, …" if names \
            else "this model has no class names; use an id"
        raise ConfigError(f"unknown class {item!r}; {hint}")
    try:
        value = int(item)
    except (TypeError, ValueError):
        raise ConfigError(f"a class must be a name or an integer id; got {item!r}") from None
    if not 0 <= value < model.num_classes:
        raise ConfigError(f"class id must be in [0, {model.num_classes - 1}]; got {value}")
    return value


def check_guidance_scale(guidance_scale) -> float:
    """``guidance_scale`` as a float; a one-line :class:`ConfigError` if not a finite number ≥ 0."""
    try:
        w = float(guidance_scale)
    except (TypeError, ValueError):
        raise ConfigError(f"guidance_scale must be a number; got {guidance_scale!r}") from None
    if not math.isfinite(w) or w < 0:
        raise ConfigError(f"guidance_scale must be a finite number >= 0; got {guidance_scale!r}")
    return w


class GuidedModel(torch.nn.Module):
    """A class-conditional model with its classes and guidance scale fixed, called like any model.

    ``forward(x, t)`` returns ε_∅ + w (ε_c − ε_∅) (or the same mix of v), for ``classes`` (B,)
    int64, or (B, num_classes + 1) float weights that mix class embeddings (for interpolation).
    w = 0 and w = 1 run only the branch they need, so they equal the unconditional and the
    conditional model exactly; other w run both branches as one batch of 2B.
    """

    def __init__(self, model: torch.nn.Module, classes: torch.Tensor, guidance_scale: float):
        super().__init__()
        self.model = model
        self.register_buffer("classes", classes, persistent=False)
        self.guidance_scale = check_guidance_scale(guidance_scale)
        # What the samplers read from a model:
        self.prediction = getattr(model, "prediction", "eps")
        self.img_size = model.img_size
        self.in_channels = getattr(model, "in_channels", 3)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        w, b = self.guidance_scale, x.shape[0]
        c = self.classes.to(x.device)
        if c.is_floating_point():  # weights over the class embeddings: ∅ is its one-hot row
            null = torch.zeros_like(c).index_fill_(-1, torch.tensor([self.model.null_class], device=x.device), 1.0)
        else:
            null = torch.full_like(c, self.model.null_class)
        if w == 0:
            return self.model(x, t, null)
        if w == 1:
            return self.model(x, t, c)
        t = torch.as_tensor(t, device=x.device).reshape(-1).expand(b)
        out_c, out_null = self.model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([c, null])).chunk(2)
        return out_null + w * (out_c - out_null)  # ε̂ = ε_∅ + w (ε_c − ε_∅)
