"""Model cards: what a pretrained file is, how to load it, how it was trained and how good it is.

:func:`render_card` turns a config and the card's facts (plain values: the command, the commit,
the wall time, KID and FID beside the real-data floor, notes, …) into the Markdown file that lies
beside every pretrained file; :func:`checkpoint_facts` reads what a training checkpoint already
knows. A card is meant to be shared: it names the data by dataset or by the folder's own name
(:func:`~diffusion_utils.data.data.dataset_name`), never by a path of the machine that trained it.

A card says how to sample its model: :func:`sampling_defaults`, which the ``sample`` command uses
too — DPM-Solver++ with 20 network calls for a diffusion model (on flowers32 it matched the 1 000-step
ancestral sampler's KID, 51× faster, and beat DDIM with 50: docs/benchmarks.md), Euler with 20 for
a flow model. A card may set its quality beside another model's (``baseline``: that model's name,
KID ± std, sampler and steps, measured the same way) and says plainly which scores better.
A card may also say whether its model copies its training images (``memorisation``: the JSON that
benchmarks/bench_memorisation.py writes, e.g. docs/memorisation.json), in its "Is it copying?" section.
"""

from __future__ import annotations

import math
import numbers
import shlex

import torch

from ..config import TrainConfig
from ..data.data import dataset_name
from ..model import UNet, count_parameters
from ..plumbing.checks import default_steps
from ..plumbing.errors import CheckpointError

# The card's figures, in the order the Markdown shows them (any other key is listed after them).
CARD_KEYS = ("command", "command_source", "commit", "images_seen", "steps", "epochs", "wall_time", "hardware",
             "final_loss", "parameters", "kid", "kid_std", "fid", "floor_kid", "floor_kid_std", "floor_fid",
             "n_samples", "sampler", "sample_steps", "reference", "baseline", "table", "memorisation", "limitations",
             "notes")

# How a model samples unless told otherwise (the sample command, the cards' "Load it"): the
# measured choice per objective, 20 network calls each.
DEFAULT_SAMPLERS = {"diffusion": "dpmpp", "flow": "euler"}
DEFAULT_SAMPLE_STEPS = 20


def sampling_defaults(config: TrainConfig, sampler: str | None = None) -> tuple[str, int]:
    """``(sampler, steps)`` to sample ``config``'s model with when not told otherwise.

    ``sampler`` None: DPM-Solver++ for a diffusion model, Euler for a flow model (an upsampler:
    its config's own sampler). The steps (network calls per image): 20 for dpmpp, euler and heun
    (at most T), 50 for ddim, all T for ddpm (the original ancestral sampler: ``sampler="ddpm"``).
    """
    if config.task == "sr" and sampler in (None, config.sampler):
        return config.sampler, config.steps_for_sampling
    sampler = sampler or DEFAULT_SAMPLERS[config.objective]
    if sampler in ("ddpm", "ddim"):
        return sampler, default_steps(sampler, config.n_steps)
    return sampler, DEFAULT_SAMPLE_STEPS if sampler in ("euler", "heun") else min(DEFAULT_SAMPLE_STEPS, config.n_steps)


def checkpoint_facts(state: dict, model: UNet | None = None) -> dict:
    """What a training checkpoint tells the model card: steps, epochs, images seen, final loss."""
    config: TrainConfig = state["config"]
    step = int(state.get("step", 0))
    # A run drops each epoch's remainder batch, so every step saw a full batch (or, when the
    # data is smaller than a batch, all of it).
    per_step = min(config.batch_size, config.max_images) if config.max_images else config.batch_size
    facts = {"steps": step, "epochs": int(state.get("epoch", 0)), "images_seen": step * per_step}
    losses = state.get("losses")
    if isinstance(losses, torch.Tensor) and losses.numel():
        facts["final_loss"] = round(float(losses[-50:].float().mean()), 5)
    facts["parameters"] = count_parameters(model if model is not None else UNet.from_config(config))
    return facts


