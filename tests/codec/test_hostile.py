"""decode() on hostile bytes: every failure is one CodecError naming the problem, fast, in bounded
memory; fuzzing finds nothing else. ``make fuzz`` runs the same properties much longer."""

from __future__ import annotations

import math
import struct
import tracemalloc

import codec_cases as C
import numpy as np
import pytest
import torch
from hypothesis import given

import gsvision.codec as codec
from gsvision.codec import LIMITS, CodecError, decode, decode_images, encode, encoded_sizes
from gsvision.codec import read_metadata as read_meta
from gsvision.codec.entropy import compress


def fails(payload: object, phrase: str) -> CodecError:
    """decode(payload) raises CodecError whose message contains ``phrase``; the same for every
    other entry point that parses the payload."""
    with pytest.raises(CodecError) as info:
        decode(payload)  # type: ignore[arg-type]
    assert phrase in str(info.value), str(info.value)
    with pytest.raises(CodecError):
        decode_images(payload)  # type: ignore[arg-type]
    return info.value


@pytest.fixture(scope="module")
def valid() -> bytes:
    """Two images, quantised, with metadata: the payload most cases below break."""
    s = C.random_splats([(37, 53), (20, 9)], 6, seed=0, counts=[6, 3])
    return encode(s, "medium", {"source": "test"}, coder="range")


def one_gaussian_float32(**fields) -> bytes:
    """A one-Gaussian float32 image whose values (x, y, l11, l21, l22, r, g, b) can be set."""
    values = fields.pop("values", [0.5, 0.5, 0.1, 0.0, 0.1, 0.2, 0.3, 0.4])
    raw = C.float_raw(np.array([values]), np.float32)
    return C.one_image(raw, n=1, **fields)


def test_the_helpers_build_what_the_decoder_accepts(valid):
    assert C.rebuild(valid, C.split(valid)[2]) == valid
    assert decode(one_gaussian_float32()).counts.tolist() == [1]
    assert decode(C.one_image(n=0)).counts.tolist() == [0]


# ------------------------------------------------------------------------------ the container
@pytest.mark.parametrize(
    "data",
    [b"GSV1" + bytes(40), b"\x89PNG\r\n\x1a\n" + bytes(40), bytes(64), b"\x89gsv" + bytes(12)],
)
def test_wrong_magic(data):
    fails(data, "not a .gsv payload")


@pytest.mark.parametrize("data", [b"", b"\x89", b"\x89GS"])
def test_too_short_for_a_magic(data):
    fails(data, "too short")


@pytest.mark.parametrize("version", [0, 5, 255])
def test_unknown_version(valid, version):
    data = bytearray(valid[:-4])
    data[4] = version
    fails(C.with_crc(bytes(data)), f"unsupported .gsv version {version}")


@pytest.mark.parametrize("where", [5, 12, 30, -5, -1])
def test_bad_checksum(valid, where):
    data = bytearray(valid)
    data[where] ^= 0x10
    fails(bytes(data), "checksum mismatch")


def test_truncated_at_every_length(valid):
    """Every proper prefix fails, with a message saying why (length, or the checksum)."""
    phrases = ("too short", "truncated payload", "checksum mismatch")
    for k in range(len(valid)):
        err = fails(valid[:k], "")
        assert any(p in str(err) for p in phrases), (k, str(err))


def test_truncated_with_a_valid_checksum_at_every_length(valid):
    """Prefixes of the checked part given a fresh checksum: the structure itself is short."""
    phrases = (
        "not a .gsv payload",  # under 4 bytes kept: the checksum lands on the magic
        "truncated payload",
        "image count",
        "metadata length",
        "header truncated",
        "runs past the end",
        "zstd",
    )
    body = valid[:-4]
    for k in range(len(body)):
        err = fails(C.with_crc(body[:k]), "")
        assert any(p in str(err) for p in phrases), (k, str(err))


