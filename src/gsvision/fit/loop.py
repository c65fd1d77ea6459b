"""Batched fitting: many images in one optimisation, one rasteriser call per step for all of them.

Parameters live in pixel units (centres, Cholesky factors) so learning rates mean the same at any
image size; each step builds normalised :class:`Splats` from them and renders the whole batch.
Adam with per-parameter rates and cosine decay; each image stops on its own when it reaches the
target PSNR (its parameters are then frozen) or when the iteration budget runs out.

Image sizes (``size=``):
- an int ``S``: every image is resized so its shorter side is ``S``, then centre-cropped to
  ``S × S`` (open_clip's preprocessing);
- ``(H, W)``: every image is resized to exactly ``H × W``;
- ``None``: images keep their sizes; a batch of mixed sizes is padded at the bottom and right to the
  largest, the padding is left out of the loss, and each image's splats are stored relative to its
  own size.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from gsvision.fit.init import INIT_METHODS, initialise
from gsvision.fit.prune import SCORES, l1_penalty, prune
from gsvision.fit.relocate import relocate, relocation_steps
from gsvision.metrics import psnr, ssim
from gsvision.raster import render, resolve_backend
from gsvision.splats import Splats

__all__ = [
    "FitConfig",
    "FitResult",
    "MAX_IMAGE_PIXELS",
    "finetune",
    "fit",
    "prepare_images",
    "refit_colors",
]

#: Largest image (pixels) the fitter accepts after resizing.
MAX_IMAGE_PIXELS = 4096 * 4096


@dataclass
class FitConfig:
    """Settings of one fitting run (see :func:`fit` for their meaning)."""

    n_gaussians: int = 1024
    iters: int = 1000
    target_psnr: float | None = None
    init: str = "adaptive"  # structured init method, see gsvision.fit.init
    solve_colors: bool = True  # least-squares colours for the initial geometry
    lr_means: float = 0.5  # pixels per step (Adam)
    lr_chol: float = 0.2  # pixels per step
    lr_colors: float = 0.02
    lr_final: float = 0.01  # cosine decay down to this fraction of each rate
    chol_range: tuple[float, float] = (0.3, 80.0)  # clamp of the Cholesky diagonal, pixels
    l1: float = 0.0  # λ of the paper's λ·‖C‖₁ (per image, summed over Gaussians)
    relocate: float = 0.05  # share of Gaussians moved to high-error pixels per round (0: off)
    relocate_until: float = 0.5  # relocation rounds happen in this first fraction of the fit
    prune_tau: float = 0.0  # τ: drop Gaussians scoring below it after fitting
    prune_score: str = "luminance"  # or "footprint" (luminance × relative area)
    finetune_iters: int = 0  # steps after pruning, at the final learning rates
    check_every: int = 10  # how often to test the target PSNR
    seed: int = 0
    backend: str | None = None


@dataclass
class FitResult:
    """What :func:`fit` returns.

    Attributes:
        splats: the fitted batch (``image_sizes`` = the size each image was fitted at).
        metrics: one dict per image: ``psnr``, ``ssim``, ``iterations``, ``seconds``,
            ``n_gaussians`` (after pruning), ``pruned``.
        targets: ``[B, H, W, 3]`` the (resized, padded) images that were fitted, in ``[0, 1]``.
        config: the settings used.
    """

    splats: Splats
    metrics: list[dict]
    targets: Tensor
    config: FitConfig = field(default_factory=FitConfig)


# ---------------------------------------------------------------------------------------- images
def _as_float_image(image, index: int) -> Tensor:
    """One image as a float ``[H, W, 3]`` tensor in ``[0, 1]``; raises naming the image."""
    if not isinstance(image, (np.ndarray, Tensor)):
        raise ValueError(
            f"image {index}: expected a numpy array or tensor, got {type(image).__name__}"
        )
    shape = tuple(image.shape)
    if len(shape) not in (2, 3) or (len(shape) == 3 and shape[-1] not in (1, 3, 4)):
        raise ValueError(f"image {index}: expected shape [H, W, 3], got {list(shape)}")
    if shape[0] == 0 or shape[1] == 0:
        raise ValueError(f"image {index}: zero-sized ({shape[0]}x{shape[1]})")
    if shape[0] * shape[1] > MAX_IMAGE_PIXELS:
        raise ValueError(
            f"image {index}: {shape[0]}x{shape[1]} exceeds {MAX_IMAGE_PIXELS} pixels; "
            "resize it first"
        )
    if isinstance(image, np.ndarray):
        if image.dtype == np.uint8:
            t = torch.from_numpy(np.array(image, copy=True)).float() / 255
        elif image.dtype == np.uint16:
            t = torch.from_numpy(image.astype(np.float32)) / 65535
        elif np.issubdtype(image.dtype, np.floating):
            t = torch.from_numpy(np.array(image, dtype=np.float32, copy=True))
        else:
            raise ValueError(f"image {index}: unsupported dtype {image.dtype}")
    else:
        t = image.float() / 255 if image.dtype == torch.uint8 else image.float()
    if not torch.isfinite(t).all():
        raise ValueError(f"image {index}: contains NaN or infinite values")
    if t.dim() == 2:
        t = t[..., None]
    if t.shape[-1] == 1:
        t = t.expand(-1, -1, 3)
    elif t.shape[-1] == 4:  # composite on white, as gsvision.io does
        t = t[..., :3] * t[..., 3:] + (1 - t[..., 3:])
    return t


def _resize(t: Tensor, size: int | tuple[int, int]) -> Tensor:
    x = t.permute(2, 0, 1)[None]
    h, w = x.shape[-2:]
    if isinstance(size, int):
        scale = size / min(h, w)
        nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
        if (nh, nw) != (h, w):
            x = F.interpolate(x, (nh, nw), mode="bicubic", antialias=True, align_corners=False)
        top, left = (nh - size) // 2, (nw - size) // 2
        x = x[..., top : top + size, left : left + size]
    elif tuple(size) != (h, w):
        x = F.interpolate(x, tuple(size), mode="bicubic", antialias=True, align_corners=False)
    return x[0].permute(1, 2, 0).clamp(0, 1)


def prepare_images(
    images: Tensor | np.ndarray | Sequence, size: int | tuple[int, int] | None = None
) -> tuple[Tensor, Tensor]:
    """Turn the user's images into one padded float batch, per the module's sizing rules.

    Returns:
        ``(batch [B, H, W, 3] in [0, 1], sizes [B, 2] the real (h, w) of each image)``.

    Raises:
        ValueError: naming the first bad image (wrong shape or dtype, zero-sized, NaN, too large).
    """
    if isinstance(images, (Tensor, np.ndarray)) and images.ndim == 4:
        images = list(images)
    if isinstance(images, (Tensor, np.ndarray)):
        images = [images]
    if len(images) == 0:
        raise ValueError("fit: no images given")
    if size is not None:
        size = int(size) if isinstance(size, (int, np.integer)) else tuple(int(s) for s in size)
        if min([size] if isinstance(size, int) else size) <= 0:
            raise ValueError(f"fit: size must be positive, got {size}")
    ts = [_as_float_image(im, i) for i, im in enumerate(images)]
    if size is not None:
        ts = [_resize(t, size) for t in ts]
    sizes = torch.tensor([t.shape[:2] for t in ts], dtype=torch.int64)
    h, w = (int(v) for v in sizes.max(0).values)
    batch = torch.zeros(len(ts), h, w, 3)
    for i, t in enumerate(ts):
        batch[i, : t.shape[0], : t.shape[1]] = t
    return batch, sizes


# ---------------------------------------------------------------------------------------- helpers
def _splats(means_px: Tensor, chol_px: Tensor, colors: Tensor, counts: Tensor, hw) -> Splats:
    """Pixel-space parameters on an ``H × W`` canvas → normalised Splats (differentiable)."""
    h, w = hw
    # per-channel scalars, not small tensors made from lists: on a GPU each of those is a
    # host-to-device copy that waits for the queue, three times per optimisation step
    means = torch.cat([means_px[..., :1] / w, means_px[..., 1:] / h], -1)
    chol = torch.cat([chol_px[..., :1] / w, chol_px[..., 1:] / h], -1)
    sizes = torch.stack([torch.full_like(counts, h), torch.full_like(counts, w)], -1)
    return Splats(means, chol, colors, counts, sizes)


def _solve_colors(
    means_px: Tensor,
    chol_px: Tensor,
    colors: Tensor,
    target: Tensor,
    mask: Tensor,
    backend,
    steps=8,
    counts: Tensor | None = None,
) -> Tensor:
    """Least-squares colours for fixed geometry: a few conjugate-gradient steps on AᵀA c = Aᵀ y.

    ``A`` (pixels × Gaussians) is the rasteriser's weight matrix; it is applied through
    :func:`render` and ``Aᵀ`` through its gradient, so any backend serves.
    """
    b, h, w, _ = target.shape
    if counts is None:
        counts = torch.full((b,), means_px.shape[1], dtype=torch.int64, device=target.device)
    m = mask[..., None].to(target)  # [B, H, W, 1] pixels in the loss

    def a(c: Tensor) -> Tensor:
        return render(_splats(means_px, chol_px, c, counts, (h, w)), h, w, backend) * m

    def at(r: Tensor) -> Tensor:
        c = torch.zeros_like(colors, requires_grad=True)
        with torch.enable_grad():
            out = a(c)
            (g,) = torch.autograd.grad((out * r).sum(), c)
        return g

    def dot(u: Tensor, v: Tensor) -> Tensor:  # per image and channel: [B, 1, 3]
        return (u * v).sum(1, keepdim=True)

    x = colors.clone()
    r = at(target * m - a(x))
    p = r.clone()
    rr = dot(r, r)
    for _ in range(steps):
        ap = at(a(p))
        alpha = rr / dot(p, ap).clamp_min(1e-20)
        x = x + alpha * p
        r = r - alpha * ap
        rr_new = dot(r, r)
        p = r + (rr_new / rr.clamp_min(1e-20)) * p
        rr = rr_new
    return x


@torch.no_grad()
def refit_colors(splats: Splats, targets: Tensor, steps: int = 8, backend=None) -> Splats:
    """Least-squares colours for the splats' fixed geometry (e.g. after quantising it).

    Args:
        splats: ``B`` images, all fitted at the ``H × W`` of ``targets`` (valid Gaussians only
            are used; padded slots keep their colours).
        targets: ``[B, H, W, 3]`` images in ``[0, 1]``.
        steps: conjugate-gradient steps.
    """
    b, h, w, _ = targets.shape
    if splats.capacity == 0:
        return splats
    if any(int(s) != v for row in splats.image_sizes for s, v in zip(row, (h, w), strict=True)):
        raise ValueError("refit_colors: splats must be fitted at the targets' size")
    mask = torch.ones(b, h, w, dtype=torch.bool, device=targets.device)
    colors = _solve_colors(
        splats.means * splats.means.new_tensor([w, h]),
        splats.pixel_chol(h, w),
        splats.colors * splats.mask[..., None],
        targets,
        mask,
        backend,
        steps,
        splats.counts,
    )
    colors = torch.where(splats.mask[..., None], colors, splats.colors)
    return Splats(splats.means, splats.chol, colors, splats.counts, splats.image_sizes)


def _cosine(step: int, total: int, final: float) -> float:
    return final + (1 - final) * 0.5 * (1 + math.cos(math.pi * min(step, total) / max(total, 1)))


# ---------------------------------------------------------------------------------------- fit
def fit(
    images: Tensor | np.ndarray | Sequence,
    n_gaussians: int = 1024,
    *,
    iters: int = 1000,
    target_psnr: float | None = None,
    size: int | tuple[int, int] | None = None,
    init: str = "adaptive",
    relocate: float = 0.05,
    l1: float = 0.0,
    prune_tau: float = 0.0,
    prune_score: str = "luminance",
    finetune_iters: int = 0,
    seed: int = 0,
    backend: str | None = None,
    device: str | torch.device | None = None,
    progress: bool = False,
    config: FitConfig | None = None,
) -> FitResult:
    """Fit a batch of images with ``n_gaussians`` Gaussians each, in one optimisation.

    Args:
        images: uint8 or float (``[0, 1]``) images ``[H, W, 3]`` (grayscale ``[H, W]`` and RGBA are
            converted): a list, or a ``[B, H, W, 3]`` array/tensor. Sizes: see the module docstring.
        n_gaussians: Gaussians per image (at most the pixel count of the smallest image).
        iters: iteration budget per image.
        target_psnr: stop an image once it reaches this PSNR (dB); ``None`` runs the full budget.
        size: ``int`` (shorter side + centre crop), ``(H, W)``, or ``None`` (keep sizes).
        init: ``"adaptive"`` (default; the best measured), ``"grid"`` (the paper's) or ``"random"``.
        relocate: share of each image's Gaussians that error-guided relocation moves per round
            (:mod:`gsvision.fit.relocate`; +0.5 to +1 dB at 1,000 iterations); 0 turns it off.
        l1: λ of the L1 colour penalty that prepares pruning.
        prune_tau: τ; Gaussians scoring below it are dropped after fitting (0: none).
        prune_score: ``"luminance"`` (the paper's) or ``"footprint"``.
        finetune_iters: optimisation steps after pruning.
        seed: makes the run deterministic.
        backend: rasteriser backend (default: the fastest that runs on ``device``).
        device: where to fit (default: the input tensor's device, else CUDA if present, else CPU).
        progress: show a tqdm bar over iterations.
        config: a :class:`FitConfig` whose fields the keyword arguments above override.

    Returns:
        :class:`FitResult` with the splats, per-image metrics and the fitted targets.

    Raises:
        ValueError: for bad images (naming the index), ``n_gaussians`` < 1 or above the pixel
            count, unknown init or pruning score.
    """
    cfg = FitConfig(**vars(config)) if config is not None else FitConfig()
    overrides = dict(
        n_gaussians=n_gaussians, iters=iters, target_psnr=target_psnr, init=init,
        relocate=relocate, l1=l1,
        prune_tau=prune_tau, prune_score=prune_score, finetune_iters=finetune_iters, seed=seed,
        backend=backend,
    )  # fmt: skip
    defaults = FitConfig()
    for key, value in overrides.items():
        if config is None or value != getattr(defaults, key):
            setattr(cfg, key, value)
    _check_config(cfg)
    if device is None:
        if isinstance(images, Tensor):
            device = images.device
        else:
            device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)

    with _torch_threads(resolve_backend(device.type, cfg.backend)):
        return _run(images, size, cfg, device, progress)


def _run(images, size, cfg: FitConfig, device: torch.device, progress: bool) -> FitResult:
    """The body of :func:`fit`, once the settings are checked."""
    targets, sizes = prepare_images(images, size)
    smallest = int(sizes.prod(1).min())
    if cfg.n_gaussians > smallest:
        raise ValueError(
            f"fit: n_gaussians={cfg.n_gaussians} exceeds the pixel count of the smallest image "
            f"({smallest}); use fewer Gaussians or a larger size"
        )
    targets = targets.to(device)
    b, h, w, _ = targets.shape
    rows = torch.arange(h, device=device)[None, :, None] < sizes[:, 0, None, None].to(device)
    cols = torch.arange(w, device=device)[None, None, :] < sizes[:, 1, None, None].to(device)
    pixel_mask = rows & cols  # [B, H, W]
    n_pixels = pixel_mask.flatten(1).sum(1).to(targets)  # [B]
    counts = torch.full((b,), cfg.n_gaussians, dtype=torch.int64, device=device)
    start = time.perf_counter()

    means_px, chol_px, colors = initialise(targets, cfg.n_gaussians, cfg.init, cfg.seed, sizes)
    lo, hi = cfg.chol_range
    chol_px[..., 0].clamp_(lo, hi)
    chol_px[..., 2].clamp_(lo, hi)
    if cfg.solve_colors and cfg.init != "random":
        with torch.no_grad():
            colors = _solve_colors(means_px, chol_px, colors, targets, pixel_mask, cfg.backend)
    params = [p.detach().clone().requires_grad_(True) for p in (means_px, chol_px, colors)]
    rates = (cfg.lr_means, cfg.lr_chol, cfg.lr_colors)
    opt = torch.optim.Adam([{"params": [p], "lr": r} for p, r in zip(params, rates, strict=True)])

    iterations = torch.zeros(b, dtype=torch.int64)
    seconds = torch.zeros(b, dtype=torch.float64)
    active = torch.ones(b, dtype=torch.bool)
    frozen = [p.detach().clone() for p in params]
    moves = relocation_steps(cfg.iters, cfg.relocate_until) if cfg.relocate > 0 else set()
    generator = torch.Generator(device).manual_seed(cfg.seed)
    bar = _progress_bar(cfg.iters, b, progress)
    for step in range(cfg.iters):
        scale = _cosine(step, cfg.iters, cfg.lr_final)
        for group, rate in zip(opt.param_groups, rates, strict=True):
            group["lr"] = rate * scale
        # while every image is active, the step takes the parameters whole (no gather, no
        # scatter, no host-device synchronisation: on a GPU those per-step costs add up)
        everyone = bool(active.all())
        idx = None if everyone else active.nonzero()[:, 0].to(device)
        err = _step(opt, params, idx, counts, targets, pixel_mask, n_pixels, cfg, (h, w))
        with torch.no_grad():
            if not everyone:  # frozen images stay put even though Adam's momentum would move them
                keep = active.to(device)
                for p, f in zip(params, frozen, strict=True):
                    p.copy_(torch.where(keep.view(-1, *[1] * (p.dim() - 1)), p, f))
            params[1][..., 0].clamp_(lo, hi)
            params[1][..., 2].clamp_(lo, hi)
        iterations[active] += 1
        if step + 1 in moves:
            with torch.no_grad():
                now = _splats(*(p.detach() for p in params), counts, (h, w))
            images_on = active.nonzero()[:, 0].to(device)
            relocate(params, opt, now, targets, pixel_mask, images_on, cfg.relocate, generator,
                     cfg.backend)  # fmt: skip
        if cfg.target_psnr is not None and (step + 1) % cfg.check_every == 0:
            reached = torch.zeros(b, dtype=torch.bool)
            reached[active] = (-10 * torch.log10(err.clamp_min(1e-12))).cpu() >= cfg.target_psnr
            if reached.any():
                now = time.perf_counter() - start
                seconds[reached] = now
                with torch.no_grad():
                    for p, f in zip(params, frozen, strict=True):
                        f[reached.to(device)] = p[reached.to(device)]
                active &= ~reached
        if bar is not None:
            bar.update(1)
            bar.set_postfix(
                psnr=f"{float(-10 * torch.log10(err.mean())):.2f}", done=int((~active).sum())
            )
        if not active.any():
            break
    seconds[active] = time.perf_counter() - start
    if bar is not None:
        bar.close()

    with torch.no_grad():
        splats = _splats(*(p.detach() for p in params), counts, (h, w))
    pruned = torch.zeros(b, dtype=torch.int64)
    if cfg.prune_tau > 0:
        splats, pruned = prune(splats, cfg.prune_tau, cfg.prune_score)
        pruned = pruned.cpu()
        if cfg.finetune_iters > 0:
            splats = _finetune(splats, targets, pixel_mask, n_pixels, cfg, (h, w))
        seconds.clamp_(min=time.perf_counter() - start)  # pruning is part of every image's time
    splats = _to_own_sizes(splats, sizes.to(device), (h, w))
    return FitResult(
        splats=splats,
        metrics=_metrics(splats, targets, sizes, iterations, seconds, pruned, cfg),
        targets=targets,
        config=cfg,
    )


@contextlib.contextmanager
def _torch_threads(backend: str):
    """Run torch's own ops single-threaded while the numba kernel owns the cores.

    Torch's OpenMP workers spin-wait after each op; beside numba's threads on a small machine that
    spinning made fitting up to 8x slower (measured on 2 cores). The per-step torch work (loss,
    Adam on a few thousand Gaussians) is small, so one thread loses little.
    """
    if backend != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _check_config(cfg: FitConfig) -> None:
    if not isinstance(cfg.n_gaussians, (int, np.integer)) or cfg.n_gaussians < 1:
        raise ValueError(f"fit: n_gaussians must be a positive integer, got {cfg.n_gaussians!r}")
    if cfg.iters < 0:
        raise ValueError(f"fit: iters must be >= 0, got {cfg.iters}")
    if cfg.init not in INIT_METHODS:
        raise ValueError(f"fit: unknown init {cfg.init!r}; choose from {INIT_METHODS}")
    if cfg.prune_score not in SCORES:
        raise ValueError(f"fit: unknown prune_score {cfg.prune_score!r}; choose from {SCORES}")
    for name in ("l1", "prune_tau"):
        value = getattr(cfg, name)
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"fit: {name} must be a finite number >= 0, got {value}")
    for name in ("relocate", "relocate_until"):
        value = getattr(cfg, name)
        if not (isinstance(value, (int, float)) and 0 <= value <= 1):
            raise ValueError(f"fit: {name} must be a number in [0, 1], got {value!r}")


def _step(opt, params, idx, counts, targets, pixel_mask, n_pixels, cfg, hw) -> Tensor:
    """One Adam step on the images ``idx`` (``None``: all); returns their per-image MSE."""
    if idx is not None:
        params = [p[idx] for p in params]
        counts, targets, pixel_mask, n_pixels = (
            t[idx] for t in (counts, targets, pixel_mask, n_pixels)
        )
    means_px, chol_px, colors = params
    splats = _splats(means_px, chol_px, colors, counts, hw)
    out = render(splats, *hw, cfg.backend)
    diff = (out - targets) * pixel_mask[..., None]
    err = (diff * diff).flatten(1).sum(1) / (3 * n_pixels)  # [b] per-image MSE
    loss = err.sum()
    if cfg.l1 > 0:
        loss = loss + cfg.l1 * l1_penalty(colors, splats.mask).sum()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return err.detach()


def finetune(
    splats: Splats, targets: Tensor, iters: int, config: FitConfig | None = None
) -> Splats:
    """Optimise already-fitted splats a few more steps (e.g. after pruning) at low learning rates.

    Args:
        splats: ``B`` images fitted on the ``[B, H, W, 3]`` ``targets`` (same size for all).
        targets: the images, in ``[0, 1]``.
        iters: optimisation steps.
        config: learning rates, clamp range and backend (default :class:`FitConfig`).
    """
    cfg = config or FitConfig()
    cfg = FitConfig(**{**vars(cfg), "finetune_iters": iters})
    b, h, w, _ = targets.shape
    mask = torch.ones(b, h, w, dtype=torch.bool, device=targets.device)
    n_pixels = torch.full((b,), h * w, dtype=targets.dtype, device=targets.device)
    return _finetune(splats, targets, mask, n_pixels, cfg, (h, w))


def _finetune(splats: Splats, targets, pixel_mask, n_pixels, cfg: FitConfig, hw) -> Splats:
    """A few steps after pruning, at the schedule's final rates, on the surviving Gaussians."""
    h, w = hw
    params = [
        (splats.means * splats.means.new_tensor([w, h])).requires_grad_(True),
        splats.pixel_chol(h, w).requires_grad_(True),
        splats.colors.clone().requires_grad_(True),
    ]
    rates = (cfg.lr_means, cfg.lr_chol, cfg.lr_colors)
    # A few times the schedule's final rates: small moves that re-balance after pruning.
    groups = [
        {"params": [p], "lr": r * cfg.lr_final * 5} for p, r in zip(params, rates, strict=True)
    ]
    opt = torch.optim.Adam(groups)
    idx = torch.arange(splats.batch_size, device=targets.device)
    lo, hi = cfg.chol_range
    for _ in range(cfg.finetune_iters):
        _step(opt, params, idx, splats.counts, targets, pixel_mask, n_pixels, cfg, hw)
        with torch.no_grad():
            params[1][..., 0].clamp_(lo, hi)
            params[1][..., 2].clamp_(lo, hi)
    with torch.no_grad():
        return _splats(*(p.detach() for p in params), splats.counts, hw).compact(splats.capacity)


def _to_own_sizes(splats: Splats, sizes: Tensor, hw) -> Splats:
    """Re-express canvas-normalised splats relative to each image's own (unpadded) size."""
    h, w = hw
    sx = (w / sizes[:, 1].to(splats.dtype))[:, None]  # [B, 1]
    sy = (h / sizes[:, 0].to(splats.dtype))[:, None]
    means = splats.means * torch.stack([sx, sy], -1)
    chol = splats.chol * torch.stack([sx, sy, sy], -1)
    return Splats(means, chol, splats.colors, splats.counts, sizes.clone(), splats.opacities)


@torch.no_grad()
def _metrics(splats, targets, sizes, iterations, seconds, pruned, cfg) -> list[dict]:
    out = []
    for i in range(splats.batch_size):
        h, w = (int(v) for v in sizes[i])
        pred = render(splats[i], h, w, cfg.backend)
        tgt = targets[i : i + 1, :h, :w]
        out.append(
            {
                "psnr": float(psnr(pred, tgt)[0]),
                "ssim": float(ssim(pred, tgt)[0]),
                "iterations": int(iterations[i]),
                "seconds": float(seconds[i]),
                "n_gaussians": int(splats.counts[i]),
                "pruned": int(pruned[i]),
            }
        )
    return out


def _progress_bar(total: int, batch: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=f"fitting {batch} image(s)", unit="it", leave=False)
