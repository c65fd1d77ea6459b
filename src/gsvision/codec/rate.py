"""Rate control: fit and encode each image to a byte budget, a compression ratio or a PSNR target.

- ``bytes`` / ``ratio``: the number of Gaussians is chosen from the level's measured cost per
  Gaussian, the batch is fitted, and any image still over its budget drops its least important
  Gaussians (footprint score) until its payload fits; what was reached is reported per image.
- ``psnr``: images climb a ladder of Gaussian counts (128, 256, ... up to ``n_max``, skipping rungs when far short), each rung
  fitting only the images not yet good enough with an early stop a little above the target (the
  level's quantisation loss); the first rung whose *decoded* PSNR reaches the target is kept.

- ``level="auto"`` (the default): with a target and the range coder, the bit depths that the
  rate–distortion benchmark found best at that rate (:func:`auto_level`: coarser bits at more
  Gaussians at low rates, finer at high); without a target, ``medium``.

PSNR is always measured on the decoded payload, i.e. what a receiver sees.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from gsvision.codec import current_coder, decode, encode, quantised
from gsvision.codec.colour_rd import quantised_colours
from gsvision.codec.geometry_rd import ROUNDS, refined_geometry
from gsvision.codec.prune_rd import rd_pruned
from gsvision.codec.quant import QuantSpec, resolve_level
from gsvision.fit import fit, refit_colors
from gsvision.fit.prune import luminance_score
from gsvision.metrics import psnr, ssim
from gsvision.raster import render
from gsvision.splats import Splats

__all__ = [
    "RateTarget",
    "CodedImage",
    "auto_level",
    "bytes_per_gaussian",
    "check_level",
    "encode_closed_loop",
    "encode_closed_loop_batch",
    "fit_and_encode",
    "fit_then_encoder",
    "trim_to_bytes",
]

# Measured payload bytes per Gaussian (6 photos, 224², N = 400–2,048, `gsvision bench codec`) and
# the PSNR each level loses to quantisation at N ≈ 1,000, with some margin.
_BYTES_PER_GAUSSIAN = {
    "float32": 27.0,
    "float16": 14.5,
    "high": 9.3,
    "medium": 8.3,
    "low": 7.4,
    "lower": 7.35,
    "xlow": 6.6,
    "xxlow": 6.0,
}
# ... and of the quantised levels with the range coder (format version 4; `gsvision bench codec`,
# 2026-11-27 19:26 UTC, N = 1,024, plus ~1%; `lower`'s 7 angle bits code two anisotropy values
# there, so it costs more than `low`)
_BYTES_PER_GAUSSIAN_RANGE = {  # (per Gaussian fitted: the closed loop drops ~5%)
    "high": 7.35,
    "medium": 6.65,
    "low": 5.45,
    "lower": 5.6,
    "xlow": 4.75,
    "xxlow": 4.4,
    "10-5-6-7": 4.6,  # bit depths that `level="auto"` picks (below)
    "10-5-5-7": 4.4,
    "9-5-5-7": 4.15,
    "8-5-5-6": 3.6,
}
_QUANT_LOSS_DB = {
    "float32": 0.0,
    "float16": 0.1,
    "high": 0.1,
    "medium": 0.2,
    "low": 0.8,
    "lower": 0.6,
    "xlow": 1.1,
    "xxlow": 2.0,
    "10-5-6-7": 1.3,
    "10-5-5-7": 1.7,
    "9-5-5-7": 2.4,
    "8-5-5-6": 4.0,
}
#: What ``level="auto"`` stands for with a rate target and the range coder: the level whose
#: rate–distortion curve (PSNR against bytes, over N = 96-3,136) is highest at the budget's bits
#: per pixel, or cheapest at the PSNR goal, in `gsvision bench codec` (six photos at 224², range
#: coder, 2026-11-27; docs/benchmarks.md). At 0.2-0.45 bpp `9-5-5-7` beats `medium` by 1.0-1.2
#: dB at equal bytes and `xxlow` by 0.04-0.09; 10-5-5-7 and 10-5-6-7 tie within 0.05 dB at
#: 0.45-0.9 bpp; below 0.12 bpp (N ≲ 140 at 224²) `8-5-5-6` is 0.03-0.18 dB above
#: `9-5-5-7`. Beyond the measured rates (2.7 bpp), ``medium``. Each entry: (up to, level).
_AUTO_BY_BPP = (
    (0.12, "8-5-5-6"),
    (0.45, "9-5-5-7"),
    (0.9, "10-5-6-7"),
    (1.35, "xlow"),
    (2.05, "low"),
    (2.7, "lower"),
    (math.inf, "medium"),
)
_AUTO_BY_PSNR = (
    (26.2, "8-5-5-6"),
    (31.9, "9-5-5-7"),
    (34.9, "10-5-6-7"),
    (36.8, "xlow"),
    (38.9, "low"),
    (40.3, "lower"),
    (math.inf, "medium"),
)
#: What ``"auto"`` means without a target, or with the zstd coder (whose closed loop neither
#: refines the geometry nor chooses colour codes, so coarse bit depths lose more).
AUTO_OTHERWISE = "medium"
#: Whether the closed loop chooses colour codes for the image (codec/colour_rd.py: +0.03 dB at
#: ``medium``, +0.15-0.3 dB at 7-8 colour bits) or rounds them. ``None``: only where bytes are the
#: point, i.e. with the range coder (``.gsv`` files, the edge client); it costs ~0.3 s of CPU per
#: image of 1,024 Gaussians, which would slow the conversion job's zstd shards.
CHOOSE_COLOURS: bool | None = None
#: Whether the closed loop first moves positions and shapes onto the grid progressively, refining
#: the Gaussians not yet rounded (codec/geometry_rd.py: +0.10 dB at ``lower``, +0.35 at ``xlow``,
#: +0.79 at ``xxlow`` at N = 1,024). ``None``: as :data:`CHOOSE_COLOURS`; it costs 300 renders
#: and backward passes per batch of images (~1 s of CPU per image of 1,024 Gaussians).
REFINE_GEOMETRY: bool | None = None
#: Whether the closed loop first drops the Gaussians whose removal costs less squared error than
#: their share of the payload is worth, net of what refinement wins back (codec/prune_rd.py: 5%
#: fewer bytes at N = 100-1,600, +0.04 to +0.12 dB at equal bytes). ``None``: as
#: :data:`CHOOSE_COLOURS`; it costs one sparse footprint matrix per image (~0.1 s of CPU at
#: N = 1,024).
PRUNE: bool | None = None
#: Encoder effort (like an image encoder's speed preset), as the blocks the geometry refinement
#: rounds in turn (each followed by the same Adam steps): 0 rounds the geometry as it is (no
#: refinement), 1 (the default) refines it, 2 and 3 in twice and four times as many, smaller
#: blocks (for 4x the time, 64 blocks gain +0.13 dB at N = 400 where 16 blocks of 4x the steps
#: gain +0.09). Same format, same bytes; measured in docs/benchmarks.md (`gsvision bench effort`).
EFFORT_ROUNDS = (0, ROUNDS, 2 * ROUNDS, 4 * ROUNDS)  # 0, 16, 32, 64
DEFAULT_EFFORT = 1
_OVERHEAD = 110  # file header, image header, zstd frame header, checksum
_OVERHEAD_COMPACT = 50  # ... of a quantised image with the range coder (format version 4)
_LADDER_START = 128
_DB_PER_DOUBLING = 3.0  # PSNR gained per doubling of N, measured 3-4 dB (docs/benchmarks.md)


@dataclass(frozen=True)
class RateTarget:
    """At most one of ``bytes`` (per image), ``ratio`` (raw pixel bytes / payload) or ``psnr``."""

    bytes: int | None = None
    ratio: float | None = None
    psnr: float | None = None

    def check(self) -> RateTarget:
        given = [k for k in ("bytes", "ratio", "psnr") if getattr(self, k) is not None]
        if len(given) > 1:
            raise ValueError(f"give one rate target, got {given}")
        for k in given:
            v = getattr(self, k)
            if not math.isfinite(v) or v <= 0:
                raise ValueError(f"rate target {k} must be a positive number, got {v}")
        return self

    @property
    def kind(self) -> str | None:
        return next((k for k in ("bytes", "ratio", "psnr") if getattr(self, k) is not None), None)

    def budget(self, height: int, width: int) -> int | None:
        """Bytes allowed for one ``height × width`` image (``None`` without a byte target)."""
        if self.bytes is not None:
            return int(self.bytes)
        if self.ratio is not None:
            return int(3 * height * width / self.ratio)
        return None


@dataclass
class CodedImage:
    """One fitted and encoded image."""

    payload: bytes
    splats: Splats  # what the payload decodes to
    target: Tensor  # [H, W, 3] the fitted image in [0, 1]
    metrics: dict[str, Any] = field(default_factory=dict)


def _key(level: str | QuantSpec) -> str | None:
    """The table key of a level given by name or ``"P-S-A-C"`` (``None`` for a QuantSpec)."""
    how = resolve_level(level)
    if isinstance(how, str):
        return how
    return level if isinstance(level, str) else None


def bytes_per_gaussian(level: str | QuantSpec) -> float:
    """The measured (or, for a spec not in the table, estimated) payload bytes per Gaussian of a
    level, with the coder :func:`encode` uses here (:func:`~gsvision.codec.current_coder`)."""
    table = _BYTES_PER_GAUSSIAN
    if current_coder() == "range":
        table = {**table, **_BYTES_PER_GAUSSIAN_RANGE}
    key = _key(level)
    if key in table:
        return table[key]
    spec = resolve_level(level)  # scale the medium level's cost by the bits spent
    bits = spec.pos_bits * 1.4 + 2 * spec.scale_bits + spec.angle_bits + 3 * spec.color_bits
    return table["medium"] * bits / (12 * 1.4 + 16 + 8 + 27)


def _overhead(level: str | QuantSpec) -> int:
    """Bytes of a one-image payload besides its Gaussians, with the coder in use."""
    quantised = not isinstance(resolve_level(level), str)
    return _OVERHEAD_COMPACT if quantised and current_coder() == "range" else _OVERHEAD


def _quant_loss(level: str | QuantSpec) -> float:
    return _QUANT_LOSS_DB.get(_key(level), 0.3)


def auto_level(target: RateTarget | None, sizes: Sequence[tuple[int, int]]) -> str:
    """The level ``"auto"`` stands for: with a byte or ratio target, the level of the measured
    rate–distortion front at the smallest budget's bits per pixel; with a PSNR target, at the goal;
    :data:`AUTO_OTHERWISE` without a target or with the zstd coder (see :data:`_AUTO_BY_BPP`)."""
    target = (target or RateTarget()).check()
    if target.kind is None or current_coder() != "range":
        return AUTO_OTHERWISE
    if target.kind == "psnr":
        rate, table = float(target.psnr), _AUTO_BY_PSNR
    else:
        rate = min(8 * target.budget(h, w) / (h * w) for h, w in sizes)
        table = _AUTO_BY_BPP
    return next(level for top, level in table if rate <= top)


def check_effort(effort: int) -> int:
    """``effort`` if it is one of the encoder's efforts (0-3), else ``ValueError`` naming it."""
    if (
        isinstance(effort, bool)
        or not isinstance(effort, int)
        or not 0 <= effort < len(EFFORT_ROUNDS)
    ):
        raise ValueError(f"effort must be an integer 0..{len(EFFORT_ROUNDS) - 1}, got {effort!r}")
    return effort


