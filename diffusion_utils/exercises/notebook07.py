"""Notebook 07's exercises: an upsampler's input."""

from __future__ import annotations


import torch

from ..superres import noised_condition
from .framework import (Exercise, Mistake, Trial, _attempt, _images, _randn, _view)
from .notebook01 import _jump_mistakes, _jump_trial


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
            Mistake("stacked_first", "torch.stack makes a new first axis, (2, B, 3, H, W); torch.cat([x_t, z_s], "
                                     "dim=1) joins the channels", lambda x, z: torch.stack([x, z])),
            Mistake("width_axis", "the last axis is the width: dim=-1 puts z_s beside xₜ in the image; the channels "
                                  "are dim=1", lambda x, z: torch.cat([x, z], dim=-1)),
            Mistake("height_axis", "dim=2 is the height: it puts z_s under xₜ in the image; the channels are dim=1",
                    lambda x, z: torch.cat([x, z], dim=2)),
            Mistake("multiplied", "the condition rides along as 3 extra channels (torch.cat on dim 1), not "
                                  "multiplied with xₜ", lambda x, z: x * z),
            Mistake("interleaved", "stacking on dim 2 and flattening interleaves the channels (x, z, x, z, …); the "
                                   "network reads xₜ's three first, then z_s's: torch.cat([x_t, z_s], dim=1)",
                    lambda x, z: torch.stack([x, z], dim=2).flatten(1, 2)),
        ]


class NoisedCondition(Exercise):
    name, needs = "noised_condition", ("schedule",)
    LEVELS = (0, 25, 100, 250)  # code levels, numbered as notebook 07 numbers them (s = 0: almost clean)

    def size(self, ctx):
        return f"2 images × {len(self.LEVELS)} noise levels s"

    def outcomes(self, version, ctx):
        return _jump_trial(version, ctx, self.LEVELS, 2, 120, "s", first=0)

    def package(self, ctx):
        schedule = ctx["schedule"]
        return lambda z, s, noise: noised_condition(schedule, z, s, noise)

    def mistakes(self, ctx):
        ab = ctx["schedule"].alpha_bars
        return _jump_mistakes(ctx["schedule"], "ₛ", "sr_schedule.alpha_bars[s]", "z") + [
            Mistake("clean", "z_s is z noised to level s, √ᾱₛ z + √(1 − ᾱₛ) ε′: the noise is what makes the "
                             "upsampler forgive the base model's mistakes", lambda z, s, e: z),
            Mistake("index_back", "s is already the index of its level: alpha_bars[s − 1] is one level less noisy, "
                                  "and at s = 0 it wraps around to ᾱ_T; index with s itself",
                    lambda z, s, e: _view(ab, s - 1).sqrt() * z + (1 - _view(ab, s - 1)).sqrt() * e),
        ]
