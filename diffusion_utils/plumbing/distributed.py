"""Training on several processes: ``torchrun`` and ``DistributedDataParallel`` (DDP).

    torchrun --standalone --nproc_per_node=4 -m diffusion_utils train --preset full

``torchrun`` starts one process per GPU (a *rank*) and tells each its rank through environment
variables; :func:`process_group` joins them (NCCL on CUDA, gloo on the CPU). A plain
``python -m diffusion_utils train`` is one process and none of this runs.

What is global and what is per rank:

- ``batch_size`` is the **global** batch: each of the N ranks trains on ``batch_size / N`` of its
  images, and DDP averages the N gradients, so the step is the step of the whole batch.
- Every rank draws the same shuffle and flips (from the data seed, as ``DistributedSampler`` does
  with ``set_epoch``) and the same timesteps t, noise ε and label drops for the *whole* global
  batch (from the noise seed), and keeps its own slice (:func:`shard_slice`, through the
  ``shard=(rank, N)`` argument of ``epoch_batches``, ``training_pair``, ``diffusion_loss`` and
  ``flow_loss``): rank r takes images
  r·b … (r+1)·b − 1. Ranks never use the same ε, and a run on N processes is the run on one
  process with the same batch — up to float rounding in the gradient all-reduce — so the same
  config means the same optimisation on 1 or N processes, and a checkpoint resumes on any
  number of them. (Drawing only the slice from a per-rank generator would save a few random
  numbers per step, but would make every world size a different run.)
- The EMA, checkpoints, sample grids, progress bar and figures live on rank 0; the other ranks
  wait at a barrier while it writes.
- Ctrl-C (or a NaN) on any rank stops every rank after the same step.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .checks import resolve_device
from .errors import ConfigError

BACKENDS = ("auto", "nccl", "gloo")


@dataclass(frozen=True)
class Ranks:
    """Where this process stands: ``rank`` in 0 … ``world_size`` − 1 (one process: 0 of 1)."""

    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that writes files and shows progress."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        """More than one process."""
        return self.world_size > 1


SINGLE = Ranks()


def current() -> Ranks:
    """This process's :class:`Ranks`: from the initialised process group, else one process."""
    if dist.is_available() and dist.is_initialized():
        return Ranks(dist.get_rank(), dist.get_world_size())
    return SINGLE


def launched_world_size() -> int:
    """The number of processes ``torchrun`` started (its ``WORLD_SIZE``; 1 without torchrun)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        raise ConfigError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not a number; launch with "
                          f"torchrun --nproc_per_node=N, or unset it") from None


def launched_rank() -> int:
    """This process's rank as ``torchrun`` set it (its ``RANK``; 0 without torchrun), known
    before the process group exists."""
    try:
        return int(os.environ.get("RANK", "0")) if launched_world_size() > 1 else 0
    except ValueError:
        raise ConfigError(f"RANK={os.environ['RANK']!r} is not a number; launch with torchrun, or unset it") from None


@contextlib.contextmanager
def process_group(device: str = "auto", backend: str = "auto", timeout_minutes: float = 60):
    """Join ``torchrun``'s process group for the duration; yields this rank's :class:`Ranks`.

    Launched without torchrun (``WORLD_SIZE`` unset or 1) it does nothing and yields
    :data:`SINGLE`. ``backend``: ``"auto"`` (NCCL on CUDA, gloo elsewhere), ``"nccl"`` or
    ``"gloo"``. On CUDA each rank uses GPU ``LOCAL_RANK``. ``timeout_minutes`` bounds how long the
    other ranks wait while rank 0 samples a grid or writes a checkpoint.
    """
    if backend not in BACKENDS:
        raise ConfigError(f"backend must be one of {', '.join(BACKENDS)}; got {backend!r}")
    if launched_world_size() == 1 or current().active:  # one process, or a group someone else set up
        yield current()
        return
    kind = resolve_device(device).type
    if kind == "mps":
        raise ConfigError("several processes need CUDA GPUs or the CPU; MPS trains on one process "
                          "(run python -m diffusion_utils train without torchrun)")
    if backend == "auto":
        backend = "nccl" if kind == "cuda" else "gloo"
    if backend == "nccl" and kind != "cuda":
        raise ConfigError(f"the NCCL backend needs CUDA GPUs but training runs on {kind}; "
                          f"use --backend gloo (or auto)")
    if kind == "cuda":
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(f"this rank needs GPU {local_rank} but only {torch.cuda.device_count()} "
                              f"are visible; lower --nproc_per_node")
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend, timeout=datetime.timedelta(minutes=timeout_minutes))
    try:
        yield current()
    finally:
        dist.destroy_process_group()


def shard_slice(n: int, shard: tuple[int, int]) -> slice:
    """The rows of a global batch of ``n`` that this process computes.

    ``shard`` is ``(rank, world_size)``: this process's rank in 0 … world_size − 1 and the number
    of processes (``(0, 1)``: one process, which computes all ``n`` rows). Rank r takes rows
    r·n/N … (r+1)·n/N − 1 of the global batch. ``n`` must split evenly: :func:`shard_size`
    refuses, before a run starts, a batch that does not. Every rank draws its random numbers (t, ε, label
    drops, crops) for all ``n`` rows and keeps this slice, so N processes draw what one would.
    """
    rank, world_size = shard
    per_rank = n // world_size
    return slice(rank * per_rank, (rank + 1) * per_rank)


def shard_size(batch: int, ranks: Ranks) -> int:
    """Images per rank in a global batch of ``batch``: ``batch / world_size``, which must be whole."""
    if batch % ranks.world_size:
        raise ConfigError(f"the batch of {batch} images does not split evenly across {ranks.world_size} "
                          f"processes; use a batch_size divisible by {ranks.world_size}, or another "
                          f"--nproc_per_node")
    return batch // ranks.world_size


def mean_over_ranks(value: torch.Tensor, ranks: Ranks) -> torch.Tensor:
    """The mean of a scalar tensor over all ranks (itself for one process). A NaN on any rank
    makes the mean NaN everywhere, so every rank stops at the same step."""
    if not ranks.active:
        return value
    total = value.detach().float().clone()
    dist.all_reduce(total)
    return total / ranks.world_size


def any_rank(flag: bool, ranks: Ranks, device: torch.device) -> bool:
    """True on every rank when ``flag`` is true on at least one (a Ctrl-C, a NaN weight)."""
    if not ranks.active:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def barrier(ranks: Ranks) -> None:
    """Wait until every rank arrives (nothing for one process)."""
    if ranks.active:
        dist.barrier()


@contextlib.contextmanager
def main_first(ranks: Ranks):
    """Rank 0 runs the block first, the others after it: e.g. decoding a dataset into the cache,
    which the other ranks then read instead of all writing it at once."""
    if not ranks.is_main:
        barrier(ranks)
    try:
        yield
    finally:
        if ranks.is_main:
            barrier(ranks)


def wrap(model: torch.nn.Module, device: torch.device, ranks: Ranks) -> torch.nn.Module:
    """``model`` in ``DistributedDataParallel`` when there are several ranks (else ``model``).
    DDP averages the gradients over the ranks during ``backward()``."""
    if not ranks.active:
        return model
    return torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None)


__all__ = ["Ranks", "SINGLE", "BACKENDS", "current", "launched_world_size", "launched_rank", "process_group",
           "shard_slice", "shard_size", "mean_over_ranks", "any_rank", "barrier", "main_first", "wrap"]
