"""Initial Gaussians for fitting: random, the paper's uniform grid, and a detail-adaptive k-d split.

All three return pixel-space parameters for a batch of images (``[B, N, 2]`` centres, ``[B, N, 3]``
Cholesky factors, ``[B, N, 3]`` colours); :mod:`gsvision.fit.loop` optimises them from there.

- ``random``: centres uniform over the image, isotropic σ sized as the grid's, random colours — the
  "prior implementation" baseline the paper compares against.
- ``grid``: the paper's structured init: centres on a uniform ``√N × √N`` grid (rows and columns
  follow the image's aspect), σ the radius of the largest circle in a cell, colour the cell's mean.
- ``adaptive``: a k-d split of the image into ``N`` cells, always splitting the cell with the largest
  squared error around its mean colour (so busy regions get small cells, flat ones large cells);
  each cell gets one Gaussian sized to it, coloured by its mean.

Under the sum rule neighbouring Gaussians overlap, so a cell's mean colour over-shoots; with
``solve_colors`` the colours are then set by least squares for the initial geometry (colour is linear
in the image, so a few conjugate-gradient steps on the rasteriser find the best colours outright).
"""

from __future__ import annotations

import heapq
import math

import torch
from torch import Tensor

__all__ = ["INIT_METHODS", "initialise", "grid_shape"]

INIT_METHODS = ("random", "grid", "adaptive")
# σ (pixels) of a Gaussian sized to a cell of side `a`: the largest inscribed circle has radius a/2.
_SIGMA_PER_CELL = 0.5


