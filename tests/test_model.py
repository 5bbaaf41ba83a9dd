"""The noise predictor ε_θ(xₜ, t): shapes, time conditioning and size validation."""

from __future__ import annotations

import pytest
import torch

from diffusion_utils import ConfigError, TrainConfig, UNet, count_parameters, sinusoidal_embedding
from diffusion_utils.model import ResidualBlock, group_norm

from conftest import perturb_zero_init, tiny_unet


@pytest.mark.parametrize("img_size, mults", [(32, (1, 2)), (64, (1, 2, 2))])
@pytest.mark.parametrize("batch", [1, 3])
def test_output_shape_equals_input_shape(img_size, mults, batch):
    """ε̂ has the shape of xₜ, at 32 and 64 px, for batch sizes 1 and 3."""
    model = tiny_unet(img_size, channel_mults=mults, attention_levels=(len(mults) - 1,))
    x = torch.randn(batch, 3, img_size, img_size)
    with torch.no_grad():
        out = model(x, torch.arange(batch) * 100)
    assert out.shape == x.shape
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


def test_t_can_be_a_tensor_or_an_int():
    """t given as an int means the same t for every image; as (B,) one t per image."""
    model = tiny_unet(16)
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        as_int = model(x, 7)
        as_tensor = model(x, torch.tensor([7, 7, 7]))
        as_scalar_tensor = model(x, torch.tensor(7))
        mixed = model(x, torch.tensor([7, 300, 7]))
    torch.testing.assert_close(as_int, as_tensor)
    torch.testing.assert_close(as_scalar_tensor, as_tensor)
    torch.testing.assert_close(mixed[[0, 2]], as_tensor[[0, 2]])  # per-image: other images unaffected
    assert not torch.allclose(mixed[1], as_tensor[1])


def test_image_size_the_unet_cannot_halve_raises_config_error():
    """A 3-level UNet halves twice, so sizes must be divisible by 4: at construction and on forward."""
    with pytest.raises(ConfigError, match="img_size"):
        UNet(base_channels=8, channel_mults=(1, 2, 2), num_res_blocks=1, time_emb_dim=16, img_size=30)
    model = UNet(base_channels=8, channel_mults=(1, 2, 2), num_res_blocks=1, time_emb_dim=16, img_size=32)
    with pytest.raises(ConfigError, match="divisible by 4"):
        model(torch.randn(1, 3, 30, 30), 0)
    with pytest.raises(ConfigError):
        model(torch.randn(1, 3, 32, 34), 0)
    with torch.no_grad():  # any divisible size works, not only the recorded img_size
        assert model(torch.randn(1, 3, 16, 16), 0).shape == (1, 3, 16, 16)


def test_zero_initialised_blocks_make_the_fresh_net_ignore_t():
    """Each residual block's last conv and each attention projection start at zero, so a fresh
    UNet is a fixed function of x alone (every block is its skip path): t has no effect yet."""
    torch.manual_seed(0)
    model = UNet(base_channels=8, channel_mults=(1, 2), num_res_blocks=1, attention_levels=(1,),
                 time_emb_dim=16, img_size=16).eval()
    for name, p in model.named_parameters():
        if name.endswith(("res.conv2.weight", "attn.proj.weight", "mid1.conv2.weight", "mid_attn.proj.weight")):
            assert not p.any(), name
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(model(x, 0), model(x, 999))


def test_output_depends_on_t_after_perturbing_zero_init_layers():
    """With the zero-initialised layers given weights, different t give different outputs."""
    model = tiny_unet(16)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        outs = [model(x, t) for t in (0, 1, 500, 999)]
    for i in range(len(outs)):
        for j in range(i + 1, len(outs)):
            assert (outs[i] - outs[j]).abs().max() > 1e-4, (i, j)


@pytest.mark.parametrize("channels", [8, 16, 32, 64, 128])
def test_every_residual_block_width_responds_to_the_time_embedding(channels):
    """The time embedding is added per channel just before a GroupNorm. With one channel per
    group that norm would subtract it again; every width must keep ≥ 2 channels per group, so the
    block's output changes with the embedding (the quick preset's 32-channel level once did not)."""
    norm = group_norm(channels)
    assert channels % norm.num_groups == 0 and channels // norm.num_groups >= 2
    if channels >= 64:
        assert norm.num_groups == 32  # the usual 32 groups where the layer is wide enough
    torch.manual_seed(0)
    block = perturb_zero_init(ResidualBlock(channels, channels, time_emb_dim=16)).eval()
    x, emb = torch.randn(2, channels, 8, 8), torch.randn(2, 16)
    with torch.no_grad():
        assert (block(x, emb) - block(x, -emb)).abs().max() > 1e-2


def test_output_depends_on_t_after_one_optimiser_step():
    """One gradient step on the ε-prediction loss moves the zero-initialised layers off zero,
    after which the output depends on t."""
    torch.manual_seed(0)
    model = UNet(base_channels=8, channel_mults=(1, 2), num_res_blocks=1, attention_levels=(1,),
                 time_emb_dim=16, img_size=16)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, t = torch.randn(4, 3, 16, 16), torch.tensor([3, 30, 300, 900])
    loss = torch.nn.functional.mse_loss(model(x, t), torch.randn_like(x))
    loss.backward()
    opt.step()
    model.eval()
    with torch.no_grad():
        assert (model(x, 0) - model(x, 999)).abs().max() > 1e-4


def test_from_config_builds_the_described_network():
    """UNet.from_config follows the config: img_size recorded, wider base → more parameters."""
    small = UNet.from_config(TrainConfig(img_size=16, base_channels=8, channel_mults=(1, 2),
                                         num_res_blocks=1, attention_levels=(1,), time_emb_dim=16))
    wide = UNet.from_config(TrainConfig(img_size=16, base_channels=16, channel_mults=(1, 2),
                                        num_res_blocks=1, attention_levels=(1,), time_emb_dim=16))
    assert small.img_size == 16 and small.in_channels == 3
    assert 0 < count_parameters(small) < count_parameters(wide)


def test_sinusoidal_embedding_shape_and_distinct_codes():
    """(B,) → (B, dim), values [sin, cos] in [-1, 1]; t = 0 is [0…0, 1…1]; all 1000 codes distinct."""
    t = torch.arange(1000)
    emb = sinusoidal_embedding(t, 32)
    assert emb.shape == (1000, 32) and emb.dtype == torch.float32
    assert emb.abs().max() <= 1.0
    torch.testing.assert_close(emb[0], torch.cat([torch.zeros(16), torch.ones(16)]))
    # sin² + cos² = 1 for each frequency
    torch.testing.assert_close(emb[:, :16] ** 2 + emb[:, 16:] ** 2, torch.ones(1000, 16))
    distances = torch.cdist(emb, emb) + torch.eye(1000) * 1e9
    assert distances.min() > 1e-2, "two timesteps share (almost) the same code"
    # neighbouring timesteps are closer than distant ones
    assert torch.dist(emb[500], emb[501]) < torch.dist(emb[500], emb[900])


def test_perturb_helper_touches_only_zero_layers():
    """Sanity check of the test helper itself: non-zero parameters are left as they were."""
    torch.manual_seed(0)
    model = UNet(base_channels=8, channel_mults=(1, 2), num_res_blocks=1, time_emb_dim=16, img_size=16)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    perturb_zero_init(model)
    after = model.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed and all(not before[k].any() for k in changed)
