"""Shared fixtures: tiny configs and models, an isolated environment, and the shared Flowers102 copy.

Everything here is sized for a 2-core CPU: 16 px images, an 8-channel two-level UNet, 20–50
diffusion steps and a few dozen synthetic images, so the whole suite runs in a few minutes.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

from diffusion_utils import NoiseSchedule, TrainConfig, UNet, load_dataset, train

# The models here are tiny: one thread runs them about twice as fast as two (no OpenMP barriers),
# and leaves the second core to whatever else the machine is doing.
torch.set_num_threads(1)

REPO_ROOT = Path(__file__).resolve().parents[1]
FLOWERS_ENV = "DIFFUSION_TEST_FLOWERS_ROOT"  # a folder that contains flowers-102/

# The smallest config that still exercises every part of the model: two resolution levels,
# attention on the coarse one, dropout, warm-up, an EMA and a fast sampler for the epoch grids.
TINY = dict(
    data="synthetic", img_size=16, max_images=32, n_steps=50,
    base_channels=8, channel_mults=(1, 2), num_res_blocks=1, attention_levels=(1,),
    time_emb_dim=16, dropout=0.1, batch_size=16, num_epochs=1, lr=1e-3, lr_warmup_steps=2,
    ema_decay=0.9, seed=0, device="cpu", sample_every=1, sample_grid_n=4,
    sampler="ddim", sample_steps=5,
    bf16=False,  # float32 on every CPU kind: tests compare with float32 arithmetic (test_precision: bf16)
)


def tiny_config(**overrides) -> TrainConfig:
    """A :class:`TrainConfig` small enough for a unit test, with ``overrides`` applied."""
    return TrainConfig(**{**TINY, **overrides})


def perturb_zero_init(model: nn.Module, seed: int = 0, std: float = 0.2) -> nn.Module:
    """Give every all-zero parameter random values: the zero-initialised layers (each residual
    block's last conv, each attention projection) and the GroupNorm biases. Then the network's
    output depends on every input, t included."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.copy_(torch.randn(p.shape, generator=gen) * std)
    return model


def tiny_unet(img_size: int = 16, seed: int = 0, **kwargs) -> UNet:
    """A random tiny UNet (zero-init layers perturbed), in eval mode."""
    torch.manual_seed(seed)
    arch = dict(base_channels=8, channel_mults=(1, 2), num_res_blocks=1, attention_levels=(1,),
                time_emb_dim=16, dropout=0.0, img_size=img_size)
    model = UNet(**{**arch, **kwargs})
    return perturb_zero_init(model, seed).eval()


@pytest.fixture
def make_config():
    """Factory fixture: ``make_config(**overrides)`` → a tiny :class:`TrainConfig`."""
    return tiny_config


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch, tmp_path):
    """No test writes caches outside its tmp_path, and no outer DIFFUSION_* setting leaks in."""
    monkeypatch.setenv("DIFFUSION_CACHE_DIR", str(tmp_path / "_cache"))
    monkeypatch.delenv("DIFFUSION_PRESET", raising=False)
    monkeypatch.delenv("DIFFUSION_DATA", raising=False)
    monkeypatch.delenv("DIFFUSION_EPOCHS", raising=False)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """One tiny training run (2 epochs × 2 steps), shared read-only by checkpoint, CLI and
    sampling tests. Tests that change the checkpoint must work on a copy."""
    out = tmp_path_factory.mktemp("trained")
    config = tiny_config(num_epochs=2)
    dataset = load_dataset("synthetic", config.img_size, max_images=config.max_images, seed=0)
    return train(config, out, dataset=dataset, progress=False)


@pytest.fixture
def checkpoint_copy(trained_run, tmp_path) -> Path:
    """A private copy of the shared run's checkpoint, in its own folder."""
    folder = tmp_path / "run"
    folder.mkdir()
    return Path(shutil.copy2(trained_run.checkpoint_path, folder / trained_run.checkpoint_path.name))


@pytest.fixture
def schedule20() -> NoiseSchedule:
    """A 20-step linear schedule with a larger beta_end, so 20 steps still reach pure noise."""
    return NoiseSchedule.linear(20, 1e-3, 0.3)


def shared_flowers_parent() -> Path:
    """The folder that contains the shared ``flowers-102/`` (read-only: never write into it)."""
    env = os.environ.get(FLOWERS_ENV)
    return Path(env).expanduser() if env else REPO_ROOT.parent / "shared" / "data"


@pytest.fixture
def flowers_root() -> Path:
    """The shared 64 px Flowers102 copy's parent folder; skips the test when it is absent."""
    parent = shared_flowers_parent()
    base = parent / "flowers-102"
    needed = [base / "jpg", base / "imagelabels.mat", base / "setid.mat"]
    missing = [str(p) for p in needed if not p.exists()]
    if missing:
        pytest.skip(f"shared Flowers102 copy not found (missing {', '.join(missing)}); "
                    f"set {FLOWERS_ENV} to the folder that contains flowers-102/")
    return parent
