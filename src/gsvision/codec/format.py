"""The ``.gsv`` container: magic, version, per-image headers, limits and the checksum.

Byte layout (all little-endian; the full specification with field tables is ``docs/format.md``)::

    payload  = file_header  metadata  record*count  crc32
    file_header (12 B) = magic "\\x89GSV" | u8 version | u8 flags (0) | u16 count | u32 metadata_len
    metadata = metadata_len bytes of UTF-8 JSON (an object), or nothing
    record   = image_header (80 B) | coded_len bytes (one zstd frame, or a range-coded stream)
    crc32    = u32 CRC-32 (zlib) of every byte before it

Version 4 is the same with compact headers, for payloads whose images are all mode 4 with ranges
that are float16 values (what the range coder writes)::

    file_header = magic | u8 version (4) | u8 flags (0) | varint count | varint metadata_len
    record      = varint height | varint width | varint n | u8 mode (4) | u8 bits P-1, S-1
                  | u8 bits A-1, C-1 | 13 float16 ranges | varint coded_len | body

This module knows nothing about Gaussians: it checks every field against :data:`LIMITS` before
anything is allocated, and raises :class:`CodecError` naming the field on any inconsistency.
"""

from __future__ import annotations

import json
import math
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "CodecError",
    "MAGIC",
    "VERSION",
    "VERSIONS",
    "MODES",
    "RANGE_MODES",
    "LIMITS",
    "ImageHeader",
    "pack",
    "unpack",
]

MAGIC = b"\x89GSV"
VERSION = 4
#: Versions this reader reads. A writer emits the lowest version its images allow (so older
#: readers still read what they can): 1 for float and zstd payloads, 4 (compact headers) when
#: every image is mode 4 with float16 ranges, else 3.
VERSIONS = (1, 2, 3, 4)
COMPACT_VERSION = 4

#: How an image's Gaussians are coded: exact float32, float16, quantised integer codes with zstd
#: (version 1), the same codes range-coded (version 2; see ``rc.py``), or range-coded with the
#: shape as its log-covariance (version 3; see ``quant.py``).
MODES = {0: "float32", 1: "float16", 2: "quantised", 3: "quantised-rc", 4: "quantised-lc"}
QUANTISED_MODES = ("quantised", "quantised-rc", "quantised-lc")
#: The quantised modes with a range-coded body (no zstd stage).
RANGE_MODES = ("quantised-rc", "quantised-lc")
#: The first version in which each mode may appear.
MODE_SINCE = {"float32": 1, "float16": 1, "quantised": 1, "quantised-rc": 2, "quantised-lc": 3}
MODE_IDS = {name: key for key, name in MODES.items()}

#: Bounds every decoder enforces before allocating (documented in docs/format.md).
LIMITS = {
    "max_images": 4096,  # images in one payload
    "max_side": 16384,  # pixels, height and width
    "max_gaussians": 1 << 20,  # per image
    "max_total_gaussians": 1 << 22,  # all images of one payload together
    "max_metadata": 1 << 20,  # bytes of JSON metadata
    "max_expansion": 1024,  # decoded bytes per coded byte, above a 1 MiB floor
    "expansion_floor": 1 << 20,
    "max_abs_range": 1e6,  # |quantisation range end|
    "rc_gaussians_per_byte": 64,  # range-coded images: Gaussians per coded byte, above a floor
    "rc_gaussians_floor": 1 << 16,
}

_FILE = struct.Struct("<4sBBHI")
# h, w, n, mode, flags, pos/scale/angle/color bits, reserved u16, 14 float32 ranges, raw, coded
_IMAGE = struct.Struct("<HHIBBBBBBH14fII")
_CRC = struct.Struct("<I")
# version 4: the 14 ranges less uv_lo (derived from uv_hi), as float16
_COMPACT_RANGES = (0, 1, 2, 3, 4, 6, 7, 8, 9, 10, 11, 12, 13)
_HALVES = struct.Struct("<13e")
_VARINT_BYTES = 5

FLAG_OPACITY = 1  # float modes only: a fourth field of opacities follows the colours


class CodecError(ValueError):
    """A ``.gsv`` payload is malformed, truncated, corrupt, hostile or exceeds a limit."""


@dataclass
class ImageHeader:
    """One image's header: everything needed to size and decode its coded body."""

    height: int
    width: int
    n: int
    mode: str  # a value of MODES
    flags: int = 0
    bits: tuple[int, int, int, int] = (0, 0, 0, 0)  # pos, scale, angle, color
    ranges: tuple[float, ...] = (
        0.0,
    ) * 14  # pos lo, hi [2+2]; scale lo, hi [2+2]; color lo, hi [3+3]
    raw_len: int = 0
    body: bytes = field(default=b"", repr=False)  # the coded (zstd) bytes
    header_len: int = _IMAGE.size  # bytes of its header as stored (version 4: 33 to 49)


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise CodecError(message)


