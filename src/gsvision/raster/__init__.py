"""Rendering splats to pixels: one public entry, :func:`render`, over several backends.

Backends are listed in :data:`BACKENDS` and imported lazily: importing gsvision never fails because a kernel cannot
be built on this machine; :func:`available_backends` says which run here and why not the others.
The choice is a flag, an environment variable and a setter (as timm does for fused attention):
``render(..., backend=...)`` beats ``set_backend(...)``, which beats ``GSVISION_BACKEND``, which
beats ``"auto"`` (the fastest backend that runs for the splats' device).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor

from gsvision.splats import Splats

__all__ = [
    "render",
    "available_backends",
    "backend_status",
    "resolve_backend",
    "set_backend",
    "get_backend",
    "BACKENDS",
    "MAX_RENDER_PIXELS",
]

#: Largest ``H × W`` any backend will render (guards against absurd requested sizes).
MAX_RENDER_PIXELS = 64 * 1024 * 1024

ENV_VAR = "GSVISION_BACKEND"


@dataclass(frozen=True)
class _Backend:
    name: str
    module: str  # gsvision.raster.<module>; may define unavailable_reason() and supports_device()
    function: str  # its render(splats, height, width) -> [B, H, W, 3]
    devices: tuple[str, ...]  # device types "auto" picks it for
    doc: str


#: Every backend, fastest first within each device type.
BACKENDS: dict[str, _Backend] = {
    b.name: b
    for b in [
        _Backend("triton", "triton", "render_triton", ("cuda",), "Triton GPU kernel, tile-binned"),
        _Backend("cpu", "cpu", "render_cpu", ("cpu",), "numba CPU kernel, tile-binned"),
        _Backend("sparse", "sparse", "render_sparse", ("cpu", "cuda"), "sparse PyTorch patches"),
        _Backend("reference", "reference", "render_reference", ("cpu", "cuda"), "dense PyTorch"),
    ]
}

_override: str | None = None
_probe_cache: dict[str, str | None] = {}


def _probe(name: str) -> str | None:
    """Import a backend once; return None if it works here, else the reason it does not."""
    if name not in _probe_cache:
        backend = BACKENDS[name]
        try:
            module = importlib.import_module(f"gsvision.raster.{backend.module}")
            check = getattr(module, "unavailable_reason", None)
            _probe_cache[name] = check() if check is not None else None
        except Exception as exc:  # a failed build or missing dependency is remembered, not raised
            _probe_cache[name] = f"{type(exc).__name__}: {exc}"
    return _probe_cache[name]


def backend_status() -> dict[str, str | None]:
    """``{name: None if usable here else the reason}`` for every known backend."""
    return {name: _probe(name) for name in BACKENDS}


def available_backends(device_type: str | None = None) -> list[str]:
    """Usable backends (optionally only those for ``device_type``), in order of preference."""
    return [
        name
        for name, b in BACKENDS.items()
        if _probe(name) is None and (device_type is None or device_type in b.devices)
    ]


def set_backend(name: str | None) -> None:
    """Force a backend for every later :func:`render` call (``None`` or ``"auto"`` to undo)."""
    global _override
    if name not in (None, "auto") and name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; known: {sorted(BACKENDS)}")
    _override = None if name == "auto" else name


def get_backend() -> str:
    """The backend setting in force: the setter's value, else ``$GSVISION_BACKEND``, else auto."""
    return _override or os.environ.get(ENV_VAR, "").strip() or "auto"


def resolve_backend(device_type: str, backend: str | None = None) -> str:
    """Name of the backend that :func:`render` would use for tensors on ``device_type``.

    Raises:
        ValueError: for an unknown backend, or one that cannot run here or on that device.
    """
    choice = backend or get_backend()
    if choice == "auto":
        usable = available_backends(device_type)
        if not usable:
            raise ValueError(f"no rasteriser backend runs on {device_type!r} here")
        return usable[0]
    if choice not in BACKENDS:
        raise ValueError(f"unknown backend {choice!r}; known: {sorted(BACKENDS)} or 'auto'")
    reason = _probe(choice)
    if reason is not None:
        raise ValueError(f"backend {choice!r} is not usable here: {reason}")
    module = importlib.import_module(f"gsvision.raster.{BACKENDS[choice].module}")
    supports = getattr(module, "supports_device", lambda d: d in BACKENDS[choice].devices)
    if not supports(device_type):
        raise ValueError(f"backend {choice!r} does not run on {device_type!r} tensors")
    return choice


def _function(name: str) -> Callable[[Splats, int, int], Tensor]:
    backend = BACKENDS[name]
    module = importlib.import_module(f"gsvision.raster.{backend.module}")
    return getattr(module, backend.function)


def render(splats: Splats, height: int, width: int, backend: str | None = None) -> Tensor:
    """Render a batch of splats to pixels at any resolution.

    Args:
        splats: ``B`` images; padded slots are ignored.
        height: output rows (need not equal the fitted size).
        width: output columns.
        backend: a name from :data:`BACKENDS`, or ``"auto"``/``None`` for the setting in force.

    Returns:
        ``[B, height, width, 3]``, differentiable with respect to every splat field.

    Raises:
        ValueError: for a non-positive or enormous size, or an unusable backend.
    """
    height, width = int(height), int(width)
    if height <= 0 or width <= 0:
        raise ValueError(f"render: size must be positive, got {height}x{width}")
    if height * width > MAX_RENDER_PIXELS:
        raise ValueError(
            f"render: {height}x{width} is larger than the limit of {MAX_RENDER_PIXELS} pixels"
        )
    name = resolve_backend(splats.device.type, backend)
    return _function(name)(splats, height, width)
