"""Command line: ``python -m diffusion_utils train|sample|export …``.

train  writes  OUT/diffusion_unet_pixels.pth  (checkpoint: model, EMA, optimizer, config, RNG)
               OUT/loss.png, OUT/epoch_samples.png, OUT/samples/epoch_NNN.png
sample writes  OUT/samples_grid.png, OUT/diffusion_animation.gif, OUT/generated_pixel_diffusion.png
               from a --checkpoint (OUT: its folder) or --pretrained weights (OUT: outputs/);
               with --upscale sr64 at 64 px, through a cascade (the GIF shows both stages);
               by default with DPM-Solver++ in 20 network calls (a flow model: Euler, 20 steps),
               the measured choice (docs/benchmarks.md); --sampler ddpm --steps 1000 is the original
export writes  FILE.pt (the EMA weights in float16 + config + card) and FILE.md (the model card)

Mistakes in input (a bad count, a size out of range, beta_end <= beta_start, an image size the
UNet cannot halve, an unknown dataset, an empty folder, an output folder that cannot be written
or that another run is using, a missing/corrupt/mismatched checkpoint) print one line and exit
with status 2, before anything on disk is written; warnings are one line each too.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import shlex
import sys
import time
import warnings
from pathlib import Path

import torch

from .config import PRESET_ENV, PRESETS, TrainConfig
from .data.data import dataset_name, load_dataset
from .guidance import class_ids
from .notebook.run_figures import TRAIN_OUTPUTS, RunFigures, train  # noqa: F401  (train: as Python callers reach it here)
from .notebook.visualization import save_animation, save_grid, save_large_sample, save_stages_animation
from .plumbing import distributed
from .plumbing.checkpoint import CHECKPOINT_NAME, load_checkpoint, load_model
from .plumbing.checks import MAX_SEED, SAMPLERS, is_device_name, resolve_device
from .plumbing.errors import DiffusionError, short_reason
from .plumbing.files import check_output_folder, lock_run_folder
from .plumbing.pixels import draw_in_batches, to_model_range, to_uint8
from .pretrained.cards import DEFAULT_SAMPLE_STEPS, sampling_defaults
from .pretrained.pretrained import PRETRAINED, export_pretrained, load_pretrained
from .run import TrainingInterrupted, TrainingRun
from .sampling import check_sampling_options, sample, sample_trajectory
from .superres import upsample, upsample_trajectory


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line (plus the exit status 2), not a usage dump."""

    def error(self, message):
        self.exit(2, f"error: {message} (see '{self.prog} --help')\n")


# What the sample command writes into its output folder (checked before any work).
SAMPLE_OUTPUTS = ("samples_grid.png", "diffusion_animation.gif", "generated_pixel_diffusion.png")
MAX_SAMPLES = 10_000  # one grid image of them all; generated SAMPLE_BATCH at a time
SAMPLE_BATCH = 64
# The sample command's flags, as its one-line refusals name them (the library names its arguments).
SAMPLE_FLAGS = {"n": "--n", "steps": "--steps", "eta": "--eta", "classes": "--class", "guidance_scale": "--guidance"}


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


def run_train(args) -> int:
    # The output folder first: a bad --out is refused before anything is loaded or trained.
    out = check_output_folder(args.out, TRAIN_OUTPUTS)
    # Under torchrun, rank 0 alone locks and writes the output folder; every rank joins the others.
    with lock_run_folder(out) if distributed.launched_rank() == 0 else contextlib.nullcontext(out):
        config = _train_config(args, out)
        with distributed.process_group(config.device, args.backend) as ranks:
            return _run_train(args, out, config, ranks)


