"""The range-coded quantised modes: version 2's mode 3 (polar shapes, still read) and version 3's
mode 4 (log-covariance shapes, what the range coder writes): round trips, mode 3's agreement with
version 1's mode 2 (same codes, same values), older payloads still read, and hostile range-coded
bodies refused with a CodecError naming the problem."""

from __future__ import annotations

import threading

import codec_cases as C
import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from gsvision.codec import (
    DEFAULT_CODER,
    LIMITS,
    CodecError,
    QuantSpec,
    current_coder,
    decode,
    decode_batch,
    encode,
    using_coder,
)
from gsvision.codec.quant import resolve_level
from gsvision.codec.rc import RangeError, decode_codes, encode_codes

Q_BITS = (12, 8, 8, 9)
RANGES = (0.0, 0.0, 1.0, 1.0, -1, -2, 1, 0.5, 0, -0.3, -0.3, 1.7, 0.3, 0.3)


def rc_image(
    body: bytes,
    n: int = 2,
    bits=Q_BITS,
    version: int = 2,
    mode: int = C.MODE_QUANTISED_RC,
    **fields,
) -> bytes:
    header = C.image_header(n=n, mode=mode, bits=bits, ranges=RANGES, **fields)
    return C.build([(header, body)], version=version)


def codes(n: int, bits, seed: int = 0, logcov: bool = False):
    """Random codes within their depths (mode 4: the second scale row is ``u``, ``A`` bits)."""
    pb, sb, ab, cb = bits
    g = np.random.default_rng(seed)
    morton = np.sort(g.integers(0, 1 << (2 * pb), n))
    return (
        morton,
        np.stack([g.integers(0, 1 << sb, n), g.integers(0, 1 << (ab if logcov else sb), n)]),
        g.integers(0, 1 << ab, n),
        g.integers(0, 1 << cb, (3, n)),
    )


@pytest.mark.parametrize("logcov", [False, True], ids=["mode3", "mode4"])
@pytest.mark.parametrize(
    "bits", [Q_BITS, (1, 1, 1, 1), (16, 12, 12, 12), (13, 9, 8, 10), (11, 7, 6, 8), (9, 3, 12, 7)]
)
@pytest.mark.parametrize("n", [0, 1, 7, 300])
def test_range_coder_round_trip(bits, n, logcov):
    want = codes(n, bits, seed=n, logcov=logcov)
    body = encode_codes(*want, bits, logcov)
    got = decode_codes(body, n, bits, logcov)
    for a, b in zip(want, got, strict=True):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("level", ["high", "medium", "low", QuantSpec(16, 12, 12, 12)])