def check_level(level: str | QuantSpec) -> None:
    """Raise ``ValueError`` naming the problem unless ``level`` is ``"auto"`` or a codec level."""
    if level != "auto":
        resolve_level(level)


def _chosen(level: str | QuantSpec, target: RateTarget, sizes: Tensor | None) -> str | QuantSpec:
    """``level``, or what ``"auto"`` stands for with this target and these image sizes."""
    check_level(level)
    if level != "auto":
        return level
    return auto_level(target, [] if sizes is None else [(int(h), int(w)) for h, w in sizes])


def _sizes(images, target: RateTarget, size) -> Tensor | None:
    """The images' sizes as fitted (``[B, 2]``), where a byte or ratio target needs them."""
    if target.kind not in ("bytes", "ratio"):
        return None
    from gsvision.fit.loop import prepare_images

    return prepare_images(images, size)[1]


def trim_to_bytes(splats: Splats, budget: int, level: str | QuantSpec) -> tuple[Splats, bytes]:
    """Drop one image's least important Gaussians until its payload fits ``budget`` bytes.

    Returns the trimmed splats (most important first) and their payload. Raises ``ValueError``
    if not even one Gaussian fits.
    """
    order = torch.sort(luminance_score(splats, "footprint")[0], descending=True).indices
    n = int(splats.counts[0])

    def keep(k: int) -> tuple[Splats, bytes]:
        idx = order[:k]
        s = Splats(
            splats.means[:, idx],
            splats.chol[:, idx],
            splats.colors[:, idx],
            torch.tensor([k]),
            splats.image_sizes,
            None if splats.opacities is None else splats.opacities[:, idx],
        )
        return s, encode(s, level)

    best = keep(n)
    if len(best[1]) <= budget:
        return best
    lo, hi = 0, n  # invariant: keep(lo) fits (or lo == 0), keep(hi) does not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        trial = keep(mid)
        if len(trial[1]) <= budget:
            lo, best = mid, trial
        else:
            hi = mid
    if lo == 0:
        raise ValueError(f"a budget of {budget} bytes cannot hold even one Gaussian")
    return best


