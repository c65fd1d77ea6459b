"""gsvision: images as compact sets of 2D Gaussian splats, and models that read them.

The public surface: :class:`Splats`, :func:`render`, :func:`fit` (and :class:`FitResult`),
:func:`encode` / :func:`decode` (the ``.gsv`` codec, :class:`CodecError` on bad payloads).
"""

from gsvision.codec import CodecError, decode, encode
from gsvision.fit import FitConfig, FitResult
from gsvision.fit import fit as _fit_function
from gsvision.raster import available_backends, render, set_backend
from gsvision.splats import Splats

__version__ = "0.1.0"

# `gsvision.fit(...)` is the fitting function; the subpackage stays importable as gsvision.fit.*
fit = _fit_function

__all__ = [
    "CodecError",
    "FitConfig",
    "FitResult",
    "Splats",
    "available_backends",
    "decode",
    "encode",
    "fit",
    "render",
    "set_backend",
    "__version__",
]
