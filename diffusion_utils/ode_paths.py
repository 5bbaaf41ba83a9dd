"""The ODE that DDIM, DPM-Solver++ and flow matching all integrate, drawn exactly on 1-D data.

For data with a known density the best possible network is known in closed form, so the sampling
ODE can be drawn without any training. Here the data are a 1-D mixture of Gaussians
x₀ ~ Σₖ wₖ N(μₖ, sₖ²), and a noisy point is xₜ = a·x₀ + b·ε, ε ~ N(0, 1):

- DDPM's path: a = √ᾱₜ, b = √(1 − ᾱₜ); flow matching's: a = 1 − t, b = t.
- Both need only E[x₀ | xₜ] (the ideal denoiser): the ideal ε̂ = (xₜ − a·E[x₀|xₜ])/b and the
  ideal velocity u = (xₜ − E[x₀|xₜ])/t.

Dividing DDPM's xₜ by a + b turns its path into the flow's, xₜ/(a + b) = (1 − t')x₀ + t'ε with
t' = b/(a + b): the two paths have the same marginals, so their ODEs are the same curves in
different coordinates (Gao et al. 2024, "Diffusion meets flow matching"). What differs between
the two families is the parameterisation the network learns and the time grid the samplers walk.
"""

from __future__ import annotations

import os

import torch
from matplotlib.figure import Figure

from .schedule import NoiseSchedule

# A two-flower toy: most mass near -0.5, some near 0.6, both narrow (values in data units).
MEANS, STDS, WEIGHTS = (-0.5, 0.6), (0.08, 0.12), (0.6, 0.4)


def posterior_mean(x_t: torch.Tensor, a, b, means=MEANS, stds=STDS, weights=WEIGHTS) -> torch.Tensor:
    """E[x₀ | xₜ] for xₜ = a·x₀ + b·ε under the mixture; x_t (n,) float64, a, b scalars ≥ 0."""
    mu, s, w = (torch.tensor(v, dtype=torch.float64) for v in (means, stds, weights))
    var = a ** 2 * s ** 2 + b ** 2                                  # xₜ | k ~ N(a μₖ, a²sₖ² + b²)
    log_p = torch.log(w) - 0.5 * torch.log(var) - 0.5 * (x_t[:, None] - a * mu) ** 2 / var
    r = torch.softmax(log_p, dim=1)                                 # p(k | xₜ)
    mean_k = mu + a * s ** 2 * (x_t[:, None] - a * mu) / var        # E[x₀ | xₜ, k]
    return (r * mean_k).sum(dim=1)


def ddim_paths(x_T: torch.Tensor, schedule: NoiseSchedule) -> tuple[torch.Tensor, torch.Tensor]:
    """DDIM (η = 0) through every step with the ideal ε̂: DDPM's ODE, exactly integrated.

    Returns (x, t): x (T + 1, n) from code step T−1 down to the clean sample, t (T + 1,) the code
    steps (−1 for the end). DDIM is exact on a straight x̄ = x/√ᾱ against σ̄ = √(1−ᾱ)/√ᾱ, so with
    every step its only error is that of the denoiser — zero here.
    """
    ab = torch.cat([schedule.alpha_bars.double(), torch.ones(1, dtype=torch.float64)])  # ab[-1] = 1: ᾱ at "t = −1"
    steps = list(range(schedule.n_steps - 1, -2, -1))
    x, xs = x_T.double(), [x_T.double()]
    for t, s in zip(steps[:-1], steps[1:]):
        a, b = ab[t].sqrt(), (1 - ab[t]).sqrt()
        x0 = posterior_mean(x, a, b)
        eps = (x - a * x0) / b                                      # the ideal ε̂
        x = ab[s].sqrt() * x0 + (1 - ab[s]).sqrt() * eps            # DDIM, eq. 12 with η = 0
        xs.append(x)
    return torch.stack(xs), torch.tensor(steps, dtype=torch.float64)


