"""The exercise edition and its checks (``diffusion_utils.exercises``, ``tools/make_exercises.py``).

For every exercise: the worked notebook's own lines pass; the exercise edition's blank says "not
written yet"; each known mistake, written into the worked lines the way a learner would write it,
gets its own hint; a wrong answer that no hint knows still fails, with the size and the place of the
difference. The learner's lines are executed from the notebooks themselves, so a test fails when a
notebook and its check drift apart. The committed ``exercises/`` are exactly what the generator
makes now, and each exercise notebook runs top to bottom with every blank left blank.
"""

from __future__ import annotations

import json
import math
import os
import sys

import nbformat
import pytest
import torch
import torch.nn.functional as F

from conftest import REPO_ROOT, perturb_zero_init, shared_flowers_parent
from diffusion_utils import ConfigError, NoiseSchedule, TrainConfig, UNet, check_exercise
from diffusion_utils.exercises import EXERCISES, run_check

sys.path.insert(0, str(REPO_ROOT / "tools"))
from make_exercises import (BEGIN, END, MarkerError, blank_solutions, exercise_edition, render,  # noqa: E402
                            worked_notebooks)

WORKED = {p.name[:2]: p for p in worked_notebooks()}
QUICK = TrainConfig.preset("quick")
# What the checks need beside the learner's function, per exercise, and the notebook it lives in.
WHERE = {"alpha_bar": "01", "q_sample": "01", "embed": "02", "add_time_embedding": "02", "training_step": "03",
         "ema_update": "03", "reverse_step": "04", "ddim_step": "05", "dpmpp_step": "05", "guided_eps": "06",
         "sdedit_start": "06", "condition_input": "07", "noised_condition": "07", "flow_path": "08",
         "flow_velocity": "08", "flow_training_step": "08", "euler_step": "08"}
HELPERS = {"dpmpp_step": ["ddim_step"], "flow_training_step": ["flow_path"]}  # exercises whose cell calls what another exercise's cell defines
INLINE: dict[str, str] = {}  # an exercise's worked lines written here until its notebook holds them


def conditional_model() -> UNet:
    torch.manual_seed(0)
    return perturb_zero_init(UNet(base_channels=8, channel_mults=(1, 2), num_res_blocks=1, attention_levels=(),
                                  time_emb_dim=16, img_size=16, num_classes=3)).eval()


def context(name: str) -> dict:
    """The keyword arguments the notebook passes to check_exercise for ``name``."""
    if name in ("embed", "add_time_embedding", "condition_input"):
        return {}
    if name == "ema_update":
        return {"config": QUICK}
    if name == "training_step":
        return {"config": QUICK.replace(prediction="eps", loss_weighting="none")}
    if name == "guided_eps":
        return {"model": conditional_model()}
    if name in ("flow_path", "flow_velocity", "euler_step"):
        return {}
    if name == "flow_training_step":
        return {"config": TrainConfig.preset("quick-flow")}
    return {"schedule": NoiseSchedule.linear(1000)}


def namespace(ctx: dict) -> dict:
    """What the notebooks' earlier cells define that the learner's cells read."""
    schedule = ctx.get("schedule", NoiseSchedule.linear(1000))
    return {"torch": torch, "F": F, "math": math, "schedule": schedule, "linear": schedule, "sr_schedule": schedule, "config": QUICK}


def defines(source: str, name: str) -> bool:
    return f"def {name}(" in source or f"\n{name} = " in "\n" + source


def learner_cell(name: str, edition: str = "notebooks") -> str:
    """The code cell of ``name``'s notebook that holds the learner's lines for it (the solution in the
    worked edition, the stub in the exercise edition)."""
    path = REPO_ROOT / edition / WORKED[WHERE[name]].name if WHERE[name] in WORKED else None
    cells = nbformat.read(str(path), as_version=4).cells if path is not None and path.exists() else []
    for c in cells:
        if c.cell_type == "code" and (BEGIN in c.source or "# ✎" in c.source) and defines(c.source, name):
            return c.source
    assert name in INLINE, f"no cell of notebook {WHERE[name]} holds {name}"
    return INLINE[name] if edition == "notebooks" else blank_solutions(INLINE[name])[0]


def learner_code(name: str, edition: str = "notebooks", replace: tuple[tuple[str, str], ...] = ()) -> dict:
    """Run the cells that hold the learner's lines for ``name`` (and for the exercises it calls),
    with ``replace``'s substitutions made in them as a learner would edit them; return the namespace."""
    ns = namespace(context(name))
    joined = "\n\n".join(learner_cell(n, edition) for n in [*HELPERS.get(name, []), name])
    for old, new in replace:
        assert old in joined, f"{name}: {old!r} is not in the worked lines"
        joined = joined.replace(old, new)
    exec(compile(joined, f"<{name}>", "exec"), ns)
    return ns


def check(name: str, ns: dict):
    return run_check(name, ns[name], **context(name))


