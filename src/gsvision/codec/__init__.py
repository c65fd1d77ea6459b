"""The ``.gsv`` splat codec: quantise → entropy-code → versioned, checksummed bytes, and back.

``encode(splats, level=...)`` turns a batch into one payload; ``decode(payload)`` returns the batch,
and ``decode_batch(payloads)`` many payloads as one padded batch, in one vectorised pass.
Levels: ``"lossless"`` (float32, bit-exact, opacities kept), ``"f16"`` (float16), and the quantised
presets ``"high"``, ``"medium"`` (default), ``"low"``, ``"lower"``, ``"xlow"``, ``"xxlow"`` or any
:class:`QuantSpec`; quantised levels fold opacities into colours and store Gaussians in Z-order.
``decode`` is safe on untrusted bytes: every failure is a :class:`CodecError` naming the problem
(docs/format.md lists them).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from gsvision.codec.entropy import (
    ZSTD_LEVEL,
    StreamError,
    compress,
    decompress,
    planes_encode,
    varint_decode,
    varint_encode,
)
from gsvision.codec.format import FLAG_OPACITY as _FLAG_OPACITY
from gsvision.codec.format import (
    LIMITS,
    QUANTISED_MODES,
    RANGE_MODES,
    CodecError,
    ImageHeader,
    pack,
    unpack,
)
from gsvision.codec.kernels import (
    CODE_CHECKS,
    VALUE_CHECKS,
    dequantise_into,
    morton_xy,
    quantised_codes,
)
from gsvision.codec.quant import (
    _COLOR_BASIS_NP,
    LEVELS,
    QuantSpec,
    morton_codes,
    quantise,
    resolve_level,
)
from gsvision.codec.rc import RangeError, decode_codes, encode_codes
from gsvision.io import SplatFormat, register_splat_format
from gsvision.splats import Splats

__all__ = [
    "CodecError",
    "DEFAULT_CODER",
    "current_coder",
    "using_coder",
    "DEFAULT_LEVEL",
    "LEVELS",
    "LIMITS",
    "QuantSpec",
    "decode",
    "decode_batch",
    "decode_images",
    "describe",
    "encode",
    "quantised",
    "encoded_sizes",
    "read_metadata",
]

DEFAULT_LEVEL = "medium"

#: The lossless stage :func:`encode` uses for quantised levels when not told (see its ``coder``)
#: and no :func:`using_coder` block says otherwise. ``"zstd"`` (format version 1's mode 2) keeps
#: training shards fast to decode (the loader); ``"range"`` (mode 4, version 4) is 15-25%
#: smaller: ``.gsv`` files (``gsvision fit``, ``save_splats``) and what the edge client sends.
DEFAULT_CODER = "zstd"
_CODER: contextvars.ContextVar[str | None] = contextvars.ContextVar("gsv_coder", default=None)


def current_coder() -> str:
    """The coder :func:`encode` uses when not told: the enclosing :func:`using_coder`'s, else
    :data:`DEFAULT_CODER`."""
    return _CODER.get() or DEFAULT_CODER


@contextlib.contextmanager
def using_coder(coder: str) -> Iterator[None]:
    """Within the block (this thread or task only), :func:`encode` and everything built on it
    (rate control, the closed loop) write quantised levels with ``coder``: ``"range"`` or
    ``"zstd"``."""
    if coder not in ("range", "zstd"):
        raise ValueError(f'coder must be "range" or "zstd", got {coder!r}')
    token = _CODER.set(coder)
    try:
        yield
    finally:
        _CODER.reset(token)


# The largest padded batch decode() and decode_batch() build, in Gaussian slots (decode_images
# has no padding).
_MAX_PADDED_SLOTS = 1 << 22

# The batch decoder works through the images of one mode in runs of about this many Gaussians:
# its temporaries then stay in the cache and below malloc's mmap threshold (fresh pages for every
# 500 kB temporary cost more than the arithmetic), while numpy's per-call cost is still spread
# over ~16 images of 1,024 Gaussians.
_RUN_GAUSSIANS = 1 << 14


def encode(
    splats: Splats,
    level: str | QuantSpec = DEFAULT_LEVEL,
    metadata: dict[str, Any] | None = None,
    *,
    coder: str | None = None,
) -> bytes:
    """Encode a batch of splats (each image's valid Gaussians) into one ``.gsv`` payload.

    Args:
        splats: the batch; ``image_sizes`` are stored as the size each image was fitted at.
        level: a name from :data:`LEVELS` or a :class:`QuantSpec` of bit depths.
        metadata: optional JSON-serialisable dict stored with the payload.
        coder: the lossless stage of the quantised levels (default: the enclosing
            :func:`using_coder`'s, else :data:`DEFAULT_CODER`).
            ``"range"`` codes shapes as log-covariances and range-codes the codes with adaptive
            models (mode 4 in version 4's compact records, or version 3's where a range end is
            not a float16 value: 15-25% smaller, decoding ~1 µs per Gaussian);
            ``"zstd"`` writes them as version 1 did (mode 2: byte planes and zstd, larger but ~4x
            faster to decode in batches, readable by version-1 readers). Float levels are
            written as version 1 either way.

    Raises:
        ValueError: for invalid splats, an unknown level or metadata that is not JSON.
    """
    coder = coder or current_coder()
    if coder not in ("range", "zstd"):
        raise ValueError(f'encode: coder must be "range" or "zstd", got {coder!r}')
    splats = splats.detach().to("cpu").validate()
    how = resolve_level(level)
    version = _version(coder)
    records = [_encode_image(splats[b], how, version) for b in range(splats.batch_size)]
    try:
        return pack(records, metadata)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"encode: {exc}") from exc


def quantised(
    splats: Splats, level: str | QuantSpec = DEFAULT_LEVEL, *, coder: str | None = None
) -> Splats:
    """What ``decode(encode(splats, level, coder=coder))`` returns (bit for bit), without the
    costly lossless stage where it can: the closed-loop encoder's view of the decoded geometry."""
    splats = splats.detach().to("cpu").validate()
    how = resolve_level(level)
    version = _version(coder or current_coder())
    records = [
        _encode_image(splats[b], how, version, zstd_level=1) for b in range(splats.batch_size)
    ]
    return decode(pack(records))


def _version(coder: str) -> int:
    """The format version a coder's quantised images need: 3 (mode 4; :func:`pack` writes
    version 4's compact records where it can) for the range coder, else 1 (mode 2; float levels
    are written as version 1 whatever this says)."""
    return 3 if coder == "range" else 1


def encoded_sizes(payload: bytes) -> list[int]:
    """Bytes each image occupies in a payload (its header and coded body)."""
    images, _ = unpack(payload)
    return [im.header_len + len(im.body) for im in images]


def decode_images(payload: bytes | bytearray | memoryview) -> list[Splats]:
    """Decode a payload into one single-image :class:`Splats` per image (no padding)."""
    out = _decode_payloads([payload])
    if out.failed:
        raise out.failed[0]
    ends = np.cumsum(out.counts).tolist()
    items = []
    for b, (lo, hi) in enumerate(zip([0, *ends[:-1]], ends, strict=True)):
        opacities = out.opacities[lo:hi][None] if out.has_opacity[b] else None  # type: ignore[index]
        items.append(
            Splats(
                torch.from_numpy(out.means[lo:hi])[None],
                torch.from_numpy(out.chol[lo:hi])[None],
                torch.from_numpy(out.colors[lo:hi])[None],
                torch.from_numpy(out.counts[b : b + 1]),
                torch.from_numpy(out.sizes[b : b + 1]),
                None if opacities is None else torch.from_numpy(opacities),
            )
        )
    return items


def decode(payload: bytes | bytearray | memoryview) -> Splats:
    """Decode a payload into one batch, padded to the largest Gaussian count.

    Raises:
        CodecError: naming the problem, for any malformed, corrupt, truncated or hostile payload.
    """
    out = _decode_payloads([payload])
    if out.failed:
        raise out.failed[0]
    return _padded(out, None, "use decode_images() for batches of very different sizes")


def decode_batch(
    payloads: Sequence[bytes | bytearray | memoryview],
    capacity: int | None = None,
    *,
    errors: str = "raise",
    images_per_payload: int | None = None,
) -> Splats | tuple[Splats, dict[int, CodecError]]:
    """Decode many payloads into one padded batch in one vectorised pass (the training loader's).

    Each payload is checked as :func:`decode` checks it, and each image's values are bit for bit
    what :func:`decode` returns: only the container parse and the zstd frame are per payload;
    varints, byte planes, Morton codes, dequantisation and the value checks run once over all
    images of one coding mode and bit depths.

    Args:
        payloads: ``.gsv`` payloads of one or more images each.
        capacity: Gaussian slots per image (``N``); default the largest count. An image with more
            Gaussians is an error of its payload (to keep the most important ``N``, decode with
            the default and trim, as :func:`gsvision.data.loader.collate_splats` does).
        errors: ``"raise"``: a bad payload raises; ``"skip"``: bad payloads are left out and
            reported, the others decoded.
        images_per_payload: if set, a payload holding another number of images is an error.

    Returns:
        ``Splats [B_total, capacity]``: the images of every good payload, in order (opacities
        kept only if every image has them, else folded into the colours, as :meth:`Splats.cat`).
        With ``errors="skip"``, ``(splats, skipped)``: ``skipped`` maps the index of each payload
        left out to its :class:`CodecError` (the message :func:`decode` would give).

    Raises:
        CodecError: ``"payload k: <the message decode() gives>"`` for the first bad payload
            (``errors="raise"``); in either mode if the padded batch would exceed 4,194,304
            Gaussian slots.
    """
    if errors not in ("raise", "skip"):
        raise ValueError(f'decode_batch: errors must be "raise" or "skip", got {errors!r}')
    if capacity is not None and capacity < 0:
        raise ValueError(f"decode_batch: capacity must be >= 0, got {capacity}")
    out = _decode_payloads(payloads, capacity, images_per_payload)
    if out.failed and errors == "raise":
        k = min(out.failed)
        raise CodecError(f"payload {k}: {out.failed[k]}") from out.failed[k]
    splats = _padded(out, capacity, "decode fewer payloads at a time")
    return splats if errors == "raise" else (splats, out.failed)


def describe(payload: bytes | bytearray | memoryview) -> list[str]:
    """One line per image: size, Gaussians, coding mode and bit depths, bytes."""
    images, _ = unpack(payload)
    lines = []
    for i, im in enumerate(images):
        how = im.mode
        if im.mode in QUANTISED_MODES:
            names = ("position", "scale", "angle", "colour")
            if im.mode == "quantised-lc":
                names = ("position", "log size", "log anisotropy", "colour")
            depths = ", ".join(f"{n} {b}" for n, b in zip(names, im.bits, strict=True))
            coder = "range-coded" if im.mode in RANGE_MODES else "zstd"
            how = f"quantised ({depths} bits; {coder})"
        lines.append(
            f"image {i}: {im.width}x{im.height}, {im.n} Gaussians, {how}, {im.header_len + len(im.body)} bytes"
        )
    return lines


def read_metadata(payload: bytes | bytearray | memoryview) -> dict[str, Any]:
    """The JSON metadata stored in a payload (``{}`` if none)."""
    return unpack(payload)[1]


# ---------------------------------------------------------------------------------- one image
def _encode_image(
    s: Splats, how: QuantSpec | str, version: int = 2, zstd_level: int = ZSTD_LEVEL
) -> ImageHeader:
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
        return ImageHeader(h, w, n, how, flags, raw_len=len(raw), body=compress(raw, zstd_level))
    s = s.fold_opacity()
    logcov = version >= 3
    codes, ranges = quantise(s.means[0, :n], s.chol[0, :n], s.colors[0, :n], (h, w), how, logcov)
    morton = morton_codes(codes["pos"])
    order = torch.sort(morton, stable=True).indices
    bits = (how.pos_bits, how.scale_bits, how.angle_bits, how.color_bits)
    values = tuple(float(v) for t in ranges.tensors() for v in t)
    if version >= 2:  # range-coded codes (mode 3; mode 4 from version 3)
        body = encode_codes(
            morton[order].numpy(),
            codes["scale"][order].T.numpy(),
            codes["angle"][order].numpy(),
            codes["color"][order].T.numpy(),
            bits,
            logcov,
            values,
        )
        mode = "quantised-lc" if logcov else "quantised-rc"
        return ImageHeader(h, w, n, mode, 0, bits, values, 0, body)
    deltas = torch.diff(morton[order], prepend=morton.new_zeros(1))
    raw = b"".join(
        [
            varint_encode(deltas.numpy()),
            planes_encode(codes["scale"][order].T.numpy(), _nbytes(how.scale_bits)),
            planes_encode(codes["angle"][order].numpy(), _nbytes(how.angle_bits)),
            planes_encode(codes["color"][order].T.numpy(), _nbytes(how.color_bits)),
        ]
    )
    return ImageHeader(h, w, n, "quantised", 0, bits, values, len(raw), compress(raw, zstd_level))


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


# ---------------------------------------------------------------------------------- decoding
# Every decoder entry point runs the same batched core: per payload, the container is parsed and
# checked and each body decompressed; then the images of one coding mode and bit depths (a "part")
# are decoded together, each step one numpy call over all their Gaussians. A failed check names
# the image it found, and its payload is left out; the checks an image fails first, and their
# messages, are those of docs/format.md §9.2, in its order.
class _Image(NamedTuple):
    """One image of one payload, its body decompressed."""

    payload: int  # index of its payload in the call
    index: int  # index of the image in its payload
    header: ImageHeader
    raw: bytes  # the decompressed body


@dataclass
class _Part:
    """The decoded images of one coding mode and bit depths, their Gaussians end to end (the
    values of images that failed a check are meaningless)."""

    images: list[_Image]
    means: np.ndarray  # [G, 2]
    chol: np.ndarray  # [G, 3]
    colors: np.ndarray  # [G, 3]
    opacities: np.ndarray | None  # [G, 1], float modes with the OPACITY flag
    errors: dict[tuple[int, int], str]  # (payload, image) → its first failed check


@dataclass
class _Decoded:
    """Every image of the payloads that decoded, in order, their Gaussians end to end."""

    means: np.ndarray  # [G, 2]
    chol: np.ndarray  # [G, 3]
    colors: np.ndarray  # [G, 3]
    opacities: np.ndarray | None  # [G, 1] where any image has them (other images' rows unused)
    has_opacity: np.ndarray  # [I] bool
    counts: np.ndarray  # [I] int64
    sizes: np.ndarray  # [I, 2] int64 (H, W)
    failed: dict[int, CodecError]  # payload index → why it was left out


def _decode_payloads(
    payloads: Sequence[bytes | bytearray | memoryview],
    capacity: int | None = None,
    images_per_payload: int | None = None,
) -> _Decoded:
    failed: dict[int, CodecError] = {}
    first_bad: dict[int, tuple[int, CodecError]] = {}  # payload → (image, error) of the first
    groups: dict[tuple, list[_Image]] = {}  # (mode, flags, bits) → its images, in order
    for p, payload in enumerate(payloads):
        try:
            images, _ = unpack(payload)
            if images_per_payload is not None and len(images) != images_per_payload:
                raise CodecError(f"holds {len(images)} images, expected {images_per_payload}")
        except CodecError as exc:
            failed[p] = exc
            continue
        for i, im in enumerate(images):
            try:
                if capacity is not None and im.n > capacity:
                    raise CodecError(f"image {i}: {im.n} Gaussians exceed the capacity {capacity}")
                raw = _decompressed(i, im)
            except CodecError as exc:
                first_bad[p] = (i, exc)  # no later image can be the first to fail
                break
            groups.setdefault((im.mode, im.flags, im.bits), []).append(_Image(p, i, im, raw))
    parts = [_decode_group(key, images) for key, images in groups.items()]
    for part in parts:
        for (p, i), message in part.errors.items():
            if p not in first_bad or i < first_bad[p][0]:
                first_bad[p] = (i, CodecError(f"image {i}: {message}"))
    failed.update({p: exc for p, (_, exc) in first_bad.items()})
    return _assemble(parts, failed)


def _decompressed(i: int, im: ImageHeader) -> bytes:
    if im.mode in RANGE_MODES:  # no decompression stage
        return im.body
    lo, hi = _raw_len_bounds(im)
    if not lo <= im.raw_len <= hi:
        raise CodecError(
            f"image {i}: declares {im.raw_len} decoded bytes, but {im.n} Gaussians in {im.mode} "
            f"mode take {lo if lo == hi else f'{lo} to {hi}'}"
        )
    try:
        return decompress(im.body, im.raw_len)
    except StreamError as exc:
        raise CodecError(f"image {i}: {exc}") from exc


def _decode_group(key: tuple, images: list[_Image]) -> _Part:
    """The images of one coding mode and bit depths, decoded in runs of about
    :data:`_RUN_GAUSSIANS` Gaussians straight into one set of arrays."""
    quantised = key[0] in QUANTISED_MODES
    widths = [2, 3, 3] + ([1] if not quantised and key[1] & _FLAG_OPACITY else [])
    arrays = [np.empty((sum(im.header.n for im in images), k), np.float32) for k in widths]
    runs = {"quantised": _quantised_run, "quantised-rc": _rc_run, "quantised-lc": _rc_run}
    decode_run = runs.get(key[0], _float_run)
    errors: dict[tuple[int, int], str] = {}
    run: list[_Image] = []
    lo = hi = 0
    for k, im in enumerate(images):
        run.append(im)
        hi += im.header.n
        if hi - lo >= _RUN_GAUSSIANS or k == len(images) - 1:
            found = decode_run(run, *(a[lo:hi] for a in arrays))
            errors.update({(run[b].payload, run[b].index): m for b, m in found.items()})
            run, lo = [], hi
    return _Part(images, *arrays[:3], arrays[3] if len(arrays) == 4 else None, errors)


def _within(n: np.ndarray) -> np.ndarray:
    """``[G]``: for images of ``n`` Gaussians end to end, each Gaussian's index in its image."""
    return np.arange(int(n.sum())) - np.repeat(np.cumsum(n) - n, n)


def _quantised_run(
    images: list[_Image], means: np.ndarray, chol: np.ndarray, colors: np.ndarray
) -> dict[int, str]:
    """Decode quantised images (mode 2) of one bit depth into ``means, chol, colors``
    (``[G, 2|3|3]``); returns each bad image's (by position) first failed check."""
    bits = images[0].header.bits
    per = 2 * _nbytes(bits[1]) + _nbytes(bits[2]) + 3 * _nbytes(bits[3])  # plane bytes each
    n = np.array([im.header.n for im in images], np.int64)
    raws = [im.raw for im in images]
    sizes = np.array([len(r) for r in raws], np.int64)
    codes = _empty_codes(int(n.sum()))
    status = np.zeros(len(images), np.int64)
    quantised_codes(
        np.frombuffer(b"".join(raws), np.uint8),
        np.cumsum(sizes) - sizes,
        sizes - per * n,  # each image's varint section: n to 5n bytes (checked before)
        n,
        np.cumsum(n) - n,
        np.array(bits, np.int64),
        *codes,
        status,
    )
    errors: dict[int, str] = {}
    for b in np.flatnonzero(status).tolist():
        check = CODE_CHECKS[status[b]]
        if check == "varints":
            errors[b] = _varint_error(images[b], int(sizes[b] - per * n[b]))
        elif check == "position code":
            errors[b] = f"a position code exceeds {2 * bits[0]} bits"
        else:  # a code beyond its depth, the fields in order
            depth = {"scale depth": bits[1], "angle depth": bits[2], "colour depth": bits[3]}
            errors[b] = f"a code exceeds its {depth[check]}-bit depth"
    _dequantise_run(images, n, codes, means, chol, colors, errors)
    return errors


def _empty_codes(total: int) -> tuple[np.ndarray, ...]:
    """``(pos [2, G], scale [2, G], angle [G], color [3, G])`` int32 code arrays."""
    return tuple(np.zeros(shape, np.int32) for shape in ((2, total), (2, total), total, (3, total)))


def _rc_run(
    images: list[_Image], means: np.ndarray, chol: np.ndarray, colors: np.ndarray
) -> dict[int, str]:
    """Decode range-coded images (mode 3 or 4, one of them) of one bit depth into ``means,
    chol, colors``; returns each bad image's (by position) first failed check. The range decoder
    runs per image; the dequantisation once over all of them."""
    bits = images[0].header.bits
    logcov = images[0].header.mode == "quantised-lc"
    n = np.array([im.header.n for im in images], np.int64)
    codes = pos, scale, angle, color = _empty_codes(int(n.sum()))
    errors: dict[int, str] = {}
    lo = 0
    for b, im in enumerate(images):
        hi = lo + int(n[b])
        try:
            m, s, a, c = decode_codes(im.raw, int(n[b]), bits, logcov, im.header.ranges)
        except RangeError as exc:
            errors[b] = str(exc)
        else:
            morton_xy(m, pos[:, lo:hi])
            scale[:, lo:hi], angle[lo:hi], color[:, lo:hi] = s, a, c
        lo = hi
    _dequantise_run(images, n, codes, means, chol, colors, errors, logcov)
    return errors


def _dequantise_run(
    images: list[_Image],
    n: np.ndarray,
    codes: tuple[np.ndarray, ...],
    means: np.ndarray,
    chol: np.ndarray,
    colors: np.ndarray,
    errors: dict[int, str],
    logcov: bool = False,
) -> None:
    """Values from the codes (:func:`_empty_codes`' layout) of quantised images of one bit
    depth, into ``means, chol, colors``; adds each image's first failed value check to
    ``errors`` (unless it failed an earlier one), naming the first bad Gaussian."""
    bad = np.empty((len(images), len(VALUE_CHECKS)), np.int64)
    dequantise_into(
        *codes,
        n,
        np.cumsum(n) - n,
        np.array([im.header.ranges for im in images], np.float32).reshape(-1, 14),
        np.array([[im.header.height, im.header.width] for im in images], np.int64).reshape(-1, 2),
        np.array(images[0].header.bits, np.int64),
        _COLOR_BASIS_NP,
        means,
        chol,
        colors,
        bad,
        logcov,
    )
    for b, k in zip(*np.nonzero(bad >= 0), strict=True):  # row-major: each image's first check
        if b not in errors:
            errors[int(b)] = _VALUE_MESSAGES[VALUE_CHECKS[k]].format(int(bad[b, k]))


#: How a failed value check is worded (what Splats.validate says), by VALUE_CHECKS name (and
#: opacities, which only the float modes hold).
_VALUE_MESSAGES = {
    "means": "NaN or infinite values after decoding (means, Gaussian {})",
    "chol": "NaN or infinite values after decoding (chol, Gaussian {})",
    "colors": "NaN or infinite values after decoding (colors, Gaussian {})",
    "opacities": "NaN or infinite values after decoding (opacities, Gaussian {})",
    "positive-definite": "decoded splats are invalid: Gaussian {} is not positive-definite "
    "(l11 and l22 must be > 0)",
}


def _varint_error(im: _Image, vlen: int) -> str:
    """What is wrong with one image's varint stream, as the one-image reader finds it."""
    try:
        deltas, used = varint_decode(im.raw, im.header.n)
    except StreamError as exc:
        return str(exc)
    if int(np.sum(deltas)) >= 1 << (2 * im.header.bits[0]):
        return f"a position code exceeds {2 * im.header.bits[0]} bits"
    planes = len(im.raw) - vlen
    return f"attribute streams are {len(im.raw) - used} bytes, expected {planes}"


def _float_run(
    images: list[_Image],
    means: np.ndarray,
    chol: np.ndarray,
    colors: np.ndarray,
    opacities: np.ndarray | None = None,
) -> dict[int, str]:
    """Decode float32 or float16 images into ``means, chol, colors[, opacities]``; returns each
    bad image's (by position) first failed check."""
    im0 = images[0].header
    dtype = np.dtype(np.float32 if im0.mode == "float32" else np.float16)
    planes = (9 if im0.flags & _FLAG_OPACITY else 8) * dtype.itemsize  # bytes per Gaussian
    n = np.array([im.header.n for im in images], np.int64)
    buf = np.frombuffer(b"".join([im.raw for im in images]), np.uint8)
    if (n == n[0]).all():  # per image, byte plane p of Gaussian i at raw[p * n + i]
        table = buf.reshape(len(images), planes, int(n[0])).transpose(0, 2, 1)
    else:  # byte plane p of Gaussian i of image b at first[b] * planes + p * n[b] + i
        at = np.repeat((np.cumsum(n) - n) * planes, n) + _within(n)
        table = buf[at[:, None] + np.arange(planes) * np.repeat(n, n)[:, None]]
    table = np.ascontiguousarray(table).reshape(-1, planes).view(dtype)  # [G, 8 or 9 fields]
    for first, out in zip((0, 2, 5, 8), (means, chol, colors, opacities), strict=True):
        if out is not None:
            out[...] = table[:, first : first + out.shape[1]]  # (float16 to float32: exact)
    errors: dict[int, str] = {}
    _check_values(n, errors, means, chol, colors, opacities)
    return errors


def _check_values(n: np.ndarray, errors: dict[int, str], means, chol, colors, opacities) -> None:
    """What :meth:`Splats.validate` checks, for the images of ``n`` Gaussians at once: adds each
    image's first failure (unless it failed an earlier check) to ``errors``, naming the first bad
    Gaussian."""

    def flag(bad: np.ndarray, message: str) -> None:  # bad: [G] bool
        if not bad.any():
            return
        g = np.flatnonzero(bad)
        images, at = np.unique(np.repeat(np.arange(len(n)), n)[g], return_index=True)
        first = np.cumsum(n) - n
        for b, k in zip(images.tolist(), g[at].tolist(), strict=True):
            errors.setdefault(b, message.format(int(k - first[b])))

    fields = {"means": means, "chol": chol, "colors": colors, "opacities": opacities}
    for name, v in fields.items():
        if v is not None and not np.isfinite(v).all():
            flag(~np.isfinite(v).all(-1), _VALUE_MESSAGES[name])
    flag((chol[:, 0] <= 0) | (chol[:, 2] <= 0), _VALUE_MESSAGES["positive-definite"])
    if opacities is not None:
        flag(
            (opacities[:, 0] < 0) | (opacities[:, 0] > 1),
            "decoded splats are invalid: opacities of Gaussian {} are outside [0, 1]",
        )


def _assemble(parts: list[_Part], failed: dict[int, CodecError]) -> _Decoded:
    """The images of the payloads that did not fail, in payload and image order."""
    order = sorted(
        (im.payload, im.index, k, b)
        for k, part in enumerate(parts)
        for b, im in enumerate(part.images)
        if im.payload not in failed
    )
    headers = [parts[k].images[b].header for _, _, k, b in order]
    counts = np.array([h.n for h in headers], np.int64)
    sizes = np.array([[h.height, h.width] for h in headers], np.int64).reshape(-1, 2)
    has_op = np.array([parts[k].opacities is not None for _, _, k, _ in order], bool)
    if len(parts) == 1 and len(order) == len(parts[0].images):  # all of one part: in order
        p = parts[0]
        return _Decoded(p.means, p.chol, p.colors, p.opacities, has_op, counts, sizes, failed)
    firsts = [np.cumsum([0] + [im.header.n for im in part.images]).tolist() for part in parts]
    spans: list[tuple[_Part, int, int]] = []  # (part, first, end): runs of Gaussians, in order
    for _, _, k, b in order:
        lo, hi = firsts[k][b], firsts[k][b + 1]
        if spans and spans[-1][0] is parts[k] and spans[-1][2] == lo:
            lo = spans.pop()[1]
        spans.append((parts[k], lo, hi))

    def gather(field: str) -> np.ndarray:
        width = {"means": 2, "chol": 3, "colors": 3, "opacities": 1}[field]
        pieces = [
            np.zeros((hi - lo, 1), np.float32) if getattr(p, field) is None
            else getattr(p, field)[lo:hi]
            for p, lo, hi in spans
        ]  # fmt: skip
        return np.concatenate(pieces) if pieces else np.zeros((0, width), np.float32)

    fields = [gather(f) for f in ("means", "chol", "colors")]
    opacities = gather("opacities") if has_op.any() else None
    return _Decoded(*fields, opacities, has_op, counts, sizes, failed)


def _padded(out: _Decoded, capacity: int | None, hint: str) -> Splats:
    """``Splats [I, capacity]`` from decoded images (padding as :meth:`Splats.compact` fills it)."""
    b = len(out.counts)
    cap = int(out.counts.max(initial=0)) if capacity is None else capacity
    if b * cap > _MAX_PADDED_SLOTS:
        raise CodecError(
            f"padding {b} images to {b * cap} Gaussian slots exceeds {_MAX_PADDED_SLOTS}; {hint}"
        )
    with_op = b > 0 and bool(out.has_opacity.all())
    colors = out.colors
    if not with_op and out.has_opacity.any():  # fold opacities into colours, as Splats.cat
        fold = np.repeat(out.has_opacity, out.counts)[:, None]
        colors = np.where(fold, colors * out.opacities, colors)  # type: ignore[operator]
    fields = [(out.means, 0.5), (out.chol, 1.0), (colors, 0.0)]
    if with_op:
        fields.append((out.opacities, 0.0))
    if (out.counts == cap).all():  # every image full: a view, no copy
        padded = [v.reshape(b, cap, v.shape[1]) for v, _ in fields]
    else:  # an image at a time (slices copy far faster than a fancy-indexed scatter)
        spans = np.stack([np.cumsum(out.counts) - out.counts, out.counts], 1).tolist()
        padded = []
        for v, fill in fields:
            t = np.full((b, cap, v.shape[1]), fill, np.float32)
            for i, (lo, c) in enumerate(spans):
                t[i, :c] = v[lo : lo + c]
            padded.append(t)
    tensors = [torch.from_numpy(np.ascontiguousarray(t)) for t in padded]
    return Splats(
        tensors[0],
        tensors[1],
        tensors[2],
        torch.from_numpy(out.counts),
        torch.from_numpy(out.sizes),
        tensors[3] if with_op else None,
    )


# ---------------------------------------------------------------------------------- .gsv files
def _read_gsv(path: Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    payload = path.read_bytes()
    return decode(payload).to_dict(), read_metadata(payload)


def _write_gsv(path: Path, splats: Splats, metadata: dict[str, Any]) -> None:
    path.write_bytes(encode(splats, DEFAULT_LEVEL, metadata, coder="range"))


register_splat_format(".gsv", SplatFormat(_read_gsv, _write_gsv))
