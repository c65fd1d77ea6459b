"""The lossless stage: integer streams → bytes → zstandard, and back, with bounded memory.

- Morton-code deltas (non-negative, small after sorting) as LEB128 varints;
- other codes as byte planes (low byte of every value, then the next byte, ...), which zstd's
  Huffman stage models well;
- everything in one zstd frame per image; decompression never produces more than the size the
  header declares, and never uses a window above :data:`MAX_WINDOW`.
"""

from __future__ import annotations

import threading

import numpy as np
import zstandard

__all__ = [
    "varint_encode",
    "varint_decode",
    "varint_values",
    "planes_encode",
    "planes_decode",
    "compress",
    "decompress",
    "StreamError",
]

#: Largest zstd window a decoder will allocate (payloads are per image, far below it).
MAX_WINDOW = 1 << 23
ZSTD_LEVEL = 19


class StreamError(ValueError):
    """A coded stream is malformed (wrapped into ``CodecError`` by the decoder)."""


def varint_encode(values: np.ndarray) -> bytes:
    """Unsigned integers (< 2**35) as little-endian base-128 varints."""
    v = np.asarray(values, dtype=np.uint64)
    if v.size == 0:
        return b""
    nbytes = np.ones(v.shape, dtype=np.int64)
    for k in range(1, 5):
        nbytes += v >= (np.uint64(1) << np.uint64(7 * k))
    out = np.zeros(int(nbytes.sum()), dtype=np.uint8)
    starts = np.concatenate([[0], np.cumsum(nbytes)[:-1]])
    for k in range(5):
        has = nbytes > k
        byte = (v[has] >> np.uint64(7 * k)) & np.uint64(0x7F)
        more = (nbytes[has] > k + 1).astype(np.uint64) << np.uint64(7)
        out[starts[has] + k] = (byte | more).astype(np.uint8)
    return out.tobytes()


def varint_decode(data: bytes | memoryview, count: int) -> tuple[np.ndarray, int]:
    """Read ``count`` varints from the start of ``data``; returns ``(values, bytes used)``."""
    if count == 0:
        return np.zeros(0, dtype=np.int64), 0
    buf = np.frombuffer(data, dtype=np.uint8)
    # The first ``count`` varints of a valid stream lie in its first 5 * count bytes: look there
    # first, and scan the rest (the attribute planes) only to name what is wrong.
    ends = np.flatnonzero(buf[: 5 * count] < 0x80)
    if ends.size < count:
        ends = np.flatnonzero(buf < 0x80)
    if ends.size < count:
        raise StreamError(f"position stream holds {ends.size} complete varints, expected {count}")
    ends = ends[:count]
    lengths = ends - np.concatenate(([-1], ends[:-1]))
    if lengths.max() > 5:
        raise StreamError("position stream holds a varint longer than 5 bytes")
    return varint_values(buf, ends, lengths), int(ends[-1]) + 1


