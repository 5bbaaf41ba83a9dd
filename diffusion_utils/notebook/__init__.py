"""What the notebooks show: figures, widgets, and a training run that draws its own figures.

- :mod:`~diffusion_utils.notebook.visualization` — grids, the epoch table, loss curves, the GIF, the UNet diagram
- :mod:`~diffusion_utils.notebook.widgets` — the denoising slider, the guidance widget, the live training view
- :mod:`~diffusion_utils.notebook.run_figures` — :func:`train`: a run that also draws its figures
"""
