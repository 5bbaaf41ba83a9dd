"""Every hyperparameter of a training run, in one dataclass, and the presets that fill it in.

``TrainConfig()`` is the original design: 64×64 Flowers102, linear β from 1e-4 to 0.02 over
1000 steps, batch 64, base 64 channels, time embedding 128, 300 epochs, 1000-step ancestral
sampling. That is a GPU job (hours on a Colab T4). ``TrainConfig.preset("quick")`` shrinks the
image, the model and the data so that a 2-core laptop CPU gets recognisable flower-coloured
samples in a few minutes; the presets' values, and the measurements that chose them, are in
:mod:`~diffusion_utils.presets`. The checks a config shares with the network, the samplers and
the data (counts, numbers, a sampler's steps, device names) are in :mod:`~diffusion_utils.plumbing.checks`.

Two environment variables let notebooks and CI switch mode without editing a cell:

- ``DIFFUSION_PRESET``: ``quick`` or ``full`` (what :meth:`TrainConfig.from_env` starts from;
  unset: ``full`` on a CUDA GPU, ``quick`` elsewhere).
- ``DIFFUSION_DATA``: ``flowers102``, ``synthetic`` or a path to a folder of images.
- ``DIFFUSION_EPOCHS``: train this many epochs instead of the preset's (CI sets 2, so the notebooks
  only check that training runs; a learner leaves it unset).
- ``DIFFUSION_EVAL_SAMPLES``: score each sampler setting on this many samples instead of the
  notebook's (CI sets 50, so notebook 05 only checks that scoring runs; see :func:`eval_samples_from_env`).
"""

from __future__ import annotations

import copy
import dataclasses
import os
from dataclasses import dataclass

import torch

from .flow import FLOW_T, OBJECTIVES
from .plumbing.checks import (FLOW_SAMPLERS, MAX_SEED, MAX_SIZES, SAMPLERS, as_float, as_int, check_halvable,
                     check_sampler_steps, default_steps, is_device_name, is_int, resolve_device, shown)
from .plumbing.errors import ConfigError
from .presets import PRESETS
from .schedule import LOSS_WEIGHTINGS, PREDICTIONS

PRESET_ENV = "DIFFUSION_PRESET"
DATA_ENV = "DIFFUSION_DATA"
EPOCHS_ENV = "DIFFUSION_EPOCHS"
EVAL_ENV = "DIFFUSION_EVAL_SAMPLES"
SCHEDULES = ("linear", "cosine")
LR_DECAYS = ("none", "cosine")
TASKS = ("generate", "sr")
PATH_FIELDS = ("data", "data_root")  # also accept os.PathLike (stored as str)


