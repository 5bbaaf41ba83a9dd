"""The reverse process: turning noise into images with a trained network, through one loop.

:func:`sample` runs any sampler of :mod:`~diffusion_utils.samplers` — ``"ddpm"`` (Ho et al.
2020, Algorithm 2: T ancestral steps, the reference), ``"ddim"`` (Song et al. 2021), ``"dpmpp"``
(DPM-Solver++(2M), Lu et al. 2022) for a diffusion model, ``"euler"`` and ``"heun"`` for a flow
model (:mod:`~diffusion_utils.flow`) — the same way:

    x ← x_T ~ N(0, I)
    for each t in sampler.timesteps(steps):
        x, x̂₀ ← sampler.step(x, t, t_next, network(x, t))

:func:`sample_trajectory` keeps the way there (the GIF, the denoising slider).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from .flow import FlowPath
from .guidance import GuidedModel, check_guidance_scale, class_ids
from .plumbing.checks import as_int, check_sampler_steps
from .plumbing.errors import ConfigError
from .plumbing.pixels import to_uint8
from .plumbing.precision import bf16_available
from .samplers import DDPM, DIFFUSION_SAMPLERS, FLOW_SAMPLERS, SPACINGS, make_sampler, timesteps_for
from .schedule import NoiseSchedule


@dataclass
class Trajectory:
    """Intermediate states of one sampling run, for animations and the denoising slider.

    Attributes:
        timesteps: the paper's t of each frame, from T (pure noise) down to 0 (the final sample);
            for a flow model the time t ∈ [0, 1] itself, from 1 down to 0.
        frames: uint8 tensor (F, N, C, H, W) — the noisy images xₜ, on the CPU.
        x0_frames: uint8 tensor (F, N, C, H, W) — the network's guess x̂₀ of the clean image at
            each frame (for the last frame, the sample itself).
        images: the final samples (N, C, H, W) in [-1, 1], as :func:`sample` returns them.

    :func:`sample_trajectory` makes one.
    """

    timesteps: list
    frames: torch.Tensor
    x0_frames: torch.Tensor
    images: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.timesteps)


def predict_eps_x0(model: torch.nn.Module, schedule: NoiseSchedule, x_t: torch.Tensor, t: torch.Tensor,
                   bf16: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Run a diffusion network once and return (ε̂, x̂₀), both float32 of x_t's shape.

    Whatever the network was trained to output (``model.prediction``: ``"eps"`` or ``"v"``), the
    schedule's :meth:`~NoiseSchedule.eps_and_x0` turns it into the noise estimate ε̂ and the clean
    image estimate x̂₀. With ``bf16`` the network runs in bfloat16 autocast.
    """
    with torch.autocast(x_t.device.type, dtype=torch.bfloat16, enabled=bf16):
        output = model(x_t, t).float()
    return schedule.eps_and_x0(output, x_t, t, getattr(model, "prediction", "eps"))


@torch.no_grad()
def p_sample(model: torch.nn.Module, schedule: NoiseSchedule, x_t: torch.Tensor, t,
             noise: torch.Tensor | None = None, clip_x0: bool = True) -> torch.Tensor:
    """One reverse step xₜ → xₜ₋₁ ~ p_θ(xₜ₋₁ | xₜ) = N(μ_θ, β̃ₜ I)   (Ho et al. Algorithm 2).

    x_t: (B, C, H, W); t: int or (B,) code timesteps in [0, T-1]; noise: z ~ N(0, I) of x_t's
    shape (drawn with ``torch.randn_like`` if None; ignored at t = 0, where no noise is added).
    ``clip_x0``: as :class:`~diffusion_utils.samplers.DDPM`.
    """
    t = torch.as_tensor(t, device=x_t.device).long().reshape(-1).expand(x_t.shape[0])
    output = model(x_t, t).float()
    ddpm = DDPM(schedule, getattr(model, "prediction", "eps"), clip_x0)
    return ddpm.step(x_t, t, t - 1, output, noise=noise)[0]


def is_flow_model(model: torch.nn.Module) -> bool:
    """True for a network trained with the flow objective (:mod:`~diffusion_utils.flow`)."""
    return getattr(model, "objective", "diffusion") == "flow"


