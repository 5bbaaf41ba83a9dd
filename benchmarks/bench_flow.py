"""Flow matching against the quick DDPM recipe: the same UNet, data, seed and images seen, scored on Inception.

    nohup python benchmarks/bench_flow.py --data-root DIR --threads 1 --out OUT > bench_flow.log 2>&1 &
    python benchmarks/bench_flow.py --out OUT --report       # docs/flow_vs_ddpm.json and .png, from what is done

Three recipes, each the ``quick`` preset's network (3 levels, 32 channels, 1.2 M parameters) trained
with batch 16, lr 2e-3 after 100 warm-up steps, the power-function EMA capped at 0.99 and seed 0:

- ``diffusion``: the quick preset as it is: v-prediction with min-SNR weighting (γ = 5), linear β;
- ``flow_uniform``: the ``quick-flow`` preset with t ~ U(0, 1) (Liu et al. 2023);
- ``flow_logit_normal``: the ``quick-flow`` preset as it is, t = sigmoid(n), n ~ N(0, 1) (Esser et al. 2024).

The data is what the quick preset trains on: ``load_dataset("flowers102", 32, root=--data-root,
max_images=2048, seed=0)``, a seeded subset of 2 048 photos, so 20 480 images are its 10 epochs.
The models are unconditional (no labels), as in bench_recipes.py. All three start from the same
initial weights and see the same batches in the same order (the data generator is seeded alike);
only the noise and the loss differ.

Two budgets, 20 480 and 102 400 training images. Each recipe is trained once, to the largest budget,
and its state saved at each smaller one. That snapshot is exactly the state a run of only that many
images ends in: the lr is constant after the warm-up (``lr_decay="none"``, checked), and the EMA's
decay min(0.99, (1 − 1/(n+1))^7.94) depends on the step count n alone, not on the run's length; the
batches and noise are drawn step by step from the same generators. (Checked on this script's own
functions: 128 images in one go, in two resumed pieces, and as the package's ``run_training`` of the
same config all give bit-identical weights, EMA and optimiser state.)

Each snapshot's EMA weights are scored at ``--calls`` network calls per image: DPM-Solver++(2M) for
the diffusion model; Euler and Heun for the flow models. Heun calls the network twice per interval,
so k calls are ⌈k/2⌉ intervals, the last a plain Euler step when k is odd: the x-axis is calls,
counted on the network (``calls_counted`` in every score). ``--n`` samples per setting, in batches
of 250, batch b starting from the noise of seed b, the same for every model and setting. KID ± std
(100 subsets of 500) and FID (biased at this n: compare FIDs only within this table) against
``--n-ref`` real Flowers102 photos at 32 px, with the offline InceptionV3 (``InceptionFeatures``),
exactly as bench_recipes.py and bench_quality.py score; the floor is ``--n`` other real photos
against the same reference. Reference and floor are drawn from all Flowers102 photos (seed 1234),
which include the training subset, as in those benchmarks.

Straightness of the learned paths, for 64 fixed noises (seed 10 000) per model and budget:
``rms_1_vs_50`` = √mean((x¹ − x⁵⁰)²) over pixels in [-1, 1], x¹ the 1-call sample and x⁵⁰ the 50-call
sample from the same noise (Euler for a flow model; DPM-Solver++ for the diffusion model, whose one
call is DDIM's jump to x̂₀). A straight path gives 0: one Euler step already lands where 50 do.
For the flow models also Liu et al. 2023's curvature along the 50-step Euler trajectory x₁ = z →
x₀: S = mean over the 50 points tᵢ of mean over pixels ((z − x₀) − v_θ(x_tᵢ, tᵢ))², x₀ the
trajectory's (unclamped) end: 0 when the velocity never turns.

Training images/s of each recipe are measured back to back (two rounds of ``--throughput-steps``
steps after 2 warm-up steps, ``--threads`` threads) in the first window in which the machine is
otherwise idle, with its long training run (found by ``--pause-pattern``) paused with SIGSTOP for
under 2 minutes and then resumed (paused_timing.py); the CPU time other processes used during the
window is recorded. If no quiet window comes before the end, they are timed then and marked so.

Every finished piece is saved under ``--out`` (layout: flow_report.py) and never recomputed; the
script can be killed and restarted with the same command at any point. Order: throughput, the
three recipes to the first budget, their straightness, the real photos' features, the first
budget's scores; then the same for the next budget. The report (``--report``; also written at the end) goes to ``--report-to``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from datetime import date
from functools import partial
from pathlib import Path

import torch

from bench_guidance import recorded_command
from bench_recipes import score, throughput
from diffusion_utils import TrainConfig, load_dataset, sample, save_grid, to_uint8
from diffusion_utils.data.batches import batches_per_epoch, epoch_batches
from diffusion_utils.plumbing.checkpoint import load_checkpoint, save_checkpoint
from diffusion_utils.evaluation.metrics import InceptionFeatures, extract_features
from diffusion_utils.samplers import Euler
from diffusion_utils.training import TrainState, train_step
from paused_timing import quiet, timed_with_run_paused
from flow_report import (MISSING, read_json, score_path, snapshot_path, straightness_path, train_info_path,
                         write_json, write_report)

# Recipe → (preset, overrides). num_classes=0: unconditional, as bench_recipes.py trains; float32
# on every CPU (bf16=False), so the figures compare objectives, not the arithmetic.
RECIPES = {
    "diffusion": ("quick", dict(num_classes=0, bf16=False)),
    "flow_uniform": ("quick-flow", dict(num_classes=0, bf16=False, flow_t="uniform")),
    "flow_logit_normal": ("quick-flow", dict(num_classes=0, bf16=False, flow_t="logit_normal", flow_logit_mean=0.0,
                                             flow_logit_std=1.0)),
}
SAMPLERS = {"diffusion": ("dpmpp",), "flow_uniform": ("euler", "heun"), "flow_logit_normal": ("euler", "heun")}
LABELS = {"diffusion": ("diffusion, v + min-SNR", "tab:blue"), "flow_uniform": ("flow, uniform t", "tab:orange"),
          "flow_logit_normal": ("flow, logit-normal t", "tab:green")}
SAMPLER_NAMES = {"dpmpp": "DPM-Solver++(2M)", "euler": "Euler", "heun": "Heun"}
BATCH = 250  # samples per batch; batch b starts from the noise of seed b
CHUNK = 250  # images per saved piece of Inception features
STRAIGHT_SEED = 10_000


def config_of(recipe: str, data_root: str | None) -> TrainConfig:
    preset, overrides = RECIPES[recipe]
    config = TrainConfig.preset(preset, device="cpu", data_root=data_root, **overrides)
    if config.lr_decay != "none":  # a decaying lr would make a snapshot differ from a shorter run
        raise SystemExit(f"error: {recipe}'s lr decays ({config.lr_decay}); snapshots equal shorter runs only with "
                         f"a constant lr: train each budget separately")
    return config


# ---------------------------------------------------------------------------------------------
# Inception features, in saved pieces
# ---------------------------------------------------------------------------------------------
_EXTRACTOR = None


def inception() -> InceptionFeatures:
    global _EXTRACTOR
    if _EXTRACTOR is None:
        _EXTRACTOR = InceptionFeatures()
    return _EXTRACTOR


def features_in_pieces(images: torch.Tensor, folder: Path) -> torch.Tensor:
    """(N, 2048) float64 Inception features of uint8 ``images``, :data:`CHUNK` at a time, each piece
    saved in ``folder`` as it is done (a restart embeds only the missing pieces). The same features
    as one :func:`extract_features` call: an image's features do not depend on its batch."""
    folder.mkdir(parents=True, exist_ok=True)
    pieces = []
    for start in range(0, len(images), CHUNK):
        path = folder / f"{start}_{min(start + CHUNK, len(images))}.pt"
        if not path.is_file():
            features = extract_features(images[start:start + CHUNK], inception())
            save_checkpoint_like(path, features)
        pieces.append(torch.load(path, weights_only=True))
    return torch.cat(pieces)


