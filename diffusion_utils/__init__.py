"""diffusion_utils: a small, tested pixel-space DDPM (Ho et al. 2020) and flow matching for 64×64 flowers.

The ideas sit at the top of the package, one module each, in reading order; what they lean on sits
in five folders (docs/package.md draws the map):

- :mod:`~diffusion_utils.schedule` — :class:`NoiseSchedule`, the forward process q(xₜ | x₀)
- :mod:`~diffusion_utils.flow` — flow matching: :class:`FlowPath` (xₜ = (1 − t)x₀ + tε), :func:`flow_loss`
- :mod:`~diffusion_utils.model` — :class:`UNet`, the noise predictor ε_θ(xₜ, t)
- :mod:`~diffusion_utils.loss` — :func:`diffusion_loss`, Algorithm 1: the training loss in one function
- :mod:`~diffusion_utils.samplers` — one class per sampler: :class:`DDPM`, :class:`DDIM`, :class:`DPMSolverPP`, :class:`Euler`, :class:`Heun`
- :mod:`~diffusion_utils.sampling` — :func:`p_sample`, :func:`sample`, :func:`sample_trajectory`: one loop for every sampler
- :mod:`~diffusion_utils.guidance` — classifier-free guidance: :class:`GuidedModel`, class names and ids
- :mod:`~diffusion_utils.superres` — :func:`upsample`, :func:`sample_cascade`: 32 px → 64 px with a second diffusion model
- :mod:`~diffusion_utils.editing` — :func:`sdedit`, :func:`inpaint`: editing real images
- :mod:`~diffusion_utils.interpolation` — :func:`slerp`, :func:`interpolate`: walking between two samples
- :mod:`~diffusion_utils.ode_paths` — the probability-flow ODE drawn exactly on 1-D data
- :mod:`~diffusion_utils.training` — Algorithm 1: :class:`TrainState`, :func:`train_step`, the lr rule, the EMA
- :mod:`~diffusion_utils.run` — the run around it: the loop, checks, checkpoints, Ctrl-C, NaN
  (where it starts from: :mod:`~diffusion_utils.run_start`; its hooks: :mod:`~diffusion_utils.run_hooks`, :class:`RunHooks`)
- :mod:`~diffusion_utils.config` — :class:`TrainConfig`, every hyperparameter; the presets' values in :mod:`~diffusion_utils.presets`
- :mod:`~diffusion_utils.cli` — ``python -m diffusion_utils train|sample|export``

The folders:

- :mod:`~diffusion_utils.data` — :func:`load_dataset`: Flowers102, an image folder, synthetic flowers;
  :func:`load_held_out`; the training batches
- :mod:`~diffusion_utils.evaluation` — features, :func:`compute_kid`, :func:`compute_fid`, :func:`evaluate_samplers`,
  :func:`memorisation_test`: how good the samples are, and whether they copy
- :mod:`~diffusion_utils.pretrained` — :func:`load_pretrained`: the weights shipped with the package, their model
  cards, :func:`export_pretrained`, :func:`load_trained_or_pretrained`
- :mod:`~diffusion_utils.notebook` — grids, plots, the GIF, the widgets, and :func:`train`: a run that draws its figures
- :mod:`~diffusion_utils.exercises` — :func:`check_exercise`: the learner's lines against the package's, with a hint
- :mod:`~diffusion_utils.plumbing` — errors, checks, files, checkpoints, several processes, pixel ranges, figures, precision
"""

from .schedule import NoiseSchedule
from .flow import FlowPath, flow_loss
from .model import (ResidualBlock, SelfAttention, UNet, count_parameters, layer_shapes, parameter_table,
                    sinusoidal_embedding, unet_levels)
from .loss import diffusion_loss
from .samplers import DDIM, DDPM, DPMSolverPP, Euler, Heun, Sampler, make_sampler, timesteps_for
from .sampling import Trajectory, p_sample, sample, sample_trajectory, to_uint8
from .guidance import GuidedModel
from .superres import ConditionedModel, noised_condition, sample_cascade, upsample, upsample_trajectory
from .editing import box_mask, inpaint, sdedit
from .interpolation import interpolate, slerp
from .ode_paths import ode_gap, plot_ode_paths, plot_path_coefficients
from .training import TrainState, ema_decay_at, make_ema, train_step
from .run import TrainingInterrupted, TrainingRun, TrainResult, run_training
from .run_hooks import RunHooks
from .config import DATA_ENV, PRESET_ENV, TrainConfig, eval_samples_from_env, preset_from_env, resolve_device

from .data.data import ImageDataset, batches_per_epoch, load_dataset, load_held_out, make_synthetic_flowers
from .evaluation.evaluation import SamplerRun, evaluate_samplers, fewest_calls_matching
from .evaluation.memorisation import (MemorisationResult, Neighbours, memorisation_test, nearest_neighbours,
                                      plot_memorisation, plot_nearest_neighbours)
from .evaluation.metrics import (FeatureExtractorError, InceptionFeatures, KIDResult, RandomConvFeatures, compute_fid,
                                 compute_kid, default_feature_extractor, extract_features)
from .exercises import check_exercise
from .notebook.run_figures import RunFigures, train
from .notebook.visualization import (loss_label, plot_epoch_table, plot_image_rows, plot_loss, plot_sampler_comparison,
                                     plot_sampler_curve, plot_schedules, plot_time_embedding, plot_unet, save_animation,
                                     save_gif, save_grid, save_large_sample, save_stages_animation, show_images)
from .plumbing.checkpoint import CHECKPOINT_NAME, load_checkpoint, load_model, save_checkpoint
from .plumbing.errors import CheckpointError, ConfigError, DataError, DiffusionError, RunFolderError, TrainingDiverged
from .plumbing.figures import grid_image
from .pretrained.fallback import load_trained_or_pretrained
from .pretrained.pretrained import PRETRAINED, export_pretrained, load_pretrained, pretrained_card

__version__ = "0.1.0"

# The widgets subclass ipywidgets.VBox, so their module cannot load without ipywidgets (a notebook
# extra): it is imported on first use of one of these names, and `import diffusion_utils` and the
# CLI work without it.
_WIDGET_NAMES = ("DenoisingSlider", "GuidanceWidget", "LiveTrainingView", "denoising_slider", "guidance_widget")


def __getattr__(name: str):
    """The widget names, from :mod:`~diffusion_utils.notebook.widgets` when first asked for."""
    if name in _WIDGET_NAMES:
        from .notebook import widgets

        return getattr(widgets, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "CHECKPOINT_NAME", "DATA_ENV", "PRESET_ENV", "CheckpointError", "ConfigError", "DataError",
    "DenoisingSlider", "DiffusionError", "PRETRAINED", "export_pretrained", "load_pretrained", "pretrained_card", "FeatureExtractorError", "InceptionFeatures", "KIDResult",
    "RandomConvFeatures", "compute_fid", "compute_kid", "extract_features", "SamplerRun", "evaluate_samplers", "fewest_calls_matching", "ImageDataset", "NoiseSchedule", "TrainConfig", "TrainResult",
    "RunFolderError", "TrainingDiverged", "TrainingInterrupted", "Trajectory", "UNet", "count_parameters", "denoising_slider", "grid_image",
    "load_checkpoint", "load_dataset", "load_held_out", "load_model", "load_trained_or_pretrained", "TrainState", "train_step", "diffusion_loss", "preset_from_env", "eval_samples_from_env", "make_ema", "make_synthetic_flowers", "p_sample",
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
