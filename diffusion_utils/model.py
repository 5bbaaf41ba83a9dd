"""The noise-prediction network ε_θ(xₜ, t): a UNet with time conditioning.

Read top to bottom: the sinusoidal time embedding, the residual block that adds it, self-attention,
down/up-sampling, then the UNet that stacks them. The shape of the design follows Ho et al. 2020
(Appendix B), itself a PixelCNN++-style UNet:

    x (B,3,H,W) ─ conv ─┬─ level 0: res blocks ───────────── skip ─────────────┐
                        │  ↓ downsample                                        │
                        ├─ level 1: res blocks (+ attention at low resolution) │ ...
                        │  ↓ ...                                               │
                        └─ middle: res block, attention, res block             │
                           ↑ upsample, concatenate the skips ←─────────────────┘
                           ... ─ GroupNorm ─ SiLU ─ conv ─ ε̂ (B,3,H,W)

Every residual block receives the time embedding, so each layer knows how noisy its input is.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .flow import OBJECTIVES, TIME_SCALE
from .plumbing.checks import check_halvable
from .plumbing.errors import ConfigError
from .schedule import check_prediction


def sinusoidal_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Transformer-style embedding of integer timesteps (Vaswani et al. 2017, §3.5).

    t: (B,) timesteps; returns (B, dim) = [sin(t·ωᵢ), cos(t·ωᵢ)] with ωᵢ = max_period^(−i/(dim/2)).
    Low i vary fast with t, high i slowly, so nearby timesteps get similar but distinct codes.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    angles = t.float()[:, None] * freqs[None, :]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


class TimeEmbedding(nn.Module):
    """t (B,) → sinusoidal code → MLP → (B, dim). The MLP lets the network reshape the code."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.SiLU(), nn.Linear(4 * dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(sinusoidal_embedding(t, self.dim))


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with up to 32 groups (32 is the usual choice) of at least 2 channels each.

    Narrow layers get fewer groups: with one channel per group GroupNorm would subtract each
    channel's mean, and with it the per-channel time embedding that :class:`ResidualBlock` adds
    just before its second norm — the block could not tell the timesteps apart.
    """
    groups = math.gcd(32, channels)
    while groups > 1 and channels // groups < 2:
        groups //= 2
    return nn.GroupNorm(groups, channels)


class ResidualBlock(nn.Module):
    """GroupNorm → SiLU → conv → (+ time embedding) → GroupNorm → SiLU → dropout → conv, + skip.

    x: (B, in_ch, H, W), t_emb: (B, time_emb_dim) → (B, out_ch, H, W).
    """

    def __init__(self, in_ch: int, out_ch: int, time_emb_dim: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = group_norm(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.time_proj = nn.Linear(time_emb_dim, out_ch)  # one bias per channel, per timestep
        self.norm2 = group_norm(out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        # Zero-init the last conv so each block starts as the identity: a deep UNet then trains
        # stably from the first step.
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, t_emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.time_proj(F.silu(t_emb))[:, :, None, None]  # add "how noisy" to every pixel
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return h + self.skip(x)


class SelfAttention(nn.Module):
    """Multi-head self-attention over all H·W positions, with a residual connection.

    Convolutions only see a neighbourhood; at low resolution attention lets every position see
    the whole image (petal symmetry, a centre surrounded by petals). Cost grows as (H·W)², so it
    is used only at the coarse levels. x: (B, C, H, W) → same shape.
    """

    def __init__(self, channels: int, num_heads: int = 4):
        super().__init__()
        self.num_heads = num_heads if channels % num_heads == 0 else 1
        self.norm = group_norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, self.num_heads, c // self.num_heads, h * w).unbind(1)
        # (B, heads, H·W, C/heads): softmax(q kᵀ / √d) v
        out = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
        out = out.transpose(-1, -2).reshape(b, c, h, w)
        return x + self.proj(out)


class Downsample(nn.Module):
    """Halve H and W with a stride-2 3×3 conv (learned, unlike pooling)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Double H and W: nearest-neighbour upsampling then a 3×3 conv (no checkerboard artefacts)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


def down_path(base_channels: int, channel_mults: tuple[int, ...], num_res_blocks: int,
              attention_levels: tuple[int, ...], time_emb_dim: int, dropout: float) -> tuple[nn.ModuleList, list[int]]:
    """The UNet's way down: ``num_res_blocks`` blocks per level, then a 2× downsample (not after the
    last level). Returns the blocks and the channel count of every skip connection, in order (the
    stem's first; the last is the channel count the middle sees)."""
    down, skip_channels, ch = nn.ModuleList(), [base_channels], base_channels
    for level, mult in enumerate(channel_mults):
        out_ch = base_channels * mult
        for _ in range(num_res_blocks):
            down.append(LevelBlock(ch, out_ch, time_emb_dim, dropout, level in attention_levels))
            ch = out_ch
            skip_channels.append(ch)
        if level < len(channel_mults) - 1:
            down.append(Downsample(ch))
            skip_channels.append(ch)
    return down, skip_channels