def _train_config(args, out: Path) -> TrainConfig:
    """The run's config: the preset (or the environment's) with the flags applied, or on
    ``--resume`` the checkpoint's own settings, changed only where a flag was given (e.g. --epochs;
    the run then checks that it continues the checkpoint)."""
    overrides = train_overrides(args)
    ckpt = out / CHECKPOINT_NAME
    if args.resume:
        return load_checkpoint(ckpt)["config"].replace(**overrides)
    if ckpt.exists() and not args.overwrite:
        raise DiffusionError(f"{ckpt} already exists; pass --resume to continue it, --overwrite "
                             f"to replace it, or --out to choose another folder")
    return TrainConfig.preset(args.preset, **overrides) if args.preset else TrainConfig.from_env(**overrides)


def _run_train(args, out: Path, config: TrainConfig, ranks: distributed.Ranks) -> int:
    # The run checks what needs no data (--resume, --init-from, the epochs), then the data is loaded
    # and checked: every refusal comes before the announcement, as the only line on stderr.
    run = TrainingRun(config, out, resume=args.resume, init_from=args.init_from, progress=not args.no_progress,
                      hooks=[RunFigures()], ranks=ranks)
    run.prepare(run.load_data(load=load_dataset))
    on = f"{ranks.world_size} processes on {run.device}" if ranks.active else str(run.device)
    on += " in bfloat16 autocast" if run.state.autocast_dtype is not None else " in float32"
    if ranks.is_main:
        print(f"Training on {on} with {_describe(run.config, run.dataset)} → {out}/", file=sys.stderr)
    result = run.train()
    if not ranks.is_main:
        return 0
    rate = result.images_seen / max(result.seconds, 1e-9)
    print(f"Done: {len(result.losses)} steps in {result.seconds:.0f} s ({rate:.0f} images/s); "
          f"final loss {sum(result.losses[-50:]) / len(result.losses[-50:]):.4f}.\n"
          f"Wrote {result.checkpoint_path}, {out / 'loss.png'}, {out / 'epoch_samples.png'}.\n"
          f"Next: python -m diffusion_utils sample --checkpoint {result.checkpoint_path}")
    return 0


def run_sample(args) -> int:
    if args.out is not None:
        out = args.out
    else:  # never the package's own folder for shipped weights
        out = "outputs" if args.pretrained is not None else Path(args.checkpoint).parent
    out = check_output_folder(out, SAMPLE_OUTPUTS)
    device = resolve_device(args.device)
    if args.pretrained is not None:
        if args.raw_weights:
            raise DiffusionError("--raw-weights needs --checkpoint: a pretrained file holds only the EMA weights")
        model, schedule, config = load_pretrained(args.pretrained, device)
    else:
        model, schedule, config = load_model(args.checkpoint, device, use_ema=not args.raw_weights)
    if config.task == "sr":
        raise DiffusionError(f"{args.pretrained or args.checkpoint} is an upsampler: it draws from low-resolution "
                             f"images; give a base model and this one as --upscale (e.g. --pretrained flowers32 "
                             f"--upscale sr64)")
    # The measured defaults (DPM-Solver++ 20, a flow model Euler 20), not the training grids' sampler;
    # check_sampling_options refuses a sampler of the other objective and steps a sampler cannot take.
    sampler, steps = sampling_defaults(config, args.sampler)
    steps = args.steps if args.steps is not None else steps
    classes = _cycle_classes(args.classes, args.n, model)
    check_sampling_options(model, schedule, args.n, sampler=sampler, steps=steps, eta=args.eta, classes=classes,
                           guidance_scale=args.guidance, names=SAMPLE_FLAGS)
    sr = _load_upsampler(args.upscale, model, device) if args.upscale else None
    what = f", class {', '.join(args.classes)}, guidance {args.guidance or 1.0:g}" if classes is not None else ""
    print(f"Sampling {args.n} images with {sampler} ({steps} steps{what}) on {device} …", file=sys.stderr)
    start = time.perf_counter()
    generator = torch.Generator().manual_seed(args.seed)
    images, trajectory = _sample_in_batches(model, schedule, args.n, sampler=sampler, steps=steps, eta=args.eta,
                                            generator=generator, bf16=config.bf16,
                                            frames=args.frames, progress=not args.no_progress,
                                            classes=classes, guidance_scale=args.guidance)
    title = f"{config.img_size}×{config.img_size}, {sampler}, {steps} steps, seed {args.seed}"
    stages = [(f"{config.img_size} px", trajectory)]
    if sr is not None:
        sr_model, sr_schedule, sr_config = sr
        print(f"Upsampling to {sr_config.img_size} px with {args.upscale} ({sr_config.sampler}, "
              f"{sr_config.steps_for_sampling} steps, condition noise s = {sr_model.cond_aug_level}) …", file=sys.stderr)
        images, sr_trajectory = _upsample_in_batches(sr_model, sr_schedule, images, sampler=sr_config.sampler,
                                                     steps=sr_config.steps_for_sampling, generator=generator,
                                                     frames=args.frames, progress=not args.no_progress)
        stages.append((f"{sr_config.img_size} px", sr_trajectory))
        title = f"{sr_config.img_size}×{sr_config.img_size}, {config.img_size} px {sampler} {steps} steps → {args.upscale}, seed {args.seed}"
    seconds = time.perf_counter() - start
    grid = save_grid(images, out / "samples_grid.png")
    gif = (save_stages_animation(stages, out / "diffusion_animation.gif", n_frames=args.frames) if sr is not None
           else save_animation(trajectory, out / "diffusion_animation.gif", n_frames=args.frames))
    big = save_large_sample(images[0], out / "generated_pixel_diffusion.png", title=title)
    print(f"Done in {seconds:.1f} s ({seconds / args.n:.2f} s/image). Wrote {grid}, {gif}, {big}.")
    return 0


