"""Gaussians not worth their bytes, dropped before coding (encoder only; any reader decodes the rest).

A fit spends its Gaussians where the fitting loss pointed, not where the payload's bytes buy the
most: a few percent of them change the image by much less than their share of the payload is
worth. Each Gaussian costs about ``1/N`` of the payload, and along the codec's rate–distortion
front 1% more bytes buys about 1% less squared error (0.045 dB at N = 1,024; ``gsvision bench
codec``), so a Gaussian whose removal raises the image's summed squared error ``E`` by less than
``E / N`` is worth less than it costs. :func:`rd_pruned` drops those below ``κ · E / N``, with the
exact change of the linear render's error for each (each judged with all the others present);
the closed-loop encoder (:mod:`gsvision.codec.rate`) then refines the geometry and re-solves the
colours of the rest, which absorb part of what was removed.

The closed loop then wins back part of what was dropped (the neighbours' geometry is refined and
their colours re-solved), and more of it the more Gaussians overlap: the best threshold grows with
N. :func:`kappa_for` sets ``κ = 1.5`` at N ≤ 100, rising by 0.625 per doubling to 4 at
N ≥ 1,600. Measured on the six sample photos at 224² against the 0.5 used before (closed loop, the
level's own PSNR-per-byte slope converting bytes into dB): N = 100 `9-5-5-7` −4.8% bytes for
−0.13 dB, +0.04 dB at equal bytes (κ = 2.5 loses 0.01, 4 loses 0.14); N = 400 `9-5-5-7` κ = 2.5
−5.1% for −0.15 dB, +0.07 dB at equal bytes (1.5: +0.05; 4: 0.00); N = 1,600 `xlow` κ = 4 −4.4%
for −0.10 dB, +0.12 dB at equal bytes (2.5: +0.10; 6: +0.10).
"""

from __future__ import annotations

import torch
from torch import Tensor

from gsvision.codec.colour_rd import footprints
from gsvision.fit.prune import keep_only
from gsvision.splats import Splats

__all__ = ["kappa_for", "removal_costs", "rd_pruned"]

KAPPA_AT_100 = 1.5  # κ at N ≤ 100 Gaussians ...
KAPPA_PER_DOUBLING = 0.625  # ... rising this much per doubling of N ...
KAPPA_MAX = 4.0  # ... up to this (N ≥ 1,600)


def kappa_for(counts: Tensor) -> Tensor:
    """The threshold :func:`rd_pruned` uses for images of ``counts`` Gaussians (same shape)."""
    n = counts.double().clamp_min(1)
    return (KAPPA_AT_100 + KAPPA_PER_DOUBLING * torch.log2(n / 100)).clamp(KAPPA_AT_100, KAPPA_MAX)


def removal_costs(splats: Splats, images: Tensor) -> tuple[Tensor, Tensor]:
    """What removing each Gaussian alone would add to its image's summed squared error.

    Args:
        splats: ``B`` images of one size, on any device.
        images: the ``[B, H, W, 3]`` images they were fitted to, in ``[0, 1]``.

    Returns:
        ``([B, N] float64 costs, +inf in padding; [B] each image's summed squared error)``, on
        the CPU, for the render before clamping: ``|c|² ‖w‖² − 2 c · (W r)`` with ``w`` the
        Gaussian's footprint and ``r`` the residual.

    Raises:
        ValueError: if ``images`` is not ``[B, H, W, 3]`` at the size every image was fitted at,
            or the splats are invalid (NaNs, wrong shapes: :meth:`Splats.validate`).
    """
    splats.validate()
    if images.dim() != 4 or images.shape[0] != splats.batch_size or images.shape[3] != 3:
        raise ValueError(
            f"removal_costs: images must be [{splats.batch_size}, H, W, 3], got {tuple(images.shape)}"
        )
    h, w = (int(v) for v in images.shape[1:3])
    if bool((splats.image_sizes.cpu() != torch.tensor([h, w])).any()):
        raise ValueError(
            f"removal_costs: images are {h}x{w} but the splats were fitted at "
            f"{splats.image_sizes.tolist()}"
        )
    folded = splats.fold_opacity()
    costs = torch.full((splats.batch_size, splats.capacity), float("inf"), dtype=torch.float64)
    errors = torch.zeros(splats.batch_size, dtype=torch.float64)
    means_px = folded.pixel_means(h, w).detach().double().cpu()
    chol_px = folded.pixel_chol(h, w).detach().double().cpu()
    colors = folded.colors.detach().double().cpu()
    for b in range(splats.batch_size):
        n = int(splats.counts[b])
        target = images[b].detach().double().cpu().reshape(-1, 3)
        if n == 0:
            errors[b] = (target**2).sum()
            continue
        wm, diag = footprints(means_px[b, :n], chol_px[b, :n], h, w)
        c = colors[b, :n]
        residual = torch.mm(wm.t(), c) - target  # the linear render's error, [h·w, 3]
        errors[b] = (residual**2).sum()
        costs[b, :n] = diag * (c**2).sum(1) - 2 * ((wm @ residual) * c).sum(1)
    return costs, errors


def rd_pruned(splats: Splats, images: Tensor, kappa: float | None = None) -> tuple[Splats, Tensor]:
    """The batch without the Gaussians whose removal would cost less than ``kappa · E / N``.

    Args:
        splats: ``B`` images of one size (opacities folded or not), on any device.
        images: the ``[B, H, W, 3]`` images they were fitted to, in ``[0, 1]``.
        kappa: the threshold in units of the mean error per Gaussian; ``0`` drops only
            Gaussians whose removal would lower the error; ``None``: :func:`kappa_for` each
            image's count.

    Returns:
        ``(the kept Gaussians in their original order, same capacity and device; [B] number
        dropped per image)``. Every image keeps at least its most useful Gaussian.

    Raises:
        ValueError: if ``images`` do not match the splats (see :func:`removal_costs`) or
            ``kappa`` is negative or not finite.
    """
    if kappa is not None and not 0 <= kappa < float("inf"):
        raise ValueError(f"rd_pruned: kappa must be finite and ≥ 0, got {kappa}")
    costs, errors = removal_costs(splats, images)
    counts = splats.counts.cpu().clamp_min(1).double()
    kappas = kappa_for(counts) if kappa is None else torch.full_like(counts, kappa)
    keep = costs >= (kappas * errors / counts)[:, None]
    best = costs.masked_fill(costs.isinf(), float("-inf")).argmax(1)
    keep[torch.arange(splats.batch_size), best] = True  # padding is dropped by keep_only
    out = keep_only(splats, keep.to(splats.device))
    return out, splats.counts - out.counts