# Each known mistake, as a learner would write it into the worked lines: (mistake, [(old, new), …]).
MISTAKES = {
    "alpha_bar": [
        ("alpha", [("torch.cumprod(1 - linear.betas, dim=0)", "1 - linear.betas")]),
        ("product_of_betas", [("torch.cumprod(1 - linear.betas, dim=0)", "torch.cumprod(linear.betas, dim=0)")]),
        ("sum", [("torch.cumprod(1 - linear.betas, dim=0)", "1 - torch.cumsum(linear.betas, dim=0)")]),
        ("shifted", [("torch.cumprod(1 - linear.betas, dim=0)",
                      "torch.cumprod(torch.cat([torch.ones(1), 1 - linear.betas[:-1]]), dim=0)")]),
        ("sqrt", [("torch.cumprod(1 - linear.betas, dim=0)", "torch.cumprod(1 - linear.betas, dim=0).sqrt()")]),
        ("squared", [("torch.cumprod(1 - linear.betas, dim=0)", "torch.cumprod(1 - linear.betas, dim=0) ** 2")]),
        ("sum_of_alphas", [("torch.cumprod(1 - linear.betas, dim=0)", "torch.cumsum(1 - linear.betas, dim=0)")]),
        ("one_minus_product", [("torch.cumprod(1 - linear.betas, dim=0)", "1 - torch.cumprod(linear.betas, dim=0)")]),
        ("one_number", [("torch.cumprod(1 - linear.betas, dim=0)", "torch.prod(1 - linear.betas)")]),
        ("exponential", [("torch.cumprod(1 - linear.betas, dim=0)", "torch.exp(-linear.betas.cumsum(0))")]),
    ],
    "q_sample": [
        ("alpha", [("alpha_bar[t].view", "(1 - linear.betas)[t].view")]),
        ("noise_variance", [("(1 - a).sqrt() * eps", "(1 - a) * eps")]),
        ("no_square_roots", [("a.sqrt() * x0 + (1 - a).sqrt() * eps", "a * x0 + (1 - a) * eps")]),
        ("signal_no_sqrt", [("return a.sqrt() * x0", "return a * x0")]),
        ("swapped", [("a.sqrt() * x0 + (1 - a).sqrt() * eps", "(1 - a).sqrt() * x0 + a.sqrt() * eps")]),
        ("paper_index", [("alpha_bar[t].view", "alpha_bar[t - 1].view")]),
        ("not_broadcast", [("alpha_bar[t].view(-1, 1, 1, 1)", "alpha_bar[t]")]),
        ("one_minus_sqrt", [("(1 - a).sqrt() * eps", "(1 - a.sqrt()) * eps")]),
        ("noise_subtracted", [("+ (1 - a).sqrt() * eps", "- (1 - a).sqrt() * eps")]),
        ("no_shrink", [("return a.sqrt() * x0 +", "return x0 +")]),
        ("next_index", [("alpha_bar[t].view", "alpha_bar[t + 1].view")]),
    ],
    "embed": [
        ("cos_first", [("[torch.sin(angles), torch.cos(angles)]", "[torch.cos(angles), torch.sin(angles)]")]),
        ("positive_exponent", [("10000 ** (-torch.arange", "10000 ** (torch.arange")]),
        ("over_d", [("(-torch.arange(d // 2) / (d // 2))", "(-torch.arange(d // 2) / d)")]),
        ("interleaved", [("torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)",
                          "torch.stack([torch.sin(angles), torch.cos(angles)], dim=-1).reshape(len(t), d)")]),
        ("divided", [("t.float()[:, None] * omega[None, :]", "t.float()[:, None] / omega[None, :]")]),
        ("sin_twice", [("torch.cos(angles)]", "torch.sin(angles)]")]),
        ("over_half_minus_one", [("/ (d // 2))", "/ (d // 2 - 1))")]),
        ("from_one", [("torch.arange(d // 2)", "torch.arange(1, d // 2 + 1)")]),
        ("batch_axis", [("torch.cos(angles)], dim=1)", "torch.cos(angles)], dim=0)")]),
    ],
    "add_time_embedding": [
        ("no_projection", [("block.time_proj(F.silu(t_emb))", "t_emb")]),
        ("no_silu", [("block.time_proj(F.silu(t_emb))", "block.time_proj(t_emb)")]),
        ("silu_after", [("block.time_proj(F.silu(t_emb))", "F.silu(block.time_proj(t_emb))")]),
        ("multiplied", [("return h + block", "return h * block")]),
        ("wrong_axes", [("[:, :, None, None]", "[:, None, None, :]")]),
        ("one_axis", [("[:, :, None, None]", "[:, :, None]")]),
        ("relu", [("F.silu(t_emb)", "F.relu(t_emb)")]),
        ("sigmoid", [("F.silu(t_emb)", "torch.sigmoid(t_emb)")]),
        ("h_forgotten", [("return h + block", "return block")]),
        ("silu_of_sum", [("return h + block.time_proj(F.silu(t_emb))[:, :, None, None]",
                          "return F.silu(h + block.time_proj(t_emb)[:, :, None, None])")]),
    ],
    "training_step": [
        ("paper_t", [("torch.randint(0, schedule.n_steps,", "torch.randint(1, schedule.n_steps + 1,")]),
        ("eps_first", [("    eps = torch.randn(x0.shape, generator=generator)  ", "    pass  "),
                       ("    t = torch.randint",
                        "    eps = torch.randn(x0.shape, generator=generator)\n    t = torch.randint")]),
        ("x0_target", [("F.mse_loss(model(x_t, t), eps)", "F.mse_loss(model(x_t, t), x0)")]),
        ("clean_input", [("F.mse_loss(model(x_t, t), eps)", "F.mse_loss(model(x0, t), eps)")]),
        ("no_clipping", [("torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)", "pass")]),
        ("no_zero_grad", [("    optimizer.zero_grad()\n", "")]),
        ("zero_grad_late", [("    optimizer.zero_grad()\n    loss.backward()", "    loss.backward()\n    optimizer.zero_grad()")]),
        ("t_inclusive", [("torch.randint(0, schedule.n_steps,", "torch.randint(0, schedule.n_steps + 1,")]),
        ("one_t", [("(len(x0),), generator=generator)", "(1,), generator=generator)")]),
        ("summed", [("F.mse_loss(model(x_t, t), eps)", "((model(x_t, t) - eps) ** 2).sum()")]),
    ],
    "ema_update": [
        ("swapped", [("p_ema.mul_(d).add_(p, alpha=1 - d)", "p_ema.mul_(1 - d).add_(p, alpha=d)")]),
        ("exponent_gamma", [("** (config.ema_gamma + 1)", "** config.ema_gamma")]),
        ("no_cap", [("min(config.ema_decay, (1 - 1 / (n + 1)) ** (config.ema_gamma + 1))",
                     "(1 - 1 / (n + 1)) ** (config.ema_gamma + 1)")]),
        ("max_not_min", [("d = min(", "d = max(")]),
        ("n_not_n_plus_1", [("(1 - 1 / (n + 1))", "(1 - 1 / n)")]),
        ("fixed_decay", [("min(config.ema_decay, (1 - 1 / (n + 1)) ** (config.ema_gamma + 1))", "config.ema_decay")]),
        ("n_plus_2", [("(1 - 1 / (n + 1))", "(1 - 1 / (n + 2))")]),
        ("power_outside", [("min(config.ema_decay, (1 - 1 / (n + 1)) ** (config.ema_gamma + 1))",
                            "min(config.ema_decay, 1 - 1 / (n + 1)) ** (config.ema_gamma + 1)")]),
        ("not_in_place", [("p_ema.mul_(d).add_(p, alpha=1 - d)", "p_ema = p_ema * d + p * (1 - d)")]),
        ("whole_weights", [("p_ema.mul_(d).add_(p, alpha=1 - d)", "p_ema.mul_(d).add_(p)")]),
    ],
    "reverse_step": [
        ("alpha_in_x0", [("((x_t - (1 - ab).sqrt() * eps_hat) / ab.sqrt())",
                          "((x_t - (1 - alpha).sqrt() * eps_hat) / alpha.sqrt())")]),
        ("x0_no_sqrt", [("/ ab.sqrt()).clamp", "/ ab).clamp")]),
        ("no_clip", [(".clamp(-1, 1)", "")]),
        ("prev_wraps", [("schedule.alpha_bars_prev[t]", "schedule.alpha_bars[t - 1]")]),
        ("variance_for_std", [("return mean + var.sqrt() * z", "return mean + var * z")]),
        ("no_noise", [("return mean + var.sqrt() * z", "return mean")]),
        ("x0_noise_variance", [("(x_t - (1 - ab).sqrt() * eps_hat)", "(x_t - (1 - ab) * eps_hat)")]),
        ("mean_swapped", [("beta / (1 - ab)) * x0_hat + (alpha.sqrt() * (1 - ab_prev) / (1 - ab)) * x_t",
                           "beta / (1 - ab)) * x_t + (alpha.sqrt() * (1 - ab_prev) / (1 - ab)) * x0_hat")]),
        ("prev_no_sqrt", [("(ab_prev.sqrt() * beta", "(ab_prev * beta")]),
        ("alpha_no_sqrt", [("(alpha.sqrt() * (1 - ab_prev)", "(alpha * (1 - ab_prev)")]),
        ("alpha_in_variance", [("/ (1 - ab) * beta ", "/ (1 - ab) * alpha ")]),
        ("noise_subtracted", [("return mean + var.sqrt() * z", "return mean - var.sqrt() * z")]),
    ],
    "ddim_step": [
        ("raw_eps", [("    eps = (x - alpha_bar(t).sqrt() * x0) / (1 - alpha_bar(t)).sqrt()", "    pass")]),
        ("wrapped_alpha_bar", [("return alpha_bar(s).sqrt() * x0 + (1 - alpha_bar(s)).sqrt() * eps",
                                "ab_s = schedule.alpha_bars[s]\n"
                                "    return ab_s.sqrt() * x0 + (1 - ab_s).sqrt() * eps")]),
        ("rebuilt_xt", [("return alpha_bar(s).sqrt() * x0 + (1 - alpha_bar(s)).sqrt() * eps",
                         "return alpha_bar(t).sqrt() * x0 + (1 - alpha_bar(t)).sqrt() * eps")]),
        ("variance_for_std", [("(1 - alpha_bar(s)).sqrt() * eps", "(1 - alpha_bar(s)) * eps")]),
        ("signal_no_sqrt", [("return alpha_bar(s).sqrt() * x0", "return alpha_bar(s) * x0")]),
        ("implied_at_s", [("eps = (x - alpha_bar(t).sqrt() * x0) / (1 - alpha_bar(t)).sqrt()",
                           "eps = (x - alpha_bar(s).sqrt() * x0) / (1 - alpha_bar(s)).sqrt()")]),
        ("steps_swapped", [("eps = (x - alpha_bar(t).sqrt() * x0) / (1 - alpha_bar(t)).sqrt()",
                            "eps = (x - alpha_bar(s).sqrt() * x0) / (1 - alpha_bar(s)).sqrt()"),
                           ("return alpha_bar(s).sqrt() * x0 + (1 - alpha_bar(s)).sqrt() * eps",
                            "return alpha_bar(t).sqrt() * x0 + (1 - alpha_bar(t)).sqrt() * eps")]),
        ("one_step_back", [("return alpha_bar(s).sqrt() * x0 + (1 - alpha_bar(s)).sqrt() * eps",
                            "return alpha_bar(t - 1).sqrt() * x0 + (1 - alpha_bar(t - 1)).sqrt() * eps")]),
        ("implied_no_sqrt", [("x0) / (1 - alpha_bar(t)).sqrt()", "x0) / (1 - alpha_bar(t))")]),
        ("one_minus_sqrt", [("(1 - alpha_bar(s)).sqrt() * eps", "(1 - alpha_bar(s).sqrt()) * eps")]),
        ("direction_subtracted", [("* x0 + (1 - alpha_bar(s)).sqrt() * eps", "* x0 - (1 - alpha_bar(s)).sqrt() * eps")]),
    ],
    "dpmpp_step": [
        ("full_log_snr", [("return 0.5 * torch.log(", "return torch.log(")]),
        ("r_inverted", [("r = (lam(t) - lam(t_prev)) / h", "r = h / (lam(t) - lam(t_prev))")]),
        ("exp_sign", [("torch.expm1(-h)", "torch.expm1(h)")]),
        ("variance_ratio", [("((1 - alpha_bar(s)) / (1 - alpha_bar(t))).sqrt() * x",
                             "((1 - alpha_bar(s)) / (1 - alpha_bar(t))) * x")]),
        ("first_order_only", [("D = (1 + 1 / (2 * r)) * x0 - 1 / (2 * r) * x0_prev", "D = x0")]),
        ("weights_swapped", [("D = (1 + 1 / (2 * r)) * x0 - 1 / (2 * r) * x0_prev",
                              "D = (1 + 1 / (2 * r)) * x0_prev - 1 / (2 * r) * x0")]),
        ("no_last_step", [("    if s < 0:", "    if False:")]),
        ("h_sign", [("h = lam(s) - lam(t)", "h = lam(t) - lam(s)")]),
        ("signal_at_t", [("- alpha_bar(s).sqrt() * torch.expm1", "- alpha_bar(t).sqrt() * torch.expm1")]),
        ("second_term_added", [(" * x - alpha_bar(s).sqrt()", " * x + alpha_bar(s).sqrt()")]),
    ],
    "guided_eps": [
        ("their_w", [("return eps_null + w * (eps_c - eps_null)", "return (1 + w) * eps_c - w * eps_null")]),
        ("wrong_branch", [("return eps_null + w * (eps_c - eps_null)", "return eps_c + w * (eps_null - eps_c)")]),
        ("reversed", [("return eps_null + w * (eps_c - eps_null)", "return eps_null + w * (eps_null - eps_c)")]),
        ("no_base", [("return eps_null + w * (eps_c - eps_null)", "return w * (eps_c - eps_null)")]),
        ("no_brackets", [("return eps_null + w * (eps_c - eps_null)", "return eps_null + w * eps_c - eps_null")]),
        ("no_difference", [("return eps_null + w * (eps_c - eps_null)", "return eps_null + w * eps_c")]),
        ("w_minus_one", [("w * (eps_c", "(w - 1) * (eps_c")]),
        ("average", [("return eps_null + w * (eps_c - eps_null)", "return (eps_c + w * eps_null) / (1 + w)")]),
    ],
    "sdedit_start": [
        ("paper_index", [("round(strength * schedule.n_steps) - 1", "round(strength * schedule.n_steps)")]),
        ("reversed_strength", [("round(strength * schedule.n_steps) - 1",
                                "round((1 - strength) * schedule.n_steps) - 1")]),
        ("noise_variance", [("    return schedule.q_sample(x0, torch.full((len(x0),), t0), eps)",
                             "    ab = schedule.alpha_bars[t0]\n    return ab.sqrt() * x0 + (1 - ab) * eps")]),
        ("alpha", [("    return schedule.q_sample(x0, torch.full((len(x0),), t0), eps)",
                    "    a = schedule.alphas[t0]\n    return a.sqrt() * x0 + (1 - a).sqrt() * eps")]),
        ("no_shrink", [("    return schedule.q_sample(x0, torch.full((len(x0),), t0), eps)",
                        "    ab = schedule.alpha_bars[t0]\n    return x0 + (1 - ab).sqrt() * eps")]),
        ("swapped", [("    return schedule.q_sample(x0, torch.full((len(x0),), t0), eps)",
                      "    ab = schedule.alpha_bars[t0]\n    return (1 - ab).sqrt() * x0 + ab.sqrt() * eps")]),
        ("one_minus_sqrt", [("    return schedule.q_sample(x0, torch.full((len(x0),), t0), eps)",
                             "    ab = schedule.alpha_bars[t0]\n    return ab.sqrt() * x0 + (1 - ab.sqrt()) * eps")]),
        ("no_jump", [("    return schedule.q_sample(x0, torch.full((len(x0),), t0), eps)", "    return x0")]),
        ("pure_noise", [("    return schedule.q_sample(x0, torch.full((len(x0),), t0), eps)", "    return eps")]),
        ("over_t_minus_one", [("round(strength * schedule.n_steps) - 1", "round(strength * (schedule.n_steps - 1))")]),
    ],
    "condition_input": [
        ("reversed", [("[x_t, z_s]", "[z_s, x_t]")]),
        ("batch_axis", [("dim=1", "dim=0")]),
        ("added", [("torch.cat([x_t, z_s], dim=1)", "x_t + z_s")]),
        ("stacked", [("torch.cat", "torch.stack")]),
        ("stacked_first", [("torch.cat([x_t, z_s], dim=1)", "torch.stack([x_t, z_s], dim=0)")]),
        ("width_axis", [("dim=1", "dim=3")]),
        ("height_axis", [("dim=1", "dim=-2")]),
        ("multiplied", [("torch.cat([x_t, z_s], dim=1)", "x_t * z_s")]),
        ("interleaved", [("torch.cat([x_t, z_s], dim=1)", "torch.stack([x_t, z_s], dim=2).reshape(len(x_t), 6, 8, 8)")]),
    ],
    "noised_condition": [
        ("noise_variance", [("(1 - a).sqrt() * noise", "(1 - a) * noise")]),
        ("alpha", [("sr_schedule.alpha_bars[s]", "sr_schedule.alphas[s]")]),
        ("clean", [("return a.sqrt() * z + (1 - a).sqrt() * noise", "return z")]),
        ("swapped", [("return a.sqrt() * z + (1 - a).sqrt() * noise", "return (1 - a).sqrt() * z + a.sqrt() * noise")]),
        ("no_square_roots", [("return a.sqrt() * z + (1 - a).sqrt() * noise", "return a * z + (1 - a) * noise")]),
        ("one_minus_sqrt", [("(1 - a).sqrt() * noise", "(1 - a.sqrt()) * noise")]),
        ("noise_subtracted", [("+ (1 - a).sqrt() * noise", "- (1 - a).sqrt() * noise")]),
        ("no_shrink", [("return a.sqrt() * z +", "return z +")]),
        ("not_broadcast", [("sr_schedule.alpha_bars[s].view(-1, 1, 1, 1)", "sr_schedule.alpha_bars[s]")]),
        ("index_back", [("sr_schedule.alpha_bars[s]", "sr_schedule.alpha_bars[s - 1]")]),
    ],
    "flow_path": [
        ("reversed", [("return (1 - t) * x0 + t * eps", "return t * x0 + (1 - t) * eps")]),
        ("square_roots", [("return (1 - t) * x0 + t * eps", "return (1 - t).sqrt() * x0 + t.sqrt() * eps")]),
        ("image_kept", [("return (1 - t) * x0 + t * eps", "return x0 + t * eps")]),
        ("noise_sign", [("return (1 - t) * x0 + t * eps", "return (1 - t) * x0 - t * eps")]),
        ("trigonometric", [("return (1 - t) * x0 + t * eps",
                            "return torch.cos(torch.pi / 2 * t) * x0 + torch.sin(torch.pi / 2 * t) * eps")]),
        ("integer_steps", [("t = t.view(-1, 1, 1, 1)", "t = t.view(-1, 1, 1, 1) / 1000")]),
        ("squared", [("return (1 - t) * x0 + t * eps", "return (1 - t) ** 2 * x0 + t ** 2 * eps")]),
        ("not_broadcast", [("    t = t.view(-1, 1, 1, 1)\n", "")]),
        ("half_reshaped", [("t = t.view(-1, 1, 1, 1)", "t = t.view(-1, 1)")]),
        ("noise_unscaled", [("return (1 - t) * x0 + t * eps", "return (1 - t) * x0 + eps")]),
        ("difference_reversed", [("return (1 - t) * x0 + t * eps", "return x0 - t * (eps - x0)")]),
    ],
    "flow_velocity": [
        ("reversed", [("return eps - x0", "return x0 - eps")]),
        ("noise", [("return eps - x0", "return eps")]),
        ("image", [("return eps - x0", "return x0")]),
        ("minus_image", [("return eps - x0", "return -x0")]),
        ("sum", [("return eps - x0", "return eps + x0")]),
        ("halved", [("return eps - x0", "return (eps - x0) / 2")]),
        ("both_negated", [("return eps - x0", "return -(eps + x0)")]),
        ("per_step", [("return eps - x0", "return (eps - x0) * 0.001")]),
    ],
    "flow_training_step": [
        ("eps_first", [("    t = torch.rand(len(x0), generator=generator)\n    eps = torch.randn(x0.shape, generator=generator)",
                        "    eps = torch.randn(x0.shape, generator=generator)\n    t = torch.rand(len(x0), generator=generator)")]),
        ("reversed_target", [("flow_velocity(x0, eps))", "x0 - eps)")]),
        ("noise_target", [("flow_velocity(x0, eps))", "eps)")]),
        ("image_target", [("flow_velocity(x0, eps))", "x0)")]),
        ("clean_input", [("model(flow_path(x0, eps, t), t)", "model(x0, t)")]),
        ("time_scaled", [("model(flow_path(x0, eps, t), t)", "model(flow_path(x0, eps, t), 1000 * t)")]),
        ("time_reversed", [("model(flow_path(x0, eps, t), t)", "model(flow_path(x0, eps, t), 1 - t)")]),
        ("normal_t", [("t = torch.rand(len(x0)", "t = torch.randn(len(x0)")]),
        ("one_t", [("t = torch.rand(len(x0), generator=generator)",
                    "t = torch.rand(1, generator=generator).expand(len(x0))")]),
        ("summed", [("F.mse_loss(model(flow_path(x0, eps, t), t), flow_velocity(x0, eps))",
                     "((model(flow_path(x0, eps, t), t) - flow_velocity(x0, eps)) ** 2).sum()")]),
        ("per_image_sum", [("F.mse_loss(model(flow_path(x0, eps, t), t), flow_velocity(x0, eps))",
                            "((model(flow_path(x0, eps, t), t) - flow_velocity(x0, eps)) ** 2).sum(dim=(1, 2, 3)).mean()")]),
        ("absolute", [("F.mse_loss(", "F.l1_loss(")]),
        ("item", [("flow_velocity(x0, eps))\n", "flow_velocity(x0, eps)).item()\n")]),
        ("integer_t", [("t = torch.rand(len(x0), generator=generator)",
                        "t = torch.randint(0, 1000, (len(x0),), generator=generator)")]),
        ("path_swapped", [("model(flow_path(x0, eps, t), t)", "model(flow_path(eps, x0, t), t)")]),
    ],
    "euler_step": [
        ("dt_sign", [("return x + (t_next - t) * u", "return x + (t - t_next) * u")]),
        ("no_dt", [("return x + (t_next - t) * u", "return x - u")]),
        ("jump", [("return x + (t_next - t) * u", "return x - t * u")]),
        ("fixed_dt", [("return x + (t_next - t) * u", "return x - u / 20")]),
        ("next_time", [("return x + (t_next - t) * u", "return x - t_next * u")]),
        ("next_time_added", [("return x + (t_next - t) * u", "return x + t_next * u")]),
        ("no_x", [("return x + (t_next - t) * u", "return (t_next - t) * u")]),
        ("whole_u", [("return x + (t_next - t) * u", "return x + u")]),
        ("swapped", [("return x + (t_next - t) * u", "return u + (t_next - t) * x")]),
    ],
}

