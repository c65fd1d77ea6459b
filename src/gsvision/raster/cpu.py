"""Fast CPU rasteriser: a tile-binned, multi-threaded numba kernel with its own backward pass.

Same rule as :mod:`gsvision.raster.reference` (pixel centres at ``(j + .5, i + .5)``, weight
``exp(-q/2)`` where ``q = |L⁻¹ d|² <= CUTOFF_Q``, padded slots ignored), computed only where it can
be non-zero: each Gaussian is culled to its 3σ ellipse and binned into square tiles; ``prange``
runs over ``(image, tile)`` pairs, each visiting only its own list, and within a tile only the
rows and 8- or 16-pixel chunks the ellipse reaches. The inner loops are SIMD code with a
polynomial ``exp``; see :mod:`gsvision.raster._cpu_kernels` for the layout of the work.

Unit conversion stays in PyTorch: :func:`render_cpu` computes pixel-space means, Cholesky factors
and effective colours (colour × opacity) with torch ops, and :class:`RenderCPU` (the kernel as an
autograd function) returns gradients for those three, which autograd chains back to the fields.

The numba code lives in :mod:`gsvision.raster._cpu_kernels`, imported on first use; a failure
(numba missing or broken) is remembered and reported by :func:`unavailable_reason` instead of
raised at import time. Kernels are compiled with ``cache=True``: the first call on a machine
compiles (about 10 s for float32, as much again for float64 and for the backward pass), later
processes load the cache in well under a second.

Threads: numba's OpenMP layer shares libgomp with torch, whose default wait policy spins at every
barrier. When another busy process competes for the cores, each parallel region can then stall for
a scheduler time slice: measured on 2 shared cores, 6.7 ms instead of 2.6 ms per image (batch 16,
N = 1024) and 56 ms instead of 0.4 ms for one binning call. ``OMP_WAIT_POLICY=PASSIVE`` in the
environment *before torch is imported* removes that; ``NUMBA_NUM_THREADS`` caps the threads.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from gsvision.raster.reference import CUTOFF_Q
from gsvision.splats import Splats

__all__ = [
    "DEFAULT_TILE",
    "LARGE_TILE",
    "auto_tile",
    "RenderCPU",
    "forward_into",
    "render_cpu",
    "render_cpu_pixels",
    "supports_device",
    "unavailable_reason",
]

#: Tile side for small jobs (a multiple of the SIMD width, 8 or 16 float32 lanes).
DEFAULT_TILE = 16
#: Tile side when there is enough work: fewer (Gaussian, tile) pairs, 5-12% faster forward +
#: backward measured at N = 256-4096, 224x224, batch 16, 2 cores (AVX-512 and AVX2 builds).
LARGE_TILE = 32
#: Use :data:`LARGE_TILE` only if it leaves at least this many (image, tile) jobs per thread.
JOBS_PER_THREAD = 8

_kernels_module: ModuleType | None = None
_kernels_error: str | None = None


def _kernels() -> ModuleType:
    """Import and self-test the numba kernels once; re-raise the remembered failure later."""
    global _kernels_module, _kernels_error
    if _kernels_module is None:
        if _kernels_error is not None:
            raise ImportError(_kernels_error)
        try:
            module = importlib.import_module("gsvision.raster._cpu_kernels")
            _self_test(module)
        except Exception as exc:
            _kernels_error = f"{type(exc).__name__}: {exc}"
            raise ImportError(_kernels_error) from exc
        _kernels_module = module
    return _kernels_module


def _self_test(k: ModuleType) -> None:
    """Render one known Gaussian (this compiles or loads the float32 kernels).

    It is also numba's first parallel launch, which starts its OpenMP thread pool; numba and torch
    share libgomp, and that start resets torch's thread count, so the count is put back.

    Raises:
        RuntimeError: if the kernel draws the wrong value.
    """
    threads = torch.get_num_threads()
    try:
        # A unit-variance Gaussian at (2, 2) on a 4x4 raster, pixel units: (cx, cy, L, colour).
        params = np.array([[[2.0, 2.0, 1.0, 0.0, 1.0, 1.0, 0.5, 0.0]]], np.float32)
        out = np.full((1, 4, 4, 3), np.nan, np.float32)
        xs, ys, consts = _grid(4, 4, DEFAULT_TILE, params.dtype)
        eps = float(np.finfo(np.float32).eps) / 2
        bins = k.bin_gaussians(params, np.ones(1, np.int64), 4, 4, DEFAULT_TILE, CUTOFF_Q, eps)
        k.forward(params, *bins, xs, ys, consts, DEFAULT_TILE, out)
    finally:
        torch.set_num_threads(threads)
    expected = float(np.exp(-0.25))  # pixel (1, 1): d = (-0.5, -0.5), q = 0.5
    got = float(out[0, 1, 1, 0])
    if not (np.isfinite(out).all() and abs(got - expected) < 1e-6):
        raise RuntimeError(f"numba kernel self-test drew {got}, expected {expected}")


def unavailable_reason() -> str | None:
    """``None`` if the numba kernel imports, compiles and draws a known case here, else why not.

    The answer is computed once per process (the first call may compile the kernels).
    """
    try:
        _kernels()
    except ImportError as exc:
        return str(exc)
    return None


def supports_device(device_type: str) -> bool:
    """The kernel runs on CPU tensors only."""
    return device_type == "cpu"


# --------------------------------------------------------------------------- numpy plumbing
def _pack(
    mean_px: Tensor,  # [B, N, 2]
    chol_px: Tensor,  # [B, N, 3]
    col: Tensor,  # [B, N, 3]
) -> np.ndarray:  # [B, N, 8]
    """Detached, contiguous ``(cx, cy, l11, l21, l22, r, g, b)`` per Gaussian, as numpy."""
    packed = torch.cat([mean_px.detach(), chol_px.detach(), col.detach()], dim=-1)
    return packed.contiguous().numpy()


def _grid(height: int, width: int, tile: int, dtype: np.dtype) -> tuple[np.ndarray, ...]:
    """Pixel-centre coordinates (padded to whole tiles) and the kernel constants."""
    ntx, nty = -(-width // tile), -(-height // tile)
    xs = (np.arange(ntx * tile) + 0.5).astype(dtype)  # [ntx * tile], exact like torch's
    ys = (np.arange(nty * tile) + 0.5).astype(dtype)  # [nty * tile]
    consts = np.array([CUTOFF_Q, -0.5], dtype=dtype)
    return xs, ys, consts


def auto_tile(batch: int, height: int, width: int) -> int:
    """The tile side :func:`render_cpu` uses by default for this many images of this size."""
    _kernels()  # raises the remembered ImportError where numba does not work
    import numba

    jobs = batch * -(-height // LARGE_TILE) * -(-width // LARGE_TILE)
    return LARGE_TILE if jobs >= JOBS_PER_THREAD * numba.get_num_threads() else DEFAULT_TILE


def _check(
    tile: int,
    mean_px: Tensor,  # [B, N, 2]
    chol_px: Tensor,  # [B, N, 3]
    col: Tensor,  # [B, N, 3]
    counts: Tensor,  # [B]
    *others: Tensor,
) -> None:
    """Raise ``ValueError`` unless the kernel takes these inputs as they are."""
    k = _kernels()
    if tile <= 0 or tile % k.LANES or tile > k.MAX_TILE:
        raise ValueError(
            f"tile must be a multiple of {k.LANES} (the SIMD width here) up to {k.MAX_TILE}, "
            f"got {tile}"
        )
    tensors = (mean_px, chol_px, col, *others)
    dtypes = {t.dtype for t in tensors}
    if len(dtypes) != 1 or next(iter(dtypes)) not in (torch.float32, torch.float64):
        raise ValueError(f"cpu raster: need float32 or float64 inputs of one dtype, got {dtypes}")
    if any(t.device.type != "cpu" for t in tensors):
        raise ValueError("cpu raster: tensors must be on the CPU")
    nb, n = mean_px.shape[:2] if mean_px.dim() == 3 else (-1, -1)
    if mean_px.shape != (nb, n, 2) or chol_px.shape != (nb, n, 3) or col.shape != (nb, n, 3):
        raise ValueError(
            "cpu raster: need mean_px [B, N, 2], chol_px [B, N, 3] and col [B, N, 3], got "
            f"{list(mean_px.shape)}, {list(chol_px.shape)}, {list(col.shape)}"
        )
    if counts.shape != (nb,):
        raise ValueError(f"cpu raster: counts must have shape [{nb}], got {list(counts.shape)}")


def _bin(params: np.ndarray, counts: np.ndarray, height: int, width: int, tile: int) -> tuple:
    eps = float(np.finfo(params.dtype).eps) / 2  # unit roundoff of the kernel's arithmetic
    return _kernels().bin_gaussians(params, counts, height, width, tile, float(CUTOFF_Q), eps)


def forward_into(
    out: Tensor,  # [B, H, W, 3], overwritten
    mean_px: Tensor,  # [B, N, 2] pixel units
    chol_px: Tensor,  # [B, N, 3] pixel units
    col: Tensor,  # [B, N, 3] effective colour
    counts: Tensor,  # [B] valid Gaussians per image
    tile: int | None = None,
) -> Tensor:
    """Render into a caller-provided buffer; every pixel is written (untouched ones with 0).

    Args:
        out: contiguous CPU tensor ``[B, H, W, 3]`` of the inputs' dtype; its contents are ignored.
        mean_px: centres in pixels.
        chol_px: Cholesky factors ``(l11, l21, l22)`` in pixels.
        col: colours, opacity already folded in.
        counts: valid leading slots per image.
        tile: tile side, a multiple of the SIMD width (8 or 16) up to 32; default
            :func:`auto_tile`.

    Returns:
        ``out``, for chaining.

    Raises:
        ValueError: on a dtype, device, shape or layout the kernel does not take.
    """
    if tile is None and out.dim() == 4:
        tile = auto_tile(out.shape[0], out.shape[1], out.shape[2])
    _check(DEFAULT_TILE if tile is None else tile, mean_px, chol_px, col, counts, out)
    nb = mean_px.shape[0]
    if out.dim() != 4 or out.shape[0] != nb or out.shape[3] != 3 or not out.is_contiguous():
        raise ValueError(
            f"out: expected a contiguous [{nb}, H, W, 3] tensor, got {list(out.shape)}"
        )
    height, width = out.shape[1], out.shape[2]
    params = _pack(mean_px, chol_px, col)
    cnt = counts.detach().to("cpu", torch.int64).contiguous().numpy()
    xs, ys, consts = _grid(height, width, tile, params.dtype)
    bins = _bin(params, cnt, height, width, tile)
    _kernels().forward(params, *bins, xs, ys, consts, tile, out.detach().numpy())
    return out


class RenderCPU(torch.autograd.Function):
    """The kernel as an autograd function of pixel-space means, Cholesky factors and colours."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        mean_px: Tensor,  # [B, N, 2]
        chol_px: Tensor,  # [B, N, 3]
        col: Tensor,  # [B, N, 3]
        counts: Tensor,  # [B]
        height: int,
        width: int,
        tile: int,
    ) -> Tensor:  # [B, H, W, 3]
        _check(tile, mean_px, chol_px, col, counts)
        if height <= 0 or width <= 0:
            raise ValueError(f"cpu raster: size must be positive, got {height}x{width}")
        params = _pack(mean_px, chol_px, col)
        cnt = counts.detach().to("cpu", torch.int64).contiguous().numpy()
        xs, ys, consts = _grid(height, width, tile, params.dtype)
        bins = _bin(params, cnt, height, width, tile)
        out = torch.empty((params.shape[0], height, width, 3), dtype=mean_px.dtype)
        _kernels().forward(params, *bins, xs, ys, consts, tile, out.numpy())
        ctx.state = (params, bins, xs, ys, consts, tile)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:  # [B, H, W, 3]
        params, bins, xs, ys, consts, tile = ctx.state
        offsets, index = bins[0], bins[1]
        dtype = torch.float32 if params.dtype == np.float32 else torch.float64
        g = grad_out.to(dtype).contiguous().numpy()
        k = _kernels()
        ntiles = (offsets.shape[0] - 1) // max(params.shape[0], 1)
        partial = k.backward(params, *bins, xs, ys, consts, tile, g)
        grads = torch.from_numpy(k.reduce_partials(params, offsets, index, partial, ntiles))
        grads = grads.to(dtype)  # [B, N, 8]
        return grads[..., 0:2], grads[..., 2:5], grads[..., 5:8], None, None, None, None


