"""Image-quality metrics on ``[B, H, W, 3]`` tensors with values in ``[0, 1]``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["psnr", "ssim", "mse"]


def mse(pred: Tensor, target: Tensor) -> Tensor:
    """Per-image mean squared error, ``[B]``."""
    return ((pred - target) ** 2).flatten(1).mean(1)


def psnr(pred: Tensor, target: Tensor, max_value: float = 1.0) -> Tensor:
    """Per-image PSNR in dB, ``[B]``; ``pred`` is clamped to ``[0, max_value]`` first."""
    err = mse(pred.clamp(0, max_value), target).clamp_min(1e-12)
    return 10 * torch.log10(max_value**2 / err)


def _gaussian_window(size: int, sigma: float, dtype: torch.dtype, device) -> Tensor:
    x = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def ssim(pred: Tensor, target: Tensor, max_value: float = 1.0) -> Tensor:
    """Per-image SSIM (Wang et al. 2004: 11×11 Gaussian window, σ = 1.5), averaged over channels.

    Args:
        pred: ``[B, H, W, C]``; clamped to ``[0, max_value]``.
        target: ``[B, H, W, C]``.

    Returns:
        ``[B]`` SSIM in ``[-1, 1]``.
    """
    x = pred.clamp(0, max_value).permute(0, 3, 1, 2)  # [B, C, H, W]
    y = target.permute(0, 3, 1, 2)
    c = x.shape[1]
    size = min(11, x.shape[-1], x.shape[-2])
    g = _gaussian_window(size, 1.5, x.dtype, x.device)
    kernel_h = g.view(1, 1, 1, size).expand(c, 1, 1, size)
    kernel_v = g.view(1, 1, size, 1).expand(c, 1, size, 1)

    def blur(t: Tensor) -> Tensor:
        return F.conv2d(F.conv2d(t, kernel_h, groups=c), kernel_v, groups=c)

    c1, c2 = (0.01 * max_value) ** 2, (0.03 * max_value) ** 2
    mu_x, mu_y = blur(x), blur(y)
    sxx = blur(x * x) - mu_x**2
    syy = blur(y * y) - mu_y**2
    sxy = blur(x * y) - mu_x * mu_y
    num = (2 * mu_x * mu_y + c1) * (2 * sxy + c2)
    den = (mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2)
    return (num / den).flatten(1).mean(1)