def encode_closed_loop(
    splats: Splats,
    image: Tensor,
    level: str | QuantSpec,
    budget: int | None = None,
    effort: int = DEFAULT_EFFORT,
) -> bytes:
    """Encode one image, re-solving its colours for the quantised geometry (and trimming to
    ``budget`` bytes if given; ``effort``: see :data:`EFFORT_ROUNDS`).

    Quantising positions and shapes moves every Gaussian a little; least-squares colours for the
    geometry the decoder will see win back 35–50% of the PSNR that quantisation costs (measured
    at N = 1,024 on the six sample photos), for 16 renders' worth of time. With the range coder
    (see :data:`CHOOSE_COLOURS`) the colour codes are then chosen for the image
    (:func:`~gsvision.codec.colour_rd.quantised_colours`) rather than rounded one by one.
    """
    rounds = EFFORT_ROUNDS[check_effort(effort)]
    if isinstance(resolve_level(level), str):  # float levels: nothing to win back
        return trim_to_bytes(splats, budget, level)[1] if budget else encode(splats, level)
    if _pruning():
        splats = _pruned([splats], [image])[0]
    slack = 0
    while True:
        if budget is not None:
            splats, payload = trim_to_bytes(splats, budget - slack, level)
        else:
            payload = encode(splats, level)
        if _refining() and rounds:
            geometry = _refined([splats], [image], level, None, rounds)[0]
        else:
            geometry = decode(payload)
        refit = encode(_chosen_colours(refit_colors(geometry, image[None]), image, level), level)
        if budget is None or len(refit) <= budget:
            return _better(refit, payload, image)
        if slack >= budget // 4:  # colours kept needing more room: keep the plain payload
            return payload
        slack += len(refit) - budget


