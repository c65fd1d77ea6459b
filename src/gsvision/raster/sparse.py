"""Sparse PyTorch rasteriser: each Gaussian is evaluated only on a patch around it.

The portable fallback for devices without the numba CPU kernel or Triton: plain PyTorch ops, so
it runs wherever PyTorch does (CPU or CUDA) and autograd gives the gradients.

Each valid Gaussian's 3σ box (clipped to the image) is covered by a patch whose width and height
are picked from a short ladder of sizes (4, 6, 8, 12, 16, 24, ...; ×1.5 or ×1.33 per step) and
capped at the image size, so a Gaussian larger than the image is simply evaluated on the whole
image: nothing is ever truncated. Gaussians are grouped by patch shape, evaluated in batches of
at most :data:`MAX_PAIRS_PER_STEP` (Gaussian, pixel) pairs, and scattered into the image with
``index_add_``. The weight is computed with exactly the reference's operations (see
:mod:`gsvision.raster.reference`), so every pixel falls on the same side of the 3σ cut-off.
"""

from __future__ import annotations

import torch
from torch import Tensor

from gsvision.raster.reference import CUTOFF_Q
from gsvision.splats import Splats

__all__ = ["render_sparse", "patch_sizes", "MAX_PAIRS_PER_STEP"]

#: Upper bound on (Gaussian, pixel) pairs evaluated by one group of tensor ops (memory cap).
MAX_PAIRS_PER_STEP = 1 << 22


def patch_sizes(limit: int) -> list[int]:
    """The ladder of patch sides up to and including ``limit``: 4, 6, 8, 12, 16, 24, ..., limit."""
    sizes, k = [], 4
    while k < limit:
        sizes.append(k)
        k = k * 3 // 2 if (k & (k - 1)) == 0 else 1 << k.bit_length()  # 2^a -> 1.5·2^a -> 2^(a+1)
    sizes.append(limit)
    return sizes


def _patch_side(extent: Tensor, limit: int) -> Tensor:
    """Smallest ladder size >= ``extent`` (int64), capped at ``limit``."""
    ladder = torch.tensor(patch_sizes(limit), device=extent.device)
    pick = torch.searchsorted(ladder, extent.clamp(1, limit))
    return ladder[pick]


@torch.no_grad()
def _boxes(
    mean_px: Tensor,  # [B, N, 2]
    chol_px: Tensor,  # [B, N, 3]
    mask: Tensor,  # [B, N] valid slots
    height: int,
    width: int,
) -> tuple[Tensor, ...]:
    """Per Gaussian: drawable flag, patch origin ``(ox, oy)`` and patch side ``(px, py)``.

    The box widens the cut-off by a bound on the rounding error of ``q`` (mostly cancellation in
    ``dy - l21 z1`` for thin, tilted Gaussians) so no pixel the reference lights is left out.
    """
    eps = torch.finfo(mean_px.dtype).eps / 2
    m, lc = mean_px.double(), chol_px.double()
    cx, cy = m.unbind(-1)
    l11, l21, l22 = lc.unbind(-1)
    syy = l21 * l21 + l22 * l22
    growth = 1 + (syy.sqrt() + l21.abs()) / l22.abs()
    cut = CUTOFF_Q * (1 + 1e-5 + 64 * eps * growth)
    hx = cut.sqrt() * l11.abs() + 1e-3
    hy = (cut * syy).sqrt() + 1e-3
    ok = mask & (l11 != 0) & (l22 != 0)
    ok &= torch.isfinite(cx) & torch.isfinite(cy) & torch.isfinite(hx) & torch.isfinite(hy)
    big = float(2 * max(height, width) + 2)  # keeps far-away boxes finite before the casts
    j0 = torch.ceil((cx - hx - 0.5).clamp(-big, big)).clamp_min(0)
    j1 = torch.floor((cx + hx - 0.5).clamp(-big, big)).clamp_max(width - 1)
    i0 = torch.ceil((cy - hy - 0.5).clamp(-big, big)).clamp_min(0)
    i1 = torch.floor((cy + hy - 0.5).clamp(-big, big)).clamp_max(height - 1)
    ok &= (j0 <= j1) & (i0 <= i1)
    j0, j1, i0, i1 = (t.nan_to_num(0).long() for t in (j0, j1, i0, i1))
    px = _patch_side(j1 - j0 + 1, width)
    py = _patch_side(i1 - i0 + 1, height)
    ox = torch.minimum(j0, width - px)  # the patch stays inside the image and covers the box
    oy = torch.minimum(i0, height - py)
    return ok, ox, oy, px, py


