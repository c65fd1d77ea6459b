"""Luminance-aware pruning: drop the Gaussians that contribute little light to the image.

The paper trains with ``MSE + λ·‖C‖₁`` (the L1 term pushes unneeded Gaussians' colours towards zero),
then scores each Gaussian by the luminance of its colour, ``s = 0.2126|R| + 0.7152|G| + 0.0722|B|``,
and drops those with ``s < τ``. That score ignores size: a wide, dim Gaussian that lights a whole
flat region scores as low as a tiny dim speck. The ``"footprint"`` score weights luminance by the
Gaussian's area relative to the image area per Gaussian (``2π·det L`` over ``H·W/N``), i.e. by how
much light it actually adds to the image, so ``τ`` keeps its meaning for an average-sized Gaussian.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from gsvision.splats import Splats

__all__ = ["SCORES", "LUMA", "luminance_score", "prune", "keep_only", "l1_penalty"]

#: Rec. 709 luma weights, as in the paper.
LUMA = (0.2126, 0.7152, 0.0722)
SCORES = ("luminance", "footprint")


def luminance_score(splats: Splats, score: str = "luminance") -> Tensor:
    """``[B, N]`` importance of each Gaussian (padded slots score ``-inf``).

    Args:
        splats: the fitted batch.
        score: ``"luminance"`` (the paper's) or ``"footprint"`` (luminance × relative area).
    """
    if score not in SCORES:
        raise ValueError(f"unknown pruning score {score!r}; choose from {SCORES}")
    colors = splats.colors if splats.opacities is None else splats.colors * splats.opacities
    s = (colors.abs() * colors.new_tensor(LUMA)).sum(-1)  # [B, N]
    if score == "footprint":
        # Area of the Gaussian in units of "one image / N": 2π l11 l22 over 1 / count, both normalised.
        area = 2 * math.pi * splats.chol[..., 0] * splats.chol[..., 2]
        s = s * area * splats.counts.clamp_min(1)[:, None].to(area)
    return s.masked_fill(~splats.mask, float("-inf"))


def l1_penalty(colors: Tensor, mask: Tensor) -> Tensor:
    """``[B]`` the paper's ``‖C‖₁`` per image over its valid Gaussians (``colors [B, N, 3]``)."""
    return (colors.abs().sum(-1) * mask).sum(-1)


def prune(splats: Splats, tau: float, score: str = "luminance") -> tuple[Splats, Tensor]:
    """Drop Gaussians scoring below ``tau``; survivors move to the front of each image's slots.

    Args:
        splats: the fitted batch.
        tau: the threshold; ``0`` keeps everything.
        score: see :func:`luminance_score`.

    Returns:
        ``(pruned splats with the same capacity and updated counts, [B] number removed per image)``.
    """
    s = luminance_score(splats, score)
    out = keep_only(splats, s >= tau)
    return out, splats.counts - out.counts


def keep_only(splats: Splats, keep: Tensor) -> Splats:
    """The batch with only the valid Gaussians ``keep`` (``[B, N]`` bool) marks, moved to the
    front of each image's slots in their original order (same capacity, updated counts)."""
    keep = keep & splats.mask
    # Stable sort puts kept slots first, in their original order.
    order = torch.sort((~keep).to(torch.int8), dim=1, stable=True).indices  # [B, N]

    def gather(t: Tensor) -> Tensor:
        return torch.gather(t, 1, order[..., None].expand_as(t))

    return Splats(
        gather(splats.means),
        gather(splats.chol),
        gather(splats.colors),
        keep.sum(1),
        splats.image_sizes,
        None if splats.opacities is None else gather(splats.opacities),
    ).compact(splats.capacity)