def plain_card(value, where: str = "card"):
    """``value`` with tuples turned into lists; a :class:`CheckpointError` for anything that is not
    a plain type (the file must load with ``weights_only=True``, and the card must be readable)."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        return str(value)
    if isinstance(value, numbers.Integral):  # also numpy integers, stored as Python ints
        return int(value)
    if isinstance(value, numbers.Real):  # also numpy floats
        return float(value)
    if isinstance(value, (list, tuple)):
        return [plain_card(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        bad = [k for k in value if not isinstance(k, str)]
        if bad:
            raise CheckpointError(f"{where} has a non-string key {bad[0]!r}; card keys must be strings")
        return {k: plain_card(v, f"{where}[{k!r}]") for k, v in value.items()}
    raise CheckpointError(f"{where} is a {type(value).__name__}; a model card holds only str, int, float, "
                          f"bool, None, lists and dicts")


# ---------------------------------------------------------------------------------------------
# The card, as Markdown: one function per section, each taking the facts it shows out of ``c``
# ---------------------------------------------------------------------------------------------
def render_card(name: str, config: TrainConfig, card: dict) -> str:
    """A short, readable model card: what it is, how to load it, how it was trained, how good it is."""
    c = dict(card)
    what = ("upsampler" if config.task == "sr" else "flow-matching model" if config.objective == "flow"
            else "DDPM")
    lines = ([f"# {name}: a pretrained diffusion_utils {what}", ""] + _what_it_is(config, c) + _load_it(name, config)
             + _how_it_was_trained(config, c) + _quality(c, name) + _copying(name, c.pop("memorisation", None))
             + _limitations(config, c))
    notes = c.pop("notes", None)
    if notes:
        lines += ["", "## Notes", ""] + [f"- {item}" for item in (notes if isinstance(notes, list) else [notes])]
    if c:  # whatever else the card holds
        lines += ["", "## Other facts", ""] + [f"- {key}: {_figure(value)}" for key, value in c.items()]
    return "\n".join(lines) + "\n"


def _what_it_is(config: TrainConfig, c: dict) -> list[str]:
    size = f"{config.img_size}×{config.img_size}"
    data = dataset_name(config.data) + (f" ({config.max_images} images)" if config.max_images else "")
    params = c.pop("parameters", None)
    if config.task == "sr":
        return _what_an_upsampler_is(config, data, params)
    if config.objective == "flow":
        return _what_a_flow_model_is(config, size, data, params) + _conditional(config)
    return [
        f"A pixel-space DDPM (Ho et al. 2020) that generates {size} RGB images, trained on {data}. "
        f"The UNet has {_number(params) + ' parameters, ' if params else ''}base {config.base_channels} channels, "
        f"channel multipliers {list(config.channel_mults)}, {config.num_res_blocks} residual block(s) per level and "
        f"self-attention at level(s) {list(config.attention_levels)}; it predicts {_prediction(config.prediction)} "
        f"under a {config.n_steps}-step {config.schedule} noise schedule. The file holds the EMA weights in "
        f"float16 and the full training config.",
        "",
    ] + _conditional(config)


def _conditional(config: TrainConfig) -> list[str]:
    if not config.num_classes:
        return []
    return [f"It is class-conditional on {config.num_classes} classes (label dropout {config.p_uncond:g} in "
            f"training), so one set of weights samples unconditionally or a chosen class with classifier-free "
            f"guidance (Ho & Salimans 2022).", ""]


def _what_a_flow_model_is(config: TrainConfig, size: str, data: str, params) -> list[str]:
    if config.flow_t == "uniform":
        times = "t ~ U(0, 1) (Liu et al. 2023)"
    else:
        times = (f"t logit-normal, t = sigmoid(m + s·n) with n ~ N(0, 1), m = {config.flow_logit_mean:g}, "
                 f"s = {config.flow_logit_std:g} (Esser et al. 2024), which trains the middle of the path most")
    shift = "" if config.flow_shift == 1 else f", its time grid shifted by {config.flow_shift:g} (Esser et al. 2024)"
    sampler, steps = sampling_defaults(config)
    return [
        f"A pixel-space flow-matching model (rectified flow: Lipman et al. 2023; Liu et al. 2023) that generates "
        f"{size} RGB images, trained on {data}. It learns the straight path xₜ = (1 − t)·x₀ + t·ε from an image "
        f"x₀ (t = 0) to Gaussian noise ε (t = 1): the network predicts the velocity u = ε − x₀ (the flow-matching "
        f"loss ‖u − u_θ(xₜ, t)‖², its time embedding fed 1000·t), with training times {times}. The UNet has "
        f"{_number(params) + ' parameters, ' if params else ''}base {config.base_channels} channels, channel "
        f"multipliers {list(config.channel_mults)}, {config.num_res_blocks} residual block(s) per level and "
        f"self-attention at level(s) {list(config.attention_levels)}. The file holds the EMA weights in float16 "
        f"and the full training config.",
        "",
        f"It samples by integrating the velocity from noise (t = 1) back to an image (t = 0): sampler "
        f"\"{sampler}\" with {steps} steps (one network call each){shift}, or \"heun\" (second order: two calls "
        f"per interval but the last, so its {steps} calls make {steps // 2 + 1} intervals). The diffusion samplers (ddpm, "
        f"ddim, dpmpp) do not apply.",
        "",
    ]


def _what_an_upsampler_is(config: TrainConfig, data: str, params) -> list[str]:
    low, size, crop = config.low_res_size, config.img_size, config.crop_size
    return [
        f"The second stage of a cascade (Ho et al. 2022; Saharia et al. 2022): a pixel-space diffusion model "
        f"that draws {size}×{size} RGB images given {low}×{low} ones, trained on {data}. The {low} px image, "
        f"upsampled {config.upsample_mode}ally to {size} px, is concatenated to xₜ as three extra input channels. "
        f"In training it was noised to a random level s ∈ [0, {config.cond_aug_max}] of the same schedule "
        f"(noise-conditioning augmentation) and s given to the network through a second time embedding; the "
        f"model samples at s = {config.cond_aug_level} unless told otherwise. The UNet has "
        f"{_number(params) + ' parameters, ' if params else ''}base {config.base_channels} channels, channel "
        f"multipliers {list(config.channel_mults)}, {config.num_res_blocks} residual block(s) per level and no "
        f"attention, so it trained on {crop or size}×{crop or size} crops and samples whole {size} px images; it "
        f"predicts {_prediction(config.prediction)} under a {config.n_steps}-step {config.schedule} noise "
        f"schedule. The file holds the EMA weights in float16 and the full training config.",
        "",
    ]


def _load_it(name: str, config: TrainConfig) -> list[str]:
    if config.task == "sr":
        low = config.low_res_size
        return ["## Load it", "", "```python",
                "from diffusion_utils import load_pretrained, sample_cascade, upsample",
                f'sr, sr_schedule, _ = load_pretrained("{name}")  # or a path to {name}.pt',
                f"big = upsample(sr, sr_schedule, small)  # small: (B, 3, {low}, {low}) in [-1, 1] → "
                f"(B, 3, {config.img_size}, {config.img_size})",
                'base, schedule, _ = load_pretrained("flowers32")',
                f"flowers = sample_cascade(base, sr, schedule, 16)  # both stages in one call",
                "```", "",
                f"or from a shell: `python -m diffusion_utils sample --pretrained flowers32 --upscale {name} "
                f"--out outputs`.", ""]
    names = config.class_names
    example = "sunflower" if "sunflower" in names else (names[0] if names else 0)  # for the examples
    sampler, steps = sampling_defaults(config)
    how = f"sampler={sampler!r}, steps={steps}"
    path = "path" if config.objective == "flow" else "schedule"  # a flow model samples along its FlowPath
    lines = ["## Load it", "", "```python",
             "from diffusion_utils import load_pretrained, pretrained_card, sample",
             f'model, {path}, config = load_pretrained("{name}")  # or a path to {name}.pt',
             f"images = sample(model, {path}, 16, {how})  # in [-1, 1]"]
    if config.num_classes:
        lines.append(f"guided = sample(model, {path}, 16, {how}, classes={example!r}, guidance_scale=3)")
    one_class = f" (add `--class {shlex.quote(str(example))} --guidance 3` for one class)." if config.num_classes else "."
    lines += ["```", "", f"or from a shell: `python -m diffusion_utils sample --pretrained {name} --out outputs`"
              + one_class]
    if config.objective == "flow":
        return lines + [f"The shell samples with {sampler} and {steps} steps unless given `--sampler heun` or "
                        f"`--steps N`.", ""]
    return lines + [f"The shell samples with DPM-Solver++ ({sampler}) and {steps} network calls unless told otherwise; "
                    f"the original ancestral sampler of Ho et al. takes all {config.n_steps} steps: "
                    f"`--sampler ddpm --steps {config.n_steps}`.", ""]


def _how_it_was_trained(config: TrainConfig, c: dict) -> list[str]:
    command, source, commit = c.pop("command", None), c.pop("command_source", None), c.pop("commit", None)
    lines = ["## How it was trained", "",
             f"- Command: `{command}`" + (f" ({source})" if source else "") if command else "- Command: not recorded",
             f"- Commit: `{commit}`" if commit else "- Commit: not recorded"]
    seen, steps, epochs = c.pop("images_seen", None), c.pop("steps", None), c.pop("epochs", None)
    if seen is not None:
        detail = ", ".join(part for part in (
            f"{_number(steps)} optimizer steps" if steps is not None else "",
            f"batch {config.batch_size}",
            f"{_number(epochs)} epochs" if epochs is not None else "") if part)
        lines.append(f"- Images seen: {_number(seen)} ({detail})")
    wall, hardware = c.pop("wall_time", None), c.pop("hardware", None)
    if wall is not None:
        lines.append(f"- Wall time: {duration_text(wall)}" + (f" on {hardware}" if hardware else ""))
    elif hardware:
        lines.append(f"- Hardware: {hardware}")
    loss = c.pop("final_loss", None)
    if loss is not None:
        lines.append(f"- Final training loss (mean of the last 50 steps): {_figure(loss)}")
    decay = "" if config.lr_decay == "none" else f" then {config.lr_decay} decay to 0"
    loss = ("the plain flow-matching loss" if config.objective == "flow"  # flow_loss weights every t alike
            else f"loss weighting {config.loss_weighting}")
    lines.append(f"- Optimiser: AdamW, lr {config.lr:g}, warm-up {config.lr_warmup_steps} steps{decay}, "
                 f"EMA decay up to {config.ema_decay:g} (power-function γ {config.ema_gamma:g}), "
                 f"{loss}, seed {config.seed}")
    return lines


def _quality(c: dict, name: str = "this model") -> list[str]:
    kid, kid_std, fid = c.pop("kid", None), c.pop("kid_std", None), c.pop("fid", None)
    floor_kid, floor_kid_std, floor_fid = c.pop("floor_kid", None), c.pop("floor_kid_std", None), c.pop("floor_fid", None)
    n_samples, sampler, sample_steps = c.pop("n_samples", None), c.pop("sampler", None), c.pop("sample_steps", None)
    reference = c.pop("reference", None)
    if all(v is None for v in (kid, fid, floor_kid, floor_fid)):
        return ["", "## Quality", "", "Not measured."]
    how = ", ".join(part for part in (
        f"{_number(n_samples)} generated images" if n_samples is not None else "",
        f"sampler {sampler}" + (f" with {sample_steps} steps" if sample_steps is not None else "") if sampler else "",
        f"against {reference}" if reference else "") if part)
    return (["", "## Quality", "", f"Measured with {how}." if how else "Measured as below.", "",
            "| metric | this model | real-data floor |", "|---|---|---|",
            f"| KID (lower is better) | {_with_std(kid, kid_std)} | {_with_std(floor_kid, floor_kid_std)} |",
            f"| FID (lower is better) | {_figure(fid)} | {_figure(floor_fid)} |", "",
            "The floor is what two disjoint sets of real images score against each other at the same "
            "sample size: the best any model can reach in this measurement, not zero."]
            + _beside(name, kid, kid_std, sampler, sample_steps, c.pop("baseline", None)) + _table(c.pop("table", None)))


def _beside(name: str, kid, kid_std, sampler, steps, baseline) -> list[str]:
    """This model's KID beside another's measured the same way (``baseline``: ``{"name", "kid",
    "kid_std", "sampler", "sample_steps"}``), and which is better: a difference beyond twice the
    two spreads together is a difference, anything less is a tie."""
    if not isinstance(baseline, dict) or kid is None or baseline.get("kid") is None:
        return []
    other, other_kid, other_std = baseline.get("name", "the baseline"), baseline["kid"], baseline.get("kid_std")
    spread = math.hypot(kid_std or 0.0, other_std or 0.0)
    calls, other_calls = steps, baseline.get("sample_steps")
    at = (f"at equal network calls ({calls} per image)" if calls is not None and calls == other_calls
          else f"at {calls if calls is not None else '?'} network calls per image against {other_calls or '?'}")
    how = ", ".join(str(part) for part in (baseline.get("sampler"), f"{other_calls} steps" if other_calls else "")
                    if part)
    mine = ", ".join(str(part) for part in (sampler, f"{calls} steps" if calls else "") if part)
    line = (f"Beside {other} {at}: KID {_with_std(kid, kid_std)} ({mine or 'its sampler'}) against "
            f"{_with_std(other_kid, other_std)} ({how or 'its sampler'}), the same measurement. ")
    if spread and abs(kid - other_kid) <= 2 * spread:
        line += f"The two are level: the difference ({_figure(abs(kid - other_kid))}) is within twice their spread."
    elif kid > other_kid:
        ratio = f", {kid / other_kid:.1f}× its KID" if other_kid > 0 else ""
        line += f"{name} scores worse than {other}{ratio}: for the better images, sample {other}."
    else:
        ratio = f", {other_kid / kid:.1f}× lower KID" if kid > 0 else ""
        line += f"{name} scores better than {other}{ratio}."
    return ["", line]


def _table(rows) -> list[str]:
    """Every row of the measurement (``[{"name", "kid", "kid_std", "fid", "seconds_per_image"?}, …]``,
    as ``bench_quality.py --out`` writes them) as one Markdown table."""
    if not rows:
        return []
    lines = ["", "Every row of the same measurement:", "", "| images | KID | FID | seconds per image |", "|---|---|---|---|"]
    for row in rows:
        seconds = row.get("seconds_per_image")
        lines.append(f"| {row.get('name', '')} | {_with_std(row.get('kid'), row.get('kid_std'))} | "
                     f"{_figure(row.get('fid'))} | {'' if seconds is None else f'{seconds:.3f}'} |")
    return lines


def _copying(name: str, measured) -> list[str]:
    """The "Is it copying?" section: the rows of ``measured`` (bench_memorisation.py's JSON, its
    ``results`` keyed by stage) whose model ends in ``name`` (``flowers32``; ``flowers32 → sr64`` for
    sr64), as a table, the verdict in a sentence, the command, and the figures; ``measured["figures"]``,
    if given, is the folder of the figures as a link from the card (e.g. ``../../docs``)."""
    if not isinstance(measured, dict):
        return []
    rows = [r for r in measured.get("results", {}).values() if str(r.get("model", "")).split(" → ")[-1] == name]
    if not rows:
        return []
    loo = {r.get("yardstick") for r in rows} == {"leave-one-out"}
    against = ("each photo's distance to its nearest *other* training photo, d(xⱼ) = min over i ≠ j of "
               "‖xⱼ − xᵢ‖: the leave-one-out yardstick, for a model trained on every photo, none left unseen"
               if loo else "the same distance for real photos it never saw (held out)")
    data, cpu, threads = measured.get("data", {}), measured.get("cpu"), measured.get("threads")
    where = ("the images in [−1, 1], flattened" + ("" if all(r.get("space") == "pixels" for r in rows)
                                                  else ", or their features"))
    lines = ["", "## Is it copying?", "",
             f"Each sample's distance to its nearest training photo, d(x) = min over i of ‖x − xᵢ‖ ({where}), "
             f"beside {against}. A model that copies gives samples far closer than that; one that does not gives a "
             f"median ratio, median d(samples) / median d(photos), near 1."
             + (f" {data['note']}." if data.get("note") else ""), "",
             "| samples | guidance | compared in | median d, samples | median d, photos | median ratio | near-copies |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        space = (f"pixels at {r.get('img_size')} px" if r.get("space") == "pixels"
                 else f"features ({r.get('extractor')})")
        photos = f"{r['yardstick_median']:.2f} ({_number(r.get('n_yardstick'))} photos)"
        lines.append(f"| {_number(r.get('n_samples'))} from {r.get('model')}, {r.get('sampler')} | "
                     f"{r.get('guidance')} | {space} | {r['sample_median']:.2f} | {photos} | "
                     f"{r['median_ratio']:.2f} | {100 * r['near_copy_rate']:.1f} % |")
    lines += ["", "Near-copies are samples closer to a training photo than 99 % of the photos are (the yardstick's "
              "1st percentile): about 1 % by chance. A median ratio below 0.8, or 5 % near-copies, is copying "
              "(`memorisation_test`, diffusion_utils/evaluation/memorisation.py, says why).", ""]
    ratios = sorted({f"{r['median_ratio']:.2f}" for r in rows})
    ratio = ratios[0] if len(ratios) == 1 else f"{ratios[0]}–{ratios[-1]}"
    rate = 100 * max(r["near_copy_rate"] for r in rows)
    if all(r.get("finding") == "none" for r in rows):
        yardstick = "the photos sit to one another" if loo else "unseen photos do"
        lines.append(f"Verdict: no sign of copying. In every row the samples sit no closer to the training photos "
                     f"than {yardstick} (median ratio {ratio}, at most {rate:.1f} % near-copies).")
    else:
        lines += ["Verdict, row by row:", ""] + [f"- {r.get('guidance')}: {r.get('verdict')}" for r in rows]
    commands = sorted({r["command"] for r in rows if r.get("command")})
    machine = ", ".join(str(part) for part in (cpu, f"{threads} thread{'s' * (threads != 1)}" if threads else "")
                        if part)
    if commands:
        lines += ["", "Measured with " + " and ".join(f"`{command}`" for command in commands)
                  + (f" ({machine})." if machine else ".")]
    folder = measured.get("figures")
    if folder:
        for r in rows:
            for key, what in (("figure", "the two distance distributions"),
                              ("neighbours_figure", r.get("neighbours_shown"))):
                if r.get(key):
                    lines += ["", f"![{what}]({folder}/{r[key]})"]
    return lines


def _limitations(config: TrainConfig, c: dict) -> list[str]:
    limitations = c.pop("limitations", None)
    lines = ["", "## Limitations", ""]
    if limitations:
        lines += [f"- {item}" for item in (limitations if isinstance(limitations, list) else [limitations])]
    knows = (f"it knows its {config.num_classes} class labels but no text prompts" if config.num_classes
             else f"it draws detail on a {config.low_res_size} px image and cannot fix its composition"
             if config.task == "sr" else "it knows no labels or text prompts")
    return lines + [f"- {config.img_size}×{config.img_size} pixels only, and only the kind of images it was trained "
                    f"on ({dataset_name(config.data)}); {knows}.",
                    "- A teaching model: small and briefly trained, far from the state of the art.",
                    "- Weights are stored in float16 and cast to float32 on loading."]


def _prediction(prediction: str) -> str:
    return {"eps": "the noise ε", "v": "the velocity v (Salimans & Ho 2022)"}.get(prediction, prediction)


def _number(value) -> str:
    return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else str(value)


def _figure(value) -> str:
    if value is None:
        return "not measured"
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    return _number(value)


def _with_std(value, std) -> str:
    return _figure(value) if value is None or std is None else f"{_figure(value)} ± {_figure(std)}"


def duration_text(value) -> str:
    """Seconds in words: ``45 s``, ``23 min (1,380 s)``, ``4 h 21 min (15,668 s)``; anything that
    is not a number as it is."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    seconds = float(value)
    if seconds < 120:
        return f"{seconds:.0f} s"
    hours, minutes = divmod(round(seconds / 60), 60)
    return (f"{hours} h {minutes} min" if hours else f"{minutes} min") + f" ({seconds:,.0f} s)"