def pack(images: list[ImageHeader], metadata: dict[str, Any] | None = None) -> bytes:
    """Serialise image records (and optional JSON metadata) into one checksummed payload."""
    _check(1 <= len(images) <= LIMITS["max_images"], f"need 1..{LIMITS['max_images']} images")
    _check(
        metadata is None or isinstance(metadata, dict), "metadata must be a dict (a JSON object)"
    )
    meta = b"" if not metadata else json.dumps(metadata, separators=(",", ":")).encode()
    _check(len(meta) <= LIMITS["max_metadata"], f"metadata is {len(meta)} bytes, limit 1 MiB")
    if all(_compactable(im) for im in images):
        return _pack_compact(images, meta)
    version = max(MODE_SINCE[im.mode] for im in images)
    parts = [_FILE.pack(MAGIC, version, 0, len(images), len(meta)), meta]
    for i, im in enumerate(images):
        fields = (
            im.height, im.width, im.n, MODE_IDS[im.mode], im.flags, *im.bits, 0,
            *im.ranges, im.raw_len, len(im.body),
        )  # fmt: skip
        checked = _image_header(
            i, fields, version
        )  # refuse to write what unpack would refuse to read
        checked.body = im.body
        _check_expansion(i, checked)
        parts.append(_IMAGE.pack(*fields))
        parts.append(im.body)
    data = b"".join(parts)
    total_n, total_raw = sum(im.n for im in images), sum(im.raw_len for im in images)
    _check_totals(total_n, total_raw, len(data) + _CRC.size)
    return data + _CRC.pack(zlib.crc32(data))


