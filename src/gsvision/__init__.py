"""gsvision: images as compact sets of 2D Gaussian splats."""

__version__ = "0.1.0"