@pytest.mark.parametrize("extra", [b"\0", b"garbage", bytes(1000)])
def test_trailing_garbage(valid, extra):
    fails(valid + extra, "checksum mismatch")  # the last 4 bytes are no longer the checksum
    fails(C.with_crc(valid[:-4] + extra), "unexpected bytes after the last image")


@pytest.mark.parametrize(
    "field, value, phrase",
    [
        ("flags", 1, "unknown file flags"),
        ("count", 0, "image count 0"),
        ("count", LIMITS["max_images"] + 1, "image count"),
        ("count", 3, "header truncated"),
        ("meta_len", LIMITS["max_metadata"] + 1, "exceeds 1 MiB"),
        ("meta_len", 10_000, "metadata length 10000 runs past the end"),
    ],
)
def test_file_header_fields(valid, field, value, phrase):
    head, meta, images = C.split(valid)
    payload = C.build(images, meta, **{field: value})
    fails(payload, phrase)


@pytest.mark.parametrize(
    "meta, phrase",
    [
        (b"\xff\xfe", "not UTF-8 JSON"),
        (b"{not json", "not UTF-8 JSON"),
        (b"[1, 2]", "expected an object"),
        (b'"text"', "expected an object"),
        (b"[" * 100_000, "not UTF-8 JSON"),  # nested too deep for the parser: no RecursionError
        (b'{"a":' * 50_000, "not UTF-8 JSON"),
        (b"9" * 5000, "not UTF-8 JSON"),  # an integer beyond Python's digit limit
    ],
    ids=["utf8", "json", "array", "string", "deep-array", "deep-object", "huge-int"],
)
def test_bad_metadata(meta, phrase):
    payload = C.build([(C.image_header(), compress(b""))], meta)
    fails(payload, phrase)
    with pytest.raises(CodecError):
        read_meta(payload)


# ------------------------------------------------------------------------------ image headers
@pytest.mark.parametrize(
    "fields, phrase",
    [
        # sizes: the fields are u16, so 10^6 x 10^6 cannot even be written; 65535 is refused
        (dict(height=65535, width=65535), "size 65535x65535 outside 1..16384"),
        (dict(height=LIMITS["max_side"] + 1), "outside 1..16384"),
        (dict(height=0), "size 0x8"),
        (dict(width=0), "size 8x0"),
        # Gaussian counts
        (dict(n=1 << 31, height=16384, width=16384), f"{1 << 31} Gaussians exceeds the limit"),
        (dict(n=(1 << 32) - 1), "exceeds the limit"),
        (dict(n=LIMITS["max_gaussians"] + 1, height=16384, width=16384), "exceeds the limit"),
        (dict(n=65, height=8, width=8), "more than its pixels"),
        # modes, flags, reserved bytes
        (dict(mode=5), "unknown coding mode 5"),
        (dict(mode=255), "unknown coding mode 255"),
        (dict(flags=2), "unknown flags"),
        (dict(mode=2, flags=1, bits=(12, 8, 8, 9)), "unknown flags"),
        (dict(reserved=1), "reserved header field"),
        (dict(bits=(12, 8, 8, 9)), "bit depths set for a float32 image"),
        (dict(mode=1, ranges=(1.0,) + (0.0,) * 13), "ranges set for a float16 image"),
        # quantised: bit depths and ranges
        (dict(mode=2, bits=(0, 8, 8, 9)), "pos_bits=0 outside 1..16"),
        (dict(mode=2, bits=(17, 8, 8, 9)), "pos_bits=17"),
        (dict(mode=2, bits=(12, 13, 8, 9)), "scale_bits=13 outside 1..12"),
        (dict(mode=2, bits=(12, 8, 0, 9)), "angle_bits=0"),
        (dict(mode=2, bits=(12, 8, 8, 255)), "color_bits=255"),
    ],
)
def test_image_header_fields(fields, phrase):
    fails(C.one_image(**fields), phrase)


