"""Notebook 02's exercises: the time embedding and where it enters."""

from __future__ import annotations


import torch
import torch.nn.functional as F

from ..model import ResidualBlock, sinusoidal_embedding
from .framework import (Exercise, Mistake, Trial, _as_output, _attempt, _randn)


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
            Mistake("sin_twice", "the second half is the cosines: [sin(t·ωᵢ) … | cos(t·ωᵢ) …]",
                    make(right, lambda s, c: torch.cat([s, s], dim=1))),
            Mistake("over_half_minus_one", "the exponent divides i by d/2; d/2 − 1 (another codebase's choice) makes "
                                           "every frequency but the first a little lower",
                    make(lambda d: 10000 ** (-torch.arange(d // 2) / (d // 2 - 1)), concat)),
            Mistake("from_one", "i runs from 0 to d/2 − 1, so the first frequency is ω₀ = 1: torch.arange(d // 2)",
                    make(lambda d: 10000 ** (-torch.arange(1, d // 2 + 1) / (d // 2)), concat)),
            Mistake("batch_axis", "join the sines and cosines along each row, dim=1, into (B, d); dim=0 stacks them "
                                  "as 2B rows of d/2", make(right, lambda s, c: torch.cat([s, c], dim=0))),
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
            Mistake("one_axis", "[:, :, None] makes (B, C, 1), which lines up with h's last three axes; add two: "
                                "[:, :, None, None] is (B, C, 1, 1)",
                    lambda block, h, e: h + block.time_proj(F.silu(e))[:, :, None]),
            Mistake("relu", "the package's activation is SiLU, F.silu(t_emb), not ReLU",
                    lambda block, h, e: h + block.time_proj(F.relu(e))[:, :, None, None]),
            Mistake("sigmoid", "SiLU is x·sigmoid(x), F.silu(t_emb), not the sigmoid alone",
                    lambda block, h, e: h + block.time_proj(torch.sigmoid(e))[:, :, None, None]),
            Mistake("h_forgotten", "add the projected embedding to h: return h + …, not the embedding alone",
                    lambda block, h, e: block.time_proj(F.silu(e))[:, :, None, None]),
            Mistake("silu_of_sum", "SiLU goes on the embedding before the projection, not on the sum: "
                                   "h + block.time_proj(F.silu(t_emb))[:, :, None, None]",
                    lambda block, h, e: F.silu(h + block.time_proj(e)[:, :, None, None])),
        ]
