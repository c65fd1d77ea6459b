"""Quantisation of one image's Gaussians to integer codes, and back.

Each Gaussian is coded as
- its centre ``(x, y)``, ``pos_bits`` per coordinate, uniform over the image's own min/max box;
- its shape as ``(log σ_major, log σ_minor, θ)`` in pixels at the fitted size (``scale_bits`` each,
  uniform over the image's log-scale range; ``angle_bits`` for θ over ``[0, π)``), which spends the
  bits where the eye sees them: relative size and orientation, not raw Cholesky entries;
- its colour, ``color_bits`` per RGB channel over the image's min/max per channel.

The range coder's mode (format version 3, mode 4) codes the shape as its *log-covariance*
instead: ``log Σ = 2s·I + [[u, v], [v, −u]]`` with ``s = (log σ_major + log σ_minor) / 2`` (the
log size, ``scale_bits``) and ``(u, v) = (log σ_major − log σ_minor)·(cos 2θ, sin 2θ)`` (the log
anisotropy, ``angle_bits`` each, on a grid symmetric about 0). A round Gaussian then spends no
bits on an angle it does not have, and orientation is resolved in proportion to elongation,
which is how much it matters: at equal PSNR the shape costs ~1 bit per Gaussian less (of ~16).
The codes keep their places: ``scale`` holds ``(s, u)`` codes and ``angle`` the ``v`` code. Mode
4 also scales each Gaussian's colour step by ``exp(0.375 (s_hi − s))`` (``kernels.colour_gain``):
a colour error costs in proportion to the area it covers, so small Gaussians get coarser steps.
Its range ends are widened to float16 values (:func:`f16_bounds`), so that format version 4's
compact records hold them exactly (47 bytes less per image than float32 ends and fixed fields).

The same functions serve the encoder (codes) and the decoder (values from codes); the closed-loop
encoder's choices (``geometry_rd``, ``colour_rd``) work on exactly this grid. (Straight-through
quantisation-aware fine-tuning in the fitter was measured and lost PSNR in every trial,
``docs/benchmarks.md``; the refinement that rounds block by block replaced it.)
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import Tensor

from gsvision.codec.kernels import colour_gains, dequantise_into

__all__ = [
    "QuantSpec",
    "LEVELS",
    "Ranges",
    "to_shape",
    "to_logcov",
    "anisotropy_range",
    "quantise",
    "dequantise",
    "morton_order",
    "resolve_level",
]

#: Bits per field are limited so codes fit the format's fields (positions up to 16 bits).
MAX_BITS = {"pos_bits": 16, "scale_bits": 12, "angle_bits": 12, "color_bits": 12}


@dataclass(frozen=True)
class QuantSpec:
    """Bit depths of one quantised level (see the module docstring for what each covers)."""

    pos_bits: int = 12
    scale_bits: int = 8
    angle_bits: int = 8
    color_bits: int = 9

    def check(self) -> QuantSpec:
        for name, top in MAX_BITS.items():
            value = getattr(self, name)
            if not isinstance(value, int) or not 1 <= value <= top:
                raise ValueError(
                    f"QuantSpec.{name} must be an integer in [1, {top}], got {value!r}"
                )
        return self

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


#: Named levels: ``lossless`` (float32, bit-exact), ``f16`` (float16, near-lossless) and quantised
#: presets from fine to coarse. Rate control picks among the quantised ones.
LEVELS: dict[str, QuantSpec | str] = {
    "lossless": "float32",
    "f16": "float16",
    "high": QuantSpec(pos_bits=13, scale_bits=9, angle_bits=8, color_bits=10),
    "medium": QuantSpec(pos_bits=12, scale_bits=8, angle_bits=8, color_bits=9),
    "low": QuantSpec(pos_bits=11, scale_bits=7, angle_bits=6, color_bits=8),
    # coarser presets: at a byte budget, more Gaussians at fewer bits beat fewer at more
    # (docs/benchmarks.md); the closed-loop encoder's chosen colour codes make them pay
    "lower": QuantSpec(pos_bits=11, scale_bits=6, angle_bits=7, color_bits=8),
    "xlow": QuantSpec(pos_bits=10, scale_bits=6, angle_bits=6, color_bits=7),
    "xxlow": QuantSpec(pos_bits=9, scale_bits=5, angle_bits=6, color_bits=7),
}


def resolve_level(level: str | QuantSpec) -> QuantSpec | str:
    """``"float32"``, ``"float16"`` or a checked :class:`QuantSpec` for a level: a name, bit
    depths written ``"P-S-A-C"`` (positions, scales, anisotropy/angle, colours: ``"10-5-5-7"``)
    or a spec."""
    if isinstance(level, QuantSpec):
        return level.check()
    if isinstance(level, str) and level in LEVELS:
        found = LEVELS[level]
        return found.check() if isinstance(found, QuantSpec) else found
    if isinstance(level, str) and re.fullmatch(r"\d{1,2}-\d{1,2}-\d{1,2}-\d{1,2}", level):
        return QuantSpec(*(int(v) for v in level.split("-"))).check()
    raise ValueError(
        f"unknown codec level {level!r}; choose from {sorted(LEVELS)}, bit depths 'P-S-A-C' "
        "(e.g. '10-5-5-7') or a QuantSpec"
    )


@dataclass
class Ranges:
    """Per-image ranges that map codes to values, stored as float32 in each image header."""

    pos_lo: Tensor  # [2]
    pos_hi: Tensor  # [2]
    scale_lo: Tensor  # [2]  log σ (major, minor), pixels
    scale_hi: Tensor  # [2]
    color_lo: Tensor  # [3]
    color_hi: Tensor  # [3]

    def tensors(self) -> list[Tensor]:
        return [
            self.pos_lo,
            self.pos_hi,
            self.scale_lo,
            self.scale_hi,
            self.color_lo,
            self.color_hi,
        ]

    @classmethod
    def from_values(cls, pos: Tensor, logscale: Tensor, colors: Tensor) -> Ranges:
        def span(t: Tensor, width: int) -> tuple[Tensor, Tensor]:
            if t.shape[0] == 0:
                return t.new_zeros(width), t.new_zeros(width)
            # amin/amax, not min(0)/max(0): those also find indices, which under CPU load
            # costs milliseconds per call even for tiny tensors
            return t.amin(0).float(), t.amax(0).float()

        return cls(*span(pos, 2), *span(logscale, 2), *span(colors, 3))


def to_shape(chol_px: Tensor) -> Tensor:
    """``[..., 3]`` pixel Cholesky ``(l11, l21, l22)`` → ``(log σ_major, log σ_minor, θ ∈ [0, π))``."""
    l11, l21, l22 = chol_px.unbind(-1)
    a = l11 * l11  # Σ = L Lᵀ = [[a, b], [b, c]]
    b = l11 * l21
    c = l21 * l21 + l22 * l22
    half_diff = (a - c) / 2
    radius = torch.sqrt(half_diff * half_diff + b * b)
    mid = (a + c) / 2
    det = (l11 * l22) ** 2
    major = mid + radius
    minor = det / major  # λ_min = det / λ_max avoids cancellation for thin Gaussians
    theta = 0.5 * torch.atan2(b, half_diff)
    theta = torch.remainder(theta, math.pi)
    return torch.stack([0.5 * torch.log(major), 0.5 * torch.log(minor), theta], -1)


#: Colours are coded in an orthonormal luma/chroma basis: the chroma channels span far less than
#: RGB does, so with one step for all three they need fewer code values (and bytes), and the error
#: per RGB channel stays what it is per coded channel.
_COLOR_BASIS = torch.tensor(
    [
        [3**-0.5, 3**-0.5, 3**-0.5],
        [2**-0.5, 0.0, -(2**-0.5)],
        [6**-0.5, -2 * 6**-0.5, 6**-0.5],
    ]
)
_COLOR_BASIS_NP = _COLOR_BASIS.numpy()


def _levels(bits: int) -> float:
    return float((1 << bits) - 1)


def _step(lo: Tensor, hi: Tensor, bits: int) -> Tensor:
    """One step for all channels of a field: the widest channel's range over the code levels."""
    return (hi - lo).max() / _levels(bits)