# Right answers written other ways than the worked lines: each must pass (✓, never ✗).
VARIANTS = {
    "alpha_bar": [
        [("torch.cumprod(1 - linear.betas, dim=0)", "torch.cumprod(linear.alphas, dim=0)")],
        [("torch.cumprod(1 - linear.betas, dim=0)", "(1 - linear.betas).cumprod(0)")],
        [("torch.cumprod(1 - linear.betas, dim=0)", "torch.exp(torch.cumsum(torch.log1p(-linear.betas), dim=0))")],
    ],
    "q_sample": [
        [("a = alpha_bar[t].view(-1, 1, 1, 1)", "a = alpha_bar[t][:, None, None, None]")],
        [("return a.sqrt() * x0 + (1 - a).sqrt() * eps", "return torch.sqrt(a) * x0 + torch.sqrt(1 - a) * eps")],
        [("    a = alpha_bar[t].view(-1, 1, 1, 1)                 # one ᾱ per image, shaped to broadcast over its pixels\n"
          "    return a.sqrt() * x0 + (1 - a).sqrt() * eps",
          "    return linear.q_sample(x0, t, eps)")],
    ],
    "embed": [
        [("omega = 10000 ** (-torch.arange(d // 2) / (d // 2))",
          "omega = torch.exp(-math.log(10000) * torch.arange(d // 2) / (d // 2))")],
        [("angles = t.float()[:, None] * omega[None, :]", "angles = torch.outer(t.float(), omega)")],
        [("torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)",
          "torch.cat([angles.sin(), angles.cos()], dim=-1)")],
    ],
    "add_time_embedding": [
        [("[:, :, None, None]", ".view(len(h), -1, 1, 1)")],
        [("block.time_proj(F.silu(t_emb))", "block.time_proj(t_emb * torch.sigmoid(t_emb))")],
        [("return h + block.time_proj(F.silu(t_emb))[:, :, None, None]",
          "return block.time_proj(torch.nn.SiLU()(t_emb)).unsqueeze(-1).unsqueeze(-1) + h")],
    ],
    "training_step": [  # the first builds xₜ by hand: float32's √ differs from the table's by a rounding step
        [("x_t = schedule.q_sample(x0, t, eps)",
          "a = schedule.alpha_bars[t][:, None, None, None]\n    x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps")],
        [("loss = F.mse_loss(model(x_t, t), eps)", "loss = ((model(x_t, t) - eps) ** 2).mean()")],
        [("    optimizer.zero_grad()\n    loss.backward()", "    optimizer.zero_grad(set_to_none=False)\n    loss.backward()")],
    ],
    "ema_update": [
        [("p_ema.mul_(d).add_(p, alpha=1 - d)", "p_ema.lerp_(p, 1 - d)")],
        [("p_ema.mul_(d).add_(p, alpha=1 - d)", "p_ema.copy_(d * p_ema + (1 - d) * p)")],
        [("p_ema.mul_(d).add_(p, alpha=1 - d)", "p_ema.sub_((1 - d) * (p_ema - p))")],
    ],
    "reverse_step": [
        [("return mean + var.sqrt() * z", "return mean + torch.sqrt(var) * z")],
        [("x0_hat = ((x_t - (1 - ab).sqrt() * eps_hat) / ab.sqrt()).clamp(-1, 1)",
          "x0_hat = torch.clamp((x_t - torch.sqrt(1 - ab) * eps_hat) / torch.sqrt(ab), -1, 1)")],
        [("    var = (1 - ab_prev) / (1 - ab) * beta ", "    var = schedule.posterior_variance[t] ")],
    ],
    "ddim_step": [
        [("eps = (x - alpha_bar(t).sqrt() * x0) / (1 - alpha_bar(t)).sqrt()",
          "eps = (x - torch.sqrt(alpha_bar(t)) * x0) / torch.sqrt(1 - alpha_bar(t))")],
        [("return alpha_bar(s).sqrt() * x0 + (1 - alpha_bar(s)).sqrt() * eps",
          "a_s = alpha_bar(s)\n    return a_s.sqrt() * x0 + (1 - a_s).sqrt() * eps")],
        [("return alpha_bar(s).sqrt() * x0 + (1 - alpha_bar(s)).sqrt() * eps",
          "return (1 - alpha_bar(s)).sqrt() * eps + alpha_bar(s).sqrt() * x0")],
    ],
    "dpmpp_step": [
        [("return 0.5 * torch.log(alpha_bar(t) / (1 - alpha_bar(t)))",
          "return torch.log(alpha_bar(t).sqrt() / (1 - alpha_bar(t)).sqrt())")],
        [("torch.expm1(-h)", "(torch.exp(-h) - 1)")],
        [("D = (1 + 1 / (2 * r)) * x0 - 1 / (2 * r) * x0_prev", "D = x0 + (x0 - x0_prev) / (2 * r)")],
    ],
    "guided_eps": [
        [("return eps_null + w * (eps_c - eps_null)", "return (1 - w) * eps_null + w * eps_c")],
        [("return eps_null + w * (eps_c - eps_null)", "return torch.lerp(eps_null, eps_c, w)")],
        [("return eps_null + w * (eps_c - eps_null)", "return eps_c + (w - 1) * (eps_c - eps_null)")],
    ],
    "sdedit_start": [
        [("t0 = round(strength * schedule.n_steps) - 1", "t0 = int(round(strength * schedule.n_steps)) - 1")],
        [("    return schedule.q_sample(x0, torch.full((len(x0),), t0), eps)",
          "    ab = schedule.alpha_bars[t0]\n    return ab.sqrt() * x0 + (1 - ab).sqrt() * eps")],
        [("torch.full((len(x0),), t0)", "torch.tensor([t0] * len(x0))")],
    ],
    "condition_input": [
        [("torch.cat([x_t, z_s], dim=1)", "torch.cat((x_t, z_s), 1)")],
        [("torch.cat([x_t, z_s], dim=1)", "torch.concat([x_t, z_s], dim=-3)")],
        [("torch.cat([x_t, z_s], dim=1)", "torch.stack([x_t, z_s], dim=1).flatten(1, 2)")],
    ],
    "noised_condition": [
        [("a = sr_schedule.alpha_bars[s].view(-1, 1, 1, 1)", "a = sr_schedule.alpha_bars[s][:, None, None, None]")],
        [("return a.sqrt() * z + (1 - a).sqrt() * noise", "return torch.sqrt(a) * z + torch.sqrt(1 - a) * noise")],
        [("    a = sr_schedule.alpha_bars[s].view(-1, 1, 1, 1)\n    return a.sqrt() * z + (1 - a).sqrt() * noise",
          "    return sr_schedule.q_sample(z, s, noise)")],
    ],
    "flow_path": [
        [("return (1 - t) * x0 + t * eps", "return x0 + t * (eps - x0)")],
        [("    t = t.view(-1, 1, 1, 1)\n    return (1 - t) * x0 + t * eps",
          "    return torch.lerp(x0, eps, t[:, None, None, None])")],
        [("    t = t.view(-1, 1, 1, 1)\n    return (1 - t) * x0 + t * eps",
          "    return (1 - t).reshape(-1, 1, 1, 1) * x0 + t.reshape(-1, 1, 1, 1) * eps")],
    ],
    "flow_velocity": [
        [("return eps - x0", "return -(x0 - eps)")],
        [("return eps - x0", "return eps + (-1) * x0")],
        [("return eps - x0", "return torch.sub(eps, x0)")],
    ],
    "flow_training_step": [
        [("F.mse_loss(model(flow_path(x0, eps, t), t), flow_velocity(x0, eps))",
          "((model(flow_path(x0, eps, t), t) - flow_velocity(x0, eps)) ** 2).mean()")],
        [("F.mse_loss(model(flow_path(x0, eps, t), t), flow_velocity(x0, eps))",
          "F.mse_loss(model((1 - t[:, None, None, None]) * x0 + t[:, None, None, None] * eps, t), eps - x0)")],
        [("F.mse_loss(model(flow_path(x0, eps, t), t), flow_velocity(x0, eps))",
          "(flow_velocity(x0, eps) - model(flow_path(x0, eps, t), t)).pow(2).mean()")],
    ],
    "euler_step": [
        [("return x + (t_next - t) * u", "return x - (t - t_next) * u")],
        [("return x + (t_next - t) * u", "dt = t_next - t\n    return x + dt * u")],
        [("return x + (t_next - t) * u",  # back along the line through x̂₀ and ε̂, to t_next
          "x0, eps = x - t * u, x + (1 - t) * u\n    return (1 - t_next) * x0 + t_next * eps")],
    ],
}