def grid_shape(n: int, height: int, width: int) -> tuple[int, int]:
    """Rows and columns of the largest grid of at most ``n`` cells that follows the aspect ratio."""
    rows = max(1, round(math.sqrt(n * height / width)))
    cols = max(1, n // rows)
    while rows * cols > n:
        rows -= 1
    return rows, cols


def _isotropic(sigma: Tensor) -> Tensor:
    """``[..., 3]`` Cholesky factors of isotropic covariances with std ``sigma`` (pixels)."""
    return torch.stack([sigma, torch.zeros_like(sigma), sigma], -1)


def _cell_means(image: Tensor, boxes: Tensor) -> Tensor:
    """Mean colour of each box ``(y0, x0, y1, x1)`` (ints, pixels) via a summed-area table.

    Args:
        image: ``[H, W, 3]``.
        boxes: ``[M, 4]`` int64.

    Returns:
        ``[M, 3]``.
    """
    sat = torch.nn.functional.pad(image.double().cumsum(0).cumsum(1), (0, 0, 1, 0, 1, 0))
    y0, x0, y1, x1 = boxes.unbind(-1)
    total = sat[y1, x1] - sat[y0, x1] - sat[y1, x0] + sat[y0, x0]
    area = ((y1 - y0) * (x1 - x0)).clamp_min(1).double()[:, None]
    return (total / area).to(image.dtype)


def _grid(image: Tensor, n: int, gen: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    h, w = image.shape[:2]
    rows, cols = grid_shape(n, h, w)
    ys = torch.linspace(0, h, rows + 1, dtype=torch.float64)
    xs = torch.linspace(0, w, cols + 1, dtype=torch.float64)
    yy, xx = torch.meshgrid((ys[:-1] + ys[1:]) / 2, (xs[:-1] + xs[1:]) / 2, indexing="ij")
    centres = torch.stack([xx.flatten(), yy.flatten()], -1)
    cell = min(h / rows, w / cols)
    sigma = torch.full((rows * cols,), _SIGMA_PER_CELL * cell, dtype=torch.float64)
    extra = n - rows * cols  # fewer than one row/column short: place them at random
    if extra:
        more = torch.rand(extra, 2, generator=gen, dtype=torch.float64) * torch.tensor([w, h])
        centres = torch.cat([centres, more])
        sigma = torch.cat([sigma, sigma[:extra]])
    boxes = _boxes_around(centres, sigma / _SIGMA_PER_CELL, h, w)
    return centres, _isotropic(sigma), _cell_means(image, boxes).double()


def _boxes_around(centres: Tensor, side: Tensor, h: int, w: int) -> Tensor:
    """Integer pixel boxes of side ``side`` around ``centres`` (at least one pixel, inside the image)."""
    half = (side / 2)[:, None]
    lo = (centres - half).floor().long()
    hi = (centres + half).ceil().long()
    x0 = lo[:, 0].clamp(0, w - 1)
    y0 = lo[:, 1].clamp(0, h - 1)
    x1 = torch.maximum(hi[:, 0].clamp(1, w), x0 + 1)
    y1 = torch.maximum(hi[:, 1].clamp(1, h), y0 + 1)
    return torch.stack([y0, x0, y1, x1], -1)


def _random(image: Tensor, n: int, gen: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    h, w = image.shape[:2]
    rows, cols = grid_shape(n, h, w)
    centres = torch.rand(n, 2, generator=gen, dtype=torch.float64) * torch.tensor([w, h])
    sigma = torch.full((n,), _SIGMA_PER_CELL * min(h / rows, w / cols), dtype=torch.float64)
    colors = torch.rand(n, 3, generator=gen, dtype=torch.float64)
    return centres, _isotropic(sigma), colors


def _adaptive(image: Tensor, n: int, gen: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """k-d split: repeatedly halve (along its longer side) the cell with the largest squared error."""
    h, w = image.shape[:2]
    img = image.double()
    pad = (0, 0, 1, 0, 1, 0)
    s1 = torch.nn.functional.pad(img.cumsum(0).cumsum(1), pad).numpy()
    s2 = torch.nn.functional.pad((img * img).cumsum(0).cumsum(1), pad).numpy()

    def sse(y0: int, x0: int, y1: int, x1: int) -> float:
        area = (y1 - y0) * (x1 - x0)
        t1 = s1[y1, x1] - s1[y0, x1] - s1[y1, x0] + s1[y0, x0]
        t2 = s2[y1, x1] - s2[y0, x1] - s2[y1, x0] + s2[y0, x0]
        return float((t2 - t1 * t1 / area).sum())

    # Max-heap on error; ties broken by insertion order so the result is deterministic.
    heap: list[tuple[float, int, tuple[int, int, int, int]]] = []
    order = 0
    heapq.heappush(heap, (-sse(0, 0, h, w), order, (0, 0, h, w)))
    done: list[tuple[int, int, int, int]] = []  # single-pixel cells cannot split
    while heap and len(heap) + len(done) < n:
        _, _, (y0, x0, y1, x1) = heapq.heappop(heap)
        if y1 - y0 == 1 and x1 - x0 == 1:
            done.append((y0, x0, y1, x1))
            continue
        if x1 - x0 >= y1 - y0:
            xm = (x0 + x1) // 2
            halves = [(y0, x0, y1, xm), (y0, xm, y1, x1)]
        else:
            ym = (y0 + y1) // 2
            halves = [(y0, x0, ym, x1), (ym, x0, y1, x1)]
        for box in halves:
            order += 1
            heapq.heappush(heap, (-sse(*box), order, box))
    cells = done + [box for _, _, box in heap]
    boxes = torch.tensor(cells, dtype=torch.int64)
    y0, x0, y1, x1 = boxes.double().unbind(-1)
    centres = torch.stack([(x0 + x1) / 2, (y0 + y1) / 2], -1)
    zeros = torch.zeros_like(x0)
    chol = torch.stack([_SIGMA_PER_CELL * (x1 - x0), zeros, _SIGMA_PER_CELL * (y1 - y0)], -1)
    return centres, chol, _cell_means(image, boxes).double()


_METHODS = {"random": _random, "grid": _grid, "adaptive": _adaptive}


def initialise(
    images: Tensor,  # [B, H, W, 3] in [0, 1]
    n: int,
    method: str = "adaptive",
    seed: int = 0,
    valid_sizes: Tensor | None = None,  # [B, 2] (h, w) of each image inside a padded batch
) -> tuple[Tensor, Tensor, Tensor]:
    """Initial pixel-space Gaussians for every image of a batch.

    Args:
        images: the targets, ``[B, H, W, 3]``.
        n: Gaussians per image.
        method: one of :data:`INIT_METHODS`.
        seed: seeds the random parts (random init; the few leftover grid points).
        valid_sizes: for a padded batch, the real ``(h, w)`` of each image at the top-left of the
            canvas; Gaussians are placed inside it only. Default: the whole canvas.

    Returns:
        ``(means_px [B, N, 2], chol_px [B, N, 3], colors [B, N, 3])`` on the images' device and
        dtype; colours are cell means (not yet least-squares solved).
    """
    if method not in _METHODS:
        raise ValueError(f"unknown init method {method!r}; choose from {INIT_METHODS}")
    b, h, w, _ = images.shape
    gen = torch.Generator().manual_seed(seed)
    out = []
    cpu = images.detach().cpu()
    for i in range(b):
        hi, wi = (h, w) if valid_sizes is None else (int(v) for v in valid_sizes[i])
        out.append(_METHODS[method](cpu[i, :hi, :wi], n, gen))
    means, chol, colors = (torch.stack(parts).to(images) for parts in zip(*out, strict=True))
    return means, chol, colors