def up_path(skip_channels: list[int], base_channels: int, channel_mults: tuple[int, ...], num_res_blocks: int,
            attention_levels: tuple[int, ...], time_emb_dim: int, dropout: float) -> nn.ModuleList:
    """The way up: ``num_res_blocks + 1`` blocks per level, each consuming one skip connection
    (concatenated on the channel axis, the last skip first), then a 2× upsample (not after level 0)."""
    up, skips, ch = nn.ModuleList(), list(skip_channels), skip_channels[-1]
    for level, mult in reversed(list(enumerate(channel_mults))):
        out_ch = base_channels * mult
        for _ in range(num_res_blocks + 1):
            up.append(LevelBlock(ch + skips.pop(), out_ch, time_emb_dim, dropout, level in attention_levels))
            ch = out_ch
        if level > 0:
            up.append(Upsample(ch))
    return up


class UNet(nn.Module):
    """ε_θ(xₜ, t): predicts the noise in a batch of noisy images.

    Args:
        in_channels: image channels (3 for RGB).
        base_channels: channels at full resolution; level i has ``base_channels * channel_mults[i]``.
        channel_mults: one multiplier per resolution level; ``len - 1`` halvings of H and W.
        num_res_blocks: residual blocks per level on the way down (one more on the way up).
        attention_levels: indices of the levels that get self-attention after each block.
        time_emb_dim: width of the time embedding.
        dropout: dropout inside the residual blocks.
        img_size: the image size this model is trained for (recorded for sampling; must be
            divisible by ``2 ** (len(channel_mults) - 1)``). Forward works at any such size.
        prediction: what the output means — ``"eps"`` (the noise ε) or ``"v"`` (Salimans & Ho's
            v = √ᾱ ε − √(1−ᾱ) x₀). It changes no weight; the loss and the samplers read it.
        objective: ``"diffusion"`` (t an integer step in [0, T−1]) or ``"flow"``
            (:mod:`~diffusion_utils.flow`: t ∈ [0, 1], fed to the time embedding as 1000·t, and
            the output is the velocity û = ε̂ − x̂₀). It changes no weight.
        num_classes: 0 for an unconditional model; else a class embedding with
            ``num_classes + 1`` rows (the last is the "no class" token ∅) is added to the time
            embedding (Ho & Salimans 2022).
        class_names: one name per class (kept for sampling by name; no weight).
        mid_attention: self-attention in the middle. An upsampler trained on crops has none, so
            it sees nothing beyond a neighbourhood and samples larger images than its crops.
        cond_channels: 0 for a model that draws from noise; 3 for an upsampler
            (:mod:`~diffusion_utils.superres`): the condition z_s (B, 3, H, W) is concatenated to
            xₜ on the channel axis, and its noise level s gets a time embedding of its own.
        low_res_size, upsample_mode, cond_aug_level: an upsampler's input size, how it is
            interpolated to ``img_size``, and the noise level s it samples at (no weights).

    ``forward(x, t, y=None, cond=None, cond_t=None)``: x (B, C, H, W) float, t (B,) int64 in
    [0, T-1] (a flow model: float in [0, 1]), y (B,) int64 class ids in [0, num_classes] (num_classes = ∅; None: all ∅), or
    (B, num_classes + 1) float weights that mix the class embeddings (see :meth:`embed_classes`);
    for an upsampler cond (B, cond_channels, H, W) and cond_t (B,) int64 → ε̂ (or v̂) of x's shape.
    """

    def __init__(self, in_channels: int = 3, base_channels: int = 64,
                 channel_mults: tuple[int, ...] = (1, 2, 2, 2), num_res_blocks: int = 2,
                 attention_levels: tuple[int, ...] = (2,), time_emb_dim: int = 128,
                 dropout: float = 0.0, img_size: int = 64, prediction: str = "eps",
                 num_classes: int = 0, class_names: tuple[str, ...] = (), mid_attention: bool = True,
                 cond_channels: int = 0, low_res_size: int = 0, upsample_mode: str = "bicubic",
                 cond_aug_level: int = 0, objective: str = "diffusion"):
        super().__init__()
        check_prediction(prediction)
        if objective not in OBJECTIVES:
            raise ConfigError(f"objective must be one of {OBJECTIVES}; got {objective!r}")
        self.objective = objective
        self.time_scale = TIME_SCALE if objective == "flow" else 1.0  # what the time embedding sees: 1000·t
        self.in_channels = in_channels
        self.cond_channels = cond_channels
        self.low_res_size, self.upsample_mode, self.cond_aug_level = low_res_size, upsample_mode, cond_aug_level
        self.prediction = prediction  # what forward() returns: ε̂ ("eps") or v̂ ("v")
        self.img_size = img_size
        self.num_classes = num_classes
        self.class_names = tuple(class_names)
        self.num_levels = len(channel_mults)
        self.min_divisor = 2 ** (self.num_levels - 1)
        check_halvable(img_size, self.num_levels)
        self.time_embedding = TimeEmbedding(time_emb_dim)
        self.stem = nn.Conv2d(in_channels + cond_channels, base_channels, 3, padding=1)

        blocks = dict(base_channels=base_channels, channel_mults=channel_mults, num_res_blocks=num_res_blocks,
                      attention_levels=attention_levels, time_emb_dim=time_emb_dim, dropout=dropout)
        self.down, skip_channels = down_path(**blocks)
        ch = skip_channels[-1]
        # ---- middle, at the lowest resolution (attention unless mid_attention=False) ---------------
        self.mid1 = ResidualBlock(ch, ch, time_emb_dim, dropout)
        self.mid_attn = SelfAttention(ch) if mid_attention else nn.Identity()
        self.mid2 = ResidualBlock(ch, ch, time_emb_dim, dropout)
        self.up = up_path(skip_channels, **blocks)
        ch = base_channels * channel_mults[0]
        self.head = nn.Sequential(group_norm(ch), nn.SiLU(), nn.Conv2d(ch, in_channels, 3, padding=1))

        if num_classes:
            # Registered last, so an unconditional model's parameters keep their order. Zero rows:
            # a new model starts as if unconditional, and an unconditional model's weights can be
            # fine-tuned into a conditional one without a jump.
            self.class_embedding = nn.Embedding(num_classes + 1, time_emb_dim)
            nn.init.zeros_(self.class_embedding.weight)
        if cond_channels:
            # An upsampler: the embedding of the condition's noise level s, added to t's.
            self.cond_time_embedding = TimeEmbedding(time_emb_dim)

    @property
    def null_class(self) -> int:
        """The id of the "no class" token ∅ (``num_classes``)."""
        return self.num_classes

    def embed_classes(self, y: torch.Tensor, batch: int) -> torch.Tensor:
        """The class embedding (batch, time_emb_dim) of ``y``: (B,) int64 ids pick rows; (B,
        num_classes + 1) float weights mix the rows linearly — a point between classes, which is
        how :func:`~diffusion_utils.interpolation.interpolate` walks from one species to another."""
        if y.is_floating_point():
            return y.reshape(-1, self.num_classes + 1).expand(batch, -1) @ self.class_embedding.weight
        return self.class_embedding(y.reshape(-1).expand(batch))

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None,
                cond: torch.Tensor | None = None, cond_t: torch.Tensor | None = None) -> torch.Tensor:
        if x.shape[-1] % self.min_divisor or x.shape[-2] % self.min_divisor:
            raise ConfigError(f"image height and width must be divisible by {self.min_divisor}; "
                              f"got {tuple(x.shape[-2:])}")
        t = torch.as_tensor(t, device=x.device).reshape(-1).expand(x.shape[0])
        t_emb = self.time_embedding(t * self.time_scale if self.objective == "flow" else t)
        if self.cond_channels:
            if cond is None or cond_t is None:
                raise ConfigError("this model is an upsampler: it needs the low-resolution condition; "
                                  "sample it with diffusion_utils.upsample(model, schedule, low_res)")
            x = torch.cat([x, cond], dim=1)  # [xₜ, z_s]: the condition rides along as input channels
            t_emb = t_emb + self.cond_time_embedding(torch.as_tensor(cond_t, device=x.device).reshape(-1)
                                                     .expand(x.shape[0]))  # + "how noisy is z_s"
        elif cond is not None:
            raise ConfigError("this model draws from noise and takes no low-resolution condition; "
                              "use an upsampler (task='sr') for that")
        if self.num_classes:
            if y is None:
                y = torch.full((x.shape[0],), self.null_class, device=x.device, dtype=torch.long)
            t_emb = t_emb + self.embed_classes(y.to(x.device), x.shape[0])
        elif y is not None:
            raise ConfigError("this model is unconditional (trained without labels); sample without classes")
        h = self.stem(x)
        skips = [h]
        for block in self.down:
            h = block(h, t_emb) if isinstance(block, LevelBlock) else block(h)
            skips.append(h)
        h = self.mid2(self.mid_attn(self.mid1(h, t_emb)), t_emb)
        for block in self.up:
            if isinstance(block, LevelBlock):
                h = block(torch.cat([h, skips.pop()], dim=1), t_emb)
            else:
                h = block(h)
        return self.head(h)

    @classmethod
    def from_config(cls, config) -> "UNet":
        """The UNet a :class:`~diffusion_utils.TrainConfig` describes."""
        return cls(base_channels=config.base_channels, channel_mults=config.channel_mults,
                   num_res_blocks=config.num_res_blocks, attention_levels=config.attention_levels,
                   time_emb_dim=config.time_emb_dim, dropout=config.dropout, img_size=config.img_size,
                   prediction=config.prediction, num_classes=config.num_classes or 0,
                   class_names=config.class_names, mid_attention=config.mid_attention,
                   cond_channels=3 if config.task == "sr" else 0,
                   low_res_size=config.low_res_size if config.task == "sr" else 0,
                   upsample_mode=config.upsample_mode, cond_aug_level=config.cond_aug_level,
                   objective=config.objective)


