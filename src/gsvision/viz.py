"""Pictures of splats: 1σ ellipse overlays and side-by-side comparison figures.

The 1σ outline of a Gaussian with pixel-space covariance ``Σ = L Lᵀ`` is the curve
``μ + L (cos t, sin t)ᵀ``: with ``z = L⁻¹ d`` the Mahalanobis distance is ``|z|``, so the unit
circle in ``z`` maps exactly onto the points at distance 1. No eigen-decomposition is needed, and
every outline is computed in one vectorised step, then drawn as a closed polyline with PIL.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import Tensor

from gsvision.splats import Splats

__all__ = ["ellipse_outlines", "draw_ellipses", "comparison_figure", "to_pil"]


def to_pil(image: np.ndarray | Tensor | Image.Image) -> Image.Image:
    """An RGB PIL image from ``[H, W, 3]`` / ``[1, H, W, 3]`` floats in [0, 1] or uint8."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    from gsvision.io import _as_uint8

    arr = _as_uint8(image)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    return Image.fromarray(np.ascontiguousarray(arr[..., :3]))


def ellipse_outlines(
    means_px: Tensor,  # [n, 2] centres (x, y) in pixels
    chol_px: Tensor,  # [n, 3] Cholesky factors (l11, l21, l22) in pixels
    segments: int = 24,
    sigma: float = 1.0,
) -> Tensor:
    """Points on each Gaussian's ``sigma``-σ ellipse.

    Returns:
        ``[n, segments + 1, 2]`` closed polylines ``(x, y)`` in pixels (last point = first).
    """
    t = torch.linspace(0, 2 * math.pi, segments + 1, dtype=torch.float64)
    u = torch.stack([t.cos(), t.sin()], -1) * sigma  # [T, 2] unit circle
    m = means_px.detach().double().cpu()
    l11, l21, l22 = chol_px.detach().double().cpu().unbind(-1)  # [n] each
    x = m[:, None, 0] + l11[:, None] * u[None, :, 0]  # L u = (l11 u0, l21 u0 + l22 u1)
    y = m[:, None, 1] + l21[:, None] * u[None, :, 0] + l22[:, None] * u[None, :, 1]
    return torch.stack([x, y], -1)


