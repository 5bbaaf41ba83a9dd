"""Comparing samplers: the same model and seeds through several samplers and step counts, with
wall time and KID against real images for each. Used by notebook 05 and ``benchmarks/``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from ..plumbing.pixels import draw_in_batches
from ..sampling import sample
from ..schedule import NoiseSchedule
from .metrics import KIDResult, compute_kid


@dataclass
class SamplerRun:
    """One sampler at one step count: its samples, its cost and its KID against the reference."""

    sampler: str
    steps: int
    images: torch.Tensor  # uint8 (n, 3, H, W)
    seconds: float  # wall time for all n images (model calls and update arithmetic)
    kid: KIDResult

    @property
    def seconds_per_image(self) -> float:
        return self.seconds / len(self.images)

    @property
    def label(self) -> str:
        return f"{self.sampler.upper() if self.sampler != 'dpmpp' else 'DPM-Solver++'}-{self.steps}"

    def matches(self, reference: "SamplerRun") -> bool:
        """True when this KID is within one standard deviation of ``reference``'s KID."""
        return abs(self.kid.mean - reference.kid.mean) <= reference.kid.std


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def evaluate_samplers(model: torch.nn.Module, schedule: NoiseSchedule, reference: torch.Tensor,
                      settings: list[tuple[str, int]], n: int, feature_extractor=None, *,
                      seed: int = 0, batch_size: int = 64, eta: float = 0.0, bf16: bool = True,
                      progress: bool = True) -> list[SamplerRun]:
    """Sample ``n`` images with each ``(sampler, steps)`` in ``settings``; time it; compute KID.

    Every setting starts from the same noise (batch b uses the generator seeded ``seed + b``), so
    differences come from the sampler, not from luck. ``reference``: real images, uint8 or
    [-1, 1] floats (N, 3, H, W) at the model's resolution. ``feature_extractor``: as for
    :func:`~diffusion_utils.evaluation.metrics.compute_kid` (``None`` = InceptionV3).
    """
    device = next(model.parameters()).device
    runs = []
    for sampler, steps in tqdm(settings, desc="samplers", disable=not progress):

        def draw(first: int, size: int) -> torch.Tensor:
            return sample(model, schedule, size, sampler=sampler, steps=steps, eta=eta, bf16=bf16,
                          generator=torch.Generator().manual_seed(seed + first // batch_size), progress=False)

        _synchronize(device)
        start = time.perf_counter()
        images = draw_in_batches(draw, n, batch_size)
        _synchronize(device)
        seconds = time.perf_counter() - start
        runs.append(SamplerRun(sampler, steps, images, seconds, compute_kid(images, reference, feature_extractor)))
    return runs


def fewest_calls_matching(rows: list[dict], reference: str = "ddpm-1000") -> dict[str, int | None]:
    """For each sampler of a measured curve (``benchmarks/bench_samplers.py``'s rows: ``setting``,
    ``sampler``, ``steps``, ``kid``), the fewest network calls whose KID lies within the
    ``reference`` setting's KID ± its std; None where no tested count does. The same rule as
    :meth:`SamplerRun.matches`."""
    ref = next(r for r in rows if r["setting"] == reference)
    fewest = {}
    for row in sorted(rows, key=lambda r: r["steps"]):
        if row["setting"] != reference:
            fewest.setdefault(row["sampler"], None)
            if fewest[row["sampler"]] is None and abs(row["kid"] - ref["kid"]) <= ref["kid_std"]:
                fewest[row["sampler"]] = row["steps"]
    return fewest