def render_cpu_pixels(
    mean_px: Tensor,  # [B, N, 2]
    chol_px: Tensor,  # [B, N, 3]
    col: Tensor,  # [B, N, 3]
    counts: Tensor,  # [B]
    height: int,
    width: int,
    tile: int | None = None,
) -> Tensor:  # [B, H, W, 3]
    """Differentiable render from pixel-space inputs (float32 or float64, CPU).

    ``tile`` defaults to :func:`auto_tile`; see :func:`render_cpu` for the rest.
    """
    if tile is None:
        tile = auto_tile(mean_px.shape[0], int(height), int(width))
    return RenderCPU.apply(mean_px, chol_px, col, counts, int(height), int(width), int(tile))


def render_cpu(splats: Splats, height: int, width: int, tile: int | None = None) -> Tensor:
    """Render ``splats`` at ``height × width`` with the numba kernel; differentiable.

    Args:
        splats: the batch (CPU tensors); padded slots (``i >= counts[b]``) contribute nothing.
            Float16/bfloat16 splats are rendered in float32 and the result cast back.
        height: output rows.
        width: output columns.
        tile: tile side in pixels, a multiple of the SIMD width (8 or 16) up to 32; default
            :func:`auto_tile` (32 when that leaves every thread enough tiles, else 16).

    Returns:
        ``[B, height, width, 3]`` in the splats' dtype, not clamped.
    """
    dtype = splats.dtype
    if dtype not in (torch.float32, torch.float64):
        splats = splats.to(torch.float32)
    mean_px = splats.pixel_means(height, width)  # [B, N, 2]
    chol_px = splats.pixel_chol(height, width)  # [B, N, 3]
    col = splats.colors if splats.opacities is None else splats.colors * splats.opacities
    out = render_cpu_pixels(mean_px, chol_px, col, splats.counts, height, width, tile)
    return out.to(dtype)