def draw_ellipses(
    image: np.ndarray | Tensor | Image.Image | None,
    splats: Splats,
    height: int,
    width: int,
    scale: int = 3,
    index: int = 0,
    color: tuple[int, int, int] = (0, 255, 255),
    alpha: int = 180,
    line_width: int = 1,
    halo: int = 110,
    segments: int = 24,
    max_gaussians: int | None = None,
    backend: str | None = None,
) -> Image.Image:
    """Draw every Gaussian's 1σ outline over an image of the splats.

    Args:
        image: the picture under the outlines (usually the render at ``height × width``), or
            ``None`` to render the splats directly at the upscaled size (sharper than resizing).
        splats: the splats; image ``index`` of the batch is drawn.
        height: rows of the raster the splats are drawn for.
        width: columns of that raster.
        scale: the canvas is ``scale`` times larger, so outlines stay legible.
        index: which image of the batch to draw.
        color: outline RGB.
        alpha: outline opacity (0-255); translucent lines keep dense regions readable.
        line_width: in canvas pixels.
        halo: opacity (0-255) of a dark line twice as wide drawn under each outline, so outlines
            read on light and dark regions alike; 0 for none.
        segments: line segments per ellipse.
        max_gaussians: draw only the first this-many valid Gaussians (``None``: all).
        backend: rasteriser backend when ``image`` is ``None``.

    Returns:
        RGB image of size ``(scale·width, scale·height)``.

    Raises:
        ValueError: for a bad index, size or scale.
    """
    if not -splats.batch_size <= index < splats.batch_size:
        raise ValueError(
            f"draw_ellipses: index {index} out of range for {splats.batch_size} images"
        )
    if height <= 0 or width <= 0 or scale < 1:
        raise ValueError(f"draw_ellipses: bad size {height}x{width} or scale {scale}")
    one = splats[index]
    canvas_hw = (height * scale, width * scale)
    if image is None:
        from gsvision.raster import render

        with torch.no_grad():
            image = render(one, *canvas_hw, backend=backend)[0].clamp(0, 1)
    base = to_pil(image)
    if base.size != (canvas_hw[1], canvas_hw[0]):
        base = base.resize((canvas_hw[1], canvas_hw[0]), Image.Resampling.LANCZOS)

    n = int(one.counts[0])
    if max_gaussians is not None:
        n = min(n, max(int(max_gaussians), 0))
    means = one.pixel_means(*canvas_hw)[0, :n]  # [n, 2]
    chol = one.pixel_chol(*canvas_hw)[0, :n]  # [n, 3]
    curves = ellipse_outlines(means, chol, segments).numpy()  # [n, T, 2]
    bound = 1e6  # absurd ellipses still draw (off canvas) without overflowing PIL's coordinates
    curves = np.clip(curves, -bound, bound)

    layer = Image.new("RGBA", base.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    finite = np.isfinite(curves).all(axis=(1, 2))
    polylines = [points.ravel().tolist() for points in curves[finite]]
    if halo > 0:
        for points in polylines:
            draw.line(points, fill=(0, 0, 0, int(halo)), width=line_width + 2)
    for points in polylines:
        draw.line(points, fill=(*color, int(alpha)), width=line_width)
    out = Image.alpha_composite(base.convert("RGBA"), layer)
    return out.convert("RGB")


def _as_float_hw3(image: np.ndarray | Tensor | Image.Image) -> Tensor:
    arr = np.asarray(to_pil(image), dtype=np.float32) / 255.0
    return torch.from_numpy(arr)


def comparison_figure(
    original: np.ndarray | Tensor | Image.Image,
    rendered: np.ndarray | Tensor | Image.Image,
    overlay: np.ndarray | Tensor | Image.Image | None,
    path: str | Path,
    titles: Sequence[str] | None = None,
    suptitle: str | None = None,
    psnr: float | None = None,
    dpi: int = 120,
) -> Path:
    """Save the original, the render and (optionally) the ellipse overlay side by side.

    Args:
        original: the target image, ``[H, W, 3]``.
        rendered: the splat render at the same size.
        overlay: the :func:`draw_ellipses` picture, or ``None`` for two panels.
        path: where to save (format from the suffix, e.g. ``.png``).
        titles: one title per panel (default: "original", "N Gaussians", "1σ ellipses").
        suptitle: figure title; the PSNR is appended to it.
        psnr: PSNR of ``rendered`` against ``original`` in dB; computed when ``None``.
        dpi: resolution of the saved figure.

    Returns:
        The path written.
    """
    from matplotlib.figure import Figure

    from gsvision.metrics import psnr as psnr_fn

    orig_t, rend_t = _as_float_hw3(original), _as_float_hw3(rendered)
    if psnr is None:
        if orig_t.shape != rend_t.shape:
            raise ValueError(
                f"comparison_figure: original {list(orig_t.shape)} and render "
                f"{list(rend_t.shape)} differ in size"
            )
        psnr = float(psnr_fn(rend_t[None], orig_t[None])[0])
    panels = [orig_t.numpy(), rend_t.numpy()]
    if overlay is not None:
        panels.append(np.asarray(to_pil(overlay)))
    names = list(titles) if titles is not None else ["original", "splats", "1σ ellipses"]
    names = (names + [""] * len(panels))[: len(panels)]

    fig = Figure(figsize=(4.0 * len(panels), 4.4), dpi=dpi, layout="constrained")
    axes = fig.subplots(1, len(panels))
    for ax, img, name in zip(np.atleast_1d(axes), panels, names, strict=True):
        ax.imshow(img, interpolation="antialiased")
        ax.set_title(name, fontsize=10)
        ax.set_axis_off()
    head = f"PSNR {psnr:.2f} dB"
    fig.suptitle(f"{suptitle} — {head}" if suptitle else head, fontsize=11)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path