def test_version_2_decodes_to_what_version_1_does(level):
    """Same quantisation, another lossless stage: the decoded values are bit for bit equal, and
    version 1 payloads (mode 2, zstd) and version 2 ones (mode 3) still decode, beside version
    4's (mode 4, compact headers) in one batch."""
    s = C.random_splats([(37, 53), (20, 9), (64, 64)], 40, seed=3, counts=[40, 0, 17])
    new, old = C.mode3_payload(s, level), encode(s, level, coder="zstd")
    assert new[4] == 2 and old[4] == 1
    a, b = decode(new), decode(old)
    for name in ("means", "chol", "colors", "counts", "image_sizes"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    current = encode(s, level, coder="range")
    assert current[4] == 4
    both = decode_batch([new, old, current, new])
    assert torch.equal(both.means[:3], a.means) and torch.equal(both.means[3:6], a.means)
    assert torch.equal(both.chol[6:9], decode(current).chol)
    assert torch.equal(both.means[9:12], a.means)


def test_log_covariance_shapes_are_smaller_at_equal_error():
    """Mode 4 against mode 3 at the same depths: the same position grid (but for its ends,
    widened to float16 values), round Gaussians spend nothing on an angle and small ones fewer
    bits on colour, so the payload is smaller."""
    s = C.random_splats([(224, 224)], 1024, seed=5)
    mode3, mode4 = C.mode3_payload(s, "low"), encode(s, "low", coder="range")
    assert len(mode4) < len(mode3) - 40  # (40: version 4's smaller headers)
    span = float((s.means[0].amax(0) - s.means[0].amin(0)).max())
    step = span / ((1 << resolve_level("low").pos_bits) - 1)
    three, four = decode(mode3).means[0], decode(mode4).means[0]
    assert float(torch.cdist(four, three, p=float("inf")).amin(1).max()) <= step * 1.01


def test_unknown_coder():
    with pytest.raises(ValueError, match="coder must be"):
        encode(C.random_splats([(16, 16)], 5, seed=1), "medium", coder="lzma")
    with pytest.raises(ValueError, match="coder must be"), using_coder("lzma"):
        pass


def test_using_coder_sets_the_default_for_its_block_and_thread_only():
    s = C.random_splats([(16, 16)], 5, seed=1)
    assert current_coder() == DEFAULT_CODER == "zstd" and encode(s, "medium")[4] == 1
    seen = []
    with using_coder("range"):
        assert current_coder() == "range" and encode(s, "medium")[4] == 4
        assert encode(s, "medium", coder="zstd")[4] == 1  # an explicit coder wins
        worker = threading.Thread(target=lambda: seen.append(encode(s, "medium")[4]))
        worker.start()
        worker.join()
    assert seen == [1]  # another thread keeps the default
    assert current_coder() == "zstd" and encode(s, "medium")[4] == 1


def test_float_levels_still_write_version_1():
    s = C.random_splats([(16, 16)], 5, seed=1)
    for level in ("lossless", "f16"):
        assert encode(s, level, coder="range") == encode(s, level, coder="zstd")
        assert encode(s, level, coder="range")[4] == 1


def test_range_coding_is_smaller_on_clustered_codes():
    s = C.random_splats([(224, 224)], 1024, seed=4)
    assert len(encode(s, "medium", coder="range")) < len(encode(s, "medium", coder="zstd"))


def fails(payload: bytes, phrase: str) -> CodecError:
    with pytest.raises(CodecError) as info:
        decode(payload)
    assert phrase in str(info.value), str(info.value)
    _, skipped = decode_batch([payload], errors="skip")
    assert str(skipped[0]) == str(info.value)
    return info.value


def test_a_valid_range_coded_image():
    body = encode_codes(*codes(2, Q_BITS), Q_BITS)
    assert decode(rc_image(body)).counts.tolist() == [2]


@pytest.mark.parametrize(
    "mutate, phrase",
    [
        (lambda b: b[:4], "shorter than 5 bytes"),
        (lambda b: b"", "shorter than 5 bytes"),
        (lambda b: b"\x01" + b[1:], "does not start with 0"),
        (lambda b: b + b"\x00", "but its 2 Gaussians take"),
        (lambda b: b[:-1], "but its 2 Gaussians take"),
    ],
    ids=["short", "empty", "first-byte", "extra-byte", "cut"],
)
def test_malformed_range_coded_streams(mutate, phrase):
    body = encode_codes(*codes(2, Q_BITS), Q_BITS)
    assert str(fails(rc_image(mutate(body)), phrase)).startswith("image 0: range-coded stream")


def test_position_codes_beyond_their_bits():
    """A stream coded for 16-bit positions, declared as 2-bit ones: refused, never wrapped."""
    body = encode_codes(*codes(5, (16, 8, 8, 9)), (16, 8, 8, 9))
    fails(rc_image(body, n=5, bits=(2, 8, 8, 9)), "image 0: a position code exceeds 4 bits")


def test_header_rules_of_modes_3_and_4():
    body = encode_codes(*codes(2, Q_BITS), Q_BITS)
    fails(rc_image(body, version=1), "image 0: coding mode 3 needs format version 2")
    fails(rc_image(body, raw_len=5), "image 0: raw_len is 5, expected 0 for mode 3")
    fails(rc_image(body, flags=1), "unknown flags")
    fails(rc_image(body, bits=(12, 8, 13, 9)), "angle_bits=13")
    lc = encode_codes(*codes(2, Q_BITS, logcov=True), Q_BITS, True)
    assert decode(rc_image(lc, version=3, mode=C.MODE_QUANTISED_LC)).counts.tolist() == [2]
    fails(rc_image(lc, mode=C.MODE_QUANTISED_LC), "image 0: coding mode 4 needs format version 3")
    fails(
        rc_image(lc, version=3, mode=C.MODE_QUANTISED_LC, raw_len=1),
        "image 0: raw_len is 1, expected 0 for mode 4",
    )


def test_gaussians_per_coded_byte_are_bounded():
    """A few bytes cannot declare a million Gaussians: the decoder would spend time (not memory
    beyond the limits) on them, so the header check refuses them first."""
    per, floor = LIMITS["rc_gaussians_per_byte"], LIMITS["rc_gaussians_floor"]
    n = floor + 1
    fails(
        rc_image(bytes(5), n=n, height=1024, width=1024),
        f"image 0: {n} Gaussians from 5 range-coded bytes (limit {floor})",
    )
    assert per * 5 < floor


@given(st.binary(min_size=0, max_size=200), st.integers(0, 40), st.booleans())
@C.CI
def test_fuzz_range_decoder(body, n, logcov):
    """Any bytes: in-range codes and the exact length consumed, or a RangeError; nothing else."""
    try:
        m, s, a, c = decode_codes(body, n, Q_BITS, logcov)
    except RangeError as exc:
        assert str(exc)
        return
    assert (np.diff(m) >= 0).all() and (m < 1 << 24).all()
    assert (s < 256).all() and (a < 256).all() and (c < 512).all()
    assert (s >= 0).all() and (a >= 0).all() and (c >= 0).all()


def _worked_example(l22: float = 0.125):
    """docs/format.md §10's two Gaussians on a 3x2 image (Gaussian 1's ``l22`` as given)."""
    from gsvision.splats import Splats

    return Splats(
        torch.tensor([[[0.25, 0.5], [0.75, 0.125]]]),
        torch.tensor([[[0.125, 0, 0.25], [0.25, -0.0625, l22]]]),
        torch.tensor([[[1, 0.5, 0], [0, 0.25, 1.0]]]),
        torch.tensor([2]),
        torch.tensor([[3, 2]]),
    )


def test_worked_example_of_docs_format_md():
    """docs/format.md §10: the two-Gaussian example, in both quantised modes, byte for byte."""
    s = _worked_example()
    spec = QuantSpec(4, 4, 4, 4)
    old, new = encode(s, spec, coder="zstd"), C.mode3_payload(s, spec)
    assert C.raw_bodies(old)[0] == bytes.fromhex("55 35 00 0f 0f 00 0d 08 00 02 00 0f 02 00")
    head, _, ((header, body),) = C.split(new)
    assert head[1] == 2 and header["mode"] == 3 and header["raw_len"] == 0
    assert body == bytes.fromhex("00 1d 50 f9 00 21 f0 83 5e b4 fb 60 00")
    morton, scale, angle, color = decode_codes(body, 2, (4, 4, 4, 4))
    assert morton.tolist() == [85, 138] and scale.tolist() == [[0, 15], [15, 0]]
    assert angle.tolist() == [13, 8] and color.tolist() == [[0, 2], [0, 15], [2, 0]]
    assert torch.equal(decode(old).chol, decode(new).chol)
    # mode 4 (version 3; what the range coder wrote before version 4): log-covariance shapes
    _, _, ((header, _),) = C.split(old)
    ends = np.array([0xBF5644DC, 0xBFA0B617, 0xBF5644DC, 0x3F8C9F54], np.uint32).view(np.float32)
    names = ("range4", "range5", "range6", "range7")
    header.update(mode=4, raw_len=0, coded_len=0, **dict(zip(names, ends.tolist(), strict=True)))
    body = bytes.fromhex("00 1d 50 91 f9 11 ee 22 d5 29 5d e8 80")
    current = C.build([(header, body)], version=3)
    floats = [header[f"range{k}"] for k in range(14)]
    morton, scale, angle, color = decode_codes(body, 2, (4, 4, 4, 4), True, floats)
    assert morton.tolist() == [85, 138] and scale.tolist() == [[0, 0], [9, 1]]
    assert angle.tolist() == [5, 8] and color.tolist() == [[0, 2], [0, 15], [2, 0]]
    got = decode(current)
    assert torch.equal(got.means, decode(old).means) and torch.equal(got.colors, decode(old).colors)
    assert torch.allclose(got.chol[0, 1], torch.tensor([0.125, 0.0, 0.25]), atol=1e-7)
    want = torch.tensor([0.24582525, -0.06234132, 0.12712283])
    assert torch.allclose(got.chol[0, 0], want, rtol=1e-6)


def test_worked_example_of_a_compact_record():
    """docs/format.md §10: version 4 (what the range coder writes), byte for byte; Gaussian 1's
    ``l22`` is 0.25 here, so the two differ in size (a field of one value keeps float32 ends and
    so version 3)."""
    payload = encode(_worked_example(l22=0.25), QuantSpec(4, 4, 4, 4), coder="range")
    assert payload == bytes.fromhex(
        "89 47 53 56 04 00 01 00 03 02 02 04 33 33 00 34 00 30 00 3a 00 38 b3 ba d8 b7 65 3c"
        "c6 39 a9 b9 00 00 ca 3a 47 38 89 32 0d 00 1d 5f 52 f9 11 ee 21 d5 cd 5d 8b 40 59 65"
        "88 88"
    )
    _, _, ((header, body),) = C.split(payload)
    assert header["range5"] == np.float32(-1.2555803)  # uv_lo, derived from uv_hi = 1.0986328
    floats = [header[f"range{k}"] for k in range(14)]
    morton, scale, angle, color = decode_codes(body, 2, (4, 4, 4, 4), True, floats)
    assert morton.tolist() == [85, 138] and scale.tolist() == [[15, 0], [5, 1]]
    assert angle.tolist() == [6, 8] and color.tolist() == [[0, 2], [0, 15], [2, 0]]
    got = decode(payload)
    want = torch.tensor([[0.75, 0.125], [0.25, 0.4916667]])
    assert torch.allclose(got.means[0], want, rtol=0, atol=1e-7)
    want = torch.tensor(
        [[0.25030491, -0.082658514, 0.2497855], [0.12494696, 5.0312902e-08, 0.24989904]]
    )
    assert torch.allclose(got.chol[0], want, rtol=1e-6, atol=1e-12)
    want = torch.tensor([[-0.0160138, 0.2814297, 0.9845699], [1.0257779, 0.5255814, 0.0253848]])
    assert torch.allclose(got.colors[0], want, rtol=0, atol=1e-6)


def test_mode_4_sizes_whose_colour_gain_overflows_are_refused():
    """A log-size range of ±10⁶ (within the header limits) makes the sizes and the colour gain of
    the smaller Gaussians overflow or underflow float32 (the range decoder's colour contexts
    included): the decoder refuses the image, naming it, and nothing crashes."""
    ranges = (0.0, 0.0, 1.0, 1.0, -1e6, -1.0, 1e6, 1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0)
    bits = (4, 4, 4, 4)
    morton, scale, angle, color = codes(3, bits, seed=2, logcov=True)
    scale[0] = [0, 15, 7]  # the smallest size possible, the largest, one between
    body = encode_codes(morton, scale, angle, color, bits, True, ranges)
    header = C.image_header(
        n=3, mode=C.MODE_QUANTISED_LC, bits=bits, ranges=ranges, height=16, width=16
    )
    payload = C.build([(header, body)], version=3)
    fails(payload, "image 0: NaN or infinite values after decoding")
