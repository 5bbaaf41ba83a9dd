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

import contextlib
import json
import shlex
import sys
import time
import warnings
from pathlib import Path

import torch

from .cli_parser import build_parser, train_command, train_overrides
from .config import TrainConfig
from .data.data import dataset_name, load_dataset
from .guidance import class_ids
from .notebook.run_figures import TRAIN_OUTPUTS, RunFigures, train  # noqa: F401  (train: as Python callers reach it here)
from .notebook.visualization import save_animation, save_grid, save_large_sample, save_stages_animation
from .plumbing import distributed
from .plumbing.checkpoint import CHECKPOINT_NAME, load_checkpoint, load_model
from .plumbing.checks import resolve_device
from .plumbing.errors import DiffusionError, short_reason
from .plumbing.files import check_output_folder, lock_run_folder
from .plumbing.pixels import draw_in_batches, to_model_range, to_uint8
from .pretrained.cards import sampling_defaults
from .pretrained.pretrained import export_pretrained, load_pretrained
from .run import TrainingInterrupted, TrainingRun
from .sampling import check_sampling_options, sample, sample_trajectory
from .superres import upsample, upsample_trajectory

# What the sample command writes into its output folder (checked before any work).
SAMPLE_OUTPUTS = ("samples_grid.png", "diffusion_animation.gif", "generated_pixel_diffusion.png")
SAMPLE_BATCH = 64
# The sample command's flags, as its one-line refusals name them (the library names its arguments).
SAMPLE_FLAGS = {"n": "--n", "steps": "--steps", "eta": "--eta", "classes": "--class", "guidance_scale": "--guidance"}


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