# Valid alternatives the check names as such (✓ and a note, never ✗).
ALTERNATIVES = {
    "reverse_step": ("beta_variance", [("return mean + var.sqrt() * z", "return mean + beta.sqrt() * z")]),
    "flow_training_step": ("logit_normal", [("t = torch.rand(len(x0), generator=generator)",
                                             "t = torch.sigmoid(torch.randn(len(x0), generator=generator))")]),
}

# A wrong answer no hint knows, and what the message must say about where it differs.
UNKNOWN = {
    "alpha_bar": ([("torch.cumprod(1 - linear.betas, dim=0)", "torch.cumprod(1 - linear.betas, dim=0) * 0.999")],
                  "t = 1"),
    "q_sample": ([("(1 - a).sqrt() * eps", "(1 - a).sqrt() * eps + 0.01 * (t == 499).view(-1, 1, 1, 1)")], "t = 500"),
    "embed": ([("dim=1)  # [sin", "dim=1) + 0.01 * (t == 7).float()[:, None]  # [sin")], "t = 7"),
    "add_time_embedding": ([("[:, :, None, None]", "[:, :, None, None] * 1.01")], "channel"),
    "training_step": ([("return loss.item()", "return loss.item() * 1.01")], "step 1, in the loss"),
    "ema_update": ([("p_ema.mul_(d).add_(p, alpha=1 - d)", "p_ema.mul_(d).add_(p, alpha=1 - d).add_(1e-3)")], "n = "),
    "reverse_step": ([("return mean + var.sqrt() * z", "return mean + var.sqrt() * z + 0.01 * (t == 500)")], "t = 501"),
    "ddim_step": ([("(1 - alpha_bar(s)).sqrt() * eps", "(1 - alpha_bar(s)).sqrt() * eps * 1.01")], "t = "),
    "dpmpp_step": ([("        return x0\n", "        return x0 * 0.99\n")], "the last step"),
    "guided_eps": ([("w * (eps_c - eps_null)", "w * (eps_c - eps_null) * 1.01")], "w = 7.5"),
    "sdedit_start": ([("round(strength * schedule.n_steps) - 1", "round(strength * schedule.n_steps) - 2")],
                     "strength"),
    "condition_input": ([("[x_t, z_s]", "[x_t, z_s * 0.9]")], "channel"),
    "noised_condition": ([("(1 - a).sqrt() * noise", "(1 - a).sqrt() * noise * (1 + 0.01 * (s == 100).view(-1, 1, 1, 1))")],
                         "s = 100"),
    "flow_path": ([("return (1 - t) * x0 + t * eps", "return (1 - t) * x0 + t * eps * 1.01")], "image 5 (t = 1)"),
    "flow_velocity": ([("return eps - x0", "return eps - x0 * 1.01")], "image"),
    "flow_training_step": ([("flow_velocity(x0, eps))", "flow_velocity(x0, eps)) * 1.01")], "in the loss"),
    "euler_step": ([("return x + (t_next - t) * u", "return x + (t_next - t) * u * (1.01 if t == 0.5 else 1)")],
                   "t = 0.5 → 0.45"),
}