def save_checkpoint_like(path: Path, tensor: torch.Tensor) -> None:
    """``torch.save`` of one tensor, atomically."""
    from diffusion_utils.plumbing.files import atomic_write
    atomic_write(path, lambda file: torch.save(tensor, file))


def real_features(out: Path, data_root, n_ref: int, n_floor: int) -> dict:
    """The reference (first ``n_ref``) and floor (next ``n_floor``) photos' features, as bench_recipes.py
    draws them (all Flowers102 at 32 px, shuffled with seed 1234), cached in ``out``."""
    cache = out / f"real_features_{n_ref}_{n_floor}.pt"
    if not cache.is_file():
        photos = load_dataset("flowers102", 32, root=data_root, progress=False).images
        shuffled = photos[torch.randperm(len(photos), generator=torch.Generator().manual_seed(1234))]
        t0 = time.perf_counter()
        real = {"ref": features_in_pieces(shuffled[:n_ref], out / "features" / "real_ref"),
                "floor": features_in_pieces(shuffled[n_ref:n_ref + n_floor], out / "features" / "real_floor")}
        save_checkpoint_like(cache, real)
        print(f"real features: {n_ref + n_floor} photos in {time.perf_counter() - t0:.0f} s", flush=True)
    return torch.load(cache, weights_only=True)


