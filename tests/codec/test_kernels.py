"""The compiled decoder loops (codec/kernels.py): values follow docs/format.md §7.3, tabulating
exp/cos/sin does not change a bit, and the loops agree with a plain reading of the format."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gsvision.codec.kernels import dequantise_into, morton_xy, quantised_codes
from gsvision.codec.quant import _COLOR_BASIS_NP


def _codes(n: int, bits: tuple[int, int, int, int], seed: int) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    pb, sb, ab, cb = bits
    pos = rng.integers(0, 1 << pb, (2, n)).astype(np.int32)
    scale = rng.integers(0, 1 << sb, (2, n)).astype(np.int32)
    angle = rng.integers(0, 1 << ab, n).astype(np.int32)
    color = rng.integers(0, 1 << cb, (3, n)).astype(np.int32)
    return pos, scale, angle, color


def _ranges(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    lo = rng.uniform(-2, 1, 7)
    hi = lo + rng.uniform(0.01, 3, 7)
    return np.concatenate([lo[:2], hi[:2], lo[2:4], hi[2:4], lo[4:], hi[4:]]).astype(np.float32)


def _run(codes, counts, ranges, sizes, bits):
    total = int(np.sum(counts))
    out = [np.empty((total, k), np.float32) for k in (2, 3, 3)]
    bad = np.empty((len(counts), 4), np.int64)
    counts = np.asarray(counts, np.int64)
    dequantise_into(
        *codes,
        counts,
        np.cumsum(counts) - counts,
        np.asarray(ranges, np.float32).reshape(-1, 14),
        np.asarray(sizes, np.int64).reshape(-1, 2),
        np.array(bits, np.int64),
        _COLOR_BASIS_NP,
        *out,
        bad,
    )
    return out, bad


def _split(codes, lo: int, hi: int):
    return tuple(np.ascontiguousarray(c[..., lo:hi]) for c in codes)


@pytest.mark.parametrize("bits", [(12, 8, 8, 9), (16, 12, 12, 12), (3, 2, 2, 2)])
def test_tabulated_and_direct_values_are_bit_identical(bits):
    # One image of 3n Gaussians tabulates sigma (2^sb <= 3n) and cos/sin (2^ab <= 3n); the same
    # Gaussians as three calls of n each compute them directly.
    n = max(100, (1 << max(bits[1], bits[2])) // 2)
    codes = _codes(3 * n, bits, seed=1)
    ranges, size = _ranges(2), (37, 53)
    (m, l, c), bad = _run(codes, [3 * n], [ranges], [size], bits)
    assert (bad == -1).all()
    for k in range(3):
        (m1, l1, c1), _ = _run(_split(codes, k * n, (k + 1) * n), [n], [ranges], [size], bits)
        rows = slice(k * n, (k + 1) * n)
        for whole, part in ((m, m1), (l, l1), (c, c1)):
            assert np.array_equal(whole[rows].view(np.int32), part.view(np.int32))


def test_values_follow_the_format_spec():
    """docs/format.md §7.3 written out in float64: the float32 kernel is within float32 rounding."""
    bits = (12, 8, 8, 9)
    pb, sb, ab, cb = bits
    n = 500
    pos, scale, angle, color = _codes(n, bits, seed=3)
    ranges, (h, w) = _ranges(4).astype(np.float64), (61, 97)
    (means, chol, colors), bad = _run((pos, scale, angle, color), [n], [ranges], [(h, w)], bits)
    assert (bad == -1).all()

    def step(lo: int, k: int, b: int) -> float:
        return max(ranges[lo + k + i] - ranges[lo + i] for i in range(k)) / ((1 << b) - 1)

    x = ranges[0] + pos[0] * step(0, 2, pb)
    y = ranges[1] + pos[1] * step(0, 2, pb)
    lam = ranges[4] + scale[0] * step(4, 2, sb)
    mu = ranges[5] + scale[1] * step(4, 2, sb)
    theta = angle * (math.pi / (1 << ab))
    s1, s2 = np.exp(2 * lam), np.exp(2 * mu)
    co, si = np.cos(theta), np.sin(theta)
    l11 = np.sqrt(s1 * co * co + s2 * si * si)
    want_chol = np.stack([l11 / w, (s1 - s2) * si * co / l11 / h, np.exp(lam + mu) / l11 / h], 1)
    t = np.stack([ranges[8 + c] + color[c] * step(8, 3, cb) for c in range(3)], 1)
    want_colors = t @ _COLOR_BASIS_NP.astype(np.float64)
    np.testing.assert_allclose(means, np.stack([x, y], 1), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(colors, want_colors, rtol=1e-5, atol=2e-6)
    # l21 cancels where s1 ~ s2: compare against the size of the factor, not the entry
    scale_of = np.abs(want_chol).max(1, keepdims=True)
    assert np.abs(chol - want_chol).max() <= 1e-5 * scale_of.max()
    np.testing.assert_allclose(chol[:, [0, 2]], want_chol[:, [0, 2]], rtol=1e-5)


def test_value_checks_name_the_first_bad_gaussian_of_each_kind():
    bits = (12, 8, 8, 9)
    codes = _codes(20, bits, seed=5)
    ranges = _ranges(6)
    huge = ranges.copy()
    huge[[4, 6]] = [80.0, 90.0]  # sigma1^2 overflows for every Gaussian
    tiny = ranges.copy()
    tiny[[4, 5, 6, 7]] = [-90.0, -90.0, -89.0, -89.0]  # sigmas underflow to 0: l11 = 0
    _, bad = _run(codes, [20], [huge], [(9, 9)], bits)
    assert bad[0, :3].tolist() == [-1, 0, -1]  # chol not finite from Gaussian 0 (inf, NaN)
    _, bad = _run(codes, [20], [tiny], [(9, 9)], bits)
    assert bad[0, 3] == 0 and bad[0, 0] == -1 and bad[0, 2] == -1


def _varints(values: list[int]) -> bytes:
    out = bytearray()
    for v in values:
        while True:
            out.append((v & 0x7F) | (0x80 if v > 0x7F else 0))
            v >>= 7
            if not v:
                break
    return bytes(out)


@pytest.mark.parametrize("bits", [(12, 8, 8, 9), (12, 9, 10, 7)])
def test_codes_from_a_hand_made_body(bits):
    """A body laid out as docs/format.md §7.2 says, read back as written; then the failures."""
    pb, sb, ab, cb = bits
    rng = np.random.default_rng(7)
    n = 50
    morton = np.sort(rng.integers(0, 1 << (2 * pb), n))
    scale = rng.integers(0, 1 << sb, (2, n))
    angle = rng.integers(0, 1 << ab, n)
    color = rng.integers(0, 1 << cb, (3, n))

    def planes(values: np.ndarray, b: int) -> bytes:  # low bytes of each channel, then high
        v = values.reshape(-1, n)
        rows = [v & 0xFF] + ([v >> 8] if b > 8 else [])
        return b"".join(np.concatenate(rows).astype(np.uint8).tobytes() for _ in [0])

    deltas = np.diff(morton, prepend=0).tolist()
    varints = _varints(deltas)
    body = varints + planes(scale, sb) + planes(angle, ab) + planes(color, cb)

    def read(raw: bytes, vlen: int):
        out = (np.zeros((2, n), np.int32), np.zeros((2, n), np.int32), np.zeros(n, np.int32))
        out += (np.zeros((3, n), np.int32),)
        status = np.zeros(1, np.int64)
        quantised_codes(
            np.frombuffer(raw, np.uint8), np.array([0]), np.array([vlen]), np.array([n]),
            np.array([0]), np.array(bits, np.int64), *out, status,
        )  # fmt: skip
        return out, int(status[0])

    (pos, s, a, c), status = read(body, len(varints))
    assert status == 0
    xy = np.empty((2, n), np.int32)
    morton_xy(morton.astype(np.int64), xy)
    assert np.array_equal(pos, xy) and np.array_equal(s, scale) and np.array_equal(a, angle)
    assert np.array_equal(c, color)
    # x on the even bits, y on the odd ones
    assert all(
        sum(((int(xy[0, j]) >> k) & 1) << (2 * k) for k in range(16))
        | sum(((int(xy[1, j]) >> k) & 1) << (2 * k + 1) for k in range(16))
        == morton[j]
        for j in range(n)
    )
    # varints: one too many, a cut stream, a 6-byte varint
    assert read(b"\x00" + body, len(varints) + 1)[1] == 1
    assert read(body[: len(varints) - 1] + body[len(varints) :], len(varints) - 1)[1] == 1
    six = _varints([1 << 35]) + varints[1:]
    assert len(_varints([1 << 35])) == 6
    assert read(six + body[len(varints) :], len(six))[1] == 1
    # a Morton code beyond 2 * pb bits
    big = _varints([1 << (2 * pb)] + deltas[1:])
    assert read(big + body[len(varints) :], len(big))[1] == 2
    # a code beyond its depth, field by field (only where a field has spare bits in its bytes)
    ws = 1 + (sb > 8)
    high_rows = {3: (2 if sb > 8 else 0, sb), 4: (2 * ws + 1 if ab > 8 else 2 * ws, ab)}
    for field, (row, b) in high_rows.items():
        if b % 8:
            bad = bytearray(body)
            bad[len(varints) + row * n] = 0xFF  # the first Gaussian's high (or only) byte
            (_, s2, a2, _), status = read(bytes(bad), len(varints))
            assert status == field
            assert s2.max() < 1 << sb and a2.max() < 1 << ab  # codes written are clipped