# ---------------------------------------------------------------------------------------------
# The exercises themselves
# ---------------------------------------------------------------------------------------------
def test_every_exercise_has_three_right_answers_written_other_ways():
    assert all(len(VARIANTS.get(name, ())) >= 3 for name in EXERCISES), sorted(
        name for name in EXERCISES if len(VARIANTS.get(name, ())) < 3)


def test_there_are_at_least_ten_exercises_each_with_eight_known_mistakes_all_tested():
    in_notebooks = {name for name, where in WHERE.items() if name not in INLINE or where in WORKED}
    assert len(in_notebooks) >= 10
    for name, ex in EXERCISES.items():
        keys = [m.key for m in ex.mistakes(context(name))]
        assert len(keys) >= 8 and len(set(keys)) == len(keys), name
        assert sorted(keys) == sorted(key for key, _ in MISTAKES[name]), f"{name}: every known mistake needs a test"
    assert set(EXERCISES) == set(WHERE)


def test_wrong_answers_written_apart_from_the_registry_are_caught_and_mostly_named():
    """tests/fixtures/learner_mistakes.py: about ten wrong answers per exercise, written as learners write
    them and not from the registry. Each fails (a ✗, never a ✓ or a traceback); most get a hint."""
    from fixtures.learner_mistakes import CORPUS, named_rates, verdicts

    assert set(CORPUS) == set(EXERCISES) and all(len(answers) >= 8 for answers in CORPUS.values())
    for name, what, result in verdicts():
        assert not result.passed and result.message.startswith("✗"), f"{name}, {what}: {result.message}"
    rates = named_rates()
    for key, (named, written) in rates.items():
        print(f"{key}: {named} of {written} named ({named / written:.0%})")
    assert rates.pop("all")[0] >= 0.8 * len(verdicts())
    assert all(named >= 0.7 * written for named, written in rates.values()), rates