# ---------------------------------------------------------------------------------------------
# The sampling loop
# ---------------------------------------------------------------------------------------------
def check_sampling_options(model: torch.nn.Module, schedule, n: int, *,
                           sampler: str = "ddpm", steps: int | None = None, eta: float = 0.0,
                           classes=None, guidance_scale: float | None = None, t_start: int | None = None,
                           names: dict[str, str] | None = None) -> tuple[int, int, int | None, torch.Tensor | None]:
    """Check :func:`sample`'s options before any work; returns ``(n, steps, t_start, class_ids)``
    with the defaults filled in (``class_ids`` (n,) or None), or raises a one-line
    :class:`ConfigError`. ``names`` renames the options in the messages (the CLI passes its flags,
    e.g. ``{"eta": "--eta"}``), as :func:`~diffusion_utils.config.as_int` takes a name."""
    name = {key: key for key in ("n", "steps", "eta", "classes", "guidance_scale", "t_start", "sampler")} | (names or {})
    n = as_int(name["n"], n, 1)
    flow = is_flow_model(model)
    if flow and sampler not in FLOW_SAMPLERS:
        raise ConfigError(f"{name['sampler']} {sampler!r} is a diffusion sampler; this is a flow model: "
                          f"use {' or '.join(FLOW_SAMPLERS)}")
    if not flow and sampler in FLOW_SAMPLERS:
        raise ConfigError(f"{name['sampler']} {sampler!r} samples flow models; this is a diffusion model: "
                          f"use one of {DIFFUSION_SAMPLERS}")
    if flow != isinstance(schedule, FlowPath):
        raise ConfigError("the schedule does not match the model: a flow model samples with its FlowPath and a "
                          "diffusion model with its NoiseSchedule (load_model and load_pretrained return the right one)")
    if flow:
        if t_start is not None:
            raise ConfigError(f"{name['t_start']} (editing part-way down) is for diffusion models; "
                              f"a flow model samples from pure noise")
        steps = check_sampler_steps(sampler, steps, 1000, name["steps"])
    else:
        T = schedule.n_steps
        if t_start is None:
            t_start = T - 1
        elif not isinstance(t_start, int) or not 0 <= t_start < T:
            raise ConfigError(f"{name['t_start']} must be an integer code timestep in [0, {T - 1}]; got {t_start!r}")
        steps = check_sampler_steps(sampler, steps, t_start + 1, name["steps"])  # ddpm: every one of t_start + 1
    if not 0.0 <= eta <= 1.0:
        raise ConfigError(f"{name['eta']} must be in [0, 1]; got {eta}")
    if guidance_scale is not None and classes is None:
        raise ConfigError(f"{name['guidance_scale']} needs {name['classes']}: say which class to guide towards")
    if guidance_scale is not None:
        check_guidance_scale(guidance_scale)
    return n, steps, t_start, None if classes is None else class_ids(classes, model, n)


@torch.no_grad()
def sample(model: torch.nn.Module, schedule, n: int, *, img_size: int | None = None,
           # the sampler and its knobs
           sampler: str = "ddpm", steps: int | None = None, eta: float = 0.0, spacing: str = "trailing",
           clip_x0: bool = True,
           # randomness
           generator: torch.Generator | None = None, x_T: torch.Tensor | None = None,
           # classifier-free guidance
           classes=None, guidance_scale: float | None = None,
           # editing: start part-way down, change the state after each step
           t_start: int | None = None, after_step: Callable[[torch.Tensor, int], torch.Tensor] | None = None,
           # where and how it runs
           device=None, bf16: bool = True, progress: bool = True) -> torch.Tensor:
    """Generate ``n`` images with the chosen sampler. Returns images (n, C, H, W) in [-1, 1].

    For the intermediate states as well (an animation, the denoising slider), call
    :func:`sample_trajectory` with the same options.

    Args:
        model: the trained network (put in eval mode here); its device is used unless ``device``.
        schedule: what it was trained with: a :class:`NoiseSchedule` for a diffusion model, a
            :class:`~diffusion_utils.flow.FlowPath` for a flow model.
        n: number of images.
        img_size: H = W of the images (default: ``model.img_size``).

        sampler: ``"ddpm"`` (T ancestral steps), ``"ddim"`` or ``"dpmpp"`` for a diffusion
            model; ``"euler"`` or ``"heun"`` for a flow model (:mod:`~diffusion_utils.samplers`).
        steps: network calls per image (default: T for ddpm, 50 for the others). For ``ddpm`` it
            must be T (t_start + 1 with ``t_start``); the ancestral sampler cannot skip steps.
        eta: DDIM only: 0 = deterministic, 1 = DDPM-like noise.
        spacing: which timesteps a fast diffusion sampler visits (:mod:`~diffusion_utils.samplers`).
        clip_x0: diffusion samplers clamp the predicted x̂₀ to [-1, 1] at every step.

        generator: a CPU ``torch.Generator``; all randomness (the starting noise and every
            step's noise) is drawn from it on the CPU, so a seed gives the same images on any
            device.
        x_T: a starting noise batch (n, C, H, W) instead of drawing one.

        classes: for a class-conditional model, one class (a name from ``model.class_names`` or
            an id) for all images, or one per image. None: unconditional samples (the "no class"
            token).
        guidance_scale: classifier-free guidance w (see :mod:`~diffusion_utils.guidance`):
            ε̂ = ε_∅ + w (ε_c − ε_∅) (the same mix of v or of the velocity); 0 is unconditional,
            1 (the default) plain conditional, > 1 more typical and less diverse. Needs ``classes``.

        t_start: (diffusion) start part-way down instead of at pure noise: ``x_T`` is then an
            image noised to this code timestep (in [0, T−1]; default T−1, pure noise), and the
            ``steps`` timesteps are spread over [0, t_start] with the same spacing rule. ``ddpm``
            takes all t_start + 1 of them. SDEdit (:mod:`~diffusion_utils.editing`) starts here.
        after_step: ``after_step(x, t)`` is called after every step with the new state and the
            time it reached (code timestep, −1 for the final image; for a flow model t, 0 at the
            end) and returns the state to continue from. Inpainting uses it.

        device: where to run (default: the model's device).
        bf16: run the network in bfloat16 autocast on GPUs with native support (the update
            arithmetic stays float32).
        progress: show a tqdm progress bar.
    """
    return _run(model, schedule, n, None, img_size=img_size, sampler=sampler, steps=steps, eta=eta,
                spacing=spacing, clip_x0=clip_x0, generator=generator, x_T=x_T, classes=classes,
                guidance_scale=guidance_scale, t_start=t_start, after_step=after_step, device=device,
                bf16=bf16, progress=progress)


