"""gsvision: images as compact sets of 2D Gaussian splats, and models that read them.

The public surface: :class:`Splats`, :func:`render`, :func:`fit` (and :class:`FitResult`),
:func:`encode` / :func:`decode` (the ``.gsv`` codec, :class:`CodecError` on bad payloads).
"""

import os as _os

# OpenMP worker threads (torch's and numba's) spin-wait between parallel regions by default; beside
# each other, and on a busy machine, that made every CPU-kernel call stall for tens of milliseconds
# (40-100x slower renders, measured on 2 cores). Passive waiting must be chosen before the OpenMP
# runtime loads, i.e. before torch is imported; an explicit setting by the user is kept.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from gsvision.codec import CodecError, decode, encode  # noqa: E402
from gsvision.fit import FitConfig, FitResult  # noqa: E402
from gsvision.fit import fit as _fit_function  # noqa: E402
from gsvision.raster import available_backends, render, set_backend  # noqa: E402
from gsvision.splats import Splats  # noqa: E402

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