@pytest.mark.parametrize("name", sorted(EXERCISES))
def test_the_worked_lines_pass(name):
    result = check(name, learner_code(name))
    assert result.passed, result.message
    assert result.message.startswith(f"✓ {name} matches the package (max |Δ| = ")
    assert result.max_abs <= EXERCISES[name].tolerance


@pytest.mark.parametrize("name", sorted(EXERCISES))
def test_the_blank_says_not_written_yet(name):
    result = check(name, learner_code(name, edition="exercises"))
    assert result.status == "not written", result.message
    assert result.message.startswith("✗ not written yet: replace the ...")


@pytest.mark.parametrize("name,mistake,edits", [(n, m, e) for n, cases in MISTAKES.items() for m, e in cases],
                         ids=lambda v: v if isinstance(v, str) else "")
def test_each_known_mistake_gets_its_own_hint(name, mistake, edits):
    result = check(name, learner_code(name, replace=tuple(edits)))
    assert not result.passed
    assert result.mistake == mistake, result.message
    hint = next(m.hint for m in EXERCISES[name].mistakes(context(name)) if m.key == mistake)
    assert result.message.splitlines()[-1] == f"  hint: {hint}"
    assert result.message.count("\n") == 1  # the verdict, then the hint


@pytest.mark.parametrize("name,edits", [(n, e) for n, cases in VARIANTS.items() for e in cases],
                         ids=lambda v: v if isinstance(v, str) else "")