@dataclass
class TrainConfig:
    """All settings of one training run. Defaults are the original design (the ``full`` preset).

    Invalid values raise :class:`ConfigError` when the config is built, naming the field and
    the allowed range.
    """

    # --- data ----------------------------------------------------------------------------
    data: str = "flowers102"  # "flowers102", "synthetic", or a folder of images
    data_root: str | None = None  # where Flowers102 is downloaded (None: ~/.cache/diffusion_utils)
    img_size: int = 64  # images are center-cropped and resized to img_size × img_size
    max_images: int | None = None  # use a seeded random subset of this many images (None: all)

    # --- noise schedule (Ho et al. 2020, §4) ---------------------------------------------
    n_steps: int = 1000  # T, the number of diffusion steps
    schedule: str = "linear"  # "linear" (Ho et al.) or "cosine" (Nichol & Dhariwal 2021)
    beta_start: float = 1e-4  # β₁ of the linear schedule
    beta_end: float = 0.02  # β_T of the linear schedule

    # --- what the network learns ------------------------------------------------------------
    # "diffusion": DDPM's noising (diffusion_utils.loss), the original design. "flow": flow
    # matching on the straight path xₜ = (1 − t)x₀ + tε, t ∈ [0, 1] (diffusion_utils.flow); the
    # network predicts the velocity ε − x₀, and the diffusion fields below (schedule, prediction,
    # loss_weighting) play no part.
    objective: str = "diffusion"
    flow_t: str = "logit_normal"  # flow: t ~ "uniform" (Liu et al. 2023) or "logit_normal" (Esser et al. 2024)
    flow_logit_mean: float = 0.0  # flow, logit-normal t = sigmoid(m + s·n): its m
    flow_logit_std: float = 1.0  # ... and its s (SD3's 0 and 1)
    flow_shift: float = 1.0  # flow: SD3's time shift of the sampling grid (1: an even grid)

    # --- what the network predicts and how the loss weighs it (see diffusion_utils.loss) -----
    prediction: str = "eps"  # "eps" (Ho et al.) or "v" (Salimans & Ho 2022)
    loss_weighting: str = "none"  # "none" (Ho et al.'s simple loss) or "min_snr" (Hang et al. 2023)
    snr_gamma: float = 5.0  # γ of min-SNR weighting (Hang et al.'s default)

    # --- class conditioning (Ho & Salimans 2022, classifier-free guidance) ------------------
    # None: from the data — its number of classes when it has labels (Flowers102: 102 species),
    # else 0. 0: an unconditional model (the original design). A class embedding is added to the
    # time embedding; training replaces the label by a "no class" token with probability
    # p_uncond, so the same network also learns the unconditional model guidance needs.
    num_classes: int | None = None
    p_uncond: float = 0.1
    class_names: tuple[str, ...] = ()  # one per class, filled from the data (for --class NAME)

    # --- super-resolution: the second stage of a cascade (diffusion_utils.superres) ----------
    # "generate" draws images from noise (the original design). "sr" trains an upsampler: it
    # draws img_size images given the same image at img_size // 2, upsampled back with
    # upsample_mode and concatenated to xₜ (Ho et al. 2022, Cascaded Diffusion Models).
    task: str = "generate"
    crop_size: int | None = None  # train on random crop_size squares (None: whole images); "sr" only
    upsample_mode: str = "bicubic"  # how the condition is interpolated: "bicubic" or "bilinear"
    # Noise-conditioning augmentation (Ho et al. 2022 §3.3): training noises the condition to a
    # level s ~ U{0, …, cond_aug_max} of the same schedule and tells the network s; sampling uses
    # cond_aug_level, so the upsampler forgives a base model's flaws instead of copying them.
    cond_aug_max: int = 250
    cond_aug_level: int = 0

    # --- UNet ----------------------------------------------------------------------------
    base_channels: int = 64  # channels at full resolution
    channel_mults: tuple[int, ...] = (1, 2, 2, 2)  # one entry per resolution level
    num_res_blocks: int = 2  # residual blocks per level on the way down
    attention_levels: tuple[int, ...] = (2,)  # levels with self-attention (64 px: level 2 is 16 px)
    mid_attention: bool = True  # self-attention in the middle of the UNet (an upsampler has none)
    time_emb_dim: int = 128  # width of the time embedding added in every residual block
    dropout: float = 0.1  # dropout inside residual blocks (Ho et al. used 0.1 on CIFAR-10)

    # --- optimisation --------------------------------------------------------------------
    batch_size: int = 64
    num_epochs: int = 300
    lr: float = 2e-4  # AdamW learning rate (Ho et al.: 2e-4)
    lr_warmup_steps: int = 500  # linear warm-up from 0 to lr; avoids early blow-ups
    # After the warm-up: "none" keeps lr constant (Ho et al.; a run can be extended at will);
    # "cosine" lowers it along a half cosine to 0 at the run's last step (num_epochs), which pays
    # off when the run is short. Raising num_epochs on --resume stretches the cosine.
    lr_decay: str = "none"
    weight_decay: float = 0.0
    grad_clip: float = 1.0  # clip the global gradient norm to this (Ho et al.: 1.0)
    ema_decay: float = 0.9995  # the EMA's largest decay; samples come from the EMA model
    # The EMA's decay grows with the run (Karras et al. 2024's power-function EMA): after n
    # updates it is (1 − 1/(n+1))^(ema_gamma+1), so it averages over the last ~n/(ema_gamma+1)
    # steps — a horizon that follows the run length instead of lagging a short run.
    # 6.94 is Karras et al.'s σ_rel = 0.10; larger values average over a shorter tail.
    ema_gamma: float = 6.94
    # bfloat16 autocast while training: "auto" turns it on where the hardware computes it natively
    # and a short probe finds it faster (a CUDA GPU from Ampere on; a CPU that reports avx512_bf16
    # or amx_bf16: 1.29× on a 2-core AMD EPYC), True and False override (plumbing.precision).
    bf16: bool | str = "auto"

    # --- bookkeeping ---------------------------------------------------------------------
    seed: int = 0
    device: str = "auto"  # "auto" picks CUDA, then MPS, then CPU
    sample_every: int = 30  # save a sample grid every this many epochs (the "Epoch 30…" table)
    sample_grid_n: int = 16  # images in each of those grids
    sampler: str = "ddpm"  # for grids and the sample command: "ddpm", "ddim", "dpmpp"; a flow model "euler", "heun"
    sample_steps: int | None = None  # network calls per sample (None: n_steps for ddpm, 50 else)

    def __post_init__(self) -> None:
        """A new config is settled (:meth:`settled`) and valid, or not built at all."""
        settled = self.settled()
        for f in dataclasses.fields(self):
            setattr(self, f.name, getattr(settled, f.name))

    # ------------------------------------------------------------------------------------
    def settled(self) -> "TrainConfig":
        """A validated copy with every field in its final form: each value of its declared type
        (numpy integers → int, paths → str, lists → tuples), and what the other fields decide
        filled in (an upsampler's ``num_classes=None`` → 0: it is never class-conditional, the
        base model draws the class). Raises :class:`ConfigError` as :meth:`validate` does.

        Every config is settled when it is built; a run settles its config again, since a
        notebook may have assigned a field since (``config.num_epochs = np.int64(5)``)."""
        out = copy.copy(self)  # a shallow copy, so nothing here touches self
        for f in dataclasses.fields(out):
            setattr(out, f.name, _of_type(f.name, getattr(out, f.name), f.type))
        if out.task == "sr" and out.num_classes is None:
            out.num_classes = 0  # an upsampler is never class-conditional: the base model draws the class
        out._check()
        return out

    def validate(self) -> None:
        """Raise :class:`ConfigError`, naming the field, for the first value of the wrong type (a
        bool for a count, a string for a number), not finite, or outside its range. Changes nothing:
        the checks read a settled copy (:meth:`settled`)."""
        self.settled()

    def _check(self) -> None:
        """The range checks of a settled config (every field already of its declared type)."""
        for name, most in MAX_SIZES.items():
            self._need(1 <= getattr(self, name) <= most, name, f"an integer in [1, {most}]")
        self._need(self.max_images is None or self.max_images > 0, "max_images", "a positive integer or None")
        self._check_schedule()
        self._check_network()
        self._check_optimiser()
        self._check_task()
        self._check_loss_and_labels()
        self._need(0 <= self.seed <= MAX_SEED, "seed", f"an integer in [0, {MAX_SEED}]")
        self._need(is_device_name(self.device), "device", "'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'")
        self._need(self.sampler in SAMPLERS, "sampler", f"one of {SAMPLERS}")
        self._check_objective()
        if self.sample_steps is not None:
            check_sampler_steps(self.sampler, self.sample_steps, self.n_steps, "sample_steps")

    def _need(self, ok: bool, name: str, allowed: str) -> None:
        """A one-line :class:`ConfigError` naming field ``name`` and what it ``allowed``, unless ``ok``."""
        if not ok:
            raise ConfigError(f"{name} must be {allowed}; got {getattr(self, name)!r}")

    def _check_schedule(self) -> None:
        self._need(self.schedule in SCHEDULES, "schedule", f"one of {SCHEDULES}")
        self._need(0 < self.beta_start < 1, "beta_start", "in (0, 1)")
        self._need(0 < self.beta_end < 1, "beta_end", "in (0, 1)")
        if self.beta_end <= self.beta_start:
            raise ConfigError(f"beta_end must be greater than beta_start; got beta_start="
                              f"{self.beta_start}, beta_end={self.beta_end}")

    def _check_network(self) -> None:
        self._need(len(self.channel_mults) >= 1 and all(m > 0 for m in self.channel_mults),
                   "channel_mults", "a non-empty tuple of positive integers")
        self._need(all(0 <= level < len(self.channel_mults) for level in self.attention_levels),
                   "attention_levels", f"level indices in [0, {len(self.channel_mults) - 1}]")
        check_halvable(self.img_size, len(self.channel_mults))
        self._need(self.time_emb_dim % 2 == 0, "time_emb_dim", "an even positive integer")
        self._need(0 <= self.dropout < 1, "dropout", "in [0, 1)")

    def _check_optimiser(self) -> None:
        self._need(self.lr_decay in LR_DECAYS, "lr_decay", f"one of {LR_DECAYS}")
        self._need(self.lr > 0, "lr", "a positive number")
        self._need(self.lr_warmup_steps >= 0, "lr_warmup_steps", "an integer >= 0")
        self._need(self.weight_decay >= 0, "weight_decay", ">= 0")
        self._need(self.grad_clip > 0, "grad_clip", "a positive number")
        self._need(0 <= self.ema_decay < 1, "ema_decay", "in [0, 1)")
        self._need(self.ema_gamma > 0, "ema_gamma", "a positive number")

    def _check_task(self) -> None:
        """The task, and an upsampler's own fields (its condition's noise levels, its crops)."""
        need, halvings = self._need, len(self.channel_mults) - 1
        need(self.task in TASKS, "task", f"one of {TASKS}")
        need(self.upsample_mode in ("bicubic", "bilinear"), "upsample_mode", "'bicubic' or 'bilinear'")
        need(self.cond_aug_max >= 0, "cond_aug_max", "an integer >= 0")
        need(self.cond_aug_level >= 0, "cond_aug_level", "an integer >= 0")
        if self.task == "sr":  # the levels are steps of this schedule
            need(self.cond_aug_max < self.n_steps, "cond_aug_max", f"an integer in [0, n_steps-1={self.n_steps - 1}]")
            need(self.cond_aug_level < self.n_steps, "cond_aug_level",
                 f"an integer in [0, n_steps-1={self.n_steps - 1}]")
            need(self.img_size % (2 * 2 ** halvings) == 0, "img_size",
                 f"divisible by {2 * 2 ** halvings} for an upsampler (its input is img_size // 2)")
            need(self.num_classes in (None, 0), "num_classes", "0 for an upsampler (the base model draws the class)")
        if self.crop_size is not None:
            need(self.task == "sr", "crop_size", "None unless task='sr' (only an upsampler trains on crops)")
            need(self.crop_size % (2 ** halvings) == 0 and 0 < self.crop_size <= self.img_size, "crop_size",
                 f"None or a multiple of {2 ** halvings} in [{2 ** halvings}, img_size={self.img_size}]")

    def _check_objective(self) -> None:
        """The objective, the flow's own fields, and a sampler that fits the objective."""
        self._need(self.objective in OBJECTIVES, "objective", f"one of {OBJECTIVES}")
        self._need(self.flow_t in FLOW_T, "flow_t", f"one of {FLOW_T}")
        self._need(self.flow_logit_std > 0, "flow_logit_std", "a positive number")
        self._need(self.flow_shift > 0, "flow_shift", "a positive number (1: no shift)")
        flow = self.objective == "flow"
        if flow:
            self._need(self.task == "generate", "task", "'generate' for a flow model (the upsampler is a diffusion model)")
        if flow != (self.sampler in FLOW_SAMPLERS):
            fits = "'euler' or 'heun'" if flow else "'ddpm', 'ddim' or 'dpmpp'"
            raise ConfigError(f"sampler {self.sampler!r} does not sample a {self.objective} model; use {fits}")

    def _check_loss_and_labels(self) -> None:
        need = self._need
        need(self.prediction in PREDICTIONS, "prediction", f"one of {PREDICTIONS}")
        need(self.loss_weighting in LOSS_WEIGHTINGS, "loss_weighting", f"one of {LOSS_WEIGHTINGS}")
        need(self.snr_gamma > 0, "snr_gamma", "a positive number")
        need(self.num_classes is None or self.num_classes >= 0, "num_classes",
             "None (from the data) or an integer >= 0")
        need(0 <= self.p_uncond < 1, "p_uncond", "in [0, 1)")
        need(not self.class_names or len(self.class_names) == self.num_classes, "class_names",
             f"empty or one name per class (num_classes={self.num_classes})")

    # ------------------------------------------------------------------------------------
    @property
    def steps_for_sampling(self) -> int:
        """Network calls per sample: ``sample_steps``, or T for DDPM and 50 for the fast samplers."""
        if self.sample_steps is not None:
            return self.sample_steps
        return default_steps(self.sampler, self.n_steps)

    @property
    def low_res_size(self) -> int:
        """An upsampler's input size: half its output (one 2× stage of a cascade)."""
        return self.img_size // 2

    def replace(self, **changes) -> "TrainConfig":
        """A copy with some fields changed (validated like a new config)."""
        _check_field_names(changes)
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """Plain Python types only, so a checkpoint holding it loads with ``weights_only=True``."""
        out = dataclasses.asdict(self)
        out["channel_mults"] = list(self.channel_mults)
        out["attention_levels"] = list(self.attention_levels)
        out["class_names"] = list(self.class_names)
        return out

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        """A config from :meth:`to_dict`'s output (unknown keys are ignored, missing ones default).

        A config saved before class conditioning existed has no ``num_classes``: it describes an
        unconditional model, so it reads as 0 (not None, which would mean "from the data").
        """
        if not isinstance(values, dict):
            raise ConfigError(f"a config must be a dict of field values; got a {type(values).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{"num_classes": 0, **{k: v for k, v in values.items() if k in known}})

    @classmethod
    def preset(cls, name: str, **overrides) -> "TrainConfig":
        """``"full"`` (the original design) or ``"quick"`` (minutes on a CPU), with overrides."""
        if name not in PRESETS:
            raise ConfigError(f"preset must be one of {tuple(PRESETS)}; got {name!r}")
        values = {**PRESETS[name], **overrides}
        _check_field_names(values)
        if values.get("objective") == "flow" and values.get("sampler", "ddpm") not in FLOW_SAMPLERS \
                and "sampler" not in overrides:
            values["sampler"] = "euler"  # a diffusion preset turned flow samples its grids with Euler
        return cls(**values)

    @classmethod
    def from_env(cls, default_preset: str = "auto", **overrides) -> "TrainConfig":
        """The preset named by ``$DIFFUSION_PRESET``, the data named by ``$DIFFUSION_DATA`` and the
        epochs of ``$DIFFUSION_EPOCHS`` (each only where set).

        Notebooks call this in their config cell so CI can run them in quick mode on local
        data without editing a cell. With neither the variable nor ``default_preset`` naming a
        preset (``"auto"``), a machine with a CUDA GPU gets ``full`` and any other ``quick``:
        the full run takes hours even on a GPU. Explicit ``overrides`` win over the environment.
        """
        name = preset_from_env(default_preset)
        if os.environ.get(DATA_ENV):
            overrides.setdefault("data", os.environ[DATA_ENV])
        epochs = os.environ.get(EPOCHS_ENV, "").strip()
        if epochs:
            if not epochs.isdigit():
                raise ConfigError(f"{EPOCHS_ENV}={epochs!r} must be a whole number of epochs; set it to e.g. 2, "
                                  f"or unset it for the preset's")
            overrides.setdefault("num_epochs", int(epochs))
        return cls.preset(name, **overrides)


def _of_type(name: str, value, annotation: str):
    """``value`` converted to the field's declared type (the annotation's text: ``"int"``,
    ``"float | None"``, ``"tuple[int, ...]"``, …), or a :class:`ConfigError` naming ``name``."""
    if annotation.endswith(" | None"):
        if value is None:
            return None
        annotation = annotation[:-len(" | None")]
    if annotation == "int":
        return as_int(name, value)
    if annotation == "float":
        return as_float(name, value)
    if annotation == "bool | str":  # bf16: True, False or "auto"
        if not (isinstance(value, bool) or value == "auto"):
            raise ConfigError(f"{name} must be True, False or 'auto'; got {shown(value)}")
        return value
    if annotation == "bool":
        if not isinstance(value, bool):
            raise ConfigError(f"{name} must be True or False; got {shown(value)}")
        return value
    if annotation == "str":
        if name in PATH_FIELDS and isinstance(value, os.PathLike):
            value = os.fspath(value)
        if not isinstance(value, str):
            raise ConfigError(f"{name} must be a string; got {shown(value)}")
        return value
    if annotation == "tuple[int, ...]":
        if not isinstance(value, (list, tuple)) or not all(is_int(v) for v in value):
            raise ConfigError(f"{name} must be a tuple of integers; got {shown(value)}")
        return tuple(int(v) for v in value)
    if annotation == "tuple[str, ...]":
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{name} must be a tuple of strings; got {shown(value)}")
        return tuple(value)
    return value


def _check_field_names(values: dict) -> None:
    unknown = set(values) - {f.name for f in dataclasses.fields(TrainConfig)}
    if unknown:
        raise ConfigError(f"unknown config field(s): {', '.join(sorted(unknown))}")


def preset_from_env(default: str = "auto") -> str:
    """``$DIFFUSION_PRESET`` if set, else ``default``; ``"auto"`` means full on CUDA, else quick."""
    name = os.environ.get(PRESET_ENV, "").strip().lower() or default
    if name == "auto":
        name = "full" if torch.cuda.is_available() else "quick"
    return name


def eval_samples_from_env(default: int) -> int:
    """``$DIFFUSION_EVAL_SAMPLES`` if set, else ``default``: the samples a notebook scores per setting.

    Scoring is Inception features for every image (≈ 0.25 s each on one CPU core), so CI sets a
    small count to check that the evaluation runs; a learner leaves it unset and gets the notebook's.
    """
    value = os.environ.get(EVAL_ENV, "").strip()
    if not value:
        return default
    if not value.isdigit() or int(value) < 2:
        raise ConfigError(f"{EVAL_ENV}={value!r} must be a whole number of samples, at least 2; set it to e.g. 50, "
                          f"or unset it for the notebook's")
    return int(value)


# resolve_device lives in checks.py; the top level and older scripts import it from here.
__all__ = ["TrainConfig", "PRESETS", "PRESET_ENV", "DATA_ENV", "EVAL_ENV", "eval_samples_from_env", "preset_from_env",
           "resolve_device"]