# ---------------------------------------------------------------------------------------------
# Training images/s, with the long run paused
# ---------------------------------------------------------------------------------------------
def measure_throughput(out: Path, images: torch.Tensor, args, force: bool = False) -> None:
    """Each recipe's training images/s, two rounds back to back, in a window where the long run is
    paused and (unless ``force``) nothing else is busy; otherwise left for a later call."""
    path = out / "throughput.json"
    if path.is_file():
        return
    if not (force or quiet(args.pause_pattern)):
        print("throughput: the machine is busy with other work; timing later", flush=True)
        return
    configs = {recipe: config_of(recipe, args.data_root) for recipe in RECIPES}
    rounds = [partial(throughput, config, images, steps=args.throughput_steps)
              for _ in range(2) for config in configs.values()]
    timed = timed_with_run_paused(args.pause_pattern, rounds)
    result = {}
    for i, recipe in enumerate(configs):
        speeds = [v for v in timed["figures"][i::len(configs)] if v is not None]
        result[recipe] = {"images_per_s": sum(speeds) / len(speeds) if speeds else MISSING, "rounds": speeds}
    result["conditions"] = {"threads": torch.get_num_threads(), "batch": 16, "warm_up_steps": 2,
                            "timed_steps_per_round": args.throughput_steps, **timed["conditions"]}
    write_json(path, result)
    print("throughput:", json.dumps(result), flush=True)


