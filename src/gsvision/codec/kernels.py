"""Compiled (numba) loops of the quantised decoder: codes from a version-1 body, values from codes.

The values a quantised image decodes to are *defined* by :func:`dequantise_into`: the decoders
(``decode``, ``decode_batch``, modes 2, 3 and 4 alike) and the quantiser's own round trip
(:func:`gsvision.codec.quant.dequantise`, which the encoder uses for its closed-loop colours) all
call it, so they agree bit for bit. Every operation is float32 (as numpy's float32 arithmetic,
without fused multiply-adds); ``exp``/``sin``/``cos``/``sqrt`` are the C library's.

One pass per image over its Gaussians instead of ~40 numpy passes over all of them: decoding a
batch of ``N = 1,024`` payloads is the training loader's critical path. Checks report codes, not
messages; the caller words them (docs/format.md §9.2). Compiled on first use and cached beside
this file, like :mod:`gsvision.codec.rc`.
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = [
    "VALUE_CHECKS",
    "CODE_CHECKS",
    "quantised_codes",
    "dequantise_into",
    "colour_gain",
    "colour_gains",
    "morton_xy",
]

#: What :func:`quantised_codes` reports per image (0: passed), in the order they are checked.
CODE_CHECKS = ("ok", "varints", "position code", "scale depth", "angle depth", "colour depth")
#: The value checks :func:`dequantise_into` records, in the order they are reported.
VALUE_CHECKS = ("means", "chol", "colors", "positive-definite")


@njit(cache=True, inline="always")
def _compact(v):
    v = v & 0x55555555
    v = (v | (v >> 1)) & 0x33333333
    v = (v | (v >> 2)) & 0x0F0F0F0F
    v = (v | (v >> 4)) & 0x00FF00FF
    return (v | (v >> 8)) & 0x0000FFFF


@njit(cache=True, error_model="numpy")
def morton_xy(morton, xy):
    """``[G]`` Morton codes (below 2^32) → ``[2, G]`` ``(x, y)`` codes (x on the even bits; as
    :func:`gsvision.codec.quant.morton_codes` interleaves them)."""
    for g in range(morton.size):
        m = morton[g] & 0xFFFFFFFF
        xy[0, g] = _compact(m)
        xy[1, g] = _compact(m >> 1)


@njit(cache=True, error_model="numpy")
def quantised_codes(raw, starts, vlens, counts, firsts, bits, pos, scale, angle, color, status):
    """Integer codes of version-1 quantised images (mode 2) from their decompressed bodies.

    ``raw`` (uint8) holds the bodies end to end, image ``b``'s at ``starts[b]``: ``vlens[b]``
    bytes of Morton-code deltas as varints, then byte planes of ``counts[b]`` bytes each (scale,
    angle, colour; low bytes, then high bytes where a field has more than 8 bits). Writes
    ``pos [2, G]`` (x, y), ``scale [2, G]``, ``angle [G]``, ``color [3, G]`` at ``firsts[b]``, and
    ``status[b]``: the index in :data:`CODE_CHECKS` of the first check the image fails, 0 if none.
    Every code written is within its depth (an image that fails gets zero or clipped codes).
    """
    pb, sb, ab, cb = bits[0], bits[1], bits[2], bits[3]
    ws = 1 if sb <= 8 else 2
    wa = 1 if ab <= 8 else 2
    wc = 1 if cb <= 8 else 2
    pos_top = np.int64(1) << (2 * pb)
    morton = np.empty(vlens.max() + 1 if counts.size else 0, np.int64)  # (held <= vlen)
    for b in range(counts.size):
        n, at, first = counts[b], starts[b], firsts[b]
        end = at + vlens[b]
        # 1. exactly n varints of 1 to 5 bytes, the last ending the section; Morton codes are
        #    their running sum
        # (branch-free: the lengths of the varints are data, a branch on them mispredicts)
        held = 0
        shift = 0  # of the next byte's 7 bits in its varint; 35 after 5 bytes without an end
        value = np.int64(0)
        acc = np.int64(0)
        over = False
        for k in range(at, end):
            byte = np.int64(raw[k])
            over |= shift == 35
            value |= (byte & 0x7F) << shift
            stop = np.int64(byte < 0x80)  # 1 where a varint ends
            morton[held] = acc + value  # (kept only where it ends: held moves on)
            acc += value & -stop
            held += stop
            value &= stop - 1
            shift = min(shift + 7, 35) & (stop - 1)
        if over or held != n or shift != 0:
            status[b] = 1
            morton[:n] = 0
        elif n > 0 and acc >= pos_top:
            status[b] = 2
        x, y = pos[0, first : first + n], pos[1, first : first + n]
        for j in range(n):
            m = morton[j] & 0xFFFFFFFF
            x[j], y[j] = _compact(m), _compact(m >> 1)
        # 2. byte planes: row r of Gaussian j at end + r * n + j
        if status[b] == 1:
            end = at  # (no planes to trust: read the varint bytes, clipped, as zeros would do)
            n_read = 0
        else:
            n_read = n
        s_max = max(
            _plane(raw, end, n, n_read, 0, 2 * ws - 2, sb, scale[0], first),
            _plane(raw, end, n, n_read, 1, 2 * ws - 1, sb, scale[1], first),
        )
        a_max = _plane(raw, end, n, n_read, 2 * ws, 2 * ws + wa - 1, ab, angle, first)
        r = 2 * ws + wa
        c_max = 0
        for c in range(3):
            high = r + 3 + c if wc == 2 else r + c
            c_max = max(c_max, _plane(raw, end, n, n_read, r + c, high, cb, color[c], first))
        if status[b] == 0:
            if s_max >> sb:
                status[b] = 3
            elif a_max >> ab:
                status[b] = 4
            elif c_max >> cb:
                status[b] = 5


@njit(cache=True, error_model="numpy", inline="always")
def _plane(raw, end, n, n_read, low, high, bits, out, first):
    """One field's codes from its low byte plane (row ``low``) and, if ``high != low``, its high
    one, into ``out[first:first + n]`` clipped to ``bits``; returns the largest code read (0 for
    ``n_read = 0``: zeros)."""
    top = np.int32((1 << bits) - 1)
    dst = out[first : first + n]  # (slices: indices known >= 0, so the loops vectorise)
    if n_read == 0:
        dst[:] = 0
        return 0
    largest = np.int32(0)
    low_bytes = raw[end + low * n : end + (low + 1) * n]
    if high == low:
        for j in range(n):
            v = np.int32(low_bytes[j])
            largest = max(largest, v)
            dst[j] = min(v, top)
    else:
        high_bytes = raw[end + high * n : end + (high + 1) * n]
        for j in range(n):
            v = np.int32(low_bytes[j]) | (np.int32(high_bytes[j]) << 8)
            largest = max(largest, v)
            dst[j] = min(v, top)
    return largest


@njit(cache=True, error_model="numpy", inline="always")
def _exp_value(lo, code, step):
    return np.exp(lo + np.float32(code) * step)


@njit(cache=True, error_model="numpy")
def colour_gain(r, size_code, sbits):
    """Mode 4's colour step multiplier of a Gaussian: ``exp(0.375 · (s_hi − s))`` in float32
    from its log-size code and the image's 14 range floats ``r`` (docs/format.md §7.6). Smaller
    Gaussians (less area, so less weight in the image) get coarser colour steps: ``(area_max /
    area)^(3/16)``; exponents from 0.125 to 0.2 of the area ratio measured alike (N = 1,024, six
    photos), a colour error's cost is proportional to the area (exponent 0.5) only without the
    overlap that lets neighbours compensate."""
    step_s = (r[6] - r[4]) / np.float32((np.int64(1) << sbits) - 1)
    size = r[4] + np.float32(size_code) * step_s
    return np.exp((r[6] - size) * np.float32(0.375))


@njit(cache=True, error_model="numpy")
def colour_gains(r, size_codes, sbits, out):
    """:func:`colour_gain` of every Gaussian of one image (``size_codes [n]`` → ``out [n]``)."""
    for j in range(size_codes.size):
        out[j] = colour_gain(r, size_codes[j], sbits)


@njit(cache=True, error_model="numpy")
def dequantise_into(
    pos, scale, angle, color, counts, firsts, ranges, sizes, bits, basis, means, chol, colors, bad,
    logcov=False,
):  # fmt: skip
    """Values of quantised images from their codes (:func:`quantised_codes`' layout: ``[2, G]``
    position, ``[2, G]`` scale, ``[G]`` angle and ``[3, G]`` colour codes, int32).

    Per image ``b``: ``ranges[b]`` its 14 float32 range ends (pos lo/hi, log-scale lo/hi, colour
    lo/hi), ``sizes[b]`` its ``(h, w)``; ``bits`` the bit depths (pos, scale, angle, colour) of
    them all; ``basis`` the float32 3×3 colour basis.
    A field's step is its widest channel's range over its levels; a value is ``lo + code * step``;
    the shape ``(log σ_major, log σ_minor, θ)`` becomes the Cholesky factor in normalised units
    (docs/format.md §7.3). With ``logcov`` (mode 4) the scale codes are ``(s, u)`` and the angle
    codes ``v`` of the log-covariance ``2s·I + [[u, v], [v, −u]]`` (§7.6): ``log σ = s ± d/2``
    with ``d = √(u² + v²)``, ``θ = atan2(v, u) / 2``; and each Gaussian's colour step is the
    image's times :func:`colour_gain`. Writes ``means [G, 2]``, ``chol [G, 3]``, ``colors [G, 3]`` and
    ``bad[b, k]``: the first Gaussian (in its image) failing value check ``k`` of
    :data:`VALUE_CHECKS`, −1 if none.

    ``σ = exp(log σ)``, ``cos θ`` and ``sin θ`` take one of at most ``2^bits`` values per image
    (per call for the angle): where there are fewer values than Gaussians they are tabulated, with
    the same float32 expression, so the result does not depend on it. Codes must be within their
    depths (:func:`quantised_codes` and the range decoder only make such codes).
    """
    levels = np.empty(3, np.float32)  # 2^bits - 1 of position, scale and colour
    for k, field in enumerate((0, 1, 3)):
        levels[k] = np.float32((np.int64(1) << bits[field]) - 1)
    n_angles = np.int64(1) << bits[2]
    angle_unit = np.float32(np.pi / n_angles)
    tabulate_angle = n_angles <= counts.sum() and not logcov
    cos_t = np.empty(n_angles if tabulate_angle else 0, np.float32)
    sin_t = np.empty_like(cos_t)
    for t in range(cos_t.size):
        theta = np.float32(t) * angle_unit
        cos_t[t], sin_t[t] = np.cos(theta), np.sin(theta)
    n_scales = np.int64(1) << bits[1]
    major_t = np.empty(n_scales, np.float32)
    minor_t = np.empty(n_scales, np.float32)
    most = counts.max() if counts.size else 0
    # one row per value, then interleaved into the outputs: loops over 1-D rows vectorise,
    # loops writing [G, 3] rows do not
    t = np.empty((12, most), np.float32)
    x, y, l11, l21, l22, c0, c1, c2 = t[0], t[1], t[2], t[3], t[4], t[5], t[6], t[7]
    sigma1, sigma2, cos, sin = t[8], t[9], t[10], t[11]
    levels_a = np.float32(n_angles - 1)
    step_a = np.float32(0.0)
    for b in range(counts.size):
        r = ranges[b]
        step_p = max(r[2] - r[0], r[3] - r[1]) / levels[0]
        step_s = max(r[6] - r[4], r[7] - r[5]) / levels[1]
        if logcov:
            step_s = (r[6] - r[4]) / levels[1]
            step_a = (r[7] - r[5]) / levels_a
        step_c = max(max(r[11] - r[8], r[12] - r[9]), r[13] - r[10]) / levels[2]
        h, w = np.float32(sizes[b, 0]), np.float32(sizes[b, 1])
        n, lo = counts[b], firsts[b]
        hi = lo + n
        # (slices of this image: indices known >= 0)
        px, py = pos[0, lo:hi], pos[1, lo:hi]
        for j in range(n):
            x[j] = r[0] + np.float32(px[j]) * step_p
            y[j] = r[1] + np.float32(py[j]) * step_p
        k0, k1, k2 = color[0, lo:hi], color[1, lo:hi], color[2, lo:hi]
        major, minor, codes = scale[0, lo:hi], scale[1, lo:hi], angle[lo:hi]
        for j in range(n):
            step = step_c
            if logcov:  # colour steps scaled by the Gaussian's size (§7.6)
                step = step_c * colour_gain(r, major[j], bits[1])
            v0 = r[8] + np.float32(k0[j]) * step
            v1 = r[9] + np.float32(k1[j]) * step
            v2 = r[10] + np.float32(k2[j]) * step
            c0[j] = v0 * basis[0, 0] + v1 * basis[1, 0] + v2 * basis[2, 0]
            c1[j] = v0 * basis[0, 1] + v1 * basis[1, 1] + v2 * basis[2, 1]
            c2[j] = v0 * basis[0, 2] + v1 * basis[1, 2] + v2 * basis[2, 2]
        if logcov:  # (s, u, v): no tables (σ depends on all three codes)
            half = np.float32(0.5)
            for j in range(n):
                sz = r[4] + np.float32(major[j]) * step_s
                u = r[5] + np.float32(minor[j]) * step_a
                v = r[5] + np.float32(codes[j]) * step_a
                d = np.sqrt(u * u + v * v) * half
                sigma1[j], sigma2[j] = np.exp(sz + d), np.exp(sz - d)
                theta = np.arctan2(v, u) * half
                cos[j], sin[j] = np.cos(theta), np.sin(theta)
        elif n_scales <= n:
            for c in range(n_scales):
                major_t[c] = _exp_value(r[4], c, step_s)
                minor_t[c] = _exp_value(r[5], c, step_s)
            for j in range(n):
                sigma1[j], sigma2[j] = major_t[major[j]], minor_t[minor[j]]
        else:
            for j in range(n):
                sigma1[j] = _exp_value(r[4], major[j], step_s)
                sigma2[j] = _exp_value(r[5], minor[j], step_s)
        if tabulate_angle:
            for j in range(n):
                cos[j], sin[j] = cos_t[codes[j]], sin_t[codes[j]]
        elif not logcov:
            for j in range(n):
                theta = np.float32(codes[j]) * angle_unit
                cos[j], sin[j] = np.cos(theta), np.sin(theta)
        for j in range(n):
            s1, s2 = sigma1[j] * sigma1[j], sigma2[j] * sigma2[j]
            a = s1 * cos[j] * cos[j] + s2 * sin[j] * sin[j]
            d = np.sqrt(a)
            l11[j] = d / w
            l21[j] = (s1 - s2) * sin[j] * cos[j] / d / h
            l22[j] = sigma1[j] * sigma2[j] / d / h
        fine = True
        for j in range(n):  # x - x is 0 exactly for finite x (NaN for NaN and ±inf)
            v = x[j] - x[j] + y[j] - y[j] + l11[j] - l11[j] + l21[j] - l21[j] + l22[j] - l22[j]
            v += c0[j] - c0[j] + c1[j] - c1[j] + c2[j] - c2[j]
            fine &= (v == 0) & (l11[j] > 0) & (l22[j] > 0)
        m_out, l_out, c_out = means[lo:hi], chol[lo:hi], colors[lo:hi]
        for j in range(n):
            m_out[j, 0], m_out[j, 1] = x[j], y[j]
            l_out[j, 0], l_out[j, 1], l_out[j, 2] = l11[j], l21[j], l22[j]
            c_out[j, 0], c_out[j, 1], c_out[j, 2] = c0[j], c1[j], c2[j]
        bad[b, :] = -1
        if not fine:
            _first_failures(m_out, l_out, c_out, bad[b])


@njit(cache=True, error_model="numpy")
def _first_failures(means, chol, colors, bad):
    """``bad[k]``: the first Gaussian failing value check ``k`` (−1 if none)."""
    for g in range(len(means)):
        if bad[0] < 0 and not (np.isfinite(means[g, 0]) and np.isfinite(means[g, 1])):
            bad[0] = g
        if bad[1] < 0 and not (
            np.isfinite(chol[g, 0]) and np.isfinite(chol[g, 1]) and np.isfinite(chol[g, 2])
        ):
            bad[1] = g
        if bad[2] < 0 and not (
            np.isfinite(colors[g, 0]) and np.isfinite(colors[g, 1]) and np.isfinite(colors[g, 2])
        ):
            bad[2] = g
        if bad[3] < 0 and (chol[g, 0] <= 0 or chol[g, 2] <= 0):
            bad[3] = g