def render_sparse(splats: Splats, height: int, width: int) -> Tensor:
    """Render ``splats`` at ``height × width``, evaluating each Gaussian only near itself.

    Args:
        splats: the batch to draw (CPU or CUDA); padded slots (``i >= counts[b]``) contribute
            nothing.
        height: output rows.
        width: output columns.

    Returns:
        ``[B, height, width, 3]`` in the splats' dtype, not clamped; differentiable through
        autograd with respect to every field.
    """
    dtype, device = splats.dtype, splats.device
    nb = splats.batch_size
    mean_px = splats.pixel_means(height, width)  # [B, N, 2]
    chol_px = splats.pixel_chol(height, width)  # [B, N, 3]
    col = splats.colors if splats.opacities is None else splats.colors * splats.opacities
    out = torch.zeros(nb * height * width, 3, dtype=dtype, device=device)
    ok, ox, oy, px, py = _boxes(mean_px, chol_px, splats.mask, height, width)
    shapes = torch.stack([py[ok], px[ok]], -1).unique(dim=0).tolist() if ok.any() else []
    for sy, sx in shapes:
        bi, gi = torch.nonzero(ok & (py == sy) & (px == sx), as_tuple=True)
        step = max(1, MAX_PAIRS_PER_STEP // (sy * sx))
        for s in range(0, bi.numel(), step):
            b, g = bi[s : s + step], gi[s : s + step]
            out.index_add_(
                0, *_splat_patches(b, g, mean_px, chol_px, col, ox, oy, sy, sx, height, width)
            )
    return out.view(nb, height, width, 3)


def _splat_patches(
    b: Tensor,  # [G] image index
    g: Tensor,  # [G] Gaussian index
    mean_px: Tensor,  # [B, N, 2]
    chol_px: Tensor,  # [B, N, 3]
    col: Tensor,  # [B, N, 3]
    ox: Tensor,  # [B, N] patch origins
    oy: Tensor,  # [B, N]
    sy: int,
    sx: int,
    height: int,
    width: int,
) -> tuple[Tensor, Tensor]:
    """Flat pixel indices ``[G*sy*sx]`` and colour contributions ``[G*sy*sx, 3]`` of G patches."""
    dtype, device = mean_px.dtype, mean_px.device
    cols = ox[b, g][:, None] + torch.arange(sx, device=device)  # [G, sx]
    rows = oy[b, g][:, None] + torch.arange(sy, device=device)  # [G, sy]
    mean, chol = mean_px[b, g], chol_px[b, g]  # [G, 2], [G, 3]
    # Same operations, in the same order, as the reference (so q rounds identically).
    dx = (cols.to(dtype) + 0.5) - mean[:, 0, None]  # [G, sx]
    dy = (rows.to(dtype) + 0.5) - mean[:, 1, None]  # [G, sy]
    l11, l21, l22 = (chol[:, k, None, None] for k in range(3))  # [G, 1, 1]
    z1 = dx[:, None, :] / l11  # [G, 1, sx]
    z2 = (dy[:, :, None] - l21 * z1) / l22  # [G, sy, sx]
    q = z1 * z1 + z2 * z2
    zero = torch.zeros((), dtype=dtype, device=device)
    weight = torch.where(q <= CUTOFF_Q, torch.exp(-0.5 * q), zero)  # [G, sy, sx]
    contrib = weight[..., None] * col[b, g][:, None, None, :]  # [G, sy, sx, 3]
    flat = (b[:, None, None] * height + rows[:, :, None]) * width + cols[:, None, :]  # [G, sy, sx]
    return flat.reshape(-1), contrib.reshape(-1, 3)
