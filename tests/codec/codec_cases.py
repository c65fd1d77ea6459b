"""Splat cases, payload surgery and hypothesis strategies shared by the codec tests and `make fuzz`.

A plain module (not conftest.py), like ``tests/raster/raster_cases.py``: pytest puts this folder on
``sys.path``, and ``fuzz_decode.py`` (run as a script) imports it by name.

The byte layout is spelled out here again from ``docs/format.md`` rather than borrowed from
``gsvision.codec.format``, so the tests also check that the document and the code agree.
"""

from __future__ import annotations

import functools
import json
import math
import os
import struct
import zlib
from collections.abc import Sequence

import numpy as np
import torch
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from gsvision.codec import (
    CodecError,
    QuantSpec,
    _encode_image,
    decode,
    decode_images,
    encode,
    encoded_sizes,
    read_metadata,
)
from gsvision.codec.entropy import compress, decompress
from gsvision.codec.format import pack
from gsvision.codec.quant import resolve_level
from gsvision.codec.rc import encode_codes
from gsvision.splats import Splats, chol_from_axes

# ------------------------------------------------------------------------------ the layout (spec)
MAGIC = b"\x89GSV"
VERSION = 3  # the 80-byte-header layout (versions 1-3), what build() writes unless told
COMPACT = 4  # version 4: compact headers, mode 4 only (build(..., version=COMPACT) writes it)
HALVES = struct.Struct("<13e")  # version 4's ranges: the 14 less uv_lo (range5), float16
COMPACT_RANGES = (0, 1, 2, 3, 4, 6, 7, 8, 9, 10, 11, 12, 13)
FILE = struct.Struct("<4sBBHI")  # magic, version, flags, count, metadata_len
IMAGE = struct.Struct("<HHIBBBBBBH14fII")  # see IMAGE_FIELDS
CRC = struct.Struct("<I")
IMAGE_FIELDS = (
    "height", "width", "n", "mode", "flags", "pos_bits", "scale_bits", "angle_bits", "color_bits",
    "reserved", *(f"range{k}" for k in range(14)), "raw_len", "coded_len",
)  # fmt: skip
MODE_FLOAT32, MODE_FLOAT16, MODE_QUANTISED, MODE_QUANTISED_RC, MODE_QUANTISED_LC = 0, 1, 2, 3, 4
RANGE_CODED = (MODE_QUANTISED_RC, MODE_QUANTISED_LC)  # no zstd stage
FLAG_OPACITY = 1
assert FILE.size == 12 and IMAGE.size == 80 and len(IMAGE_FIELDS) == 26

#: How many examples each hypothesis fuzz test runs under ``make test`` (``make fuzz`` runs more).
CI_EXAMPLES = int(os.environ.get("GSV_CODEC_CI_EXAMPLES", "800"))

