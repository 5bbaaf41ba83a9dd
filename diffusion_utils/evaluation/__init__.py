"""How good the samples are, and whether they copy: feature extractors, KID and FID, the sampler
comparison, nearest training images and the memorisation test.

- :mod:`~diffusion_utils.evaluation.features` — offline InceptionV3, random convolutions, :func:`extract_features`
- :mod:`~diffusion_utils.evaluation.metrics` — :func:`compute_kid`, :func:`compute_fid`
- :mod:`~diffusion_utils.evaluation.evaluation` — :func:`evaluate_samplers`: KID and wall time per sampler
- :mod:`~diffusion_utils.evaluation.neighbours` — :func:`nearest_neighbours`, exact and chunked
- :mod:`~diffusion_utils.evaluation.memorisation` — :func:`memorisation_test`: is the model copying?
"""
