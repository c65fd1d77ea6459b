"""The ``.gsv`` splat codec: quantise → entropy-code → versioned, checksummed bytes, and back.

``encode(splats, level=...)`` turns a batch into one payload; ``decode(payload)`` returns the batch.
Levels: ``"lossless"`` (float32, bit-exact, opacities kept), ``"f16"`` (float16), and the quantised
presets ``"high"``, ``"medium"`` (default), ``"low"`` or any :class:`QuantSpec`; quantised levels
fold opacities into colours and store Gaussians in Z-order. ``decode`` is safe on untrusted bytes:
every failure is a :class:`CodecError` naming the problem (docs/format.md lists them).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from gsvision.codec.entropy import (
    StreamError,
    compress,
    decompress,
    planes_decode,
    planes_encode,
    varint_decode,
    varint_encode,
)
from gsvision.codec.format import FLAG_OPACITY as _FLAG_OPACITY
from gsvision.codec.format import LIMITS, CodecError, ImageHeader, pack, unpack
from gsvision.codec.quant import (
    LEVELS,
    QuantSpec,
    dequantise_numpy,
    morton_codes,
    morton_decode,
    quantise,
    resolve_level,
)
from gsvision.io import SplatFormat, register_splat_format
from gsvision.splats import Splats

__all__ = [
    "CodecError",
    "DEFAULT_LEVEL",
    "LEVELS",
    "LIMITS",
    "QuantSpec",
    "decode",
    "decode_images",
    "describe",
    "encode",
    "encoded_sizes",
    "read_metadata",
]

DEFAULT_LEVEL = "medium"

# The largest padded batch decode() builds, in Gaussian slots (decode_images has no padding).
_MAX_PADDED_SLOTS = 1 << 22


def encode(
    splats: Splats, level: str | QuantSpec = DEFAULT_LEVEL, metadata: dict[str, Any] | None = None
) -> bytes:
    """Encode a batch of splats (each image's valid Gaussians) into one ``.gsv`` payload.

    Args:
        splats: the batch; ``image_sizes`` are stored as the size each image was fitted at.
        level: a name from :data:`LEVELS` or a :class:`QuantSpec` of bit depths.
        metadata: optional JSON-serialisable dict stored with the payload.

    Raises:
        ValueError: for invalid splats, an unknown level or metadata that is not JSON.
    """
    splats = splats.detach().to("cpu").validate()
    how = resolve_level(level)
    records = [_encode_image(splats[b], how) for b in range(splats.batch_size)]
    try:
        return pack(records, metadata)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"encode: {exc}") from exc


def encoded_sizes(payload: bytes) -> list[int]:
    """Bytes each image occupies in a payload (its header and coded body)."""
    images, _ = unpack(payload)
    return [80 + len(im.body) for im in images]


def decode_images(payload: bytes | bytearray | memoryview) -> list[Splats]:
    """Decode a payload into one single-image :class:`Splats` per image (no padding)."""
    images, _ = unpack(payload)
    return [_decode_image(i, im) for i, im in enumerate(images)]


def decode(payload: bytes | bytearray | memoryview) -> Splats:
    """Decode a payload into one batch, padded to the largest Gaussian count.

    Raises:
        CodecError: naming the problem, for any malformed, corrupt, truncated or hostile payload.
    """
    items = decode_images(payload)
    slots = len(items) * max(s.capacity for s in items)
    if slots > _MAX_PADDED_SLOTS:
        raise CodecError(
            f"padding {len(items)} images to {slots} Gaussian slots exceeds {_MAX_PADDED_SLOTS}; "
            "use decode_images() for batches of very different sizes"
        )
    if len(items) == 1:
        return items[0]
    cap = max(s.capacity for s in items)
    return Splats.cat([s.compact(cap) for s in items])


def describe(payload: bytes | bytearray | memoryview) -> list[str]:
    """One line per image: size, Gaussians, coding mode and bit depths, bytes."""
    images, _ = unpack(payload)
    lines = []
    for i, im in enumerate(images):
        how = im.mode
        if im.mode == "quantised":
            names = ("position", "scale", "angle", "colour")
            how += (
                " (" + ", ".join(f"{n} {b}" for n, b in zip(names, im.bits, strict=True)) + " bits)"
            )
        lines.append(
            f"image {i}: {im.width}x{im.height}, {im.n} Gaussians, {how}, {80 + len(im.body)} bytes"
        )
    return lines


def read_metadata(payload: bytes | bytearray | memoryview) -> dict[str, Any]:
    """The JSON metadata stored in a payload (``{}`` if none)."""
    return unpack(payload)[1]


# ---------------------------------------------------------------------------------- one image
def _encode_image(s: Splats, how: QuantSpec | str) -> ImageHeader:
    n = int(s.counts[0])
    h, w = (int(v) for v in s.image_sizes[0])
    if isinstance(how, str):  # float32 / float16: fields side by side, byte planes
        fields = [s.means[0, :n], s.chol[0, :n], s.colors[0, :n]]
        if s.opacities is not None:
            fields.append(s.opacities[0, :n])
        dtype = np.float32 if how == "float32" else np.float16
        with np.errstate(over="ignore"):
            table = torch.cat(fields, 1).to(torch.float32).numpy().astype(dtype)
        if not np.isfinite(table).all() or (table[:, [2, 4]] <= 0).any():
            raise ValueError(f"encode: values overflow {how}, or a Cholesky diagonal rounds to 0")
        raw = np.ascontiguousarray(table.view(np.uint8).T).tobytes()  # plane-major bytes
        flags = _FLAG_OPACITY if s.opacities is not None else 0
        return ImageHeader(h, w, n, how, flags, raw_len=len(raw), body=compress(raw))
    s = s.fold_opacity()
    codes, ranges = quantise(s.means[0, :n], s.chol[0, :n], s.colors[0, :n], (h, w), how)
    morton = morton_codes(codes["pos"])
    order = torch.sort(morton, stable=True).indices
    deltas = torch.diff(morton[order], prepend=morton.new_zeros(1))
    raw = b"".join(
        [
            varint_encode(deltas.numpy()),
            planes_encode(codes["scale"][order].T.numpy(), _nbytes(how.scale_bits)),
            planes_encode(codes["angle"][order].numpy(), _nbytes(how.angle_bits)),
            planes_encode(codes["color"][order].T.numpy(), _nbytes(how.color_bits)),
        ]
    )
    bits = (how.pos_bits, how.scale_bits, how.angle_bits, how.color_bits)
    values = tuple(float(v) for t in ranges.tensors() for v in t)
    return ImageHeader(h, w, n, "quantised", 0, bits, values, len(raw), compress(raw))


def _nbytes(bits: int) -> int:
    return 1 if bits <= 8 else 2


def _raw_len_bounds(im: ImageHeader) -> tuple[int, int]:
    """The decoded body sizes an image's header allows: checked before anything is decompressed."""
    if im.mode == "quantised":  # 1..5 varint bytes per Gaussian, then fixed-width byte planes
        _, sb, ab, cb = im.bits
        planes = im.n * (2 * _nbytes(sb) + _nbytes(ab) + 3 * _nbytes(cb))
        return im.n + planes, 5 * im.n + planes
    size = im.n * (9 if im.flags & _FLAG_OPACITY else 8) * (4 if im.mode == "float32" else 2)
    return size, size


def _decode_image(i: int, im: ImageHeader) -> Splats:
    lo, hi = _raw_len_bounds(im)
    if not lo <= im.raw_len <= hi:
        raise CodecError(
            f"image {i}: declares {im.raw_len} decoded bytes, but {im.n} Gaussians in {im.mode} "
            f"mode take {lo if lo == hi else f'{lo} to {hi}'}"
        )
    try:
        raw = decompress(im.body, im.raw_len)
        if im.mode == "quantised":
            means, chol, colors = _dequantised(im, raw)
            opacities = None
        else:
            means, chol, colors, opacities = _floats(im, raw)
    except StreamError as exc:
        raise CodecError(f"image {i}: {exc}") from exc
    _check_values(i, means, chol, colors, opacities)
    return Splats(
        torch.from_numpy(means)[None],
        torch.from_numpy(chol)[None],
        torch.from_numpy(colors)[None],
        torch.tensor([im.n]),
        torch.tensor([[im.height, im.width]]),
        None if opacities is None else torch.from_numpy(opacities)[None],
    )


def _check_values(i: int, means, chol, colors, opacities) -> None:
    """What :meth:`Splats.validate` checks, on numpy arrays (far cheaper per image)."""
    fields = {"means": means, "chol": chol, "colors": colors, "opacities": opacities}
    for name, v in fields.items():
        if v is not None and not np.isfinite(v).all():
            j = int(np.flatnonzero(~np.isfinite(v).all(-1))[0])
            raise CodecError(
                f"image {i}: NaN or infinite values after decoding ({name}, Gaussian {j})"
            )
    bad = np.flatnonzero((chol[:, 0] <= 0) | (chol[:, 2] <= 0))
    if bad.size:
        raise CodecError(
            f"image {i}: decoded splats are invalid: Gaussian {int(bad[0])} is not "
            "positive-definite (l11 and l22 must be > 0)"
        )
    if opacities is not None:
        bad = np.flatnonzero((opacities[:, 0] < 0) | (opacities[:, 0] > 1))
        if bad.size:
            raise CodecError(
                f"image {i}: decoded splats are invalid: opacities of Gaussian {int(bad[0])} are "
                "outside [0, 1]"
            )


def _floats(im: ImageHeader, raw: bytes) -> tuple[np.ndarray, ...]:
    width = 9 if im.flags & _FLAG_OPACITY else 8
    dtype = np.float32 if im.mode == "float32" else np.float16
    item = np.dtype(dtype).itemsize
    if len(raw) != im.n * width * item:
        raise StreamError(f"{len(raw)} bytes of {im.mode} data, expected {im.n * width * item}")
    planes = np.frombuffer(raw, dtype=np.uint8).reshape(width * item, im.n)
    table = np.ascontiguousarray(planes.T).view(dtype).reshape(im.n, width).astype(np.float32)
    columns = (table[:, 0:2], table[:, 2:5], table[:, 5:8], table[:, 8:9] if width == 9 else None)
    return tuple(None if c is None else np.ascontiguousarray(c) for c in columns)


def _dequantised(im: ImageHeader, raw: bytes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    spec = QuantSpec(*im.bits)
    n = im.n
    deltas, used = varint_decode(raw, n)
    morton = np.cumsum(deltas)
    if n and int(morton[-1]) >= 1 << (2 * spec.pos_bits):
        raise StreamError(f"a position code exceeds {2 * spec.pos_bits} bits")
    sizes = [2 * n * _nbytes(spec.scale_bits), n * _nbytes(spec.angle_bits)]
    sizes.append(3 * n * _nbytes(spec.color_bits))
    if len(raw) - used != sum(sizes):
        raise StreamError(f"attribute streams are {len(raw) - used} bytes, expected {sum(sizes)}")
    at = used
    chunks = []
    for size in sizes:
        chunks.append(raw[at : at + size])
        at += size
    scale = _codes(chunks[0], 2 * n, spec.scale_bits).reshape(2, n).T
    color = _codes(chunks[2], 3 * n, spec.color_bits).reshape(3, n).T
    codes = {
        "pos": morton_decode(morton),
        "scale": scale,
        "angle": _codes(chunks[1], n, spec.angle_bits),
        "color": color,
    }
    return dequantise_numpy(codes, im.ranges, (im.height, im.width), spec)


def _codes(chunk: bytes, count: int, bits: int) -> np.ndarray:
    if bits <= 8:  # one byte per code: no plane reassembly
        values = np.frombuffer(chunk, dtype=np.uint8)
        if len(values) != count:
            raise StreamError(f"byte-plane stream is {len(values)} bytes, expected {count}")
    else:
        values = planes_decode(chunk, count, 2)
    if values.size and int(values.max()) >= 1 << bits:
        raise StreamError(f"a code exceeds its {bits}-bit depth")
    return values


# ---------------------------------------------------------------------------------- .gsv files
def _read_gsv(path: Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    payload = path.read_bytes()
    return decode(payload).to_dict(), read_metadata(payload)


def _write_gsv(path: Path, splats: Splats, metadata: dict[str, Any]) -> None:
    path.write_bytes(encode(splats, DEFAULT_LEVEL, metadata))


register_splat_format(".gsv", SplatFormat(_read_gsv, _write_gsv))
