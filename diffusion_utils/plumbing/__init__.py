"""What every part leans on and none of it teaches: errors, checks, files, checkpoints, several
processes, pixel ranges, figures and the training dtype.

- :mod:`~diffusion_utils.plumbing.errors` — :class:`DiffusionError` and its kinds: one-line messages
- :mod:`~diffusion_utils.plumbing.checks` — the checks the config, the network, the samplers and the data share
- :mod:`~diffusion_utils.plumbing.pixels` — :func:`to_model_range`, :func:`to_uint8`, drawing a batch at a time
- :mod:`~diffusion_utils.plumbing.figures` — a batch as one grid image; a figure laid out and saved
- :mod:`~diffusion_utils.plumbing.files` — the output-folder check, atomic writes, the run-folder lock
- :mod:`~diffusion_utils.plumbing.precision` — float32, or bfloat16 autocast where the hardware has it
- :mod:`~diffusion_utils.plumbing.distributed` — several processes under ``torchrun``
- :mod:`~diffusion_utils.plumbing.checkpoint` — saving, loading and resuming
"""
