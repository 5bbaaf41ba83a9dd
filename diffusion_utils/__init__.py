"""diffusion_utils: a small, tested pixel-space DDPM (Ho et al. 2020) for 64×64 flowers.

One module per idea, each readable top to bottom (docs/package.md lists them in import order):

- :mod:`~diffusion_utils.config` — :class:`TrainConfig`, every hyperparameter, presets
- :mod:`~diffusion_utils.schedule` — :class:`NoiseSchedule`, the forward process q(xₜ | x₀)
- :mod:`~diffusion_utils.model` — :class:`UNet`, the noise predictor ε_θ(xₜ, t)
- :mod:`~diffusion_utils.pixels` — :func:`to_uint8`, ``to_model_range``: the two ranges an image lives in
- :mod:`~diffusion_utils.data` — :func:`load_dataset`: Flowers102, an image folder, synthetic flowers;
  :func:`load_held_out`: the images a ``max_images`` run left out
  (from :mod:`~diffusion_utils.flowers102`, :mod:`~diffusion_utils.synthetic`, :mod:`~diffusion_utils.image_cache`;
  training batches from :mod:`~diffusion_utils.batches`)
- :mod:`~diffusion_utils.loss` — :func:`diffusion_loss`, Algorithm 1: the training loss in one function
- :mod:`~diffusion_utils.training` — Algorithm 1: :class:`TrainState`, :func:`train_step`, the lr rule, the EMA
- :mod:`~diffusion_utils.run` — the run around it: the loop, checks, checkpoints, Ctrl-C, NaN
  (where it starts from: :mod:`~diffusion_utils.run_start`; its hooks: :mod:`~diffusion_utils.run_hooks`, :class:`RunHooks`)
- :mod:`~diffusion_utils.run_figures` — :func:`train`: a run that also draws its figures
- :mod:`~diffusion_utils.distributed` — several processes under ``torchrun`` (DistributedDataParallel)
- :mod:`~diffusion_utils.checkpoint` — saving, loading and resuming
- :mod:`~diffusion_utils.files` — output-folder checks, atomic writes, the run-folder lock
- :mod:`~diffusion_utils.pretrained` — :func:`load_pretrained`: weights shipped with the package, and :func:`export_pretrained`
- :mod:`~diffusion_utils.cards` — the model card beside each pretrained file
- :mod:`~diffusion_utils.fallback` — :func:`load_trained_or_pretrained`: the model a notebook shows
- :mod:`~diffusion_utils.flow` — flow matching: :class:`FlowPath` (xₜ = (1 − t)x₀ + tε), :func:`flow_loss`
- :mod:`~diffusion_utils.samplers` — one class per sampler: :class:`DDPM`, :class:`DDIM`, :class:`DPMSolverPP`, :class:`Euler`, :class:`Heun`
- :mod:`~diffusion_utils.sampling` — :func:`p_sample`, :func:`sample`, :func:`sample_trajectory`: one loop for every sampler
- :mod:`~diffusion_utils.superres` — :func:`upsample`, :func:`sample_cascade`: 32 px → 64 px with a second diffusion model
- :mod:`~diffusion_utils.guidance` — classifier-free guidance: :class:`GuidedModel`, class names and ids
- :mod:`~diffusion_utils.interpolation` — :func:`slerp`, :func:`interpolate`: walking between two samples
- :mod:`~diffusion_utils.editing` — :func:`sdedit`, :func:`inpaint`: editing real images
- :mod:`~diffusion_utils.features` — feature extractors (offline InceptionV3, random convs), :func:`extract_features`
- :mod:`~diffusion_utils.metrics` — :func:`compute_kid`, :func:`compute_fid`: sample quality vs real images
- :mod:`~diffusion_utils.evaluation` — :func:`evaluate_samplers`: KID and wall time per sampler
- :mod:`~diffusion_utils.memorisation` — :func:`memorisation_test`, :func:`nearest_neighbours`: is the model copying?
- :mod:`~diffusion_utils.visualization` — grids, the epoch table, loss curves, the GIF
- :mod:`~diffusion_utils.widgets` — the denoising slider, the guidance widget and the live training view
- :mod:`~diffusion_utils.exercises` — :func:`check_exercise`: the learner's lines against the package's, with a hint
- :mod:`~diffusion_utils.cli` — ``python -m diffusion_utils train|sample|export``
"""

from .checkpoint import CHECKPOINT_NAME, load_checkpoint, load_model, save_checkpoint
from .config import DATA_ENV, PRESET_ENV, TrainConfig, preset_from_env, resolve_device
from .data import ImageDataset, batches_per_epoch, load_dataset, load_held_out, make_synthetic_flowers
from .errors import CheckpointError, ConfigError, DataError, DiffusionError, RunFolderError, TrainingDiverged
from .editing import box_mask, inpaint, sdedit
from .guidance import GuidedModel
from .evaluation import SamplerRun, evaluate_samplers, fewest_calls_matching
from .exercises import check_exercise
from .metrics import (FeatureExtractorError, InceptionFeatures, KIDResult, RandomConvFeatures, compute_fid,
                      compute_kid, default_feature_extractor, extract_features)
