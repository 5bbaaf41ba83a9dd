"""The data: Flowers102, an image folder or synthetic flowers, as uint8 tensors in memory, and the batches
a run draws from them.

- :mod:`~diffusion_utils.data.data` — :func:`load_dataset`, :class:`ImageDataset`, :func:`load_held_out`
- :mod:`~diffusion_utils.data.flowers102` — Oxford Flowers102: download, the official splits, the species names
- :mod:`~diffusion_utils.data.image_cache` — decode, crop and resize photos once; the uint8 cache
- :mod:`~diffusion_utils.data.synthetic` — procedurally drawn flowers (no download)
- :mod:`~diffusion_utils.data.batches` — one epoch of shuffled, flipped batches, replayable from any batch
"""