def unpack(data: bytes | bytearray | memoryview) -> tuple[list[ImageHeader], dict[str, Any]]:
    """Parse and check a payload's container; returns the image records and the metadata dict.

    Raises:
        CodecError: for anything but a well-formed payload within :data:`LIMITS`.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise CodecError(f"expected bytes, got {type(data).__name__}")
    data = bytes(data)
    minimum = _FILE.size + _CRC.size
    if len(data) < 4:
        raise CodecError(f"payload is {len(data)} bytes, too short to be a .gsv payload")
    if data[:4] != MAGIC:
        raise CodecError(f"not a .gsv payload (magic bytes {data[:4]!r}, expected {MAGIC!r})")
    if len(data) < minimum:
        raise CodecError(f"truncated payload: {len(data)} bytes, header needs {minimum}")
    version, flags = data[4], data[5]
    if version not in VERSIONS:
        raise CodecError(
            f"unsupported .gsv version {version} (this reader knows {', '.join(map(str, VERSIONS))})"
        )
    (stored,) = _CRC.unpack_from(data, len(data) - _CRC.size)
    actual = zlib.crc32(data[: -_CRC.size])
    if stored != actual:
        raise CodecError(
            f"checksum mismatch (stored {stored:08x}, computed {actual:08x}): payload corrupt, "
            "truncated or followed by extra bytes"
        )
    if flags != 0:
        raise CodecError(f"unknown file flags {flags:#x}")
    end = len(data) - _CRC.size
    if version == COMPACT_VERSION:
        count, pos = _varint_at(data, 6, end, "file header")
        meta_len, pos = _varint_at(data, pos, end, "file header")
    else:
        _, _, _, count, meta_len = _FILE.unpack_from(data, 0)
        pos = _FILE.size
    if not (1 <= count <= LIMITS["max_images"]):
        raise CodecError(f"image count {count} outside 1..{LIMITS['max_images']}")
    if meta_len > LIMITS["max_metadata"]:
        raise CodecError(f"metadata length {meta_len} exceeds 1 MiB")
    if pos + meta_len > end:
        raise CodecError(f"metadata length {meta_len} runs past the end of the payload")
    metadata = _parse_metadata(data[pos : pos + meta_len])
    pos += meta_len
    images = []
    total_n = total_raw = 0
    for i in range(count):
        start = pos
        if version == COMPACT_VERSION:
            fields, pos = _compact_fields(i, data, pos, end)
        else:
            if pos + _IMAGE.size > end:
                raise CodecError(f"image {i}: header truncated at byte {pos}")
            fields = _IMAGE.unpack_from(data, pos)
            pos += _IMAGE.size
        header = _image_header(i, fields, version)
        header.header_len = pos - start
        coded_len = fields[-1]
        if pos + coded_len > end:
            raise CodecError(f"image {i}: body of {coded_len} bytes runs past the end")
        header.body = data[pos : pos + coded_len]
        pos += coded_len
        _check_expansion(i, header)
        images.append(header)
        total_n, total_raw = total_n + header.n, total_raw + header.raw_len
        _check_totals(total_n, total_raw, len(data))
    if pos != end:
        raise CodecError(f"{end - pos} unexpected bytes after the last image")
    return images, metadata


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _varint_at(data: bytes, pos: int, end: int, where: str) -> tuple[int, int]:
    """An unsigned LEB128 varint of at most 5 bytes at ``pos`` (before ``end``), and the position
    after it."""
    value = 0
    for k in range(_VARINT_BYTES):
        if pos + k >= end:
            raise CodecError(f"{where} truncated at byte {pos + k}")
        byte = data[pos + k]
        value |= (byte & 0x7F) << (7 * k)
        if byte < 0x80:
            return value, pos + k + 1
    raise CodecError(f"{where} holds a varint longer than {_VARINT_BYTES} bytes")


def _compactable(im: ImageHeader) -> bool:
    """Whether a version-4 record holds the image exactly: mode 4, every range end a float16
    value, and ``uv_lo`` the one derived from ``uv_hi``."""
    from gsvision.codec.quant import anisotropy_lo  # the quantiser's grid

    if im.mode != "quantised-lc" or not 1 <= im.bits[2] <= 12 or len(im.ranges) != 14:
        return False
    r = np.asarray(im.ranges, np.float32)
    stored = r[list(_COMPACT_RANGES)]
    with np.errstate(over="ignore", invalid="ignore"):
        exact = np.array_equal(stored.astype(np.float16).astype(np.float32), stored)
    return exact and anisotropy_lo(r[7], im.bits[2]).tobytes() == r[5].tobytes()


def _pack_compact(images: list[ImageHeader], meta: bytes) -> bytes:
    parts = [MAGIC, bytes([COMPACT_VERSION, 0]), _varint(len(images)), _varint(len(meta)), meta]
    for i, im in enumerate(images):
        fields = (
            im.height, im.width, im.n, MODE_IDS[im.mode], 0, *im.bits, 0, *im.ranges, 0,
            len(im.body),
        )  # fmt: skip
        checked = _image_header(i, fields, COMPACT_VERSION)
        checked.body = im.body
        _check_expansion(i, checked)
        pb, sb, ab, cb = im.bits
        parts += [
            _varint(im.height),
            _varint(im.width),
            _varint(im.n),
            bytes([MODE_IDS[im.mode], (pb - 1) << 4 | (sb - 1), (ab - 1) << 4 | (cb - 1)]),
            _HALVES.pack(*(im.ranges[j] for j in _COMPACT_RANGES)),
            _varint(len(im.body)),
            im.body,
        ]
    data = b"".join(parts)
    _check_totals(sum(im.n for im in images), 0, len(data) + _CRC.size)
    return data + _CRC.pack(zlib.crc32(data))


def _compact_fields(i: int, data: bytes, pos: int, end: int) -> tuple[tuple, int]:
    """A version-4 image header at ``pos``, as the version-3 header's fields (``uv_lo`` derived
    from ``uv_hi``), and the position after it."""
    from gsvision.codec.quant import anisotropy_lo

    where = f"image {i}: header"
    h, pos = _varint_at(data, pos, end, where)
    w, pos = _varint_at(data, pos, end, where)
    n, pos = _varint_at(data, pos, end, where)
    if pos + 3 + _HALVES.size > end:
        raise CodecError(f"{where} truncated at byte {pos}")
    mode_id, bits_a, bits_b = data[pos : pos + 3]
    if mode_id in MODES and mode_id != MODE_IDS["quantised-lc"]:  # (unknown ones: as ever)
        raise CodecError(
            f"image {i}: coding mode {mode_id} in a version-4 record (which holds only mode 4)"
        )
    halves = np.frombuffer(data, "<f2", 13, pos + 3).astype(np.float32)
    coded_len, pos = _varint_at(data, pos + 3 + _HALVES.size, end, where)
    angle_bits = (bits_b >> 4) + 1
    ranges = [float(v) for v in halves]
    ranges.insert(5, float(anisotropy_lo(halves[6], angle_bits)))
    bits = ((bits_a >> 4) + 1, (bits_a & 15) + 1, angle_bits, (bits_b & 15) + 1)
    return (h, w, n, mode_id, 0, *bits, 0, *ranges, 0, coded_len), pos


def _parse_metadata(raw: bytes) -> dict[str, Any]:
    if not raw:
        return {}
    try:
        meta = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # deep nesting: Recursion
        raise CodecError(f"metadata is not UTF-8 JSON ({exc})") from exc
    if not isinstance(meta, dict):
        raise CodecError(f"metadata is a JSON {type(meta).__name__}, expected an object")
    return meta


def _image_header(i: int, fields: tuple, version: int) -> ImageHeader:
    h, w, n, mode_id, flags, pb, sb, ab, cb, reserved, *rest = fields
    ranges, raw_len = tuple(rest[:14]), rest[14]
    side = LIMITS["max_side"]
    if not (1 <= h <= side and 1 <= w <= side):
        raise CodecError(f"image {i}: size {h}x{w} outside 1..{side}")
    if n > LIMITS["max_gaussians"]:
        raise CodecError(f"image {i}: {n} Gaussians exceeds the limit {LIMITS['max_gaussians']}")
    if n > h * w:
        raise CodecError(f"image {i}: {n} Gaussians for a {h}x{w} image (more than its pixels)")
    if mode_id not in MODES:
        raise CodecError(f"image {i}: unknown coding mode {mode_id}")
    if reserved != 0:
        raise CodecError(f"image {i}: reserved header field is {reserved}, expected 0")
    mode = MODES[mode_id]
    if MODE_SINCE[mode] > version:
        raise CodecError(
            f"image {i}: coding mode {mode_id} needs format version {MODE_SINCE[mode]}"
        )
    if mode in QUANTISED_MODES:
        if flags != 0:
            raise CodecError(f"image {i}: unknown flags {flags:#x} for a quantised image")
        from gsvision.codec.quant import MAX_BITS  # limits of the quantiser

        for name, value in zip(MAX_BITS, (pb, sb, ab, cb), strict=True):
            top = MAX_BITS[name]
            if not (1 <= value <= top):
                raise CodecError(f"image {i}: {name}={value} outside 1..{top}")
        big = LIMITS["max_abs_range"]
        # (a NaN or an infinity makes the sum NaN or infinite; finite values bound it)
        if not (math.isfinite(sum(ranges)) and -big <= min(ranges) and max(ranges) <= big):
            raise CodecError(f"image {i}: a quantisation range is NaN, infinite or beyond ±{big:g}")
        r = ranges  # lo <= hi for pos x, y; log-scale major, minor; colour 0, 1, 2
        if not (
            r[0] <= r[2] and r[1] <= r[3] and r[4] <= r[6] and r[5] <= r[7]
            and r[8] <= r[11] and r[9] <= r[12] and r[10] <= r[13]
        ):  # fmt: skip
            raise CodecError(f"image {i}: a quantisation range has lo > hi")
        if mode in RANGE_MODES:  # no decompression stage: the body is the range coder's
            if raw_len != 0:
                raise CodecError(f"image {i}: raw_len is {raw_len}, expected 0 for mode {mode_id}")
    else:
        if flags not in (0, FLAG_OPACITY):
            raise CodecError(f"image {i}: unknown flags {flags:#x}")
        if (pb, sb, ab, cb) != (0, 0, 0, 0):
            raise CodecError(f"image {i}: bit depths set for a {mode} image")
        if any(r != 0 for r in ranges):
            raise CodecError(f"image {i}: ranges set for a {mode} image")
    return ImageHeader(h, w, n, mode, flags, (pb, sb, ab, cb), ranges, raw_len)


def _check_totals(total_n: int, total_raw: int, payload_len: int) -> None:
    """Bound the whole payload, not only each image: the per-image floor must not add up over
    thousands of tiny images (4096 images of 1 MiB zeros each fit in a ~0.5 MB payload)."""
    top = LIMITS["max_total_gaussians"]
    if total_n > top:
        raise CodecError(f"images hold {total_n} Gaussians in all, more than the limit {top}")
    allowed = max(LIMITS["expansion_floor"], LIMITS["max_expansion"] * payload_len)
    if total_raw > allowed:
        raise CodecError(
            f"images declare {total_raw} decoded bytes in all from a {payload_len}-byte payload "
            f"(limit {allowed})"
        )


def _check_expansion(i: int, header: ImageHeader) -> None:
    """Refuse bodies that would decompress out of proportion to their coded size."""
    if header.mode in RANGE_MODES:
        per = LIMITS["rc_gaussians_per_byte"]
        allowed = max(LIMITS["rc_gaussians_floor"], per * len(header.body))
        if header.n > allowed:
            raise CodecError(
                f"image {i}: {header.n} Gaussians from {len(header.body)} range-coded bytes "
                f"(limit {allowed})"
            )
    allowed = max(LIMITS["expansion_floor"], LIMITS["max_expansion"] * len(header.body))
    if header.raw_len > allowed:
        raise CodecError(
            f"image {i}: declares {header.raw_len} decoded bytes from {len(header.body)} coded bytes "
            f"(limit {allowed})"
        )