from .model import (ResidualBlock, SelfAttention, UNet, count_parameters, layer_shapes, parameter_table,
                    sinusoidal_embedding, unet_levels)
from .interpolation import interpolate, slerp
from .loss import diffusion_loss
from .pretrained import PRETRAINED, export_pretrained, load_pretrained, pretrained_card
from .fallback import load_trained_or_pretrained
from .flow import FlowPath, flow_loss
from .ode_paths import ode_gap, plot_ode_paths, plot_path_coefficients
from .memorisation import (MemorisationResult, Neighbours, memorisation_test, nearest_neighbours, plot_memorisation,
                           plot_nearest_neighbours)
from .samplers import DDIM, DDPM, DPMSolverPP, Euler, Heun, Sampler, make_sampler, timesteps_for
from .sampling import Trajectory, p_sample, sample, sample_trajectory, to_uint8
from .schedule import NoiseSchedule
from .superres import ConditionedModel, noised_condition, sample_cascade, upsample, upsample_trajectory
from .training import TrainState, ema_decay_at, make_ema, train_step
from .run import TrainingInterrupted, TrainingRun, TrainResult, run_training
from .run_hooks import RunHooks
from .run_figures import RunFigures, train
from .visualization import (grid_image, loss_label, plot_epoch_table, plot_image_rows, plot_loss, plot_sampler_comparison,
                            plot_sampler_curve,
                            plot_schedules, plot_time_embedding, plot_unet, save_animation, save_gif, save_grid, save_stages_animation,
                            save_large_sample, show_images)

__version__ = "0.1.0"

# The widgets subclass ipywidgets.VBox, so their module cannot load without ipywidgets (a notebook
# extra): it is imported on first use of one of these names, and `import diffusion_utils` and the
# CLI work without it.
_WIDGET_NAMES = ("DenoisingSlider", "GuidanceWidget", "LiveTrainingView", "denoising_slider", "guidance_widget")


def __getattr__(name: str):
    """The widget names, from :mod:`~diffusion_utils.widgets` when first asked for."""
    if name in _WIDGET_NAMES:
        from . import widgets

        return getattr(widgets, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "CHECKPOINT_NAME", "DATA_ENV", "PRESET_ENV", "CheckpointError", "ConfigError", "DataError",
    "DenoisingSlider", "DiffusionError", "PRETRAINED", "export_pretrained", "load_pretrained", "pretrained_card", "FeatureExtractorError", "InceptionFeatures", "KIDResult",
    "RandomConvFeatures", "compute_fid", "compute_kid", "extract_features", "SamplerRun", "evaluate_samplers", "fewest_calls_matching", "ImageDataset", "NoiseSchedule", "TrainConfig", "TrainResult",
    "RunFolderError", "TrainingDiverged", "TrainingInterrupted", "Trajectory", "UNet", "count_parameters", "denoising_slider", "grid_image",
    "load_checkpoint", "load_dataset", "load_held_out", "load_model", "load_trained_or_pretrained", "TrainState", "train_step", "diffusion_loss", "preset_from_env", "make_ema", "make_synthetic_flowers", "p_sample",
    "plot_epoch_table", "plot_image_rows", "plot_loss", "loss_label", "plot_sampler_comparison", "plot_sampler_curve", "plot_schedules", "resolve_device", "sample", "sample_trajectory",
    "save_animation", "save_stages_animation", "save_checkpoint", "save_grid", "save_large_sample", "show_images",
    "sinusoidal_embedding", "timesteps_for", "to_uint8", "train", "upsample", "upsample_trajectory", "sample_cascade", "ConditionedModel", "noised_condition",
    "RunHooks", "RunFigures", "TrainingRun", "run_training",
    "GuidanceWidget", "GuidedModel", "guidance_widget", "box_mask", "inpaint", "sdedit", "interpolate", "slerp", "save_gif",
    "check_exercise",
    "FlowPath", "flow_loss", "ode_gap", "plot_ode_paths", "plot_path_coefficients", "DDIM", "DDPM", "DPMSolverPP", "Euler", "Heun", "Sampler", "make_sampler",
    "MemorisationResult", "Neighbours", "memorisation_test", "nearest_neighbours", "plot_memorisation",
    "plot_nearest_neighbours",
    # what the notebooks use, so that they import only the top level
    "LiveTrainingView", "ResidualBlock", "SelfAttention", "batches_per_epoch", "default_feature_extractor",
    "ema_decay_at", "layer_shapes", "parameter_table", "plot_time_embedding", "plot_unet", "unet_levels",
]
