"""Tile binning in plain PyTorch: which Gaussians touch which screen tiles.

Every tiled rasteriser needs the same list: for each ``(image, tile)``, the Gaussians whose 3σ
box touches it. It is built here with ordinary tensor ops (so it runs on any device, inside or
outside a kernel backend, and is testable on its own), in four steps, as gsplat's ``isect_tiles``
does on the GPU:

1. cull each valid Gaussian to the tiles its 3σ axis-aligned box covers (a rectangle of tiles);
2. count the ``(Gaussian, tile)`` pairs of each Gaussian and expand them into a flat list;
3. sort the pairs by ``(image, tile)`` key (stable, so Gaussians keep their order within a tile);
4. find where each tile's run of keys starts in the sorted list (a binary search per tile).

Memory grows with the number of pairs ``P``, never with ``N × pixels``.

The box: the ellipse ``q = dᵀ Σ⁻¹ d <= CUTOFF_SIGMA²`` spans ``± CUTOFF_SIGMA · sqrt(Σxx)`` in x
and ``± CUTOFF_SIGMA · sqrt(Σyy)`` in y, with ``Σxx = l11²`` and ``Σyy = l21² + l22²``. A tile is
touched when one of its in-image pixel centres ``(j + .5, i + .5)`` lies in that box widened by
``BOX_SLACK_REL`` (relative) plus ``BOX_SLACK_PX`` (absolute) pixels, so that rounding in the box
arithmetic can never drop a pixel whose ``q`` a kernel computes as ``<= CUTOFF_Q``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from gsvision.raster.reference import CUTOFF_SIGMA

__all__ = ["TILE_SIZE", "BOX_SLACK_PX", "BOX_SLACK_REL", "TileBins", "tile_rects", "bin_gaussians"]

#: Side of a square screen tile, in pixels.
TILE_SIZE = 16
#: Absolute widening of each 3σ box, in pixels (covers float32 rounding up to ~1e5 px coordinates).
BOX_SLACK_PX = 1e-2
#: Relative widening of each 3σ box.
BOX_SLACK_REL = 1e-5


@dataclass
class TileBins:
    """The ``(Gaussian, tile)`` pairs of a batch, grouped by tile.

    Tiles are numbered per image in row-major order, ``t = ty * tiles_x + tx``, and globally as
    ``k = b * tiles_per_image + t``. The pairs of tile ``k`` are
    ``gauss_ids[tile_start[k] : tile_start[k + 1]]``, each a flat index ``b * N + n`` into the
    batch's ``[B * N]`` Gaussians, in increasing order.

    Attributes:
        tile_size: side of a tile in pixels.
        tiles_x: tiles per image row, ``ceil(W / tile_size)``.
        tiles_y: tiles per image column, ``ceil(H / tile_size)``.
        tile_start: ``[B * tiles_per_image + 1]`` int32 offsets into ``gauss_ids``.
        gauss_ids: ``[P]`` int32 flat Gaussian indices, grouped by tile.
    """

    tile_size: int
    tiles_x: int
    tiles_y: int
    tile_start: Tensor  # [B * T + 1] int32
    gauss_ids: Tensor  # [P] int32

    @property
    def tiles_per_image(self) -> int:
        return self.tiles_x * self.tiles_y

    @property
    def num_pairs(self) -> int:
        """``P``: the number of ``(Gaussian, tile)`` pairs."""
        return self.gauss_ids.numel()

    def pairs(self) -> tuple[Tensor, Tensor]:
        """``(tile_key [P], gauss_id [P])`` as int64, the explicit pair list (for tests)."""
        counts = (self.tile_start[1:] - self.tile_start[:-1]).long()  # [B * T]
        keys = torch.arange(counts.numel(), device=counts.device)
        return torch.repeat_interleave(keys, counts), self.gauss_ids.long()


def tile_rects(
    mean_px: Tensor,  # [B, N, 2] centres in pixels
    chol_px: Tensor,  # [B, N, 3] Cholesky factors (l11, l21, l22) in pixels
    counts: Tensor,  # [B] int64 valid Gaussians per image
    height: int,
    width: int,
    tile_size: int = TILE_SIZE,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The rectangle of tiles each Gaussian's (slightly widened) 3σ box touches.

    Args:
        mean_px: centres in pixel units.
        chol_px: Cholesky factors in pixel units.
        counts: valid leading slots per image; the others (and non-finite boxes) are culled.
        height: raster rows.
        width: raster columns.
        tile_size: tile side in pixels.

    Returns:
        ``(tx0, ty0, tx1, ty1, keep)``, each ``[B, N]``: inclusive tile bounds (int64, already
        clipped to the image) and a bool that is False for culled Gaussians (whose bounds are 0).
    """
    b, n = mean_px.shape[:2]
    with torch.no_grad():
        mean = mean_px.detach()
        chol = chol_px.detach()
        mx, my = mean[..., 0], mean[..., 1]  # [B, N]
        sx = CUTOFF_SIGMA * chol[..., 0].abs()  # [B, N] 3σ half-width
        sy = CUTOFF_SIGMA * torch.hypot(chol[..., 1], chol[..., 2])  # [B, N] 3σ half-height
        rx = sx * (1 + BOX_SLACK_REL) + BOX_SLACK_PX
        ry = sy * (1 + BOX_SLACK_REL) + BOX_SLACK_PX
        # Centre j + .5 is in [mx - rx, mx + rx] iff ceil(mx - rx - .5) <= j <= floor(mx + rx - .5).
        j0 = torch.ceil(mx - rx - 0.5)
        j1 = torch.floor(mx + rx - 0.5)
        i0 = torch.ceil(my - ry - 0.5)
        i1 = torch.floor(my + ry - 0.5)
        slots = torch.arange(n, device=mean.device)
        keep = slots[None, :] < counts.to(mean.device)[:, None]  # [B, N]
        # NaN compares False, so non-finite centres or factors are culled here too.
        keep &= (j1 >= 0) & (j0 <= width - 1) & (j0 <= j1)
        keep &= (i1 >= 0) & (i0 <= height - 1) & (i0 <= i1)
        zero = torch.zeros((), dtype=mean.dtype, device=mean.device)

        def tile(v: Tensor, hi: int) -> Tensor:
            v = torch.where(keep, v, zero).clamp(0, hi - 1)  # finite, inside the image
            return v.long() // tile_size

        return tile(j0, width), tile(i0, height), tile(j1, width), tile(i1, height), keep