def test_right_answers_written_other_ways_pass(name, edits):
    """Never a ✗ for a right answer: the package's helper or the formula by hand, another function
    for the same arithmetic, another shape of the same broadcast, another order of the same terms."""
    result = check(name, learner_code(name, replace=tuple(edits)))
    assert result.status == "passed", result.message


@pytest.mark.parametrize("name", sorted(ALTERNATIVES))
def test_a_valid_alternative_gets_its_own_tick_never_a_cross(name):
    key, edits = ALTERNATIVES[name]
    result = check(name, learner_code(name, replace=tuple(edits)))
    assert result.status == "alternative" and result.passed and result.mistake == key, result.message
    hint = next(m.hint for m in EXERCISES[name].alternatives(context(name)) if m.key == key)
    assert result.message == f"✓ {name} is a valid alternative: {hint}"


@pytest.mark.parametrize("name", sorted(UNKNOWN))
def test_an_unknown_wrong_answer_fails_with_the_size_and_place_of_the_difference(name):
    edits, place = UNKNOWN[name]
    result = check(name, learner_code(name, replace=tuple(edits)))
    assert result.status == "differs" and result.mistake is None, result.message
    assert result.message.startswith(f"✗ {name} differs from the package: max |Δ| = ")
    assert result.max_abs > EXERCISES[name].tolerance
    assert place in result.where and f" at {result.where} " in result.message
    assert "\n" not in result.message


def test_a_helper_left_blank_counts_as_not_written():
    """dpmpp_step written, but the lam it calls still returns the stub's ...: not written, not a TypeError."""
    ns = learner_code("dpmpp_step", replace=(("return 0.5 * torch.log(alpha_bar(t) / (1 - alpha_bar(t)))",
                                              "return ..."),))
    result = check("dpmpp_step", ns)
    assert result.status == "not written"
    assert result.message == ("✗ not written yet: dpmpp_step calls lam, which is still a blank: replace the ... "
                              "in lam with your lines, run that cell, then this one")


def test_an_exception_in_the_learners_code_is_one_line_never_a_traceback(capsys):
    def q_sample(x0, t, eps):
        raise ValueError("a bad day")

    schedule = NoiseSchedule.linear(1000)
    returned = check_exercise("q_sample", q_sample, schedule=schedule)
    out = capsys.readouterr().out.splitlines()
    assert out == ["✗ q_sample raised ValueError: a bad day", "using the package's q_sample: yours raised an error"]
    x0, t, eps = torch.zeros(2, 3, 4, 4), torch.tensor([3, 900]), torch.randn(2, 3, 4, 4)
    assert torch.equal(returned(x0, t, eps), schedule.q_sample(x0, t, eps))


def test_wrong_kinds_of_answer_are_named():
    schedule = NoiseSchedule.linear(1000)
    assert run_check("q_sample", 3, schedule=schedule).message == (
        "✗ q_sample is not a function (it is int): define it with def q_sample(…) in the cell above")
    assert run_check("q_sample", lambda x0, t, eps: [1.0], schedule=schedule).message == (
        "✗ q_sample returned a list, not a tensor")
    assert run_check("alpha_bar", [0.5] * 1000, schedule=schedule).message == "✗ alpha_bar is a list, not a tensor"
    shape = run_check("alpha_bar", schedule.alpha_bars[:10], schedule=schedule)
    assert shape.message == "✗ alpha_bar has shape (10,) where the package's has shape (1000,)"
    assert run_check("q_sample", lambda x0, t, eps: None, schedule=schedule).message == (
        "✗ q_sample returned None: end it with a return line that gives the tensor")
    assert run_check("q_sample", lambda x0, t, eps: x0.numpy(), schedule=schedule).message == (
        "✗ q_sample returned an ndarray, not a tensor: torch.from_numpy(…) makes it one")


def test_a_wrong_kind_of_answer_is_not_called_an_error(capsys):
    check_exercise("q_sample", lambda x0, t, eps: None, schedule=NoiseSchedule.linear(1000))
    assert capsys.readouterr().out.splitlines()[-1] == "using the package's q_sample: yours does not return a tensor"


def test_an_infinite_value_is_shown_as_inf():
    schedule = NoiseSchedule.linear(1000)
    result = run_check("alpha_bar", schedule.alpha_bars.clone().index_fill_(0, torch.tensor([41]), float("inf")),
                       schedule=schedule)
    assert result.status == "differs" and "max |Δ| = inf (inf in yours) at t = 42" in result.message
    assert "e+308" not in result.message


def test_nan_in_the_learners_output_fails():
    schedule = NoiseSchedule.linear(1000)
    result = run_check("alpha_bar", schedule.alpha_bars.clone().index_fill_(0, torch.tensor([41]), float("nan")),
                       schedule=schedule)
    assert result.status == "differs" and "max |Δ| = inf (NaN in yours) at t = 42" in result.message


def test_check_exercise_falls_back_to_the_package_and_says_so(capsys):
    schedule = NoiseSchedule.linear(1000)
    ns = learner_code("q_sample", edition="exercises")
    returned = check_exercise("alpha_bar", ns["alpha_bar"], schedule=schedule)
    assert returned is schedule.alpha_bars
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == "using the package's alpha_bar: yours is not written yet"
    mine = learner_code("q_sample")
    assert check_exercise("q_sample", mine["q_sample"], schedule=schedule) is mine["q_sample"]
    assert capsys.readouterr().out.count("\n") == 1  # only the ✓ line
    wrong = learner_code("q_sample", replace=(("(1 - a).sqrt() * eps", "(1 - a) * eps"),))
    check_exercise("q_sample", wrong["q_sample"], schedule=schedule)
    assert capsys.readouterr().out.splitlines()[-1] == "using the package's q_sample: yours differs from it"


@pytest.mark.parametrize("name", [n for n, ex in sorted(EXERCISES.items()) if ex.falls_back and not ex.is_value])
def test_every_fallback_matches_the_worked_lines(name):
    """What later cells get instead of an unsolved exercise is itself a passing answer."""
    package = EXERCISES[name].package(context(name))
    assert run_check(name, package, **context(name)).passed


def test_exercises_that_no_later_cell_uses_return_the_learners_version(capsys):
    ns = learner_code("ema_update", edition="exercises")
    assert check_exercise("ema_update", ns["ema_update"], config=QUICK) is ns["ema_update"]
    assert capsys.readouterr().out.splitlines() == [
        "✗ not written yet: replace the ... in ema_update with your lines, run that cell, then this one"]


def test_a_check_leaves_the_global_random_state_alone():
    torch.manual_seed(123)
    before = torch.get_rng_state()
    check("training_step", learner_code("training_step"))
    assert torch.equal(torch.get_rng_state(), before)


def test_bad_calls_are_one_line_config_errors():
    with pytest.raises(ConfigError, match="unknown exercise 'q_smaple'"):
        check_exercise("q_smaple", lambda: None)
    with pytest.raises(ConfigError, match=r"needs schedule=: pass the schedule your q_sample uses"):
        check_exercise("q_sample", lambda x0, t, eps: x0)
    with pytest.raises(ConfigError, match="class-conditional"):
        check_exercise("guided_eps", lambda c, n, w: c, model=UNet(base_channels=8, channel_mults=(1,),
                                                                   attention_levels=(), time_emb_dim=16, img_size=8))


