"""Error-guided relocation: during fitting, move the faintest Gaussians to where the error is.

Gradient descent moves a Gaussian only as far as its gradient reaches: one that starts in a flat
region (or fades there) stays nearly useless, while edges and texture elsewhere stay under-fitted.
Every so often in the first part of a fit, :func:`relocate` takes a small fraction of each image's
Gaussians with the faintest colours (they contribute least), and re-seeds them as small isotropic
Gaussians at pixels drawn with probability proportional to the current squared error, coloured by
the residual there; their Adam moments are reset so they start afresh. N stays fixed, so nothing
downstream (codec, model) changes. Measured on the six sample photos at 224², 1,000 iterations:
+1.0 dB at N = 1,024, +0.5 dB at N = 256 (docs/benchmarks.md, "Fitting quality").
"""

from __future__ import annotations

import torch
from torch import Tensor

from gsvision.raster import render
from gsvision.splats import Splats

__all__ = ["relocate", "relocation_steps"]

#: Rounds happen every ``iters // ROUNDS`` steps, in the first ``until`` fraction of the fit.
ROUNDS = 20
#: Fits shorter than this do not relocate (moved Gaussians need time to settle).
MIN_ITERS = 100
_SIGMA = 1.0  # σ (pixels) of a re-seeded Gaussian


def relocation_steps(iters: int, until: float) -> set[int]:
    """The steps after which a relocation round runs, for a fit of ``iters`` steps."""
    if iters < MIN_ITERS or until <= 0:
        return set()
    every = max(1, iters // ROUNDS)
    return set(range(every, int(until * iters), every))


@torch.no_grad()
def relocate(
    params: list[Tensor],
    opt: torch.optim.Adam,
    splats: Splats,
    targets: Tensor,
    pixel_mask: Tensor,
    images: Tensor,
    fraction: float,
    generator: torch.Generator,
    backend: str | None = None,
) -> None:
    """Re-seed the faintest ``fraction`` of the Gaussians of ``images`` at high-error pixels.

    Args:
        params: ``[means_px, chol_px, colors]`` being optimised, ``[B, N, ·]``, changed in place.
        opt: their Adam optimiser (the moved Gaussians' moments are reset).
        splats: the current batch (for the render of the residual).
        targets: ``[B, H, W, 3]``; ``pixel_mask``: ``[B, H, W]`` (padding excluded).
        images: indices of the images to relocate in (e.g. those still being fitted).
        fraction: share of each image's Gaussians moved.
        generator: draws the pixels (on the parameters' device; one ``H·W`` draw per call).
    """
    means, chol, colors = params
    n = colors.shape[1]
    k = min(n, max(1, int(fraction * n)))
    if images.numel() == 0:
        return
    h, w = targets.shape[1:3]
    residual = (targets[images] - render(splats[images], h, w, backend)) * pixel_mask[
        images, ..., None
    ]
    # k pixels drawn without replacement with probability ∝ error (Gumbel top-k); one noise field
    # for every image, so an image's draws do not depend on what else is in the batch
    error = (residual * residual).sum(-1).clamp_min(1e-12).log()
    error = error.masked_fill(~pixel_mask[images], -torch.inf).flatten(1)
    u = torch.rand(h * w, generator=generator, device=error.device).clamp_(1e-12, 1 - 1e-7)
    pixels = (error - (-u.log()).log()).topk(k, dim=1).indices  # [b, k]
    faint = colors[images].abs().sum(-1).topk(k, dim=1, largest=False).indices  # [b, k]
    rows = images[:, None].expand(-1, k)
    means[rows, faint] = torch.stack([pixels % w, pixels // w], -1).to(means) + 0.5
    sigma = torch.tensor([_SIGMA, 0.0, _SIGMA], dtype=chol.dtype, device=chol.device)
    chol[rows, faint] = sigma
    colors[rows, faint] = residual.flatten(1, 2).gather(1, pixels[..., None].expand(-1, -1, 3))
    for p in params:
        state = opt.state.get(p)
        if not state:
            continue
        state["exp_avg"][rows, faint] = 0
        typical = state["exp_avg_sq"][images].mean(1, keepdim=True).expand(-1, k, -1)
        state["exp_avg_sq"][rows, faint] = typical