def bin_gaussians(
    mean_px: Tensor,  # [B, N, 2]
    chol_px: Tensor,  # [B, N, 3]
    counts: Tensor,  # [B] int64
    height: int,
    width: int,
    tile_size: int = TILE_SIZE,
) -> TileBins:
    """List, for every ``(image, tile)``, the valid Gaussians whose 3σ box touches it.

    Runs on the tensors' device with one host synchronisation (to size the pair list).

    Args:
        mean_px: centres in pixel units.
        chol_px: Cholesky factors in pixel units.
        counts: valid leading slots per image; padded slots are never listed.
        height: raster rows.
        width: raster columns.
        tile_size: tile side in pixels.

    Returns:
        The pairs, grouped by tile (see :class:`TileBins`).
    """
    b, n = mean_px.shape[:2]
    device = mean_px.device
    tiles_x = -(-width // tile_size)
    tiles_y = -(-height // tile_size)
    n_tiles = tiles_x * tiles_y
    if b * n_tiles + 1 >= 2**31:
        raise ValueError(f"too many tiles for int32 offsets: {b} images x {n_tiles} tiles")
    tx0, ty0, tx1, ty1, keep = (
        t.reshape(-1) for t in tile_rects(mean_px, chol_px, counts, height, width, tile_size)
    )  # each [B * N]
    ntx = (tx1 - tx0 + 1) * keep  # [B * N] tiles across, 0 if culled
    nty = (ty1 - ty0 + 1) * keep
    per_gauss = ntx * nty  # [B * N]
    total = int(per_gauss.sum())  # the one host sync
    if total >= 2**31:
        raise ValueError(f"too many (Gaussian, tile) pairs for int32 indices: {total}")
    gid = torch.repeat_interleave(
        torch.arange(b * n, device=device), per_gauss, output_size=total
    )  # [P] flat Gaussian index of each pair
    first = torch.cumsum(per_gauss, 0) - per_gauss  # [B * N] exclusive prefix sum
    local = torch.arange(total, device=device) - first[gid]  # [P] pair number within its Gaussian
    width_g = ntx[gid]  # [P]
    tx = tx0[gid] + local % width_g.clamp_min(1)
    ty = ty0[gid] + local // width_g.clamp_min(1)
    key = (gid // max(n, 1)) * n_tiles + ty * tiles_x + tx  # [P] global tile number
    key, order = torch.sort(key, stable=True)
    gauss_ids = gid[order].to(torch.int32)  # [P]
    # Tile k's pairs start at the first sorted key >= k (deterministic, unlike bincount on CUDA).
    bounds = torch.arange(b * n_tiles + 1, device=device)  # [B * T + 1]
    tile_start = torch.searchsorted(key, bounds).to(torch.int32)
    return TileBins(tile_size, tiles_x, tiles_y, tile_start, gauss_ids)
