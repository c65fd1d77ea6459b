"""Adaptive binary range coding of the quantised codes (format modes 3 and 4).

An LZMA-style binary range coder: every bit is coded with an adaptive probability (11-bit, moved
1/16 of the way towards each coded bit), and an integer of ``B`` bits is coded most significant
bit first down a binary tree of ``2^B − 1`` such probabilities (a "bit tree"), which learns the
value distribution of each field as it goes, with no table to transmit. The decoder reads exactly
the bytes the encoder wrote: a body it does not consume exactly, or whose first byte is not 0, is
refused. Decoding garbage yields in-range codes (every decoded value has at most its field's bits),
runs in time linear in the number of Gaussians, and allocates only the output arrays.

The coder is compiled by numba on first use and cached beside this file (``__pycache__``; set
``NUMBA_CACHE_DIR`` where that is read-only): a few seconds once, then ~0.5 s per process.

Streams, per image, in Morton order (see docs/format.md §7.5):
- positions: each Morton-code delta as its bit length ``L`` (a 6-bit tree) then its ``L − 1`` bits
  below the leading one: the top :data:`POS_CTX_BITS` of them with trees chosen by ``L``, the rest
  with one probability per (``L``, bit position);
- log-scales: ``M`` with one ``S``-bit tree; ``m`` with one of four trees chosen by ``M``'s top
  two bits;
- angle: one ``A``-bit tree per elongation class of the decoded ``(M − m)`` (4 classes);
- colour: one ``C``-bit tree per channel.

Mode 4 (format version 3) codes the shape as its log-covariance codes ``(s, u, v)`` instead of
``(M, m, T)`` (see :mod:`gsvision.codec.quant`): ``s`` with one ``S``-bit tree, ``u`` with one
``A``-bit tree, ``v`` with one of four ``A``-bit trees chosen by how far ``u`` is from 0 (round
Gaussians have both near 0). Its colour steps grow as Gaussians shrink, so each colour code is
coded relative to the code of its channel's mid-range at that Gaussian's step (modulo ``2^C``),
with one tree per channel and octave of that step (4 classes).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from gsvision.codec.kernels import colour_gain

__all__ = ["encode_codes", "decode_codes", "RangeError"]

PROB_BITS = 11
PROB_ONE = 1 << PROB_BITS
MOVE = 4  # a probability moves 1/2^MOVE of the way towards each coded bit
TOP = 1 << 24
POS_CTX_BITS = 3  # mantissa bits of a Morton delta coded with trees, per bit length
ELONG_CLASSES = 4


# ------------------------------------------------------------------------------ encoder
@njit(cache=True)
def _shift_low(st, out, pos):
    # st: [low, range, cache, cache_size] as int64
    low = st[0]
    if low < 0xFF000000 or low >= (1 << 32):
        carry = low >> 32
        temp = st[2]
        while True:
            out[pos] = (temp + carry) & 0xFF
            pos += 1
            temp = 0xFF
            st[3] -= 1
            if st[3] == 0:
                break
        st[2] = (low >> 24) & 0xFF
    st[3] += 1
    st[0] = (low & 0x00FFFFFF) << 8
    return pos


@njit(cache=True)
def _adapt(probs, i, bit):
    # probs[i]: the probability of a 0, in units of 2^-PROB_BITS
    if bit == 0:
        probs[i] += (PROB_ONE - probs[i]) >> MOVE
    else:
        probs[i] -= probs[i] >> MOVE


@njit(cache=True)
def _enc_bit(st, out, pos, probs, i, bit):
    bound = (st[1] >> PROB_BITS) * probs[i]
    if bit == 0:
        st[1] = bound
    else:
        st[0] += bound
        st[1] -= bound
    _adapt(probs, i, bit)
    while st[1] < TOP:
        st[1] <<= 8
        pos = _shift_low(st, out, pos)
    return pos


@njit(cache=True)
def _enc_tree(st, out, pos, probs, base, bits, value):
    node = 1
    for k in range(bits - 1, -1, -1):
        b = (value >> k) & 1
        pos = _enc_bit(st, out, pos, probs, base + node, b)
        node = (node << 1) | b
    return pos


@njit(cache=True)
def _elong(major, minor, sbits):
    # elongation class of a Gaussian from its scale codes (same step for both)
    d = major - minor + (1 << sbits)  # offsets may differ: classes only need to be consistent
    return min(ELONG_CLASSES - 1, max(0, (d >> max(sbits - 4, 0)) - 15))


@njit(cache=True)
def _aniso(u, ab):
    # context of the v code: how far the u code is from the grid's 0 (code 2^(A-1))
    far = abs(u - (1 << (ab - 1))) >> max(ab - 6, 0)
    return 0 if far == 0 else (1 if far <= 2 else (2 if far <= 5 else 3))


@njit(cache=True)
def _centre(r, gain, c, cb):
    # mode 4: the code of channel c's mid-range at a Gaussian's colour step (its gain times the
    # image's step)
    levels = np.float32((1 << cb) - 1)
    step = max(max(r[11] - r[8], r[12] - r[9]), r[13] - r[10]) / levels
    step = step * gain
    if not step > 0:
        return 0
    x = min((r[11 + c] - r[8 + c]) / (np.float32(2.0) * step), levels)
    return int(x + np.float32(0.5))


@njit(cache=True)
def _colour_tree(gain, c, cb):
    # mode 4: the tree of channel c for a Gaussian whose colour gain is in octave 0, 1, 2 or 3+
    octave = 0 if gain < 2 else (1 if gain < 4 else (2 if gain < 8 else 3))
    return (3 * octave + c) * (1 << cb)


@njit(cache=True)
def _encode(deltas, scale, angle, color, pb, sb, ab, cb, out, lc, r):
    n = deltas.shape[0]
    st = np.zeros(4, np.int64)
    st[1] = 0xFFFFFFFF
    st[3] = 1
    probs = _new_probs(sb, ab, cb)
    o_len, o_ctx, o_raw, o_maj, o_min, o_ang, o_u, o_col = _offsets(sb, ab, cb)
    pos = 0
    for i in range(n):
        d = deltas[i]
        length = 0
        while (d >> length) > 0:
            length += 1
        pos = _enc_tree(st, out, pos, probs, o_len, 6, length)
        if length > 1:
            rest = length - 1
            top = min(POS_CTX_BITS, rest)
            hi = (d >> (rest - top)) & ((1 << top) - 1)
            pos = _enc_tree(st, out, pos, probs, o_ctx + length * (1 << POS_CTX_BITS), top, hi)
            for k in range(rest - top - 1, -1, -1):
                pos = _enc_bit(st, out, pos, probs, o_raw + length * 64 + k, (d >> k) & 1)
        mj = scale[0, i]
        mn = scale[1, i]
        pos = _enc_tree(st, out, pos, probs, o_maj, sb, mj)
        if lc:
            pos = _enc_tree(st, out, pos, probs, o_u, ab, mn)
            pos = _enc_tree(st, out, pos, probs, o_ang + _aniso(mn, ab) * (1 << ab), ab, angle[i])
        else:
            pos = _enc_tree(st, out, pos, probs, o_min + (mj >> max(sb - 2, 0)) * (1 << sb), sb, mn)
            e = _elong(mj, mn, sb)
            pos = _enc_tree(st, out, pos, probs, o_ang + e * (1 << ab), ab, angle[i])
        gain = colour_gain(r, mj, sb) if lc else np.float32(1.0)
        for c in range(3):
            k = color[c, i]
            tree = o_col + c * (1 << cb)
            if lc:
                k = (k - _centre(r, gain, c, cb)) & ((1 << cb) - 1)
                tree = o_col + _colour_tree(gain, c, cb)
            pos = _enc_tree(st, out, pos, probs, tree, cb, k)
    for _ in range(5):
        pos = _shift_low(st, out, pos)
    return pos


@njit(cache=True)
def _offsets(sb, ab, cb):
    o_len = 0
    o_ctx = o_len + 64
    o_raw = o_ctx + 64 * (1 << POS_CTX_BITS)
    o_maj = o_raw + 64 * 64
    o_min = o_maj + (1 << sb)
    o_ang = o_min + 4 * (1 << sb)
    o_u = o_ang + ELONG_CLASSES * (1 << ab)
    o_col = o_u + (1 << ab)
    return o_len, o_ctx, o_raw, o_maj, o_min, o_ang, o_u, o_col


@njit(cache=True)
def _new_probs(sb, ab, cb):
    return np.full(_nprobs(sb, ab, cb), PROB_ONE // 2, np.int32)


@njit(cache=True)
def _nprobs(sb, ab, cb):
    return _offsets(sb, ab, cb)[7] + 12 * (1 << cb)  # mode 4: 4 trees per channel


# ------------------------------------------------------------------------------ decoder
@njit(cache=True)
def _dec_bit(code, rng, k, buf, probs, i):
    """One bit with probability ``probs[i]``; the state ``(code, range, next byte)`` is passed and
    returned in registers (a state array in memory makes the decoder 3x slower)."""
    p = probs[i]
    bound = (rng >> PROB_BITS) * p
    if code < bound:
        rng = bound
        probs[i] = p + ((PROB_ONE - p) >> MOVE)
        bit = 0
    else:
        code -= bound
        rng -= bound
        probs[i] = p - (p >> MOVE)
        bit = 1
    while rng < TOP:
        rng <<= 8
        byte = 0
        if k < buf.shape[0]:
            byte = buf[k]
        k += 1
        code = ((code << 8) | byte) & 0xFFFFFFFF
    return bit, code, rng, k


@njit(cache=True)
def _dec_tree(code, rng, k, buf, probs, base, bits):
    node = 1
    for _ in range(bits):
        bit, code, rng, k = _dec_bit(code, rng, k, buf, probs, base + node)
        node = (node << 1) | bit
    return node - (1 << bits), code, rng, k


@njit(cache=True)
def _decode(buf, n, pb, sb, ab, cb, deltas, scale, angle, color, lc, r):
    """Decodes into the arrays; returns ``(bytes consumed, every position code in range)``."""
    code = 0
    for j in range(5):
        byte = 0
        if j < buf.shape[0]:
            byte = buf[j]
        code = ((code << 8) | byte) & 0xFFFFFFFF
    rng = 0xFFFFFFFF
    k = 5
    probs = _new_probs(sb, ab, cb)
    o_len, o_ctx, o_raw, o_maj, o_min, o_ang, o_u, o_col = _offsets(sb, ab, cb)
    total = 0
    limit = 1 << (2 * pb)
    ok = True
    for i in range(n):
        length, code, rng, k = _dec_tree(code, rng, k, buf, probs, o_len, 6)
        d = 0
        if length > 2 * pb:
            ok = False
            length = 0
        if length >= 1:
            d = 1
        if length > 1:
            rest = length - 1
            top = min(POS_CTX_BITS, rest)
            base = o_ctx + length * (1 << POS_CTX_BITS)
            hi, code, rng, k = _dec_tree(code, rng, k, buf, probs, base, top)
            d = (d << top) | hi
            for j in range(rest - top - 1, -1, -1):
                bit, code, rng, k = _dec_bit(code, rng, k, buf, probs, o_raw + length * 64 + j)
                d = (d << 1) | bit
        total += d
        if total >= limit:
            ok = False
            total = limit - 1
        deltas[i] = total
        mj, code, rng, k = _dec_tree(code, rng, k, buf, probs, o_maj, sb)
        if lc:
            mn, code, rng, k = _dec_tree(code, rng, k, buf, probs, o_u, ab)
            base = o_ang + _aniso(mn, ab) * (1 << ab)
        else:
            base = o_min + (mj >> max(sb - 2, 0)) * (1 << sb)
            mn, code, rng, k = _dec_tree(code, rng, k, buf, probs, base, sb)
            base = o_ang + _elong(mj, mn, sb) * (1 << ab)
        scale[0, i] = mj
        scale[1, i] = mn
        angle[i], code, rng, k = _dec_tree(code, rng, k, buf, probs, base, ab)
        gain = colour_gain(r, mj, sb) if lc else np.float32(1.0)
        for c in range(3):
            tree = o_col + c * (1 << cb)
            if lc:
                tree = o_col + _colour_tree(gain, c, cb)
            v, code, rng, k = _dec_tree(code, rng, k, buf, probs, tree, cb)
            if lc:
                v = (v + _centre(r, gain, c, cb)) & ((1 << cb) - 1)
            color[c, i] = v
    return k, ok


def encode_codes(
    morton: np.ndarray,
    scale: np.ndarray,
    angle: np.ndarray,
    color: np.ndarray,
    bits,
    logcov: bool = False,
    ranges=None,
) -> bytes:
    """Range-code one image's codes (sorted Morton codes ``[n]``, ``scale [2, n]``, ``angle [n]``,
    ``color [3, n]``) at bit depths ``bits = (P, S, A, C)``; ``logcov``: mode 4 (the shape codes
    are ``(s, u)`` and ``v``; ``ranges``, the header's 14 floats, then set the colour models)."""
    pb, sb, ab, cb = bits
    morton = np.asarray(morton, np.int64)
    deltas = np.diff(morton, prepend=np.int64(0)) if morton.size else morton
    n = morton.shape[0]
    # A coded bit costs at most log2(2^11 / 15) < 8 bits (probabilities stay >= 15 / 2^11), so one
    # byte per binary decision always suffices.
    decisions = 6 + 2 * pb + 2 * sb + 2 * ab + 3 * cb
    out = np.zeros(16 + n * decisions, np.uint8)
    used = _encode(
        deltas,
        np.ascontiguousarray(scale, np.int64),
        np.ascontiguousarray(angle, np.int64),
        np.ascontiguousarray(color, np.int64),
        pb, sb, ab, cb, out, logcov, _floats(ranges),
    )  # fmt: skip
    return out[:used].tobytes()


class RangeError(ValueError):
    """A range-coded body is malformed (wrapped into ``CodecError`` by the decoder)."""


def _floats(ranges) -> np.ndarray:
    return np.zeros(14, np.float32) if ranges is None else np.asarray(ranges, np.float32)


def decode_codes(
    body: bytes, n: int, bits, logcov: bool = False, ranges=None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(morton [n] int64, scale [2, n], angle [n], color [3, n] int32)`` from
    :func:`encode_codes`'s bytes; raises :class:`RangeError` on a body that is not exactly such a
    stream. Allocates 36 bytes per Gaussian, and the models (< 400 kB)."""
    pb, sb, ab, cb = bits
    buf = np.frombuffer(body, np.uint8)
    if buf.size < 5 or buf[0] != 0:
        raise RangeError("range-coded stream is shorter than 5 bytes or does not start with 0")
    morton = np.empty(n, np.int64)
    scale = np.empty((2, n), np.int32)
    angle = np.empty(n, np.int32)
    color = np.empty((3, n), np.int32)
    used, ok = _decode(buf, n, pb, sb, ab, cb, morton, scale, angle, color, logcov, _floats(ranges))
    if not ok:
        raise RangeError(f"a position code exceeds {2 * pb} bits")
    if used != buf.size:
        raise RangeError(
            f"range-coded stream is {buf.size} bytes, but its {n} Gaussians take {used}"
        )
    return morton, scale, angle, color
