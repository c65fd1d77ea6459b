"""Triton GPU rasteriser: one launch over (images × tiles) for the forward, one for the backward.

The rule is the reference's (:mod:`gsvision.raster.reference`), evaluated only where it can be
non-zero:

    C(p) = Σ_i c_i · exp(-½ q_i(p)),  q_i(p) = |L_i⁻¹ (p - μ_i)|²,  weight 0 if q_i(p) > CUTOFF_Q,

at pixel centres ``p = (j + .5, i + .5)``, over the valid slots of each image. Pixel-space inputs
(``mean_px``, ``chol_px`` and the effective colour ``colors · opacities``) are computed in PyTorch,
so autograd does the unit conversion and the opacity product; a :class:`torch.autograd.Function`
runs the kernels on those three tensors.

Pipeline (memory grows with the number of ``(Gaussian, tile)`` pairs, not with ``N × pixels``):

1. :func:`gsvision.raster._binning.bin_gaussians` (plain torch, on device) lists each tile's
   Gaussians from their 3σ boxes;
2. the forward kernel gives each ``(image, 16×16 tile)`` one program, which walks its Gaussians in
   chunks of ``FWD_CHUNK``, evaluating a ``[chunk, 256]`` block of weights at a time and
   accumulating colour in registers; every in-image pixel is written exactly once, even in tiles
   with no Gaussians, so the output needs no zero-fill;
3. the backward kernel re-walks the same lists with the upstream gradient of its tile, reduces each
   Gaussian's gradient over the tile's pixels in registers, and adds that partial to the Gaussian's
   gradient with ``tl.atomic_add``.

Why atomics rather than a two-pass per-pair reduction: each program already reduces over its 256
pixels, so it emits one partial per pair and the atomics are 8 per pair with almost no contention
(a Gaussian touches a handful of tiles; distinct Gaussians of a chunk hit distinct addresses). A
two-pass scheme would write the same ``P × 8`` partials to memory and then scatter-add them with
``index_add_``, which on CUDA is itself atomic: more traffic for no gain. The one cost is that
float atomics make the gradient's summation order, hence its last bits, run-to-run
non-deterministic; the forward is deterministic (Gaussians are summed in slot order per tile).

Float32 is the working precision on GPU; float64 runs too (on GPU and in the interpreter); half
types are computed in float32 and the result cast back.

Running without a GPU: set ``TRITON_INTERPRET=1`` **before triton is first imported** (triton
decides, at its own import, whether its library functions are interpreted); the kernels then run
on CPU tensors through triton's numpy interpreter: slowly, and with numpy's IEEE division and
``exp`` where the GPU uses its approximate ones, but otherwise the same program.
"""

from __future__ import annotations

import torch
from torch import Tensor

from gsvision.raster._binning import TILE_SIZE, TileBins, bin_gaussians
from gsvision.raster.reference import CUTOFF_Q
from gsvision.splats import Splats

try:
    import triton
    import triton.language as tl
    from triton.runtime.jit import JITFunction

    _IMPORT_ERROR: str | None = None
except Exception as exc:  # a missing or broken triton is remembered, not raised
    triton = tl = JITFunction = None  # type: ignore[assignment]
    _IMPORT_ERROR = f"{type(exc).__name__}: {exc}"

__all__ = [
    "render_triton",
    "rasterize_into",
    "unavailable_reason",
    "supports_device",
    "interpreted",
    "FWD_CHUNK",
    "BWD_CHUNK",
]

# Launch shape (chosen by register counts from ptxas for sm_90, not yet by timings on a GPU:
# chunk 8 with 8 warps needs 88 / 113 registers for forward / backward with no spills, where
# chunk 16 needs ~140 / ~200). The benchmark can override them to sweep.
#: Gaussians evaluated together per step of the forward kernel (an ``[FWD_CHUNK, 256]`` block).
FWD_CHUNK = 8
#: ... and of the backward kernel.
BWD_CHUNK = 8
#: Warps per program (one program per 16×16 tile: 8 warps = one pixel per thread).
FWD_WARPS = 8
BWD_WARPS = 8
#: Numbers per packed Gaussian: mean (2), Cholesky (3), effective colour (3).
_PACK = 8