def _quantised_ranges(**changes: float) -> tuple[float, ...]:
    """Valid ranges (pos, log-scale, colour lo/hi) with some entries replaced by index name."""
    r = [0.0, 0.0, 1.0, 1.0, -1.0, -2.0, 1.0, 0.5, 0.0, -0.3, -0.3, 1.7, 0.3, 0.3]
    for key, value in changes.items():
        r[int(key[1:])] = value
    return tuple(r)


@pytest.mark.parametrize(
    "ranges, phrase",
    [
        (_quantised_ranges(r0=math.nan), "NaN, infinite"),
        (_quantised_ranges(r6=math.inf), "NaN, infinite"),
        (_quantised_ranges(r11=-math.inf), "NaN, infinite"),
        (_quantised_ranges(r13=2e6), "beyond ±1e+06"),
        (_quantised_ranges(r0=2.0), "lo > hi"),
        (_quantised_ranges(r5=5.0), "lo > hi"),
        (_quantised_ranges(r8=3.0), "lo > hi"),
    ],
)
def test_quantisation_ranges(ranges, phrase):
    fails(C.one_image(mode=2, bits=(12, 8, 8, 9), ranges=ranges), phrase)


def test_every_image_header_is_checked(valid):
    """A bad second image fails even when the first is fine, naming its index."""
    images = C.split(valid)[2]
    images[1] = ({**images[1][0], "mode": 9}, images[1][1])
    fails(C.rebuild(valid, images), "image 1: unknown coding mode 9")


# ------------------------------------------------------------------------------ version 4
def test_valid_is_a_compact_payload(valid):
    assert valid[4] == C.COMPACT
    head, meta, images = C.split(valid)
    assert C.build(images, meta, version=C.COMPACT) == valid  # the spec, written out again


@pytest.mark.parametrize(
    "field, value, phrase",
    [
        ("flags", 1, "unknown file flags"),
        ("count", 0, "image count 0"),
        ("count", LIMITS["max_images"] + 1, "image count"),
        ("count", 1 << 34, "image count"),
        ("count", 3, "header truncated"),
        ("meta_len", LIMITS["max_metadata"] + 1, "exceeds 1 MiB"),
        ("meta_len", 10_000, "metadata length 10000 runs past the end"),
    ],
)
def test_compact_file_header_fields(valid, field, value, phrase):
    head, meta, images = C.split(valid)
    fails(C.build(images, meta, version=C.COMPACT, **{field: value}), phrase)


def _compact_image(**fields) -> bytes:
    """A one-image version-4 payload (a 37x53 image of 6 Gaussians, mode 4) with header fields
    replaced (as :func:`codec_cases.image_header` takes them)."""
    s = C.random_splats([(37, 53)], 6, seed=0)
    ((header, body),) = C.split(encode(s, "medium", coder="range"))[2]
    header = C.image_header(**{**header, "coded_len": 0, **fields})
    return C.build([(header, body)], version=C.COMPACT)


def _ranges_with(**changes: float) -> tuple[float, ...]:
    r = list(C.split(_compact_image())[2][0][0][f"range{k}"] for k in range(14))
    for key, value in changes.items():
        r[int(key[1:])] = value
    return tuple(r)


@pytest.mark.parametrize(
    "fields, phrase",
    [
        (dict(mode=0), "image 0: coding mode 0 in a version-4 record"),
        (dict(mode=2), "coding mode 2 in a version-4 record"),
        (dict(mode=3), "coding mode 3 in a version-4 record"),
        (dict(mode=9), "unknown coding mode 9"),
        (dict(height=LIMITS["max_side"] + 1), "outside 1..16384"),
        (dict(width=1 << 34), "outside 1..16384"),
        (dict(height=0), "size 0x53"),
        (dict(n=1 << 34, height=16384, width=16384), "Gaussians exceeds the limit"),
        (dict(n=37 * 53 + 1), "more than its pixels"),
        (dict(bits=(12, 13, 8, 9)), "scale_bits=13 outside 1..12"),
        (dict(bits=(12, 8, 16, 9)), "angle_bits=16 outside 1..12"),
        (dict(coded_len=10_000), "runs past the end"),
        (dict(ranges=_ranges_with(r0=math.nan)), "NaN, infinite"),
        (dict(ranges=_ranges_with(r12=1e5)), "NaN, infinite"),  # beyond float16: infinite
        (dict(ranges=_ranges_with(r0=2.0)), "lo > hi"),
        (dict(ranges=_ranges_with(r7=-0.5)), "lo > hi"),  # uv_lo = −K·uv_hi/(K−1) > uv_hi
    ],
)
def test_compact_image_header_fields(fields, phrase):
    fails(_compact_image(**fields), phrase)