def encode_closed_loop_batch(
    items: Sequence[Splats],
    images: Sequence[Tensor],
    level: str | QuantSpec,
    budgets: Sequence[int | None] | None = None,
    device: torch.device | str | None = None,
    effort: int = DEFAULT_EFFORT,
) -> list[bytes]:
    """:func:`encode_closed_loop` for many images, re-solving their colours in one batch per size.

    Args:
        items: one single-image :class:`Splats` per image.
        images: the matching ``[H, W, 3]`` images in ``[0, 1]``.
        budgets: bytes allowed per image (``None`` entries or ``None``: no budget).
        device: where the colour re-solve and the renders that choose between payloads run
            (e.g. the GPU the images were fitted on); ``None``: where the inputs are. Coding
            itself runs on the CPU.
        effort: 0-3, time spent refining the geometry (see :data:`EFFORT_ROUNDS`).

    Raises:
        ValueError: for an unknown level or effort.
    """
    return _closed_loop_batch(items, images, level, budgets, device, check_effort(effort))[0]


def _closed_loop_batch(
    items: Sequence[Splats],
    images: Sequence[Tensor],
    level: str | QuantSpec,
    budgets: Sequence[int | None] | None,
    device: torch.device | str | None,
    effort: int,
) -> tuple[list[bytes], list[Splats], list[Tensor]]:
    """:func:`encode_closed_loop_batch`, also returning each payload decoded and its render
    (clamped to ``[0, 1]``, on ``device``): every render is one batch per image size, and the
    plain payload is only entropy-coded where it is kept (or needed to meet a budget)."""
    budgets = list(budgets) if budgets is not None else [None] * len(items)
    plain: list[bytes | None] = [None] * len(items)
    items = given = list(items)
    if isinstance(resolve_level(level), QuantSpec) and _pruning():
        items = _pruned(items, images, device)
    for i, b in enumerate(budgets):
        if b:
            items[i], plain[i] = trim_to_bytes(items[i], b, level)
    if isinstance(resolve_level(level), str):  # float levels: nothing to win back
        payloads = [p or encode(s, level) for p, s in zip(plain, items, strict=True)]
        decoded = [decode(p) for p in payloads]
        return payloads, decoded, _renders(decoded, images, device)[0]
    rounded = [decode(p) if p else quantised(s, level) for p, s in zip(plain, items, strict=True)]
    rounds = EFFORT_ROUNDS[effort]
    geometry = _refined(items, images, level, device, rounds) if _refining() and rounds else rounded
    refit: list[bytes] = [b""] * len(items)
    for idx in _by_size(images).values():
        cap = max(geometry[i].capacity for i in idx)
        batch = _on(Splats.cat([geometry[i].compact(cap) for i in idx]), device)
        solved = refit_colors(batch, _on(torch.stack([images[i] for i in idx]), device)).to("cpu")
        for j, i in enumerate(idx):
            refit[i] = encode(_chosen_colours(solved[j], images[i], level), level)
    slow = {i for i, b in enumerate(budgets) if b is not None and len(refit[i]) > b}
    for i in sorted(slow):  # colours needed more room than the budget left: one by one
        refit[i] = encode_closed_loop(given[i], images[i], level, budgets[i], effort)  # prunes too
    shown_plain, error_plain = _renders(rounded, images, device)
    decoded = [decode(p) for p in refit]
    shown, error = _renders(decoded, images, device)
    for i in range(len(items)):  # keep whichever payload renders closer to the image
        if i not in slow and error_plain[i] < error[i]:
            refit[i] = plain[i] or encode(items[i], level)
            decoded[i], shown[i] = rounded[i], shown_plain[i]
    return refit, decoded, shown