# ---------------------------------------------------------------------------------------------
# Training, snapshot by snapshot
# ---------------------------------------------------------------------------------------------
def train_to(recipe: str, images: torch.Tensor, n_images: int, out: Path, args) -> None:
    """Train ``recipe`` until it has seen ``n_images`` images and save its snapshot there.

    Continues from ``latest.pth`` (written after every epoch and at each snapshot) when it is not
    past ``n_images``; resuming replays the data generator from its epoch's start and skips the
    batches done, so the weights are those of an uninterrupted run."""
    config = config_of(recipe, args.data_root)
    if snapshot_path(out, recipe, n_images).is_file():
        return
    if n_images % config.batch_size:
        raise SystemExit(f"error: budget {n_images} is not a whole number of batches of {config.batch_size}")
    target = n_images // config.batch_size
    state = TrainState(config, torch.device("cpu"))
    latest = out / "train" / recipe / "latest.pth"
    if latest.is_file():
        saved = load_checkpoint(latest)
        if saved["step"] <= target:
            state.load_state_dict(saved)
    seconds = read_json(out / "train" / recipe / "seconds.json")
    seconds = 0.0 if seconds == MISSING else seconds["seconds"]
    print(f"{recipe}: training from step {state.step} to {target} ({n_images} images)", flush=True)
    state.model.train()
    first_step = state.step
    per_epoch = batches_per_epoch(len(images), config.batch_size)
    t0, last_print = time.perf_counter(), time.perf_counter()
    epoch_start = state.data_rng.get_state()  # a loaded state's generator stands at its epoch's start
    while state.step < target:
        epoch_start = state.data_rng.get_state()
        for x0 in epoch_batches(images, config.batch_size, state.data_rng, start=state.batch_in_epoch):
            train_step(state, x0)
            if state.step == target:
                break
        if state.batch_in_epoch == per_epoch:  # the epoch is done; its shuffle and flips are drawn
            state.epoch, state.batch_in_epoch = state.epoch + 1, 0
            epoch_start = state.data_rng.get_state()
        save_checkpoint(latest, state.state_dict(epoch_start))
        write_json(out / "train" / recipe / "seconds.json", {"seconds": seconds + time.perf_counter() - t0})
        if time.perf_counter() - last_print > 300 or state.step == target:
            last_print = time.perf_counter()
            recent = state.losses[-128:]
            rate = (state.step - first_step) * config.batch_size / (time.perf_counter() - t0)
            print(f"  {recipe}: step {state.step}/{target}, loss {sum(recent) / len(recent):.4f}, "
                  f"{rate:.1f} images/s on the shared machine", flush=True)
    save_checkpoint(snapshot_path(out, recipe, n_images), state.state_dict(epoch_start))
    last = state.losses[-per_epoch:]
    write_json(train_info_path(out, recipe, n_images),
               {"images_seen": state.step * config.batch_size, "steps": state.step, "epochs": state.epoch,
                "last_epoch_mean_loss": sum(last) / len(last),
                "train_seconds_on_the_shared_machine": seconds + time.perf_counter() - t0,
                "config": {**state.config.to_dict(), "data_root": "DIR"}})  # no machine's folder


def ema_of(out: Path, recipe: str, n_images: int, data_root):
    """(EMA network in eval mode, its schedule or flow path) of a snapshot."""
    state = TrainState(config_of(recipe, data_root), torch.device("cpu"))
    state.load_state_dict(load_checkpoint(snapshot_path(out, recipe, n_images)))
    return state.ema.module.eval(), state.schedule


# ---------------------------------------------------------------------------------------------
# Sampling, straightness, scores
# ---------------------------------------------------------------------------------------------
class CallCounter:
    """Counts forward calls of a network (a forward hook): the x-axis is calls, not steps."""

    def __init__(self, model: torch.nn.Module):
        self.calls = 0
        self.handle = model.register_forward_hook(self._count)

    def _count(self, *_):
        self.calls += 1

    def remove(self) -> int:
        self.handle.remove()
        return self.calls


def draw(model, schedule, sampler: str, calls: int, n: int) -> tuple[torch.Tensor, int]:
    """``n`` samples as uint8, batch b of :data:`BATCH` from the noise of seed b; and the network
    calls per image it took (counted on the first batch)."""
    out, counted = [], None
    for b, start in enumerate(range(0, n, BATCH)):
        size = min(BATCH, n - start)
        x_T = torch.randn((size, 3, model.img_size, model.img_size), generator=torch.Generator().manual_seed(b))
        counter = CallCounter(model) if b == 0 else None
        out.append(to_uint8(sample(model, schedule, size, sampler=sampler, steps=calls, x_T=x_T, progress=False)))
        if counter is not None:
            counted = counter.remove()
    return torch.cat(out), counted


def measure_straightness(model, schedule, recipe: str, n: int) -> dict:
    """RMS between the 1-call and the 50-call samples of ``n`` fixed noises; a flow model's curvature."""
    sampler = SAMPLERS[recipe][0]  # dpmpp, or euler
    z = torch.randn((n, 3, model.img_size, model.img_size), generator=torch.Generator().manual_seed(STRAIGHT_SEED))
    one = sample(model, schedule, n, sampler=sampler, steps=1, x_T=z, progress=False)
    fifty = sample(model, schedule, n, sampler=sampler, steps=50, x_T=z, progress=False)
    result = {"n": n, "sampler": sampler, "rms_1_vs_50": float((one - fifty).pow(2).mean().sqrt()),
              "rms_1_vs_50_per_image_std": float((one - fifty).pow(2).mean(dim=(1, 2, 3)).sqrt().std())}
    if sampler == "euler":
        result.update(curvature_along_euler(model, schedule, z, 50, fifty))
    return result