# ---------------------------------------------------------------------------------------------
# The two editions
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", worked_notebooks(), ids=lambda p: p.name[:2])
def test_the_committed_exercise_edition_is_what_the_generator_makes(path):
    committed = REPO_ROOT / "exercises" / path.name
    assert committed.exists(), f"run python tools/make_exercises.py to write {committed.name}"
    assert committed.read_text(encoding="utf-8") == render(path), "stale: run python tools/make_exercises.py"


def test_no_exercise_notebook_without_a_worked_one():
    assert sorted(p.name for p in (REPO_ROOT / "exercises").glob("0*.ipynb")) == [p.name for p in worked_notebooks()]


@pytest.mark.parametrize("path", worked_notebooks(), ids=lambda p: p.name[:2])
def test_every_blank_is_checked_and_the_exercise_edition_has_no_answers_or_outputs(path):
    worked = nbformat.read(path, as_version=4)
    code = [c.source for c in worked.cells if c.cell_type == "code"]
    for i, source in enumerate(code):
        if BEGIN in source:
            defined = [n for n, where in WHERE.items() if where == path.name[:2] and defines(source, n)]
            later = "\n".join(c for c in code[i + 1:] if c.startswith("# NBVAL_CHECK_OUTPUT"))
            assert defined, f"{path.name}: a blank that no exercise checks: {source[:60]!r}"
            for name in defined:
                assert f'{name} = check_exercise("{name}", {name}' in later, f"{path.name}: {name} is never checked"
    exercise, blanks = exercise_edition(path)
    text = json.dumps(exercise)
    assert BEGIN not in text and END not in text and "NBVAL_CHECK_OUTPUT" not in text
    code_cells = [c for c in exercise.cells if c.cell_type == "code"]
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in code_cells)
    assert f"blob/main/exercises/{path.name}" in exercise.cells[0].source
    assert f"(../notebooks/{path.name})" in exercise.cells[0].source
    assert f"(../exercises/{path.name})" in worked.cells[0].source
    assert blanks == sum(s.count(BEGIN) for s in code)


def test_blanks_become_stubs_that_later_code_can_recognise():
    source = ("x = 1\n### BEGIN SOLUTION\nalpha_bar = torch.cumprod(1 - betas, dim=0)\n### END SOLUTION\n\n"
              "def f(x):\n    # write it\n    ### BEGIN SOLUTION\n    y = x + 1\n    return y\n    ### END SOLUTION\n")
    blanked, n = blank_solutions(source)
    assert n == 2
    assert blanked.split("\n") == [
        "x = 1", "alpha_bar = ...  # ✎ your line here, in place of the ...", "", "def f(x):", "    # write it",
        "    return ...  # ✎ your lines here, in place of this one", ""]
    for bad in ("### BEGIN SOLUTION\nx = 1\n", "x = 1\n### END SOLUTION\n",
                "### BEGIN SOLUTION\nprint(1)\n### END SOLUTION\n", "### BEGIN SOLUTION\n### BEGIN SOLUTION\n"):
        with pytest.raises(MarkerError):
            blank_solutions(bad)


# ---------------------------------------------------------------------------------------------
# The exercise edition runs to the end, blanks and all
# ---------------------------------------------------------------------------------------------
# Read at import, before conftest's fixture clears DIFFUSION_* for each test: CI's quick mode.
_ENV = {key: os.environ.get(key) for key in ("DIFFUSION_PRESET", "DIFFUSION_DATA", "DIFFUSION_EPOCHS",
                                              "DIFFUSION_CACHE_DIR")}
# The worked edition runs at the quick preset's size under nbval; the blank run checks that every cell
# of the exercise edition runs, so it shrinks what only costs time (set right after the config cell).
SMALLER = {
    "03": "config = config.replace(max_images=128, num_epochs=1)   # a blank run: one short epoch",
    "04": "N_SAMPLES = 2                                             # a blank run: two samples",
    "05": "N_EVAL, N_REF, STEP_COUNTS = 8, 64, [5]                   # a blank run: a few samples",
    "06": "N_SEEDS, STEPS, STRENGTHS = 2, 5, [0.5, 1.0]              # a blank run: fewer steps",
    "07": "N_GRID, STEPS, LEVELS = 4, 5, [0, 100]                    # a blank run: fewer images and steps",
}


def kernel_environment() -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    env["DIFFUSION_PRESET"] = _ENV["DIFFUSION_PRESET"] or "quick"
    env["DIFFUSION_EPOCHS"] = _ENV["DIFFUSION_EPOCHS"] or "2"
    local = shared_flowers_parent() / "flowers-102" / "jpg"
    env["DIFFUSION_DATA"] = _ENV["DIFFUSION_DATA"] or (str(local) if local.is_dir() else "synthetic")
    for key in ("DIFFUSION_CACHE_DIR",):
        env.pop(key, None)
        if _ENV[key]:
            env[key] = _ENV[key]
    return env


@pytest.fixture(scope="module")
def blank_run_folder(tmp_path_factory):
    """exercises/ and docs/ side by side, as in the repository, so relative paths resolve; notebook 03's
    checkpoint lands in its outputs/ for 04 and 05, as a learner's would."""
    root = tmp_path_factory.mktemp("blank_run")
    (root / "exercises").mkdir()
    (root / "docs").symlink_to(REPO_ROOT / "docs")
    return root / "exercises"


@pytest.mark.parametrize("path", worked_notebooks(), ids=lambda p: p.name[:2])
def test_the_exercise_edition_runs_to_the_end_with_every_blank_left_blank(path, blank_run_folder):
    from nbclient import NotebookClient

    nb = nbformat.read(REPO_ROOT / "exercises" / path.name, as_version=4)
    if path.name[:2] in SMALLER:
        config_cell = next(i for i, c in enumerate(nb.cells) if "TrainConfig.from_env()" in c.source)
        nb.cells.insert(config_cell + 1, nbformat.v4.new_code_cell(SMALLER[path.name[:2]], id="smaller"))
    NotebookClient(nb, timeout=1200, kernel_name="python3", allow_errors=False,
                   resources={"metadata": {"path": str(blank_run_folder)}}).execute(env=kernel_environment())
    printed = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    sources = "".join(c.source for c in nb.cells)
    assert "Traceback" not in printed and "✓" not in printed
    for name in [n for n in EXERCISES if f'check_exercise("{n}"' in sources]:
        stub = f'"{name} = ..."' if EXERCISES[name].is_value else name
        assert f"✗ not written yet: replace the ... in {stub} with" in printed, name
        if EXERCISES[name].falls_back:
            assert f"using the package's {name}: yours is not written yet" in printed, name


def test_docs_list_every_named_mistake_as_the_registry_has_it():
    """docs/exercises.md's tables are what tools/exercise_table.py writes from the tested registry."""
    from exercise_table import DOC, render

    text = DOC.read_text(encoding="utf-8")
    assert render(text) == text, "stale: run python tools/exercise_table.py"
    for name, ex in EXERCISES.items():
        for mistake in ex.mistakes(context(name)):
            assert f"| `{name}` | `{mistake.key}` |" in text