@pytest.mark.parametrize(
    "tail, phrase",
    [
        (b"\x80\x80\x80\x80\x80\x01", "file header holds a varint longer than 5 bytes"),
        (b"\x01\x00" + b"\xff" * 5 + b"\x01" + bytes(40), "image 0: header holds a varint longer"),
        (b"\x01\x00\x25\x35\x06\x04\xb7\x78" + bytes(5), "image 0: header truncated"),
    ],
)
def test_compact_varints(tail, phrase):
    fails(C.with_crc(C.MAGIC + bytes([C.COMPACT, 0]) + tail + bytes(4)), phrase)


# ------------------------------------------------------------------------------ bodies
def test_max_gaussians_with_a_tiny_body_fails_at_once():
    """A header claiming the most Gaussians there may be, with the exact body size they need,
    cannot make the decoder allocate that body: the coded body is far too small for it."""
    n = LIMITS["max_gaussians"]
    fails(C.one_image(height=16384, width=16384, n=n, raw_len=n * 32), "decoded bytes from")
    fails(C.one_image(height=16384, width=16384, n=n, raw_len=0), "take 33554432")
    fails(C.one_image(height=16384, width=16384, n=n, mode=2, bits=(16, 12, 12, 12)), "take")


def test_zip_bomb_declared_size():
    """A large declared decoded size needs a proportionally large coded body (1024x, 1 MiB
    floor) and must match what the header's Gaussians take."""
    fails(C.one_image(n=1, raw_len=1 << 30), "declares 1073741824 decoded bytes from")
    fails(C.one_image(n=1, raw_len=(1 << 20) - 1), "take 32")
    fails(C.one_image(n=1, raw_len=31), "take 32")
    fails(C.one_image(n=1, flags=1, raw_len=32), "take 36")
    fails(C.one_image(n=1, mode=1, raw_len=32), "take 16")
    fails(C.one_image(n=2, mode=2, bits=(12, 8, 8, 9), raw_len=1), "take 20 to 28")


def test_many_small_bombs_are_refused_as_a_whole():
    """The 1 MiB floor is per payload, not per image: 16 images of 1 MiB of zeros each (a
    150,000-Gaussian image in a 49-byte frame) in a 2 kB payload would decode to ~350 MB."""
    n = (1 << 20) // 7
    raw = bytes(7 * n)  # n one-byte varints (0), 8-bit scale, angle and colour planes, all 0
    header = C.image_header(
        height=512, width=512, n=n, mode=2, bits=(12, 8, 8, 8), raw_len=len(raw)
    )
    frame = compress(raw)
    assert decode(C.build([(header, frame)])).counts.tolist() == [n]  # one is fine
    fails(C.build([(header, frame)] * 16), "decoded bytes in all from a")


def test_total_gaussians_in_a_payload():
    header = C.image_header(height=16384, width=16384, n=LIMITS["max_gaussians"])
    payload = C.build([(header, compress(b""))] * 5)
    fails(
        payload, f"{5 << 20} Gaussians in all, more than the limit {LIMITS['max_total_gaussians']}"
    )
    assert LIMITS["max_total_gaussians"] == 4 << 20


