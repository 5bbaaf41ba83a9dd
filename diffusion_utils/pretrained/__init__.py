"""The weights shipped with the package (``weights/NAME.pt``) and the model card beside each (``weights/NAME.md``).

- :mod:`~diffusion_utils.pretrained.cards` — the model card: what a file is, how it was trained, how good it is
- :mod:`~diffusion_utils.pretrained.pretrained` — :func:`load_pretrained`, :func:`export_pretrained`
- :mod:`~diffusion_utils.pretrained.fallback` — :func:`load_trained_or_pretrained`: the model a notebook shows
"""