def flow_paths(x_start: torch.Tensor, t_start: float = 1.0, steps: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
    """Euler on dx/dt = u(x, t) with the ideal velocity, from t_start to 0 in ``steps`` steps.

    Returns (x, t): x (steps + 1, n), t (steps + 1,) from t_start down to 0.
    """
    ts = torch.linspace(t_start, 0.0, steps + 1, dtype=torch.float64)
    x, xs = x_start.double(), [x_start.double()]
    for t, t_next in zip(ts[:-1], ts[1:]):
        u = (x - posterior_mean(x, 1 - t, t)) / t                   # u = (xₜ − E[x₀|xₜ]) / t
        x = x + (t_next - t) * u                                    # Euler, Δt < 0
        xs.append(x)
    return torch.stack(xs), ts


def to_flow_coordinates(x: torch.Tensor, t: torch.Tensor, schedule: NoiseSchedule) -> tuple[torch.Tensor, torch.Tensor]:
    """DDPM's (xₜ, code step t) as the flow's (xₜ/(a + b), t' = b/(a + b)), a = √ᾱₜ, b = √(1−ᾱₜ)."""
    ab = torch.cat([schedule.alpha_bars.double(), torch.ones(1, dtype=torch.float64)])
    a, b = ab[t.long()].sqrt(), (1 - ab[t.long()]).sqrt()           # t = −1 indexes the appended 1
    return x / (a + b)[:, None], b / (a + b)


def plot_ode_paths(n: int = 24, seed: int = 0, path: str | os.PathLike | None = None) -> Figure:
    """Left: DDPM's ODE paths in its own coordinates. Right: the same paths in the flow's
    coordinates, with the flow-matching ODE's paths from the same points drawn over them."""
    schedule = NoiseSchedule.linear()
    x_T = torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    x, t = ddim_paths(x_T, schedule)
    xf, tf = to_flow_coordinates(x, t, schedule)
    flow_x, flow_t = flow_paths(xf[0], float(tf[0]))
    fig = Figure(figsize=(10, 3.6))
    left, right = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    left.plot((t + 1).numpy(), x.numpy(), color="tab:blue", lw=0.8)
    left.set(xlabel="paper timestep t (1000 = noise)", ylabel="xₜ",
             title="DDPM's ODE (DDIM with every step)")
    left.invert_xaxis()
    right.plot(tf.numpy(), xf.numpy(), color="tab:blue", lw=2.5, alpha=0.35)
    right.plot(flow_t.numpy(), flow_x.numpy(), color="tab:orange", lw=0.8)
    right.plot([], [], color="tab:blue", lw=2.5, alpha=0.35, label="DDPM's paths, rescaled: xₜ/(√ᾱₜ + √(1−ᾱₜ))")
    right.plot([], [], color="tab:orange", lw=0.8, label="flow matching's ODE from the same points")
    right.set(xlabel="flow time t (1 = noise)", ylabel="xₜ", title="The same curves in the flow's coordinates")
    right.invert_xaxis()
    fig.legend(loc="lower center", ncol=2, fontsize=8, frameon=False)
    for ax in (left, right):
        ax.grid(alpha=0.3)
        for m in MEANS:
            ax.axhline(m, color="grey", lw=0.6, ls=":")
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    if path is not None:
        fig.savefig(path, dpi=100)
    return fig


def ode_gap(n: int = 256, seed: int = 0) -> float:
    """max |DDPM's ODE rescaled − flow matching's ODE| at the end, over ``n`` starting points:
    how far apart the two exactly integrated ODEs land (float64; 1000 Euler steps for the flow)."""
    schedule = NoiseSchedule.linear()
    x_T = torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    x, t = ddim_paths(x_T, schedule)
    xf, tf = to_flow_coordinates(x, t, schedule)
    flow_x, _ = flow_paths(xf[0], float(tf[0]), steps=4000)
    return float((xf[-1] - flow_x[-1]).abs().max())



def plot_path_coefficients(schedule: NoiseSchedule, path: str | os.PathLike | None = None) -> Figure:
    """How much image (a) and noise (b) xₜ = a·x₀ + b·ε holds along each path, against the
    fraction of the way to the noise: DDPM's √ᾱₜ, √(1−ᾱₜ) at t/T and the flow's 1 − t, t."""
    frac = (torch.arange(schedule.n_steps, dtype=torch.float64) + 1) / schedule.n_steps
    ab = schedule.alpha_bars.double()
    fig = Figure(figsize=(6.5, 3.4))
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(frac, ab.sqrt(), color="tab:blue", label="DDPM: image √ᾱₜ")
    ax.plot(frac, (1 - ab).sqrt(), color="tab:blue", ls="--", label="DDPM: noise √(1−ᾱₜ)")
    ax.plot(frac, 1 - frac, color="tab:orange", label="flow: image 1 − t")
    ax.plot(frac, frac, color="tab:orange", ls="--", label="flow: noise t")
    ax.set(xlabel="fraction of the way to the noise (DDPM: t/T, flow: t)", ylabel="coefficient",
           title="xₜ = a·x₀ + b·ε along the two paths")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=100)
    return fig