@torch.no_grad()
def curvature_along_euler(model, path, z: torch.Tensor, steps: int, sampled: torch.Tensor) -> dict:
    """Liu et al.'s S = mean over the Euler grid tᵢ of mean over pixels ((z − x₀) − v_θ(x_tᵢ, tᵢ))²,
    on the ``steps``-step Euler trajectory from z (t = 1) to x₀ (t = 0)."""
    solver = Euler(path)
    ts = solver.timesteps(steps)
    x, velocities = z.clone(), []
    for i, t in enumerate(ts):
        v = model(x, torch.full((len(x),), t))  # v_θ(xₜ, t): the velocity ε − x₀ the network predicts
        velocities.append(v)
        x, _ = solver.step(x, t, ts[i + 1] if i + 1 < len(ts) else solver.end, v)
    chord = z - x  # the straight path's velocity: x₁ − x₀ with x₁ = z, the noise
    per_t = torch.stack([(chord - v).pow(2).mean() for v in velocities])
    return {"curvature": float(per_t.mean()), "curvature_max_over_t": float(per_t.max()),
            "euler_loop_matches_sample": float((x.clamp(-1, 1) - sampled).abs().max())}


def score_setting(out: Path, images: int, recipe: str, sampler: str, calls: int, real: dict, args) -> None:
    path = score_path(out, images, recipe, sampler, calls)
    if path.is_file():
        return
    model, schedule = ema_of(out, recipe, images, args.data_root)
    name = f"{recipe}__{sampler}__{calls}"
    samples_file = out / "samples" / str(images) / f"{name}.pt"
    t0 = time.perf_counter()
    if samples_file.is_file():
        saved = torch.load(samples_file, weights_only=True)
        generated, counted, sample_seconds = saved["images"], int(saved["calls"]), float(saved["seconds"])
    else:
        generated, counted = draw(model, schedule, sampler, calls, args.n)
        sample_seconds = time.perf_counter() - t0
        samples_file.parent.mkdir(parents=True, exist_ok=True)
        save_checkpoint_like(samples_file, {"images": generated, "calls": torch.tensor(counted),
                                            "seconds": torch.tensor(sample_seconds)})
        save_grid(generated[:64], out / "grids" / str(images) / f"{name}.png", nrow=8)
    t1 = time.perf_counter()
    features = features_in_pieces(generated, out / "features" / str(images) / name)
    row = score(name, features, real["ref"])
    row.update(recipe=recipe, sampler=sampler, calls=calls, calls_counted=counted, images_trained=images,
               n=len(generated), sample_seconds=sample_seconds, feature_seconds=time.perf_counter() - t1)
    write_json(path, row)
    print(json.dumps(row), flush=True)


# ---------------------------------------------------------------------------------------------
def command_without_folders(argv: list[str]) -> str:
    """The command line as the report shows it: ``--data-root`` reads DIR (bench_guidance's rule),
    ``--out`` OUT and ``--report-to`` DOCS, so no machine's folder is published."""
    words, rename = [], {"--out": "OUT", "--report-to": "DOCS"}
    for w in argv:
        flag, eq, _ = w.partition("=")
        if words and words[-1] in rename:
            words.append(rename[words[-1]])
        elif eq and flag in rename:
            words.append(f"{flag}={rename[flag]}")
        else:
            words.append(w)
    return recorded_command(words)