class LevelBlock(nn.Module):
    """A residual block, followed by self-attention on the levels that have it."""

    def __init__(self, in_ch: int, out_ch: int, time_emb_dim: int, dropout: float, attention: bool):
        super().__init__()
        self.res = ResidualBlock(in_ch, out_ch, time_emb_dim, dropout)
        self.attn = SelfAttention(out_ch) if attention else nn.Identity()

    def forward(self, x: torch.Tensor, t_emb: torch.Tensor) -> torch.Tensor:
        return self.attn(self.res(x, t_emb))


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def parameter_table(model: UNet) -> dict[str, int]:
    """Trainable parameters of each part of a :class:`UNet`, in forward order."""
    parts = {
        "time embedding (MLP)": model.time_embedding,
        "stem conv": model.stem,
        "down path": model.down,
        "middle (res, attention, res)": nn.ModuleList([model.mid1, model.mid_attn, model.mid2]),
        "up path": model.up,
        "head (norm, conv)": model.head,
    }
    if model.num_classes:
        parts["class embedding"] = model.class_embedding
    if model.cond_channels:
        parts["condition's noise-level embedding"] = model.cond_time_embedding
    return {name: count_parameters(part) for name, part in parts.items()}


@torch.no_grad()
def layer_shapes(model: UNet, x: torch.Tensor, t: torch.Tensor) -> list[tuple[str, tuple[int, ...]]]:
    """Run one forward pass and record the output shape of every block, in order.

    Returns ``[(name, shape), …]`` for the stem, each down-path block, the middle, each up-path
    block and the head — the route an image takes through the UNet.
    """
    records: list[tuple[str, tuple[int, ...]]] = []
    named = [("stem", model.stem)]
    named += [(f"down[{i}] {_block_kind(b)}", b) for i, b in enumerate(model.down)]
    named += [("middle res", model.mid1), ("middle attention", model.mid_attn), ("middle res", model.mid2)]
    named += [(f"up[{i}] {_block_kind(b)}", b) for i, b in enumerate(model.up)]
    named += [("head", model.head)]
    hooks = [module.register_forward_hook(lambda m, inp, out, name=name: records.append((name, tuple(out.shape))))
             for name, module in named]
    try:
        model(x, t)
    finally:
        for hook in hooks:
            hook.remove()
    return records