def _by_size(images: Sequence[Tensor]) -> dict[tuple, list[int]]:
    """Indices of ``images`` grouped by shape."""
    groups: dict[tuple, list[int]] = {}
    for i, image in enumerate(images):
        groups.setdefault(tuple(image.shape), []).append(i)
    return groups


def _renders(
    splats: Sequence[Splats], images: Sequence[Tensor], device
) -> tuple[list[Tensor], list[float]]:
    """Each single-image ``splats[i]`` rendered at ``images[i]``'s size and clamped (on
    ``device``, one batched render per size), and its summed squared error to the image."""
    shown: list[Tensor] = [torch.empty(0)] * len(splats)
    errors = [0.0] * len(splats)
    for idx in _by_size(images).values():
        h, w = images[idx[0]].shape[:2]
        cap = max(splats[i].capacity for i in idx)
        batch = _on(Splats.cat([splats[i].compact(cap) for i in idx]), device)
        out = render(batch, h, w).clamp(0, 1)
        target = torch.stack([images[i] for i in idx]).to(out.device)
        sums = ((out - target) ** 2).flatten(1).sum(1).tolist()
        for j, i in enumerate(idx):
            shown[i], errors[i] = out[j], sums[j]
    return shown, errors


def _quality(shown: Sequence[Tensor], images: Sequence[Tensor]) -> tuple[list[float], list[float]]:
    """PSNR and SSIM of each render (on its device) against its image, one batch per size."""
    psnrs, ssims = [0.0] * len(shown), [0.0] * len(shown)
    for idx in _by_size(images).values():
        out = torch.stack([shown[i] for i in idx])
        target = torch.stack([images[i] for i in idx]).to(out.device)
        for i, p, q in zip(
            idx, psnr(out, target).tolist(), ssim(out, target).tolist(), strict=True
        ):
            psnrs[i], ssims[i] = p, q
    return psnrs, ssims