def plan_of(args, argv: list[str]) -> dict:
    recipes = {}
    for recipe in RECIPES:
        preset, overrides = RECIPES[recipe]
        recipes[recipe] = {"preset": preset, "overrides": overrides, "samplers": list(SAMPLERS[recipe]),
                           "label": LABELS[recipe][0], "color": LABELS[recipe][1],
                           "sampler_names": {s: SAMPLER_NAMES[s] for s in SAMPLERS[recipe]}}
    return {"command": command_without_folders(argv), "date": date.today().isoformat(), "threads": args.threads,
            "budgets": args.budgets, "calls": args.calls, "n": args.n, "n_ref": args.n_ref,
            "straightness_n": args.straight_n, "recipes": recipes,
            "protocol": __doc__.split("\n\n", 2)[2].split("Every finished piece")[0].strip()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default=None, help="folder holding flowers-102/ (torchvision layout)")
    parser.add_argument("--out", required=True, help="the run's folder (outside the repository)")
    parser.add_argument("--budgets", default="20480,102400", help="training images at which to score")
    parser.add_argument("--calls", default="5,10,20,50", help="network calls per image")
    parser.add_argument("--n", type=int, default=1000, help="samples per setting (and real floor photos)")
    parser.add_argument("--n-ref", type=int, default=2000, help="real reference photos")
    parser.add_argument("--straight-n", type=int, default=64, help="noises for the straightness measure")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--throughput-steps", type=int, default=20, help="timed training steps per round")
    parser.add_argument("--pause-pattern", default="flowers32-flow",
                        help="command-line text of the long training run to pause while images/s are measured")
    parser.add_argument("--report", action="store_true", help="only write the report from what --out holds")
    parser.add_argument("--report-to", default=str(Path(__file__).resolve().parents[1] / "docs"),
                        help="folder for flow_vs_ddpm.json and .png (default: the repository's docs/)")
    args = parser.parse_args()
    out = Path(args.out)
    if args.report:
        write_report(out, Path(args.report_to))
        print(f"report written to {args.report_to}/flow_vs_ddpm.json and .png")
        return
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("once", message="FID with")
    args.budgets = sorted(int(v) for v in args.budgets.split(","))
    args.calls = [int(v) for v in args.calls.split(",")]
    out.mkdir(parents=True, exist_ok=True)
    plan = plan_of(args, sys.argv)
    saved_plan = read_json(out / "plan.json")
    if saved_plan == MISSING:
        write_json(out / "plan.json", plan)
    elif any(saved_plan[k] != plan[k] for k in ("budgets", "calls", "n", "n_ref", "straightness_n")):
        raise SystemExit(f"error: {out} holds a run with other settings ({out / 'plan.json'}); restart it with the "
                         f"same --budgets, --calls, --n, --n-ref and --straight-n, or pick a new --out")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; out {out}", flush=True)

    config = config_of("diffusion", args.data_root)
    images = load_dataset(config.data, config.img_size, root=args.data_root, max_images=config.max_images,
                          seed=config.seed, progress=False).images
    real = None
    for budget in args.budgets:
        for recipe in RECIPES:
            measure_throughput(out, images, args)  # in the first quiet window
            train_to(recipe, images, budget, out, args)
        for recipe in RECIPES:
            path = straightness_path(out, budget, recipe)
            if not path.is_file():
                model, schedule = ema_of(out, recipe, budget, args.data_root)
                write_json(path, measure_straightness(model, schedule, recipe, args.straight_n))
                print(f"straightness {budget} {recipe}:", path.read_text().replace("\n", " "), flush=True)
        if real is None:  # needed from here on; the first budget's training results come before it
            real = real_features(out, args.data_root, args.n_ref, args.n)
            write_json(out / "floor.json", score("real floor", real["floor"], real["ref"]))
        for calls in args.calls:
            for recipe in RECIPES:
                for sampler in SAMPLERS[recipe]:
                    measure_throughput(out, images, args)
                    score_setting(out, budget, recipe, sampler, calls, real, args)
    measure_throughput(out, images, args, force=True)  # no quiet window came: timed anyway, and said so
    write_report(out, Path(args.report_to))
    print(f"done; report written to {args.report_to}", flush=True)


if __name__ == "__main__":
    main()
