"""The presets: named sets of :class:`~diffusion_utils.TrainConfig` fields that differ from the defaults.

``TrainConfig.preset(name, **overrides)`` builds one. ``full`` is the defaults themselves (the
original design, a GPU job); the others are sized for a 2-core CPU, each with the measurement
that chose it beside its values. Only the fields a preset changes are listed.
"""

from __future__ import annotations

PRESETS: dict[str, dict] = {
    # The original design: 64 px, 300 epochs, 1000-step ancestral sampling. A GPU job.
    "full": {},
    # A real result on a 2-core CPU in minutes (its 20 480 images train in ~3½ min at 100 images/s
    # on 2 Intel Xeon cores, docs/benchmarks.md). Every cut is chosen for wall time: 32 px is 4×
    # fewer pixels than 64 px; a 3-level UNet with one residual block per level (1.2 M parameters)
    # costs ~30× less per image than the full model; 2 048 images × 10 epochs = 20 480 images.
    # The rest was chosen by measurement
    # (benchmarks/bench_recipes.py: each recipe trained for the same ~6 CPU minutes, ~19 500 images,
    # then Inception KID of 500 DPM-Solver++ samples; the table is in docs/recipes.md):
    # - batches of 16, lr 2e-3: 1 280 small steps instead of 320 at batch 64 for the same CPU time
    #   (the CPU's images/s hardly depends on the batch here): KID 0.228 → 0.147;
    # - v-prediction with min-SNR weighting (γ = 5): 0.147 → 0.117 (1 000 samples: 0.1175), and
    #   natural colours instead of saturated ones (min-SNR alone, with ε: 0.151);
    # - a short EMA (power-function, capped at 0.99: the last ~100 steps) suits the short run;
    #   a longer one (0.165), batch 8 (0.149), a cosine lr decay (0.149) and a wider UNet (0.173)
    #   did not help; the cosine noise schedule matched the KID (0.116) with a far worse FID.
    # DDIM with 50 steps draws the per-epoch grids 20× faster than the 1000-step loop (notebook 05).
    "quick": dict(
        img_size=32,
        max_images=2048,
        base_channels=32,
        channel_mults=(1, 2, 2),
        num_res_blocks=1,
        attention_levels=(2,),
        dropout=0.0,
        num_epochs=10,
        batch_size=16,
        lr=2e-3,
        prediction="v",
        loss_weighting="min_snr",
        lr_warmup_steps=100,
        ema_decay=0.99,
        sample_every=2,
        sample_grid_n=16,
        sampler="ddim",
        sample_steps=50,
    ),
    # The quick preset's network, data and budget with the flow objective (diffusion_utils.flow):
    # the side-by-side comparison of docs/flow_vs_diffusion.json trains both on equal terms.
    # Logit-normal t (Esser et al. 2024, SD3's m = 0, s = 1); Euler with 20 steps for the grids.
    "quick-flow": dict(
        img_size=32,
        max_images=2048,
        base_channels=32,
        channel_mults=(1, 2, 2),
        num_res_blocks=1,
        attention_levels=(2,),
        dropout=0.0,
        num_epochs=10,
        batch_size=16,
        lr=2e-3,
        objective="flow",
        flow_t="logit_normal",
        lr_warmup_steps=100,
        ema_decay=0.99,
        sample_every=2,
        sample_grid_n=16,
        sampler="euler",
        sample_steps=20,
    ),
    # The shipped flowers32-flow: flowers32's network and training settings (its card: batch 64,
    # lr 1e-3, EMA up to 0.9995, every Flowers102 photo, class labels dropped with p = 0.1) with the
    # flow objective; 60 epochs of 8 189 photos are the 480 000 images flowers32 saw.
    "flowers32-flow": dict(
        img_size=32,
        base_channels=32,
        channel_mults=(1, 2, 2),
        num_res_blocks=1,
        attention_levels=(2,),
        dropout=0.0,
        num_epochs=60,
        batch_size=64,
        lr=1e-3,
        objective="flow",
        flow_t="logit_normal",
        lr_warmup_steps=100,
        ema_decay=0.9995,
        sample_every=10,
        sample_grid_n=16,
        sampler="euler",
        sample_steps=20,
    ),
    # The upsampler of the cascade: 32 px → 64 px (diffusion_utils.superres), trained on a CPU.
    # A 32 px model's cost per image: it trains on 32 × 32 crops of the 64 px photos and samples
    # whole 64 px images, which it can because it has no attention (only convolutions, which see a
    # neighbourhood). Two residual blocks per level instead of the quick preset's one: drawing
    # petal edges and textures needs depth more than global context. v-prediction with min-SNR,
    # as the quick preset measured best; batch 32 and lr 1e-3 for a run of hours, not minutes.
    "sr64": dict(
        task="sr",
        img_size=64,
        crop_size=32,
        num_classes=0,
        base_channels=32,
        channel_mults=(1, 2, 2),
        num_res_blocks=2,
        attention_levels=(),
        mid_attention=False,
        dropout=0.0,
        num_epochs=40,
        batch_size=32,
        lr=1e-3,
        lr_warmup_steps=200,
        prediction="v",
        loss_weighting="min_snr",
        ema_decay=0.999,
        cond_aug_max=250,
        cond_aug_level=0,
        sample_every=1,
        sample_grid_n=16,
        sampler="dpmpp",
        sample_steps=20,
    ),
}