def varint_values(buf: np.ndarray, ends: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The values of consecutive varints at the start of ``buf`` (uint8), given where each ends
    (the index of its last byte) and its length, 1 to 5 bytes (the caller checks both).

    One gather per byte position, for all varints at once (the one-image reader; the batch decoder
    reads varints in :func:`gsvision.codec.kernels.quantised_codes`).
    """
    used = int(ends[-1]) + 1 if ends.size else 0
    if used == ends.size:  # every varint one byte long
        return buf[:used].astype(np.int64)
    longest = int(lengths.max())
    dtype = np.int32 if longest <= 4 else np.int64  # 28 bits fit int32: half the memory traffic
    low = np.zeros(used + 4, dtype=dtype)  # the 7-bit groups, and 4 spare bytes for the gathers
    np.bitwise_and(buf[:used], 0x7F, out=low[:used], casting="unsafe")
    starts = ends - (lengths - 1)
    values = low[starts]
    for k in range(1, longest):  # byte k of every varint (0 where the varint is shorter)
        more = low[starts + k]
        more *= lengths > k
        more <<= 7 * k
        values |= more
    return values.astype(np.int64, copy=False)


def planes_encode(values: np.ndarray, nbytes: int) -> bytes:
    """Non-negative integers (< 256**nbytes) as ``nbytes`` byte planes, low byte first."""
    v = np.asarray(values, dtype=np.int64).reshape(-1)
    return b"".join(((v >> (8 * k)) & 0xFF).astype(np.uint8).tobytes() for k in range(nbytes))


def planes_decode(data: bytes | memoryview, count: int, nbytes: int) -> np.ndarray:
    """Inverse of :func:`planes_encode` (``data`` must hold exactly ``count * nbytes`` bytes)."""
    buf = np.frombuffer(data, dtype=np.uint8)
    if buf.size != count * nbytes:
        raise StreamError(f"byte-plane stream is {buf.size} bytes, expected {count * nbytes}")
    out = np.zeros(count, dtype=np.int64)
    for k in range(nbytes):
        out |= buf[k * count : (k + 1) * count].astype(np.int64) << (8 * k)
    return out


def compress(raw: bytes, level: int = ZSTD_LEVEL) -> bytes:
    """One zstd frame holding ``raw`` (its size recorded in the frame, no zstd checksum)."""
    params = zstandard.ZstdCompressionParameters.from_level(
        level, source_size=len(raw), write_checksum=False, write_content_size=True
    )
    return zstandard.ZstdCompressor(compression_params=params).compress(raw)


def decompress(frame: bytes | memoryview, size: int) -> bytes:
    """Exactly ``size`` bytes from exactly one zstd frame with nothing after it.

    Never produces (or allocates for) more than ``size`` bytes. The common case, a frame whose
    header records its content size as ``size`` (as :func:`compress` writes it), is decoded once,
    in one call that also refuses corrupt data, a cut frame and any bytes after the frame (a second
    frame included). Anything else (no content size in the header, another size, a header zstd
    cannot parse, or a frame that fails in that call) goes through :func:`_decompress_checked`,
    which decodes with a bounded stream reader and names what is wrong.

    Raises:
        StreamError: if the data is not one frame of exactly ``size`` bytes.
    """
    if size > 0:  # (a content size of 0 makes zstandard return b"" without reading further)
        try:
            declared = zstandard.frame_content_size(frame)
        except zstandard.ZstdError:
            declared = -1
        if declared == size:
            try:
                # The output buffer is the declared size (checked equal to ``size`` above); the
                # frame must end exactly at the end of ``frame`` and decode to exactly that size.
                out = _dctx().decompress(frame, max_output_size=size, allow_extra_data=False)
            except zstandard.ZstdError:
                pass  # diagnosed (and raised) by the checked path below
            else:
                if len(out) == size:
                    return out
    return _decompress_checked(frame, size)


_LOCAL = threading.local()


def _dctx() -> zstandard.ZstdDecompressor:
    """This thread's decompressor (one-shot calls reset it; instances are not thread-safe)."""
    dctx = getattr(_LOCAL, "dctx", None)
    if dctx is None:
        dctx = _LOCAL.dctx = zstandard.ZstdDecompressor(max_window_size=MAX_WINDOW)
    return dctx


def _decompress_checked(frame: bytes | memoryview, size: int) -> bytes:
    """:func:`decompress` the slow way, for frames off its fast path: a bounded stream reader
    (at most ``size + 1`` bytes out), then, its output known to be at most ``size`` bytes, a
    second bounded pass proving the body is exactly one frame; each failure named."""
    dctx = zstandard.ZstdDecompressor(max_window_size=MAX_WINDOW)
    try:
        with dctx.stream_reader(bytes(frame), read_across_frames=False) as reader:
            out = reader.read(size + 1)
            while len(out) < size + 1:  # the reader may return short reads
                more = reader.read(size + 1 - len(out))
                if not more:
                    break
                out += more
    except zstandard.ZstdError as exc:
        raise StreamError(f"zstd data is corrupt ({exc})") from exc
    if len(out) != size:
        raise StreamError(
            f"zstd data holds {'more' if len(out) > size else len(out)} bytes, header says {size}"
        )
    # The reader above goes on into following frames; the body must be exactly one frame. Its
    # output is now known to be at most ``size`` bytes, so decoding it again is bounded.
    try:
        one = dctx.decompressobj()
        first = one.decompress(bytes(frame))
    except zstandard.ZstdError as exc:
        raise StreamError(f"zstd data is corrupt ({exc})") from exc
    if len(first) != size or not one.eof or one.unused_data:
        raise StreamError("zstd data is not exactly one frame (extra frames or bytes after it)")
    return out