def test_zip_bomb_body_decompresses_no_further_than_declared():
    """A real bomb (16 MiB of zeros in a ~600-byte frame) declared as 32 bytes: decoding stops
    after 33 bytes and reports it, allocating next to nothing."""
    import zstandard

    bomb = zstandard.ZstdCompressor(level=1).compress(bytes(16 << 20))
    assert len(bomb) < 1000
    payload = C.one_image(n=1, raw_len=32, body=bomb)
    tracemalloc.start()
    try:
        fails(payload, "zstd data holds more bytes, header says 32")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20, peak


def test_body_larger_or_smaller_than_declared():
    fails(C.one_image(raw=bytes(64), n=1, raw_len=32), "holds more bytes, header says 32")
    fails(C.one_image(raw=bytes(16), n=1, raw_len=32), "holds 16 bytes, header says 32")


@pytest.mark.parametrize(
    "body, phrase",
    [
        (b"", "zstd data holds 0 bytes"),
        (b"not zstd at all", "zstd data is corrupt"),
        (compress(bytes(32))[:-3], "zstd"),
        (compress(bytes(32)) + b"junk", "zstd"),
        (compress(bytes(16)) + compress(bytes(16)), "not exactly one frame"),
        (compress(bytes(32)) + b"\x28\xb5\x2f\xfd" + bytes(6), "not exactly one frame"),
    ],
    ids=["empty", "garbage", "cut-frame", "junk-after", "two-frames", "frame-magic-after"],
)
def test_malformed_zstd_bodies(body, phrase):
    fails(one_gaussian_float32(body=body, raw_len=32), phrase)


def test_zstd_window_above_the_limit():
    """A frame asking for a 128 MiB window is refused (the reader allows 8 MiB)."""
    import zstandard

    params = zstandard.ZstdCompressionParameters(window_log=27, write_content_size=False)
    stream = zstandard.ZstdCompressor(compression_params=params).compressobj()  # size unknown
    frame = stream.compress(bytes(32)) + stream.flush()
    fails(one_gaussian_float32(body=frame, raw_len=32), "zstd data is corrupt")


@pytest.mark.parametrize(
    "values, phrase",
    [
        ([math.nan, 0.5, 0.1, 0.0, 0.1, 0.2, 0.3, 0.4], "NaN or infinite values after decoding"),
        ([0.5, 0.5, 0.1, math.inf, 0.1, 0.2, 0.3, 0.4], "NaN or infinite values"),
        ([0.5, 0.5, 0.1, 0.0, 0.1, 0.2, -math.inf, 0.4], "NaN or infinite values"),
        ([0.5, 0.5, 0.0, 0.0, 0.1, 0.2, 0.3, 0.4], "not positive-definite"),
        ([0.5, 0.5, 0.1, 0.0, -0.1, 0.2, 0.3, 0.4], "not positive-definite"),
    ],
)
def test_invalid_float_values(values, phrase):
    fails(one_gaussian_float32(values=values), phrase)


def test_invalid_float16_and_opacity_values():
    raw = C.float_raw(np.array([[0.5, 0.5, 0.1, 0.0, 0.1, 1e5, 0.3, 0.4]]), np.float16)  # inf
    fails(C.one_image(raw, n=1, mode=1), "NaN or infinite values")
    raw = C.float_raw(np.array([[0.5, 0.5, 0.1, 0.0, 0.1, 0.2, 0.3, 0.4, 1.5]]), np.float32)
    fails(C.one_image(raw, n=1, flags=1), "opacities")


# quantised bodies: n = 2, bits (12, 8, 8, 9): varints, 2 scale planes... (see docs/format.md)
Q_BITS = (12, 8, 8, 9)
Q_PLANES = 2 * 2 * 1 + 2 * 1 + 3 * 2 * 2  # per 2 Gaussians: scale 2x1 B, angle 1 B, colour 3x2 B


def quantised(raw: bytes, n: int = 2, ranges: tuple[float, ...] | None = None, **fields) -> bytes:
    ranges = _quantised_ranges() if ranges is None else ranges
    return C.one_image(raw, n=n, mode=2, bits=Q_BITS, ranges=ranges, **fields)


