"""Dense PyTorch rasteriser: the truth every fast kernel is tested against, and the last fallback.

Every Gaussian is evaluated at every pixel (memory ``B × N × H × W``), so keep it to small cases.
The rendering rule, shared by all backends:

    C(p) = Σ_i c_i · o_i · exp(-½ q_i(p))   where q_i(p) = dᵀ Σ_i⁻¹ d,  d = p - μ_i,

summed over the valid Gaussians of the image, with pixel centres at ``(j + .5, i + .5)`` in pixel
units, and a Gaussian's weight set to zero outside its 3σ ellipse (``q > CUTOFF_Q``), which is what
lets the tiled kernels visit only the tiles a Gaussian's 3σ box touches.
"""

from __future__ import annotations

import torch
from torch import Tensor

from gsvision.splats import Splats

__all__ = ["CUTOFF_SIGMA", "CUTOFF_Q", "render_reference", "mahalanobis"]

#: Gaussians are cut off at this many standard deviations.
CUTOFF_SIGMA = 3.0
#: ... i.e. where the squared Mahalanobis distance exceeds this.
CUTOFF_Q = CUTOFF_SIGMA**2


def mahalanobis(
    dx: Tensor,  # [...] x offset from the centre, pixels
    dy: Tensor,  # [...] y offset from the centre, pixels
    l11: Tensor,  # [...]
    l21: Tensor,  # [...]
    l22: Tensor,  # [...]
) -> Tensor:
    """Squared Mahalanobis distance ``dᵀ (L Lᵀ)⁻¹ d``, via ``z = L⁻¹ d`` (forward substitution)."""
    z1 = dx / l11
    z2 = (dy - l21 * z1) / l22
    return z1 * z1 + z2 * z2


def render_reference(splats: Splats, height: int, width: int) -> Tensor:
    """Render ``splats`` at ``height × width``; differentiable through autograd.

    Args:
        splats: the batch to draw; padded slots (``i >= counts[b]``) contribute nothing.
        height: output rows.
        width: output columns.

    Returns:
        ``[B, height, width, 3]`` tensor in the splats' dtype, not clamped.
    """
    dtype, device = splats.dtype, splats.device
    mean_px = splats.pixel_means(height, width)  # [B, N, 2]
    chol_px = splats.pixel_chol(height, width)  # [B, N, 3]
    xs = torch.arange(width, device=device, dtype=dtype) + 0.5  # [W]
    ys = torch.arange(height, device=device, dtype=dtype) + 0.5  # [H]
    dx = xs.view(1, 1, 1, width) - mean_px[..., 0, None, None]  # [B, N, 1, W]
    dy = ys.view(1, 1, height, 1) - mean_px[..., 1, None, None]  # [B, N, H, 1]
    l11, l21, l22 = (chol_px[..., k, None, None] for k in range(3))  # [B, N, 1, 1]
    q = mahalanobis(dx, dy, l11, l21, l22)  # [B, N, H, W]
    inside = (q <= CUTOFF_Q) & splats.mask[..., None, None]
    weight = torch.where(inside, torch.exp(-0.5 * q), torch.zeros((), dtype=dtype, device=device))
    colors = splats.colors if splats.opacities is None else splats.colors * splats.opacities
    return torch.einsum("bnhw,bnc->bhwc", weight, colors)