def _chosen_colours(splats: Splats, image: Tensor, level: str | QuantSpec) -> Splats:
    """One image's re-solved colours moved onto the level's colour grid by
    :func:`~gsvision.codec.colour_rd.quantised_colours` (rounding errors compensated by the
    colours not yet rounded), as :data:`CHOOSE_COLOURS` says."""
    spec = resolve_level(level)
    choose = current_coder() == "range" if CHOOSE_COLOURS is None else CHOOSE_COLOURS
    if not choose or not isinstance(spec, QuantSpec):
        return splats
    return quantised_colours(
        splats.compact(int(splats.counts[0])), image.to("cpu"), spec, logcov=_logcov_grid()
    )


def _logcov_grid() -> bool:
    """Whether :func:`encode` here writes mode 4 (the range coder), whose grid has log-covariance
    shapes and size-scaled colour steps: the grid the closed loop chooses codes on."""
    return current_coder() == "range"


def _refining() -> bool:
    """Whether the closed loop refines the geometry as it rounds it (:data:`REFINE_GEOMETRY`)."""
    return current_coder() == "range" if REFINE_GEOMETRY is None else REFINE_GEOMETRY


def _pruning() -> bool:
    """Whether the closed loop drops the Gaussians not worth their bytes (:data:`PRUNE`)."""
    return current_coder() == "range" if PRUNE is None else PRUNE


def _pruned(items: Sequence[Splats], images: Sequence[Tensor], device=None) -> list[Splats]:
    """Each single-image ``items[i]`` without the Gaussians
    :func:`~gsvision.codec.prune_rd.rd_pruned` finds not worth their bytes for ``images[i]``
    (one batch per image size), on the items' devices."""
    out = list(items)
    for idx in _by_size(images).values():
        cap = max(items[i].capacity for i in idx)
        batch = _on(Splats.cat([items[i].compact(cap) for i in idx]), device)
        kept = rd_pruned(batch, torch.stack([images[i] for i in idx]).to(batch.device))[0]
        for j, i in enumerate(idx):
            out[i] = kept[j].compact(int(kept.counts[j])).to(items[i].device)
    return out


def _refined(
    items: Sequence[Splats], images: Sequence[Tensor], level: str | QuantSpec, device, rounds: int
) -> list[Splats]:
    """Each single-image ``items[i]`` with its geometry moved onto the level's grid for
    ``images[i]`` by :func:`~gsvision.codec.geometry_rd.refined_geometry` in ``rounds`` blocks
    (one batch per image size, on ``device``), on the CPU."""
    spec = resolve_level(level)
    assert isinstance(spec, QuantSpec)
    out: list[Splats] = [items[0]] * len(items)
    for idx in _by_size(images).values():
        cap = max(items[i].capacity for i in idx)
        batch = _on(Splats.cat([items[i].fold_opacity().compact(cap) for i in idx]), device)
        target = _on(torch.stack([images[i] for i in idx]), device)
        done = refined_geometry(
            batch, target.to(batch.means.device), spec, rounds=rounds, logcov=_logcov_grid()
        )
        done = done.to("cpu")
        for j, i in enumerate(idx):
            out[i] = done[j].compact(int(items[i].counts[0]))
    return out