def test_quantised_body_that_is_valid():
    out = decode(quantised(C.varints([3, 5]) + bytes(Q_PLANES)))
    assert out.counts.tolist() == [2]


@pytest.mark.parametrize(
    "raw, phrase",
    [
        (bytes([0x80] * (2 + Q_PLANES)), "holds 0 complete varints, expected 2"),
        (bytes([0x80] * 5 + [1, 0]) + bytes(Q_PLANES - 5), "longer than 5 bytes"),
        (C.varints([0, 1 << 24]) + bytes(Q_PLANES), "position code exceeds 24 bits"),
        (C.varints([0, 1]) + bytes(Q_PLANES + 1), "attribute streams are 19 bytes, expected 18"),
        (C.varints([0, 1]) + bytes(Q_PLANES - 4) + b"\x00\x00\x02\x00", "exceeds its 9-bit depth"),
    ],
    ids=["unfinished-varint", "long-varint", "morton-range", "short-planes", "colour-code"],
)
def test_malformed_quantised_streams(raw, phrase):
    fails(quantised(raw), phrase)


@pytest.mark.parametrize(
    "ranges",
    [
        _quantised_ranges(r4=100.0, r5=100.0, r6=100.0, r7=100.0),  # σ = e^100 px: inf
        _quantised_ranges(r4=-80.0, r5=-80.0, r6=-80.0, r7=-80.0),  # σ = e^-80 px: 0
    ],
    ids=["huge", "vanishing"],
)
def test_shapes_that_do_not_survive_dequantisation(ranges):
    """NaN/inf or a singular covariance after dequantisation: refused, naming it."""
    err = fails(quantised(C.varints([3, 5]) + bytes(Q_PLANES), ranges=ranges), "image 0")
    assert "NaN or infinite" in str(err) or "not positive-definite" in str(err), str(err)


# ------------------------------------------------------------------------------ other input
@pytest.mark.parametrize("data", ["text", None, 42, [1, 2], np.zeros(16, np.uint8), torch.zeros(4)])
def test_input_that_is_not_bytes(data):
    fails(data, "expected bytes")
    for fn in (encoded_sizes, read_meta):
        with pytest.raises(CodecError, match="expected bytes"):
            fn(data)


def test_bytearray_and_memoryview_are_accepted(valid):
    want = decode(valid)
    for data in (bytearray(valid), memoryview(valid), memoryview(b"xx" + valid)[2:]):
        got = decode(data)
        assert torch.equal(got.means, want.means) and torch.equal(got.counts, want.counts)


def test_padding_limit(monkeypatch, valid):
    """decode() pads every image to the largest count; it refuses beyond a slot budget, pointing
    to decode_images()."""
    monkeypatch.setattr(codec, "_MAX_PADDED_SLOTS", 11)  # two images of up to 6 Gaussians: 12
    with pytest.raises(CodecError, match=r"12 Gaussian slots exceeds 11; use decode_images\(\)"):
        decode(valid)
    assert [s.capacity for s in decode_images(valid)] == [6, 3]


def test_codec_error_is_one_public_value_error():
    import gsvision

    assert gsvision.CodecError is CodecError and issubclass(CodecError, ValueError)


# ------------------------------------------------------------------------------ fuzzing
@given(C.random_bytes())
@C.CI
def test_fuzz_random_bytes(data):
    C.decode_checked(data)


@given(C.mutated_payloads())
@C.CI
def test_fuzz_mutated_payloads(data):
    C.decode_checked(data)


@given(C.raw_mutated_payloads())
@C.CI
def test_fuzz_mutated_streams(data):
    C.decode_checked(data)


@given(C.header_payloads())
@C.CI
def test_fuzz_header_fields(data):
    C.decode_checked(data)


def test_seed_payloads_decode():
    for payload in C.seed_payloads():
        assert C.decode_checked(payload) is not None
    assert struct.unpack_from("<H", C.seed_payloads()[0], 6)[0] == 2  # two images