def _cycle_classes(given: list[str] | None, n: int, model) -> torch.Tensor | None:
    """The ``--class`` values (repeated flags or comma lists) as n ids, cycling through them."""
    if not given:
        return None
    names = [part.strip() for item in given for part in item.split(",") if part.strip()] or given  # '' is refused
    ids = class_ids(names, model, len(names))
    return ids.repeat((n + len(ids) - 1) // len(ids))[:n]


def _load_upsampler(name: str, base, device):
    """``(model, schedule, config)`` of the upsampler ``name``, checked against the base model
    before any sampling: it must be an upsampler, and its input size the base's output size."""
    sr_model, sr_schedule, sr_config = load_pretrained(name, device)
    if sr_config.task != "sr":
        raise DiffusionError(f"--upscale {name}: this model draws from noise; give an upsampler (trained with "
                             f"--task sr), e.g. --upscale sr64")
    if sr_config.low_res_size != base.img_size:
        raise DiffusionError(f"--upscale {name} takes {sr_config.low_res_size} px images but this model draws "
                             f"{base.img_size} px ones; pair it with a {sr_config.low_res_size} px base model")
    return sr_model, sr_schedule, sr_config


def _upsample_in_batches(model, schedule, low_res: torch.Tensor, *, frames: int, **kwargs):
    """:func:`upsample` the uint8 images ``low_res`` in batches: uint8 images, and the trajectory
    of the first batch."""
    def batch(start: int, size: int) -> torch.Tensor:
        return to_model_range(low_res[start:start + size])

    return _in_batches(lambda size: upsample_trajectory(model, schedule, batch(0, size), frames=frames, **kwargs),
                       lambda start, size: upsample(model, schedule, batch(start, size), **kwargs), len(low_res))


def _sample_in_batches(model, schedule, n: int, *, frames: int, classes=None, **kwargs):
    """``n`` samples as uint8 (see :func:`_in_batches`). ``classes``: None or n class ids, one per image."""
    def chosen(start: int, size: int):
        return None if classes is None else classes[start:start + size]

    return _in_batches(lambda size: sample_trajectory(model, schedule, size, classes=chosen(0, size), frames=frames,
                                                      **kwargs),
                       lambda start, size: sample(model, schedule, size, classes=chosen(start, size), **kwargs), n)


def _in_batches(draw_trajectory, draw, n: int):
    """``n`` images as uint8 on the CPU, :data:`SAMPLE_BATCH` at a time from one generator (so
    memory stays flat for any ``n``, and ``n <= SAMPLE_BATCH`` gives the images of a single call),
    and the trajectory of the first batch (the GIF shows at most 16): ``draw_trajectory(size)``
    draws the first batch with its trajectory, ``draw(start, size)`` every later one."""
    trajectory = draw_trajectory(min(n, SAMPLE_BATCH))
    images = [to_uint8(trajectory.images)]
    if n > SAMPLE_BATCH:
        images.append(draw_in_batches(lambda start, size: draw(SAMPLE_BATCH + start, size), n - SAMPLE_BATCH,
                                      SAMPLE_BATCH))
    return torch.cat(images), trajectory


def run_export(args) -> int:
    card = _read_card(args.card) if args.card else {}
    if "command" not in card:
        state = load_checkpoint(args.checkpoint)  # one-line errors for a bad checkpoint, before any write
        config = state["config"]
        command = train_command(config.replace(data=dataset_name(config.data)))  # shared: no path of this machine
        if command:
            card = {"command": command, "command_source": "reconstructed from the checkpoint's config", **card}
    path = export_pretrained(args.checkpoint, args.out, card, cond_aug_level=args.aug_level)
    print(f"Wrote {path} and {path.with_suffix('.md')}.\n"
          f"Next: python -m diffusion_utils sample --pretrained {path}")
    return 0


def _read_card(path: str) -> dict:
    """A model card's facts from a JSON file: one-line errors for a missing file or bad JSON."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise DiffusionError(f"cannot read the card {path} ({err.strerror or type(err).__name__}); "
                             f"pass a JSON file or leave --card out") from None
    try:
        card = json.loads(text)
    except ValueError as err:
        raise DiffusionError(f"the card {path} is not valid JSON ({str(err).splitlines()[0]})") from None
    if not isinstance(card, dict):
        raise DiffusionError(f"the card {path} must hold a JSON object ({{\"kid\": 0.01, …}}); "
                             f"got a {type(card).__name__}")
    return card


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


def _describe(config: TrainConfig, dataset) -> str:
    labels = ("; unconditional" if config.num_classes == 0 or not dataset.num_classes
              else f", {dataset.num_classes} classes (class-conditional; --no-labels to turn off)")
    data = f"{config.data} ({len(dataset)} images{labels})"
    return (f"{data} at {config.img_size}px, {config.num_epochs} epochs, batch {config.batch_size}, "
            f"base {config.base_channels} channels")


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings as one line each ("warning: …"), not Python's two lines with a source excerpt."""
    print(f"warning: {short_reason(message, 300)}", file=sys.stderr)


def _interrupted(args, interrupt: KeyboardInterrupt) -> str:
    """What Ctrl-C leaves behind, and what to do next."""
    if args.command != "train":
        return f"interrupted; {args.command} did not finish, so its files may be missing or stale."
    if isinstance(interrupt, TrainingInterrupted):
        detail, checkpoint = str(interrupt), interrupt.checkpoint
    elif args.resume:  # stopped before training resumed: the checkpoint is as it was
        detail, checkpoint = "interrupted before training resumed", Path(args.out) / CHECKPOINT_NAME
    else:
        detail, checkpoint = "interrupted before the first checkpoint was written", None
    if checkpoint is None:
        return f"{detail}. There is nothing to resume: run the same command again to start over."
    return f"{detail}. Continue with: python -m diffusion_utils train --resume --out {shlex.quote(args.out)}"


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        try:
            return {"train": run_train, "sample": run_sample, "export": run_export}[args.command](args)
        except DiffusionError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        except (MemoryError, torch.cuda.OutOfMemoryError) as err:
            print(f"error: out of memory ({short_reason(err, 80)}); use a smaller --batch-size, --img-size or --n",
                  file=sys.stderr)
            return 2
        except KeyboardInterrupt as interrupt:
            print(f"\n{_interrupted(args, interrupt)}", file=sys.stderr)
            return 130