def _on(x, device):
    """``x`` (a tensor or :class:`Splats`) on ``device``; ``None``: where it is."""
    return x if device is None else x.to(device)


def _better(a: bytes, b: bytes, image: Tensor) -> bytes:
    """The payload whose decoded render (on ``image``'s device) is closer to ``image``."""
    errors = _renders([decode(a), decode(b)], [image, image], image.device)[1]
    return a if errors[0] <= errors[1] else b


def fit_and_encode(
    images: Sequence[Any] | Tensor,
    target: RateTarget | None = None,
    level: str | QuantSpec = "auto",
    n_gaussians: int = 1024,
    effort: int = DEFAULT_EFFORT,
    **fit_kwargs: Any,
) -> list[CodedImage]:
    """Fit a batch and encode each image, meeting ``target`` (see the module docstring).

    Args:
        images: as for :func:`gsvision.fit`.
        target: the rate target; ``None`` fits ``n_gaussians`` and encodes at ``level``.
        level: codec level (name, ``"P-S-A-C"`` bit depths or :class:`QuantSpec`); ``"auto"``:
            with a target, the bit depths best at its rate (:func:`auto_level`), else medium.
        n_gaussians: Gaussians per image without a target; the upper end of the ladder with a
            ``psnr`` target; ignored with a byte target (the budget sets it).
        effort: 0-3, encoder time spent refining the geometry (see :data:`EFFORT_ROUNDS`).
        fit_kwargs: passed to :func:`gsvision.fit` (``iters``, ``size``, ``backend``, ...).

    Returns:
        One :class:`CodedImage` per input image, in order.

    Raises:
        ValueError: for a bad target or effort, a budget too small for one Gaussian, or what
            fit() rejects.
    """
    target = (target or RateTarget()).check()
    check_effort(effort)
    if isinstance(images, (Tensor, np.ndarray)) and images.ndim == 3:
        images = [images]
    if target.psnr is not None:
        level = _chosen(level, target, None)
        return _fit_to_psnr(images, target.psnr, level, n_gaussians, effort, fit_kwargs)
    return fit_then_encoder(images, target, level, n_gaussians, effort, **fit_kwargs)()


def fit_then_encoder(
    images: Sequence[Any] | Tensor,
    target: RateTarget | None = None,
    level: str | QuantSpec = "auto",
    n_gaussians: int = 1024,
    effort: int = DEFAULT_EFFORT,
    **fit_kwargs: Any,
) -> Callable[[], list[CodedImage]]:
    """:func:`fit_and_encode` in two steps: fit now, and return the encoding (a closure) to run
    later, e.g. on another thread while the next batch fits on a GPU (the conversion job does).

    Byte and ratio targets only: a PSNR target must encode to choose the next N.

    Raises:
        ValueError: for a PSNR target, and as :func:`fit_and_encode`.
    """
    target = (target or RateTarget()).check()
    check_effort(effort)
    if target.psnr is not None:
        raise ValueError(
            "fit_then_encoder: a PSNR target needs fit_and_encode (it encodes to decide)"
        )
    if isinstance(images, (Tensor, np.ndarray)) and images.ndim == 3:
        images = [images]
    sizes = _sizes(images, target, fit_kwargs.get("size"))  # prepared once for level and N
    level = _chosen(level, target, sizes)
    budgets = None
    if sizes is not None:
        n_gaussians, budgets = _budget_n(sizes, target, level)
    result = fit(images, n_gaussians, **fit_kwargs)
    return lambda: _coded_batch(result, level, target, effort, budgets)


