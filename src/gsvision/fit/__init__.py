"""Fitting images with Gaussians: structured initialisation, batched optimisation, pruning."""

from gsvision.fit.init import INIT_METHODS, initialise
from gsvision.fit.loop import FitConfig, FitResult, finetune, fit, prepare_images, refit_colors
from gsvision.fit.prune import luminance_score, prune

__all__ = [
    "INIT_METHODS",
    "FitConfig",
    "FitResult",
    "fit",
    "finetune",
    "initialise",
    "luminance_score",
    "prepare_images",
    "prune",
    "refit_colors",
]