#: The hypothesis profile of the codec tests (registered, not loaded: other tests keep theirs).
#: Reproducible in CI: the same examples every run, no deadline, no example database written.
settings.register_profile(
    "gsvision-codec",
    max_examples=CI_EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
CI = settings.get_profile("gsvision-codec")


def fuzz_settings(examples: int, seed_random: bool = True) -> settings:
    """Settings for the long run: ``examples`` each, random unless ``seed_random`` is False."""
    return settings(CI, max_examples=examples, derandomize=not seed_random)


# ------------------------------------------------------------------------------ splats
def random_splats(
    sizes: Sequence[tuple[int, int]],
    n: int,
    seed: int,
    counts: Sequence[int] | None = None,
    opacity: bool = False,
    sigma_px: tuple[float, float] = (0.6, 6.0),
    colors: tuple[float, float] = (-0.1, 1.1),
    dtype: torch.dtype = torch.float32,
) -> Splats:
    """One image per entry of ``sizes`` (``(H, W)``), capacity ``n``, garbage in padded slots.

    Centres spill 10% past the edges; Cholesky factors come from random rotations and log-uniform
    pixel scales in ``sigma_px`` (anisotropy up to 4x), normalised per image size.
    """
    g = torch.Generator().manual_seed(seed)
    b = len(sizes)

    def u(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=g, dtype=torch.float64)

    hw = torch.tensor(sizes, dtype=torch.float64)  # [B, 2] (H, W)
    means = u(b, n, 2) * 1.2 - 0.1
    lo, hi = math.log(sigma_px[0]), math.log(sigma_px[1])
    s1 = torch.exp(lo + (hi - lo) * u(b, n))
    s2 = s1 / torch.exp(math.log(4.0) * u(b, n))
    theta = u(b, n) * math.pi
    height, width = hw[:, 0, None], hw[:, 1, None]
    chol = chol_from_axes(s1, s2, theta) / torch.stack([width, height, height], -1)
    col = colors[0] + (colors[1] - colors[0]) * u(b, n, 3)
    out = Splats.create(
        means.to(dtype),
        chol.to(dtype),
        col.to(dtype),
        torch.tensor(sizes, dtype=torch.int64),
        counts=list(counts) if counts is not None else None,
        opacities=u(b, n, 1).to(dtype) if opacity else None,
    )
    pad = ~out.mask  # padded slots hold garbage on purpose: the encoder must ignore them
    out.means[pad] = float("nan")
    out.chol[pad] = -1.0
    out.colors[pad] = 1e30
    if out.opacities is not None:
        out.opacities[pad] = 7.0
    return out


# ------------------------------------------------------------------------------ payload surgery
def smooth_image(seed: int, size: int = 40) -> np.ndarray:
    """A smooth uint8 test image with a little noise (for fitting a few dozen Gaussians)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    rgb = np.stack([np.sin(5 * x + seed), np.cos(4 * y), np.sin(3 * (x + y))], -1) * 0.4 + 0.5
    rgb = rgb + 0.05 * rng.standard_normal(rgb.shape)
    return (np.clip(rgb, 0, 1) * 255).astype(np.uint8)


def with_crc(data: bytes) -> bytes:
    """``data`` followed by its CRC-32, i.e. a payload whose checksum passes."""
    return data + CRC.pack(zlib.crc32(data))


def image_header(**fields: object) -> dict[str, object]:
    """A header dict (keys of :data:`IMAGE_FIELDS`); unspecified fields are those of a valid,
    empty float32 image of 8x8. ``bits=(p, s, a, c)`` and ``ranges=(14 floats)`` are accepted."""
    out: dict[str, object] = dict.fromkeys(IMAGE_FIELDS, 0)
    out.update(height=8, width=8, n=0, mode=MODE_FLOAT32)
    for name, value in fields.items():
        if name == "bits":
            out.update(zip(IMAGE_FIELDS[5:9], value, strict=True))
        elif name == "ranges":
            out.update(zip(IMAGE_FIELDS[10:24], value, strict=True))
        else:
            assert name in out, name
            out[name] = value
    return out


def build(
    images: Sequence[tuple[dict[str, object], bytes]],
    metadata: bytes = b"",
    *,
    magic: bytes = MAGIC,
    version: int = VERSION,
    flags: int = 0,
    count: int | None = None,
    meta_len: int | None = None,
    crc: bool = True,
) -> bytes:
    """A payload from raw parts, no checks: ``images`` are ``(header dict, coded body)``.

    ``coded_len`` is filled from the body unless the header dict sets it to a non-zero value.
    """
    count = len(images) if count is None else count
    meta_len = len(metadata) if meta_len is None else meta_len
    if version == COMPACT:
        parts = [magic, bytes([version, flags]), varints([count, meta_len]), metadata]
    else:
        parts = [FILE.pack(magic, version, flags, count, meta_len), metadata]
    for header, body in images:
        header = dict(header)
        if not header["coded_len"]:
            header["coded_len"] = len(body)
        if version == COMPACT:
            parts.append(compact_header(header))
        else:
            parts.append(IMAGE.pack(*(header[k] for k in IMAGE_FIELDS)))
        parts.append(body)
    data = b"".join(parts)
    return with_crc(data) if crc else data


def one_image(raw: bytes | None = None, body: bytes | None = None, **fields: object) -> bytes:
    """A one-image payload; ``body`` defaults to one zstd frame of ``raw`` (default empty), and
    ``raw_len`` to ``len(raw)``."""
    raw = b"" if raw is None else raw
    fields.setdefault("raw_len", len(raw))
    return build([(image_header(**fields), compress(raw) if body is None else body)])


def uv_lo_of(uv_hi: float, angle_bits: int) -> float:
    """Version 4's derived ``uv_lo`` (the spec's rule, written out again): ``−K · (R / (K − 1))``,
    ``K = 2^(A−1)``, in float32; ``−R`` when ``A = 1``; 0 unless ``R > 0``."""
    reach = np.float32(uv_hi)
    if not reach > 0:
        return 0.0
    if angle_bits < 2:
        return float(-reach)
    k = np.float32(2 ** (angle_bits - 1))
    with np.errstate(all="ignore"):
        return float(np.float32(-k * (reach / (k - np.float32(1)))))


def compact_header(header: dict[str, object]) -> bytes:
    """A version-4 image header from a header dict (bit depths kept to their low 4 bits after
    the −1, ranges rounded to float16, ``range5`` (uv_lo) dropped; no checks)."""
    pb, sb, ab, cb = ((int(header[k]) - 1) & 15 for k in IMAGE_FIELDS[5:9])  # type: ignore[call-overload]
    with np.errstate(over="ignore"):
        halves = np.array([header[f"range{j}"] for j in COMPACT_RANGES], "<f4").astype("<f2")
    sizes = varints([int(header[k]) for k in ("height", "width", "n")])  # type: ignore[call-overload]
    return (
        sizes
        + bytes([int(header["mode"]) & 255, pb << 4 | sb, ab << 4 | cb])  # type: ignore[call-overload]
        + halves.tobytes()
        + varints([int(header["coded_len"])])  # type: ignore[call-overload]
    )


def _varint_at(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        value, pos, shift = value | (byte & 0x7F) << shift, pos + 1, shift + 7
        if byte < 0x80:
            return value, pos


def _split_compact(payload: bytes, pos: int) -> tuple[dict[str, object], int]:
    sizes = {}
    for name in ("height", "width", "n"):
        sizes[name], pos = _varint_at(payload, pos)
    mode, bits_a, bits_b = payload[pos : pos + 3]
    ranges = [float(v) for v in np.frombuffer(payload, "<f2", 13, pos + 3).astype(np.float32)]
    ranges.insert(5, uv_lo_of(ranges[6], (bits_b >> 4) + 1))
    coded_len, pos = _varint_at(payload, pos + 3 + HALVES.size)
    bits = ((bits_a >> 4) + 1, (bits_a & 15) + 1, (bits_b >> 4) + 1, (bits_b & 15) + 1)
    header = image_header(mode=mode, bits=bits, ranges=ranges, coded_len=coded_len, **sizes)
    return header, pos


def split(payload: bytes) -> tuple[tuple, bytes, list[tuple[dict[str, object], bytes]]]:
    """Parse a *well-formed* payload into ``(file fields, metadata, [(header dict, body)])``
    (either layout; version 4's headers as the 80-byte header's fields)."""
    if payload[4] == COMPACT:
        count, pos = _varint_at(payload, 6)
        meta_len, pos = _varint_at(payload, pos)
        head = (payload[:4], payload[4], payload[5], count, meta_len)
    else:
        head, pos = FILE.unpack_from(payload, 0), FILE.size
    meta = payload[pos : pos + head[4]]
    pos += head[4]
    images = []
    for _ in range(head[3]):
        if head[1] == COMPACT:
            header, pos = _split_compact(payload, pos)
        else:
            header = dict(zip(IMAGE_FIELDS, IMAGE.unpack_from(payload, pos), strict=True))
            pos += IMAGE.size
        images.append((header, payload[pos : pos + header["coded_len"]]))
        pos += header["coded_len"]
    assert pos == len(payload) - CRC.size
    return head, meta, images


def rebuild(payload: bytes, images: Sequence[tuple[dict[str, object], bytes]]) -> bytes:
    """``payload`` with its image records replaced (``coded_len`` recomputed), checksum valid."""
    head, meta, _ = split(payload)
    fixed = [({**h, "coded_len": 0}, b) for h, b in images]
    return build(fixed, meta, magic=head[0], version=head[1], flags=head[2])


def raw_bodies(payload: bytes) -> list[bytes]:
    """The decompressed body of every image of a well-formed payload (a range-coded image's body
    as it is: it has no zstd stage)."""
    return [
        body if h["mode"] in RANGE_CODED else decompress(body, h["raw_len"])
        for h, body in split(payload)[2]
    ]


def float_raw(table: np.ndarray, dtype: type) -> bytes:
    """A float-mode body before zstd: ``[n, k]`` values as ``dtype``, byte planes (plane-major)."""
    with np.errstate(over="ignore"):  # values beyond float16 become inf, as intended
        arr = np.ascontiguousarray(np.asarray(table, dtype=np.float64).astype(dtype))
    n, k = arr.shape
    return np.ascontiguousarray(arr.view(np.uint8).reshape(n, k * arr.itemsize).T).tobytes()


def varints(values: Sequence[int]) -> bytes:
    """Unsigned LEB128, written the plain way (a second implementation of the spec)."""
    out = bytearray()
    for v in values:
        while True:
            byte, v = v & 0x7F, v >> 7
            out.append(byte | (0x80 if v else 0))
            if not v:
                break
    return bytes(out)


# ------------------------------------------------------------------------------ the oracle
def decode_checked(payload: object) -> Splats | None:
    """Decode ``payload``: valid, finite, CPU float32 splats, or ``None`` after a CodecError with a
    message. Any other exception propagates (and fails the calling test)."""
    try:
        out = decode(payload)  # type: ignore[arg-type]
    except CodecError as exc:
        assert str(exc), "CodecError without a message"
        return None
    out.validate()
    assert out.dtype == torch.float32 and out.device.type == "cpu"
    for b in range(out.batch_size):
        for name, t in out.image(b).items():
            assert bool(torch.isfinite(t).all()), (b, name)
    assert isinstance(read_metadata(payload), dict)  # type: ignore[arg-type]
    assert len(decode_images(payload)) == out.batch_size  # type: ignore[arg-type]
    assert len(encoded_sizes(payload)) == out.batch_size  # type: ignore[arg-type]
    return out


# ------------------------------------------------------------------------------ seed payloads
@functools.cache
def seed_payloads() -> tuple[bytes, ...]:
    """Small valid payloads covering every mode, flag, batch shape and plane width."""
    cases = [
        (random_splats([(37, 53), (8, 61)], 6, 1, counts=[6, 2], opacity=True), "lossless"),
        (random_splats([(16, 16)], 4, 2), "f16"),
        (random_splats([(37, 53), (20, 9)], 7, 3, counts=[7, 0]), "medium"),
        (random_splats([(24, 24)], 5, 4, opacity=True), "low"),
        (random_splats([(30, 40)], 1, 5), "high"),
        (random_splats([(64, 48)], 6, 6), QuantSpec(16, 12, 12, 12)),
        (random_splats([(5, 7)], 3, 7), QuantSpec(1, 1, 1, 1)),
        (random_splats([(9, 9)], 0, 8), "lossless"),
        (random_splats([(9, 9)], 0, 8), "medium"),
    ]
    meta = {"source": "seed", "ü": [1, 2.5, None]}
    current = [
        encode(s, level, meta if i % 3 == 0 else None, coder="range")
        for i, (s, level) in enumerate(cases)
    ]
    # version 1's quantised mode (zstd), still written on request and read
    old = [encode(s, level, coder="zstd") for s, level in cases[2:7]]
    return tuple(current + old + [mode3_payload(s, level) for s, level in cases[2:7]])


def mode3_payload(splats, level, metadata=None) -> bytes:
    """A version-2 payload (range-coded polar shapes, mode 3), as the writer of that version
    made them: readers still read it, though the current writer writes mode 4."""
    how = resolve_level(level)
    return pack([_encode_image(splats[b], how, 2) for b in range(splats.batch_size)], metadata)


# ------------------------------------------------------------------------------ strategies
def _mostly(good: st.SearchStrategy, rare: st.SearchStrategy) -> st.SearchStrategy:
    """``good`` 5 times in 6, ``rare`` otherwise, so a header with several fields drawn this way
    still often gets past the header checks. (``one_of`` would drop the repeated branches.)"""
    return st.sampled_from([good] * 5 + [rare]).flatmap(lambda chosen: chosen)


@st.composite
def _mutate(draw: st.DrawFn, data: bytes) -> bytes:
    """1-4 random edits of ``data``: bit flips, byte sets, insertions, deletions, truncation."""
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate"]))
        at = draw(_mostly(st.integers(min(6, len(out)), len(out)), st.integers(0, len(out))))
        if kind == "flip" and at < len(out):
            out[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set" and at < len(out):
            out[at] = draw(st.sampled_from([0, 1, 0x7F, 0x80, 0xFF]) | st.integers(0, 255))
        elif kind == "insert":
            out[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete":
            del out[at : at + draw(st.integers(1, 16))]
        elif kind == "truncate":
            del out[at:]
    return bytes(out)


@st.composite
def _behind_a_file_header(draw: st.DrawFn) -> bytes:
    """A plausible file header (small count and metadata length), random bytes, a valid CRC."""
    meta_len = draw(_mostly(st.just(0), st.integers(0, 8)))
    count = draw(st.integers(1, 3))
    if draw(st.booleans()):
        head = MAGIC + bytes([COMPACT, 0]) + varints([count, meta_len])
    else:
        head = FILE.pack(MAGIC, VERSION, 0, count, meta_len)
    return with_crc(head + draw(st.binary(max_size=400)))


def random_bytes() -> st.SearchStrategy[bytes]:
    """Arbitrary bytes; arbitrary bytes behind a valid magic and version, or a whole plausible
    file header, with a valid checksum (so the parser reads on)."""
    plain = st.binary(max_size=400)
    deep = st.tuples(st.sampled_from([VERSION, COMPACT]), st.binary(max_size=400)).map(
        lambda vb: with_crc(MAGIC + bytes([vb[0]]) + vb[1])
    )
    return st.one_of(plain, deep, _behind_a_file_header())


@st.composite
def mutated_payloads(draw: st.DrawFn) -> bytes:
    """A seed payload edited anywhere before its checksum, then given a valid checksum again."""
    seed = draw(st.sampled_from(seed_payloads()))
    return with_crc(draw(_mutate(seed[: -CRC.size])))


@st.composite
def raw_mutated_payloads(draw: st.DrawFn) -> bytes:
    """A seed payload whose *decompressed* image bodies are edited, recompressed and declared
    (sometimes with the old ``raw_len``): drives the decoder past zstd into the streams."""
    seed = draw(st.sampled_from(seed_payloads()))
    images = []
    for (header, _), raw in zip(split(seed)[2], raw_bodies(seed), strict=True):
        rc = header["mode"] in RANGE_CODED
        if draw(st.booleans()):
            raw = draw(_mutate(raw))
            if draw(st.integers(0, 4)) and not rc:
                header = {**header, "raw_len": len(raw)}
        images.append((header, raw if rc else compress(raw)))
    return rebuild(seed, images)


_SIDE = _mostly(
    st.integers(1, 64), st.sampled_from([0, 16384, 16385, 65535]) | st.integers(0, 65535)
)
_N = _mostly(
    st.integers(0, 12),
    st.sampled_from([1 << 20, (1 << 20) + 1, 1 << 31, (1 << 32) - 1])
    | st.integers(0, (1 << 32) - 1),
)
_ANY_FLOAT = st.floats(width=32, allow_nan=True, allow_infinity=True)


@st.composite
def _ranges(draw: st.DrawFn) -> tuple[float, ...]:
    if draw(st.integers(0, 7)) == 0:  # anything at all, NaN and infinities included
        return tuple(draw(_ANY_FLOAT) for _ in range(14))
    big = draw(st.sampled_from([1.0, 1.0, 10.0, 60.0, 1e6, 2e6]))
    finite = st.floats(-big, big, width=32)
    pairs = [sorted((draw(finite), draw(finite))) for _ in range(7)]  # pos 2, scale 2, colour 3
    lo, hi = zip(*pairs, strict=True)
    return (*lo[0:2], *hi[0:2], *lo[2:4], *hi[2:4], *lo[4:7], *hi[4:7])


def _plane_bytes(bits: int) -> int:
    return 1 if bits <= 8 else 2


@st.composite
def _raw_for(draw: st.DrawFn, header: dict[str, object]) -> bytes:
    """A body for ``header``: random bytes, or for small ``n`` one shaped like the real thing."""
    n, mode = int(header["n"]), header["mode"]  # type: ignore[call-overload]
    if n > 64 or draw(st.integers(0, 5)) == 0:
        return draw(st.binary(max_size=300))
    if mode in (MODE_FLOAT32, MODE_FLOAT16):
        width = 9 if int(header["flags"]) & FLAG_OPACITY else 8  # type: ignore[call-overload]
        values = _mostly(st.floats(0.001, 1.0), _ANY_FLOAT | st.floats(-1.0, 1.0))
        table = np.array([[draw(values) for _ in range(width)] for _ in range(n)]).reshape(n, width)
        return float_raw(table, np.float32 if mode == MODE_FLOAT32 else np.float16)
    pb, sb, ab, cb = (int(header[k]) for k in IMAGE_FIELDS[5:9])  # type: ignore[call-overload]
    if mode in RANGE_CODED:  # a real range-coded stream of random codes, or one cut short
        if min(pb, sb, ab, cb) < 1 or max(sb, ab, cb) > 12 or pb > 16:
            return draw(st.binary(max_size=300))
        lc = mode == MODE_QUANTISED_LC  # scale codes (s, u): u has the angle's depth
        codes = [
            sorted(draw(st.lists(st.integers(0, (1 << 2 * pb) - 1), min_size=n, max_size=n))),
            [
                draw(st.lists(st.integers(0, (1 << depth) - 1), min_size=n, max_size=n))
                for depth in (sb, ab if lc else sb)
            ],
            draw(st.lists(st.integers(0, (1 << ab) - 1), min_size=n, max_size=n)),
            [draw(st.lists(st.integers(0, (1 << cb) - 1), min_size=n, max_size=n)) for _ in "abc"],
        ]
        shapes = [(n,), (2, n), (n,), (3, n)]
        arrays = [np.array(c, np.int64).reshape(k) for c, k in zip(codes, shapes, strict=True)]
        body = encode_codes(*arrays, (pb, sb, ab, cb), lc)
        return body[: draw(_mostly(st.just(len(body)), st.integers(0, len(body))))]
    planes = n * (2 * _plane_bytes(sb) + _plane_bytes(ab) + 3 * _plane_bytes(cb))
    deltas = draw(
        st.lists(_mostly(st.integers(0, 300), st.integers(0, 1 << 33)), min_size=n, max_size=n)
    )
    return varints(deltas) + draw(st.binary(min_size=planes, max_size=planes))


@st.composite
def header_payloads(draw: st.DrawFn) -> bytes:
    """One or two images with random header fields (mostly plausible, sometimes at or beyond the
    limits) and bodies shaped like the real thing, or not."""
    images = []
    for _ in range(draw(st.integers(1, 2))):
        mode = draw(_mostly(st.sampled_from([0, 1, 2, 2, 3, 3, 4, 4]), st.integers(0, 255)))
        header = image_header(
            height=draw(_SIDE),
            width=draw(_SIDE),
            n=draw(_N),
            mode=mode,
            flags=draw(_mostly(st.sampled_from([0, 0, 1]), st.integers(0, 255))),
            reserved=draw(_mostly(st.just(0), st.integers(0, 65535))),
        )
        if mode in (MODE_QUANTISED, *RANGE_CODED):
            bits = _mostly(st.integers(1, 12), st.integers(0, 20))
            header.update(zip(IMAGE_FIELDS[5:9], (draw(bits) for _ in range(4)), strict=True))
            header.update(zip(IMAGE_FIELDS[10:24], draw(_ranges()), strict=True))
        elif draw(st.integers(0, 7)) == 0:
            header.update(
                zip(IMAGE_FIELDS[5:24], (draw(st.integers(0, 3)) for _ in range(19)), strict=True)
            )
        raw = draw(_raw_for(header))
        if mode in RANGE_CODED:  # no zstd stage: raw_len is 0, the body the stream
            header["raw_len"] = draw(_mostly(st.just(0), st.integers(0, (1 << 32) - 1)))
            frame = raw
        else:
            header["raw_len"] = draw(_mostly(st.just(len(raw)), st.integers(0, (1 << 32) - 1)))
            frame = compress(raw)
        body = draw(
            _mostly(
                st.just(frame),
                st.binary(max_size=64) | st.binary(min_size=1, max_size=8).map(frame.__add__),
            )
        )
        images.append((header, body))
    meta = draw(_mostly(st.sampled_from([b"", b'{"a": 1}']), st.binary(max_size=32)))
    compact = all(h["mode"] == MODE_QUANTISED_LC for h, _ in images) and draw(st.booleans())
    return build(images, meta, version=COMPACT if compact else VERSION)


def hostile_payloads() -> st.SearchStrategy[bytes]:
    """Everything above, for one combined property."""
    return random_bytes() | mutated_payloads() | raw_mutated_payloads() | header_payloads()


def json_metadata() -> st.SearchStrategy[dict]:
    """Small JSON objects (what ``metadata=`` accepts)."""
    scalars = st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=8)
    scalars |= st.floats(allow_nan=False, allow_infinity=False)
    values = st.recursive(
        scalars,
        lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3),
        max_leaves=8,
    )
    return st.dictionaries(st.text(max_size=8), values, max_size=4)


def json_roundtrip(obj: object) -> object:
    return json.loads(json.dumps(obj))