def sample_trajectory(model: torch.nn.Module, schedule, n: int, *, frames: int | None = None,
                      **options) -> "Trajectory":
    """Sample like :func:`sample` (the same ``options``) and keep the way there: a
    :class:`Trajectory` of ``frames`` evenly spaced states (default: every step), always the
    first (pure noise) and the last, whose ``images`` are what :func:`sample` returns."""
    recorder = _TrajectoryRecorder(frames)
    with torch.no_grad():
        images = _run(model, schedule, n, recorder, **options)
    return recorder.result(images)


def _run(model, schedule, n, recorder, *, img_size=None, sampler="ddpm", steps=None, eta=0.0, spacing="trailing",
         clip_x0=True, generator=None, x_T=None, classes=None, guidance_scale=None, t_start=None,
         after_step=None, device=None, bf16=True, progress=True) -> torch.Tensor:
    """:func:`sample`'s loop; ``recorder`` (a :class:`_TrajectoryRecorder` or None) sees every state."""
    n, steps, t_start, ids = check_sampling_options(model, schedule, n, sampler=sampler, steps=steps, eta=eta,
                                                    classes=classes, guidance_scale=guidance_scale, t_start=t_start)
    prediction = getattr(model, "prediction", "eps")
    if ids is not None:
        model = GuidedModel(model, ids, 1.0 if guidance_scale is None else guidance_scale)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    bf16 = bf16 and bf16_available(device)
    img_size = img_size or model.img_size
    shape = (n, getattr(model, "in_channels", 3), img_size, img_size)
    if x_T is None:
        x_T = torch.randn(shape, generator=generator)
    elif tuple(x_T.shape) != shape:
        raise ConfigError(f"x_T must have shape {shape}; got {tuple(x_T.shape)}")

    def draw_noise() -> torch.Tensor:  # every step's noise from the CPU generator, so seeds agree across devices
        return torch.randn(shape, generator=generator).to(device)

    solver = make_sampler(sampler, schedule, prediction, clip_x0=clip_x0, eta=eta, spacing=spacing, noise=draw_noise)
    ts = solver.timesteps(steps, t_start)

    def network(x, t):  # one call: (B,) int64 code timesteps for diffusion, float t ∈ [0, 1] for flow
        t_batch = torch.full((n,), t, device=device, dtype=torch.float32 if isinstance(t, float) else torch.long)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            return model(x, t_batch).float()

    if recorder is not None:
        recorder.start(len(ts) + 1)
    was_training = model.training
    model.eval()
    try:
        x = x_T.to(device=device, dtype=torch.float32)
        for i, t in enumerate(tqdm(ts, desc=f"{sampler} sampling", disable=not progress, leave=False)):
            t_next = ts[i + 1] if i + 1 < len(ts) else solver.end
            output = network(x, t)
            x_new, x0_hat = solver.step(x, t, t_next, output)
            if solver.corrects(i):  # Heun: a second call at the end of the step
                x_new = solver.correct(x, t, t_next, output, network(x_new, t_next))
            if after_step is not None:
                x_new = after_step(x_new, t_next)
            if recorder is not None:
                recorder.add(t + 1 if isinstance(t, int) else t, x, x0_hat)
            x = x_new
    finally:
        model.train(was_training)
    images = x.clamp(-1, 1)
    if recorder is not None:
        recorder.add(0, images, images)
    return images


class _TrajectoryRecorder:
    """Keeps up to ``keep`` of ``total`` frames, evenly spaced, as uint8 on the CPU."""

    def __init__(self, keep: int | None):
        self.keep = keep
        self.index = 0
        self.timesteps, self.frames, self.x0_frames = [], [], []

    def start(self, total: int) -> None:
        """``total`` states will come (the steps and the final image)."""
        keep = total if self.keep is None else max(2, min(self.keep, total))
        self.keep_indices = set(np.round(np.linspace(0, total - 1, keep)).astype(int).tolist())

    def add(self, paper_t, x: torch.Tensor, x0: torch.Tensor) -> None:
        if self.index in self.keep_indices:
            self.timesteps.append(paper_t)
            self.frames.append(to_uint8(x))
            self.x0_frames.append(to_uint8(x0))
        self.index += 1

    def result(self, images: torch.Tensor) -> Trajectory:
        return Trajectory(self.timesteps, torch.stack(self.frames), torch.stack(self.x0_frames), images)