def _block_kind(block: nn.Module) -> str:
    if isinstance(block, LevelBlock):
        return "res + attention" if isinstance(block.attn, SelfAttention) else "res"
    return type(block).__name__.lower()


def unet_levels(model: UNet) -> list[dict]:
    """What each resolution level of ``model`` holds, read from its modules (for diagrams).

    One dict per level, top (full resolution) first: ``size`` (H = W at ``model.img_size``),
    ``channels`` (of its blocks' outputs), ``down_blocks`` and ``up_blocks`` (residual blocks on
    each path) and ``attention`` (whether they are followed by self-attention). The middle, at
    the last level's resolution, is not a level: ``model.mid1`` and friends.
    """
    levels: list[dict] = [{"down_blocks": 0, "up_blocks": 0}]
    for block in model.down:
        if isinstance(block, Downsample):
            levels.append({"down_blocks": 0, "up_blocks": 0})
        else:
            levels[-1].update(down_blocks=levels[-1]["down_blocks"] + 1, channels=block.res.conv1.out_channels,
                              attention=isinstance(block.attn, SelfAttention))
    level = len(levels) - 1
    for block in model.up:
        if isinstance(block, Upsample):
            level -= 1
        else:
            levels[level]["up_blocks"] += 1
    for i, info in enumerate(levels):
        info.update(level=i, size=model.img_size // 2 ** i)
    return levels
