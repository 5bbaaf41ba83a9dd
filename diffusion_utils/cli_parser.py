"""The command line's grammar: the ``train``, ``sample`` and ``export`` commands, their flags and the
types that check each flag (a usage mistake is one line and exit status 2), and the way back from a
config to the ``train`` command that builds it (:func:`train_command`, for model cards).

What the commands do with their flags is :mod:`~diffusion_utils.cli`.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex

from .config import PRESET_ENV, PRESETS, TrainConfig
from .plumbing import distributed
from .plumbing.checkpoint import CHECKPOINT_NAME
from .plumbing.checks import MAX_SEED, SAMPLERS, is_device_name
from .pretrained.cards import DEFAULT_SAMPLE_STEPS
from .pretrained.pretrained import PRETRAINED


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line (plus the exit status 2), not a usage dump."""

    def error(self, message):
        self.exit(2, f"error: {message} (see '{self.prog} --help')\n")


MAX_SAMPLES = 10_000  # one grid image of them all (cli draws them SAMPLE_BATCH at a time)


def _int_at_least(minimum: int, what: str, maximum: int | None = None):
    """An argparse type: an integer in [``minimum``, ``maximum``], else a one-line error naming ``what``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum or (maximum is not None and value > maximum):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    return parse


_positive_int = _int_at_least(1, "a positive integer")
_non_negative_int = _int_at_least(0, "an integer >= 0")


def _device(text: str) -> str:
    if is_device_name(text):
        return text
    raise argparse.ArgumentTypeError(f"expected auto, cpu, cuda, cuda:N or mps, got {text!r}")


def _bf16(text: str) -> bool | str:
    choices = {"auto": "auto", "on": True, "off": False}
    if text in choices:
        return choices[text]
    raise argparse.ArgumentTypeError(f"expected auto, on or off, got {text!r}")


# CLI flag → TrainConfig field, for the train command's overrides (None = not given).
TRAIN_OVERRIDES = {
    "data": ("data", str, "flowers102, synthetic, or a folder of images"),
    "data_root": ("data_root", str, "where Flowers102 is (or will be downloaded)"),
    "epochs": ("num_epochs", _positive_int, "number of epochs"),
    "batch_size": ("batch_size", _positive_int, "global batch size (split evenly across torchrun processes)"),
    "img_size": ("img_size", _positive_int, "image height = width in pixels"),
    "max_images": ("max_images", _positive_int, "train on a random subset of this many images"),
    "lr": ("lr", float, "AdamW learning rate"),
    "lr_decay": ("lr_decay", str, "after the warm-up: none (constant) or cosine (down to 0 at the run's end)"),
    "n_steps": ("n_steps", _positive_int, "diffusion steps T"),
    "schedule": ("schedule", str, "linear or cosine"),
    "beta_start": ("beta_start", float, "first beta of the linear schedule"),
    "beta_end": ("beta_end", float, "last beta of the linear schedule"),
    "objective": ("objective", str, "diffusion (DDPM's noising) or flow (flow matching: the straight path, "
                                    "sampled with euler or heun)"),
    "flow_t": ("flow_t", str, "flow: how t is drawn, uniform or logit_normal (Esser et al. 2024)"),
    "flow_logit_std": ("flow_logit_std", float, "flow, logit_normal: the scale s of t = sigmoid(m + s n) (default 1)"),
    "flow_shift": ("flow_shift", float, "flow: SD3's time shift of the sampling grid (default 1: none)"),
    "prediction": ("prediction", str, "what the network predicts: eps (Ho et al.) or v (Salimans & Ho)"),
    "loss_weighting": ("loss_weighting", str, "none (the simple loss) or min_snr (Hang et al. 2023)"),
    "snr_gamma": ("snr_gamma", float, "gamma of min_snr weighting (default 5)"),
    "ema_decay": ("ema_decay", float, "largest EMA decay"),
    "ema_gamma": ("ema_gamma", float, "power-function EMA exponent: larger averages a shorter tail"),
    "p_uncond": ("p_uncond", float, "with labels: how often a label is dropped for guidance (default 0.1)"),
    "base_channels": ("base_channels", _positive_int, "UNet channels at full resolution"),
    "task": ("task", str, "generate (from noise) or sr (an upsampler: img-size images given img-size/2 ones)"),
    "crop_size": ("crop_size", _positive_int, "sr: train on random crops of this size, sample whole images"),
    "cond_aug_max": ("cond_aug_max", _non_negative_int,
                     "sr: noise the condition to a random level s in [0, N] while training (default 250)"),
    "sample_every": ("sample_every", _positive_int, "save a sample grid every N epochs"),
    "sampler": ("sampler", str, "sampler for the per-epoch grids: ddpm, ddim or dpmpp; euler or heun (flow)"),
    "sample_steps": ("sample_steps", _positive_int, "network calls per sample for ddim/dpmpp/euler/heun"),
    "device": ("device", _device, "auto, cpu, cuda or mps"),
    "bf16": ("bf16", _bf16, "bfloat16 autocast: auto (where the hardware computes it natively and a probe finds "
                            "it faster), on or off"),
    "seed": ("seed", _non_negative_int, "random seed"),
}


def build_parser() -> argparse.ArgumentParser:
    """The three commands and their flags. Long because it is a table: one ``add_argument`` per
    flag, in the order ``--help`` shows them (the train overrides come from :data:`TRAIN_OVERRIDES`)."""
    parser = _Parser(prog="python -m diffusion_utils",
                     description="Train and sample a pixel-space DDPM on 64×64 flowers.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    tr = commands.add_parser("train", help="train a model (writes a checkpoint and figures)")
    tr.add_argument("--preset", choices=tuple(PRESETS), default=None,
                    help=f"quick: minutes on a CPU; full: the original 64 px, 300-epoch run; sr64: the "
                         f"32 → 64 px upsampler of the cascade (default: ${PRESET_ENV}, else full on a "
                         f"CUDA GPU and quick elsewhere)")
    tr.add_argument("--out", default="outputs", help="output folder (default: outputs)")
    for flag, (_, kind, text) in TRAIN_OVERRIDES.items():
        tr.add_argument("--" + flag.replace("_", "-"), dest=flag, type=kind, default=None, help=text)
    tr.add_argument("--no-labels", action="store_true",
                    help="train unconditionally even when the data has labels (default: a class-"
                         "conditional model when it has them, e.g. Flowers102's 102 species)")
    tr.add_argument("--resume", action="store_true",
                    help="continue from OUT/diffusion_unet_pixels.pth with its saved settings")
    tr.add_argument("--init-from", metavar="CHECKPOINT", default=None,
                    help="start a new run from this checkpoint's EMA weights (e.g. fine-tune an "
                         "unconditional model into a class-conditional one)")
    tr.add_argument("--overwrite", action="store_true", help="replace an existing checkpoint in OUT")
    tr.add_argument("--no-progress", action="store_true", help="no progress bars")
    tr.add_argument("--backend", choices=distributed.BACKENDS, default="auto",
                    help="under torchrun: how the processes talk (default auto: nccl on CUDA GPUs, gloo on the CPU)")

    sa = commands.add_parser("sample", help="generate images from a checkpoint or pretrained weights")
    source = sa.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help=f"a {CHECKPOINT_NAME} written by train")
    source.add_argument("--pretrained", metavar="NAME",
                        help=f"weights shipped with the package ({', '.join(PRETRAINED) or 'none installed'}) "
                             f"or a .pt file written by export")
    sa.add_argument("--n", type=_int_at_least(1, f"an integer in [1, {MAX_SAMPLES}]", MAX_SAMPLES), default=64,
                    help=f"number of images, 1 to {MAX_SAMPLES} (default 64)")
    sa.add_argument("--seed", type=_int_at_least(0, f"an integer in [0, {MAX_SEED}]", MAX_SEED), default=0,
                    help="random seed (default 0)")
    sa.add_argument("--sampler", choices=SAMPLERS, default=None,
                    help="a diffusion model: dpmpp (DPM-Solver++, the default: with 20 calls it matched the "
                         "1000-step sampler's KID on flowers32, 51x faster), ddim, or ddpm (the original "
                         "ancestral sampler of Ho et al., every one of the T steps: --sampler ddpm --steps 1000); "
                         "a flow model: euler (the default) or heun")
    sa.add_argument("--steps", type=_positive_int, default=None,
                    help=f"network calls per image (default {DEFAULT_SAMPLE_STEPS} for dpmpp, euler and heun, "
                         f"50 for ddim, all T for ddpm)")
    sa.add_argument("--eta", type=float, default=0.0, help="DDIM noise: 0 deterministic … 1 DDPM-like")
    sa.add_argument("--class", dest="classes", action="append", default=None, metavar="NAME_OR_ID",
                    help="sample this class (a name such as 'sunflower', or an id) from a class-"
                         "conditional model; repeat it or separate by commas to cycle through several")
    sa.add_argument("--guidance", type=float, default=None, metavar="W",
                    help="classifier-free guidance scale w: 0 unconditional, 1 conditional (default), "
                         ">1 stronger; needs --class")
    sa.add_argument("--upscale", metavar="NAME",
                    help="then draw 64 px images from the samples with this upsampler (a cascade): "
                         "pretrained weights such as sr64, or a .pt file written by export; the upsampler "
                         "uses its own sampler and steps")
    sa.add_argument("--out", default=None,
                    help="output folder (default: the checkpoint's folder; outputs with --pretrained)")
    sa.add_argument("--device", type=_device, default="auto", help="auto, cpu, cuda or mps")
    sa.add_argument("--frames", type=_positive_int, default=40, help="frames in the GIF (default 40)")
    sa.add_argument("--raw-weights", action="store_true", help="use the raw weights instead of the EMA")
    sa.add_argument("--no-progress", action="store_true", help="no progress bars")

    ex = commands.add_parser("export", help="write a checkpoint's EMA weights as a float16 pretrained file "
                                            "with a model card")
    ex.add_argument("--checkpoint", required=True, help=f"a {CHECKPOINT_NAME} written by train")
    ex.add_argument("--out", required=True, help="the .pt file to write (the card goes next to it as .md)")
    ex.add_argument("--card", default=None,
                    help="a JSON object of model-card facts (command, commit, wall_time, kid, kid_std, fid, "
                         "floor_kid, floor_fid, n_samples, sampler, notes, …); default: what the checkpoint knows")
    ex.add_argument("--aug-level", type=_non_negative_int, default=None, metavar="S",
                    help="an upsampler's default condition noise level at sampling (default: its training config's)")
    return parser


def train_overrides(args) -> dict:
    """The config fields that ``train``'s flags set (flags not given are left out)."""
    overrides = {field: getattr(args, flag) for flag, (field, _, _) in TRAIN_OVERRIDES.items()
                 if getattr(args, flag) is not None}
    if args.no_labels:
        overrides["num_classes"] = 0
    return overrides


def train_command(config: TrainConfig) -> str | None:
    """A ``train`` command line that builds ``config`` with today's presets, or None when the
    flags cannot express it (e.g. a channel_mults no preset has). ``data_root`` (a machine path) is left out."""
    flag_of = {field: flag for flag, (field, _, _) in TRAIN_OVERRIDES.items()}
    best = None
    for preset in PRESETS:
        base = TrainConfig.preset(preset)
        words = ["python", "-m", "diffusion_utils", "train", "--preset", preset]
        for field in dataclasses.fields(TrainConfig):
            value = getattr(config, field.name)
            if field.name == "num_classes" and value == 0:  # an unconditional run
                words.append("--no-labels")
                continue
            if field.name in ("data_root", "class_names", "num_classes") or value == getattr(base, field.name):
                continue  # a machine path; what the data says
            if field.name not in flag_of or value is None:
                break
            shown = {True: "on", False: "off"}.get(value, value) if field.name == "bf16" else value
            words += ["--" + flag_of[field.name].replace("_", "-"), str(shown)]
        else:
            if best is None or len(words) < len(best):
                best = words
    return shlex.join(best) if best else None