def _budget_n(sizes: Tensor, target: RateTarget, level) -> tuple[int, list[int]]:
    """Gaussians per image for a byte budget (the smallest image's), and each image's budget."""
    budgets = [target.budget(int(h), int(w)) for h, w in sizes]
    smallest = min(budgets)
    overhead = _overhead(level)
    n = int((smallest - overhead) / bytes_per_gaussian(level))
    if n < 1:
        raise ValueError(
            f"a budget of {smallest} bytes per image is below what one Gaussian needs at level "
            f"{level!r} (~{overhead + bytes_per_gaussian(level):.0f} bytes)"
        )
    return min(n, int(sizes.prod(1).min())), budgets


def _fit_to_psnr(
    images, goal: float, level, n_max: int, effort: int, fit_kwargs
) -> list[CodedImage]:
    from gsvision.fit.loop import prepare_images

    kwargs = {**fit_kwargs, "target_psnr": goal + _quant_loss(level)}
    images = list(images)
    n_max = min(n_max, int(prepare_images(images, fit_kwargs.get("size"))[1].prod(1).min()))
    done: list[CodedImage | None] = [None] * len(images)
    pending = list(range(len(images)))
    n = min(_LADDER_START, n_max)
    target = RateTarget(psnr=goal)
    while pending:
        result = fit([images[i] for i in pending], n, **kwargs)
        still, short = [], []
        for i, coded in zip(pending, _coded_batch(result, level, target, effort), strict=True):
            done[i] = coded
            if coded.metrics["psnr"] < goal and n < n_max:
                still.append(i)
                short.append(goal - coded.metrics["psnr"])
        pending = still
        if pending:  # skip rungs: each doubling of N gains roughly _DB_PER_DOUBLING
            doublings = max(1, math.ceil(min(short) / _DB_PER_DOUBLING))
            n = min(n << doublings, n_max)
    return done  # type: ignore[return-value]


@torch.no_grad()
def _coded_batch(
    result, level, target: RateTarget, effort: int, budgets: Sequence[int | None] | None = None
) -> list[CodedImage]:
    """Encode every image of a fit result (closed loop, in one batch) and measure the decode."""
    start = time.perf_counter()
    count = result.splats.batch_size
    device = result.splats.device  # renders stay where the fit ran (a GPU's are far faster)
    ones = [result.splats[i].detach().to("cpu") for i in range(count)]
    sizes = [tuple(int(v) for v in one.image_sizes[0]) for one in ones]
    images = [result.targets[i, :h, :w].detach().to("cpu") for i, (h, w) in enumerate(sizes)]
    payloads, decoded, shown = _closed_loop_batch(ones, images, level, budgets, device, effort)
    psnrs, ssims = _quality(shown, images)
    seconds = (time.perf_counter() - start) / count
    level_name = level if isinstance(level, str) else resolve_level(level).as_dict()
    out = []
    for i, (payload, (h, w)) in enumerate(zip(payloads, sizes, strict=True)):
        fitted = dict(result.metrics[i])
        p = psnrs[i]
        metrics = {
            **fitted,
            "psnr_fit": fitted["psnr"],
            "psnr": p,
            "ssim": ssims[i],
            "n_gaussians": int(decoded[i].counts[0]),
            "bytes": len(payload),
            "bpp": 8 * len(payload) / (h * w),
            "ratio": 3 * h * w / len(payload),
            "level": level_name,
            "encode_seconds": seconds,  # closed-loop encoding and checking, share of the batch
            "effort": effort,
        }
        if target.kind is not None:
            goal = getattr(target, target.kind)
            budget = budgets[i] if budgets is not None else None
            metrics["target"] = {target.kind: goal}
            metrics["reached"] = bool(
                p >= goal if target.kind == "psnr" else len(payload) <= (budget or 0)
            )
        out.append(CodedImage(payload, decoded[i], images[i], metrics))
    return out