# ----------------------------------------------------------------------------- kernels
def _forward_kernel(
    params_ptr,  # [B * N, 8] (mx, my, l11, l21, l22, r, g, b) in pixels
    ids_ptr,  # [P] int32 flat Gaussian index of each pair, grouped by tile
    tile_start_ptr,  # [B * T + 1] int32
    out_ptr,  # [B, H, W, 3] contiguous
    height,
    width,
    tiles_x,
    tiles_per_image,
    TILE: tl.constexpr,
    CHUNK: tl.constexpr,
    CUTOFF: tl.constexpr,
    ACC: tl.constexpr,
):
    pid = tl.program_id(0)  # one program per (image, tile)
    img = pid // tiles_per_image
    t = pid % tiles_per_image
    pix = tl.arange(0, TILE * TILE)  # [PIX]
    row = (t // tiles_x) * TILE + pix // TILE
    col = (t % tiles_x) * TILE + pix % TILE
    in_image = (row < height) & (col < width)
    px = col.to(ACC) + 0.5  # [PIX] pixel centres
    py = row.to(ACC) + 0.5
    start = tl.load(tile_start_ptr + pid)
    end = tl.load(tile_start_ptr + pid + 1)
    acc_r = tl.zeros([TILE * TILE], dtype=ACC)
    acc_g = tl.zeros([TILE * TILE], dtype=ACC)
    acc_b = tl.zeros([TILE * TILE], dtype=ACC)
    for k in range(start, end, CHUNK):
        offs = k + tl.arange(0, CHUNK)  # [C]
        live = offs < end
        g = tl.load(ids_ptr + offs, mask=live, other=0).to(tl.int64) * 8  # [C]
        mx = tl.load(params_ptr + g, mask=live, other=0.0)
        my = tl.load(params_ptr + g + 1, mask=live, other=0.0)
        l11 = tl.load(params_ptr + g + 2, mask=live, other=1.0)
        l21 = tl.load(params_ptr + g + 3, mask=live, other=0.0)
        l22 = tl.load(params_ptr + g + 4, mask=live, other=1.0)
        cr = tl.load(params_ptr + g + 5, mask=live, other=0.0)
        cg = tl.load(params_ptr + g + 6, mask=live, other=0.0)
        cb = tl.load(params_ptr + g + 7, mask=live, other=0.0)
        i11 = 1.0 / l11  # [C] one division per Gaussian, not per pixel
        i22 = 1.0 / l22
        # q = |L⁻¹ d|² by forward substitution, in the reference's order of operations.
        z1 = (px[None, :] - mx[:, None]) * i11[:, None]  # [C, PIX]
        z2 = ((py[None, :] - my[:, None]) - l21[:, None] * z1) * i22[:, None]
        q = z1 * z1 + z2 * z2
        w = tl.where((q <= CUTOFF) & live[:, None], tl.exp(-0.5 * q), 0.0)  # [C, PIX]
        acc_r += tl.sum(w * cr[:, None], axis=0)
        acc_g += tl.sum(w * cg[:, None], axis=0)
        acc_b += tl.sum(w * cb[:, None], axis=0)
    o = (img.to(tl.int64) * height * width + (row * width + col).to(tl.int64)) * 3  # [PIX]
    tl.store(out_ptr + o, acc_r, mask=in_image)
    tl.store(out_ptr + o + 1, acc_g, mask=in_image)
    tl.store(out_ptr + o + 2, acc_b, mask=in_image)


def _backward_kernel(
    params_ptr,  # [B * N, 8]
    ids_ptr,  # [P] int32
    tile_start_ptr,  # [B * T + 1] int32
    grad_out_ptr,  # [B, H, W, 3] contiguous upstream gradient
    grad_ptr,  # [B * N, 8] zero-initialised, accumulated with atomics
    height,
    width,
    tiles_x,
    tiles_per_image,
    TILE: tl.constexpr,
    CHUNK: tl.constexpr,
    CUTOFF: tl.constexpr,
    ACC: tl.constexpr,
):
    pid = tl.program_id(0)
    img = pid // tiles_per_image
    t = pid % tiles_per_image
    pix = tl.arange(0, TILE * TILE)
    row = (t // tiles_x) * TILE + pix // TILE
    col = (t % tiles_x) * TILE + pix % TILE
    in_image = (row < height) & (col < width)
    px = col.to(ACC) + 0.5
    py = row.to(ACC) + 0.5
    o = (img.to(tl.int64) * height * width + (row * width + col).to(tl.int64)) * 3
    # Pixels outside the image get a zero upstream gradient, so they contribute nothing.
    vr = tl.load(grad_out_ptr + o, mask=in_image, other=0.0).to(ACC)  # [PIX]
    vg = tl.load(grad_out_ptr + o + 1, mask=in_image, other=0.0).to(ACC)
    vb = tl.load(grad_out_ptr + o + 2, mask=in_image, other=0.0).to(ACC)
    start = tl.load(tile_start_ptr + pid)
    end = tl.load(tile_start_ptr + pid + 1)
    for k in range(start, end, CHUNK):
        offs = k + tl.arange(0, CHUNK)
        live = offs < end
        g = tl.load(ids_ptr + offs, mask=live, other=0).to(tl.int64) * 8
        mx = tl.load(params_ptr + g, mask=live, other=0.0)
        my = tl.load(params_ptr + g + 1, mask=live, other=0.0)
        l11 = tl.load(params_ptr + g + 2, mask=live, other=1.0)
        l21 = tl.load(params_ptr + g + 3, mask=live, other=0.0)
        l22 = tl.load(params_ptr + g + 4, mask=live, other=1.0)
        cr = tl.load(params_ptr + g + 5, mask=live, other=0.0)
        cg = tl.load(params_ptr + g + 6, mask=live, other=0.0)
        cb = tl.load(params_ptr + g + 7, mask=live, other=0.0)
        i11 = 1.0 / l11  # [C]
        i22 = 1.0 / l22
        z1 = (px[None, :] - mx[:, None]) * i11[:, None]  # [C, PIX]
        z2 = ((py[None, :] - my[:, None]) - l21[:, None] * z1) * i22[:, None]
        q = z1 * z1 + z2 * z2
        w = tl.where((q <= CUTOFF) & live[:, None], tl.exp(-0.5 * q), 0.0)  # [C, PIX]
        # dL/dc = Σ_p w v;  dL/dw = c · v;  dL/dq = -½ w dL/dw.
        g_cr = tl.sum(w * vr[None, :], axis=1)  # [C]
        g_cg = tl.sum(w * vg[None, :], axis=1)
        g_cb = tl.sum(w * vb[None, :], axis=1)
        dq = (
            -0.5
            * w
            * (cr[:, None] * vr[None, :] + cg[:, None] * vg[None, :] + cb[:, None] * vb[None, :])
        )
        # Back through z2 = (dy - l21 z1) / l22 and z1 = dx / l11.
        gz2 = 2.0 * z2 * dq  # [C, PIX]
        gz1 = 2.0 * z1 * dq - gz2 * (l21 * i22)[:, None]
        s1 = tl.sum(gz1, axis=1)  # [C]
        s2 = tl.sum(gz2, axis=1)
        s11 = tl.sum(gz1 * z1, axis=1)
        s21 = tl.sum(gz2 * z1, axis=1)
        s22 = tl.sum(gz2 * z2, axis=1)
        tl.atomic_add(grad_ptr + g, -s1 * i11, mask=live, sem="relaxed")  # mx
        tl.atomic_add(grad_ptr + g + 1, -s2 * i22, mask=live, sem="relaxed")  # my
        tl.atomic_add(grad_ptr + g + 2, -s11 * i11, mask=live, sem="relaxed")  # l11
        tl.atomic_add(grad_ptr + g + 3, -s21 * i22, mask=live, sem="relaxed")  # l21
        tl.atomic_add(grad_ptr + g + 4, -s22 * i22, mask=live, sem="relaxed")  # l22
        tl.atomic_add(grad_ptr + g + 5, g_cr, mask=live, sem="relaxed")
        tl.atomic_add(grad_ptr + g + 6, g_cg, mask=live, sem="relaxed")
        tl.atomic_add(grad_ptr + g + 7, g_cb, mask=live, sem="relaxed")


if triton is not None:
    _forward_kernel = triton.jit(_forward_kernel)
    _backward_kernel = triton.jit(_backward_kernel)


# ----------------------------------------------------------------------------- availability
def interpreted() -> bool:
    """True when the kernels run in triton's CPU interpreter (``TRITON_INTERPRET=1``)."""
    return triton is not None and not isinstance(_forward_kernel, JITFunction)


def _setup_problem() -> str | None:
    """Why triton cannot run at all in this process (independent of devices), or ``None``."""
    if _IMPORT_ERROR is not None:
        return f"triton could not be imported: {_IMPORT_ERROR}"
    # triton.language's own helpers were decorated when triton was imported; ours at our import.
    if (not isinstance(tl.zeros, JITFunction)) != interpreted():
        return (
            "TRITON_INTERPRET changed between importing triton and gsvision.raster.triton; "
            "set it before triton is first imported"
        )
    return None


def unavailable_reason() -> str | None:
    """``None`` if the kernels can run here, else why not."""
    problem = _setup_problem()
    if problem is not None:
        return problem
    if interpreted() or torch.cuda.is_available():
        return None
    return (
        "no CUDA device (set TRITON_INTERPRET=1 before importing triton to run the kernels "
        "slowly on CPU tensors)"
    )


def supports_device(device_type: str) -> bool:
    """Whether :func:`render_triton` runs on tensors of ``device_type`` here.

    ``"cuda"`` when a CUDA device is present; ``"cpu"`` only in interpreter mode.
    """
    if unavailable_reason() is not None:
        return False
    if device_type == "cpu":
        return interpreted()
    return device_type == "cuda" and torch.cuda.is_available()


def _check_runnable(device: torch.device) -> None:
    """Raise unless the kernels can run on tensors of ``device`` here.

    Raises:
        RuntimeError: triton is missing or was imported in a different interpreter mode.
        ValueError: the device is unsupported (e.g. CPU tensors without ``TRITON_INTERPRET=1``).
    """
    problem = _setup_problem()
    if problem is not None:
        raise RuntimeError(f"triton rasteriser unavailable: {problem}")
    if not supports_device(device.type):
        hint = " (set TRITON_INTERPRET=1 before importing triton)" if device.type == "cpu" else ""
        raise ValueError(f"triton rasteriser does not run on {device.type!r} tensors here{hint}")


# ----------------------------------------------------------------------------- launches
def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _acc_type(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _pack(
    mean_px: Tensor,  # [B, N, 2]
    chol_px: Tensor,  # [B, N, 3]
    col: Tensor,  # [B, N, 3]
) -> Tensor:
    """``[B * N, 8]`` contiguous per-Gaussian records ``(mx, my, l11, l21, l22, r, g, b)``."""
    b, n = mean_px.shape[:2]
    dtype = _work_dtype(mean_px.dtype)
    packed = torch.cat([mean_px, chol_px, col], -1).to(dtype)  # [B, N, 8]
    packed = packed.reshape(b * n, _PACK).contiguous()
    if packed.numel() == 0:  # keep a valid pointer for the launch; nothing reads it
        packed = packed.new_zeros(1, _PACK)
    return packed


def _nonempty(ids: Tensor) -> Tensor:
    return ids if ids.numel() else ids.new_zeros(1)


def _launch_forward(params: Tensor, bins: TileBins, out: Tensor, height: int, width: int) -> None:
    grid = (out.shape[0] * bins.tiles_per_image,)
    if grid[0] == 0:
        return
    _forward_kernel[grid](
        params,
        _nonempty(bins.gauss_ids),
        bins.tile_start,
        out,
        height,
        width,
        bins.tiles_x,
        bins.tiles_per_image,
        TILE=bins.tile_size,
        CHUNK=FWD_CHUNK,
        CUTOFF=CUTOFF_Q,
        ACC=_acc_type(params.dtype),
        num_warps=FWD_WARPS,
    )


def _launch_backward(
    params: Tensor, bins: TileBins, grad_out: Tensor, grads: Tensor, height: int, width: int
) -> None:
    grid = (grad_out.shape[0] * bins.tiles_per_image,)
    if grid[0] == 0 or bins.num_pairs == 0:
        return
    _backward_kernel[grid](
        params,
        bins.gauss_ids,
        bins.tile_start,
        grad_out,
        grads,
        height,
        width,
        bins.tiles_x,
        bins.tiles_per_image,
        TILE=bins.tile_size,
        CHUNK=BWD_CHUNK,
        CUTOFF=CUTOFF_Q,
        ACC=_acc_type(params.dtype),
        num_warps=BWD_WARPS,
    )


def rasterize_into(
    out: Tensor,  # [B, H, W, 3] contiguous, any contents; overwritten
    mean_px: Tensor,  # [B, N, 2] centres in pixels
    chol_px: Tensor,  # [B, N, 3] Cholesky factors in pixels
    col: Tensor,  # [B, N, 3] effective colours (opacity folded in)
    counts: Tensor,  # [B] int64 valid slots per image
) -> TileBins:
    """Forward pass only, writing every pixel of ``out`` (no autograd, no zero-fill).

    Args:
        out: destination, float32 or float64 matching the work dtype of the inputs; its
            prior contents are never read, so it may hold anything (tests fill it with NaN).
        mean_px: centres in pixel units.
        chol_px: Cholesky factors in pixel units.
        col: colours times opacities.
        counts: valid leading slots per image.

    Returns:
        The tile bins used (reusable for a backward pass).

    Raises:
        ValueError: for mismatched shapes, a non-contiguous ``out`` or an unsupported device.
    """
    _check_runnable(out.device)
    b, n = mean_px.shape[:2]
    if out.dim() != 4 or out.shape[0] != b or out.shape[3] != 3 or not out.is_contiguous():
        raise ValueError(f"out: expected a contiguous [{b}, H, W, 3] tensor, got {list(out.shape)}")
    if out.dtype != _work_dtype(mean_px.dtype):
        raise ValueError(f"out: expected dtype {_work_dtype(mean_px.dtype)}, got {out.dtype}")
    return _forward(out, mean_px, chol_px, col, counts)[0]


def _forward(
    out: Tensor, mean_px: Tensor, chol_px: Tensor, col: Tensor, counts: Tensor
) -> tuple[TileBins, Tensor]:
    """Bin, pack and launch the forward kernel; return the bins and the ``[B * N, 8]`` records."""
    height, width = out.shape[1:3]
    with torch.no_grad():
        bins = bin_gaussians(mean_px, chol_px, counts, height, width, TILE_SIZE)
        params = _pack(mean_px.detach(), chol_px.detach(), col.detach())
        _launch_forward(params, bins, out, height, width)
    return bins, params


class _Rasterize(torch.autograd.Function):
    """Autograd over the pixel-space inputs; the kernels do both directions."""

    @staticmethod
    def forward(ctx, mean_px, chol_px, col, counts, height, width):
        b = mean_px.shape[0]
        out = torch.empty(
            (b, height, width, 3), dtype=_work_dtype(mean_px.dtype), device=mean_px.device
        )
        bins, params = _forward(out, mean_px, chol_px, col, counts)
        ctx.save_for_backward(params, bins.tile_start, bins.gauss_ids)
        ctx.meta = (bins.tile_size, bins.tiles_x, bins.tiles_y, height, width, mean_px.shape)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        params, tile_start, gauss_ids = ctx.saved_tensors
        tile_size, tiles_x, tiles_y, height, width, shape = ctx.meta
        bins = TileBins(tile_size, tiles_x, tiles_y, tile_start, gauss_ids)
        b, n = shape[:2]
        grads = torch.zeros((max(b * n, 1), _PACK), dtype=params.dtype, device=params.device)
        grad_out = grad_out.to(params.dtype).contiguous()
        _launch_backward(params, bins, grad_out, grads, height, width)
        grads = grads[: b * n].view(b, n, _PACK)
        return grads[..., 0:2], grads[..., 2:5], grads[..., 5:8], None, None, None


def render_triton(splats: Splats, height: int, width: int) -> Tensor:
    """Render ``splats`` at ``height × width`` with the Triton kernels; differentiable.

    Args:
        splats: the batch to draw (CUDA tensors; CPU tensors in interpreter mode); padded slots
            are ignored.
        height: output rows.
        width: output columns.

    Returns:
        ``[B, height, width, 3]`` in the splats' dtype, not clamped.

    Raises:
        RuntimeError: if triton cannot run here.
        ValueError: if the splats' device is not supported.
    """
    _check_runnable(splats.device)
    height, width = int(height), int(width)
    mean_px = splats.pixel_means(height, width)  # [B, N, 2]
    chol_px = splats.pixel_chol(height, width)  # [B, N, 3]
    col = (
        splats.colors if splats.opacities is None else splats.colors * splats.opacities
    )  # [B, N, 3]
    work = _work_dtype(splats.dtype)
    out = _Rasterize.apply(
        mean_px.to(work), chol_px.to(work), col.to(work), splats.counts, height, width
    )
    return out.to(splats.dtype)