def _uniform_codes(values: Tensor, lo: Tensor, hi: Tensor, bits: int) -> Tensor:
    step = _step(lo, hi, bits)
    scaled = torch.where(step > 0, (values - lo) / torch.where(step > 0, step, 1.0), 0.0)
    return torch.round(scaled).clamp_(0, _levels(bits)).to(torch.int64)


def _angle_codes(theta: Tensor, bits: int) -> Tensor:
    return torch.round(theta * ((1 << bits) / math.pi)).to(torch.int64) % (1 << bits)


def to_logcov(shape: Tensor) -> Tensor:
    """``[..., 3]`` ``(log σ_major, log σ_minor, θ)`` → ``(s, u, v)``: the log size and the log
    anisotropy of the log-covariance ``2s·I + [[u, v], [v, −u]]``."""
    major, minor, theta = shape.unbind(-1)
    elong = major - minor
    return torch.stack(
        [(major + minor) / 2, elong * torch.cos(2 * theta), elong * torch.sin(2 * theta)], -1
    )


def anisotropy_lo(reach: float | np.floating, bits: int) -> np.float32:
    """The log-anisotropy grid's low end for its high end ``reach`` (``R``), in float32 as the
    decoder derives it for version-4 records: ``−K · (R / (K − 1))`` with ``K = 2^(bits−1)`` when
    ``bits ≥ 2`` (0 then sits on code ``K``), ``−R`` when ``bits = 1``, 0 unless ``R > 0``."""
    r = np.float32(reach)
    if not r > 0:  # every Gaussian round (a hostile negative or NaN end fails the header checks)
        return np.float32(0.0)
    if bits < 2:
        return -r
    half = np.float32(1 << (bits - 1))
    with np.errstate(all="ignore"):
        return np.float32(-half * (r / (half - np.float32(1))))


def anisotropy_range(uv: Tensor, bits: int) -> tuple[Tensor, Tensor]:
    """``(lo, hi)`` of the log-anisotropy grid for values ``uv``: ``2^bits`` levels reaching
    ``R = max |u|, |v|`` both ways (``R`` rounded up to a float16 value, as version-4 records
    store it), with 0 on code ``2^(bits−1)`` when ``bits ≥ 2`` (the grid
    then runs one step past ``−R``, a code the encoder never uses), ``±R`` when ``bits = 1``;
    both 0 when every Gaussian is round."""
    reach = uv.abs().amax().float() if uv.numel() else torch.zeros(())
    if not float(reach) > 0:
        return torch.zeros(()), torch.zeros(())
    reach = f16_bounds(-reach.view(1), reach.view(1))[1][0]
    return torch.tensor(anisotropy_lo(float(reach), bits)), reach


#: How far a range end may lie beyond the float16 value it is widened to, relative to the field's
#: largest magnitude: float32 rounding of values that already sit on such an end (recomputed
#: from the grid by the closed-loop encoder) must not move it to another float16 value.
_F16_SLACK = 2.0**-20


def f16_bounds(lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
    """A field's range ends widened to float16 values, as version-4 records store them: the
    largest float16 at most ``lo`` and the smallest at least ``hi`` (each up to a float32-rounding
    slack, among multiples of a power of two above twice the slack; docs/format.md §7.6), the
    channels but the widest no wider than it. Ends beyond float16's range, and both ends of a field whose values are all one (its
    step 0 codes it exactly), come back unchanged: such an image is written with float32 ranges
    (format version 3)."""
    lo32, hi32 = (t.detach().cpu().to(torch.float32).numpy() for t in (lo, hi))
    slack = max(float(np.abs(lo32).max(initial=0)), float(np.abs(hi32).max(initial=0))) * _F16_SLACK
    # candidate ends: float16 values that are multiples of a power of two q ≥ 2·slack, so that
    # the one below lo + slack is the same for every lo within slack of it
    lo_q, hi_q = lo32.astype(np.float64), hi32.astype(np.float64)
    if slack > 0:
        q = 2.0 ** math.ceil(math.log2(2 * slack))
        lo_q, hi_q = np.floor((lo_q + slack) / q) * q, np.ceil((hi_q - slack) / q) * q
    down, up = _to_f16(lo_q.astype(np.float32), -1), _to_f16(hi_q.astype(np.float32), 1)
    # ends beyond float16, and fields of one value (step 0: exact), stay float32
    one = lo32 == hi32
    down = np.where(~np.isfinite(down) | one, lo32, down)
    up = np.where(~np.isfinite(up) | one, hi32, up)
    # the channels share one step, the widest's (by the values' span): no other may round up to
    # a wider range, which would change the step
    if up.size > 1:
        wide = int(np.argmax(hi32 - down))
        widest = up.flat[wide] - down.flat[wide]
        for c in range(up.size):
            while up.flat[c] - down.flat[c] > widest:
                up.flat[c] = _to_f16(np.nextafter(up.flat[c], np.float32(-np.inf)), -1)
    return torch.from_numpy(down.astype(np.float32)), torch.from_numpy(up.astype(np.float32))


def _to_f16(x: np.ndarray, direction: int) -> np.ndarray:
    """The float16 value nearest ``x`` on the side of ``direction`` (−1 below, +1 above), as
    float32; ``inf`` where there is none."""
    with np.errstate(over="ignore", invalid="ignore"):
        y = x.astype(np.float16)
        wrong = y.astype(np.float32) > x if direction < 0 else y.astype(np.float32) < x
        y = np.where(wrong, np.nextafter(y, np.float16(direction * np.inf)), y)
        return y.astype(np.float32)


def quantise(
    means: Tensor,  # [N, 2] normalised
    chol: Tensor,  # [N, 3] normalised
    colors: Tensor,  # [N, 3]
    size: tuple[int, int],  # (H, W) fitted at
    spec: QuantSpec,
    logcov: bool = False,
) -> tuple[dict[str, Tensor], Ranges]:
    """Integer codes (``pos [N, 2]``, ``scale [N, 2]``, ``angle [N]``, ``color [N, 3]``) and ranges.

    Computed in float32 on the CPU whatever the input, so encoder and decoder agree bit for bit.
    ``logcov``: code the shape as its log-covariance (mode 4; ``scale`` holds the ``(s, u)``
    codes, ``angle`` the ``v`` codes, and the ranges' scale ends are ``(s, uv)``).
    """
    h, w = size
    means, chol, colors = (t.detach().to("cpu", torch.float32) for t in (means, chol, colors))
    chol_px = chol * torch.tensor([w, h, h], dtype=torch.float32)
    shape = to_shape(chol_px)
    colors_t = colors @ _COLOR_BASIS.T
    ranges = Ranges.from_values(means, shape[:, :2], colors_t)
    codes = {"pos": _uniform_codes(means, ranges.pos_lo, ranges.pos_hi, spec.pos_bits)}
    if not logcov:
        codes["scale"] = _uniform_codes(
            shape[:, :2], ranges.scale_lo, ranges.scale_hi, spec.scale_bits
        )
        codes["angle"] = _angle_codes(shape[:, 2], spec.angle_bits)
        codes["color"] = _uniform_codes(colors_t, ranges.color_lo, ranges.color_hi, spec.color_bits)
        return codes, ranges
    # mode 4 (version-4 records): every range end a float16 value, widened outwards
    ranges.pos_lo, ranges.pos_hi = f16_bounds(ranges.pos_lo, ranges.pos_hi)
    codes["pos"] = _uniform_codes(means, ranges.pos_lo, ranges.pos_hi, spec.pos_bits)
    suv = to_logcov(shape)
    s, uv = suv[:, :1], suv[:, 1:]
    s_lo, s_hi = f16_bounds(*((s.amin(0), s.amax(0)) if len(s) else (s.new_zeros(1),) * 2))
    uv_lo, uv_hi = anisotropy_range(uv, spec.angle_bits)
    ranges.scale_lo = torch.cat([s_lo, uv_lo.view(1)])
    ranges.scale_hi = torch.cat([s_hi, uv_hi.view(1)])
    size_codes = _uniform_codes(s, s_lo, s_hi, spec.scale_bits)[:, 0]
    uv_codes = _uniform_codes(uv, uv_lo, uv_hi, spec.angle_bits)
    codes["scale"] = torch.stack([size_codes, uv_codes[:, 0]], -1)
    codes["angle"] = uv_codes[:, 1]
    gain = colour_gains_of(ranges, size_codes, spec.scale_bits)[:, None]
    # colour steps scaled by each Gaussian's gain: the range that sets the step is the widest
    # channel's of (t − lo) / gain, so every code fits in C bits
    lo = ranges.color_lo = f16_bounds(ranges.color_lo, ranges.color_hi)[0]
    span = ((colors_t - lo) / gain).amax(0) if len(colors_t) else torch.zeros(3)
    ranges.color_hi = f16_bounds(lo, lo + span)[1]
    step = _step(lo, ranges.color_hi, spec.color_bits)
    scaled = torch.where(step > 0, (colors_t - lo) / torch.where(step > 0, step * gain, 1.0), 0.0)
    codes["color"] = torch.round(scaled).clamp_(0, _levels(spec.color_bits)).to(torch.int64)
    return codes, ranges


def colour_gains_of(ranges: Ranges, size_codes: Tensor, scale_bits: int) -> Tensor:
    """Mode 4's per-Gaussian colour step multipliers (``kernels.colour_gain``: what the decoder
    computes), from the log-size codes and the ranges' log-size ends."""
    flat = np.concatenate([np.asarray(t, np.float32) for t in ranges.tensors()])
    out = np.empty(len(size_codes), np.float32)
    colour_gains(flat, np.asarray(size_codes, np.int64), scale_bits, out)
    return torch.from_numpy(out)


def dequantise(
    codes: dict[str, Tensor | np.ndarray],
    ranges: Ranges | Sequence[float],
    size: tuple[int, int],
    spec: QuantSpec,
    logcov: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(means, chol, colors)`` in normalised units (float32) from :func:`quantise`'s output
    (made with the same ``logcov``).

    This is the decoder's definition of the values; it runs in numpy float32 because on one
    image's worth of Gaussians numpy's per-call cost is a fraction of torch's (decoding is on the
    training loader's critical path). ``ranges`` may be a :class:`Ranges` or the header's 14 floats.
    """
    out = dequantise_numpy({k: np.asarray(v) for k, v in codes.items()}, ranges, size, spec, logcov)
    return tuple(torch.from_numpy(t) for t in out)  # type: ignore[return-value]


def dequantise_numpy(
    codes: dict[str, np.ndarray],
    ranges: Ranges | Sequence[float],
    size: tuple[int, int],
    spec: QuantSpec,
    logcov: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`dequantise` on numpy arrays (float32 ``[N, 2]``, ``[N, 3]``, ``[N, 3]``)."""
    if isinstance(ranges, Ranges):
        flat = np.concatenate([np.asarray(t, np.float32) for t in ranges.tensors()])
    else:
        flat = np.asarray(ranges, np.float32)
    pos = np.asarray(codes["pos"]).reshape(-1, 2)
    n = len(pos)
    means, chol, colors = (np.empty((n, k), np.float32) for k in (2, 3, 3))
    dequantise_into(
        np.ascontiguousarray(pos.T, np.int32),
        np.ascontiguousarray(np.asarray(codes["scale"]).reshape(n, 2).T, np.int32),
        np.ascontiguousarray(np.asarray(codes["angle"]).reshape(n), np.int32),
        np.ascontiguousarray(np.asarray(codes["color"]).reshape(n, 3).T, np.int32),
        np.array([n], np.int64),
        np.zeros(1, np.int64),
        flat.reshape(1, 14),
        np.array([size], np.int64),
        np.array([spec.pos_bits, spec.scale_bits, spec.angle_bits, spec.color_bits], np.int64),
        _COLOR_BASIS_NP,
        means,
        chol,
        colors,
        np.empty((1, 4), np.int64),
        logcov,
    )
    return means, chol, colors


def _spread_bits(v: Tensor) -> Tensor:
    """Put the low 16 bits of ``v`` on the even bit positions (for Morton codes)."""
    v = v & 0xFFFF
    v = (v | (v << 8)) & 0x00FF00FF
    v = (v | (v << 4)) & 0x0F0F0F0F
    v = (v | (v << 2)) & 0x33333333
    v = (v | (v << 1)) & 0x55555555
    return v


def morton_codes(pos_codes: Tensor) -> Tensor:
    """``[N, 2]`` integer ``(x, y)`` codes → ``[N]`` Z-order (Morton) codes (x on the even bits)."""
    return _spread_bits(pos_codes[:, 0]) | (_spread_bits(pos_codes[:, 1]) << 1)


def morton_order(pos_codes: Tensor) -> Tensor:
    """The permutation that sorts Gaussians along the Z-order curve (stable for ties)."""
    return torch.sort(morton_codes(pos_codes), stable=True).indices
