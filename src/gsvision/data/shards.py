"""Webdataset shards: list them, read their samples, write new ones atomically.

The layout is img2dataset's / DataComp's: ``00000.tar`` holds ``key.jpg``, ``key.txt``,
``key.json`` (any image extension), and an optional ``00000_stats.json`` sits beside it. Splat
shards hold ``key.gsv``, ``key.txt``, ``key.json`` under the same keys and shard names.

Reading goes through :func:`webdataset.gopen`, so local paths, ``file:``, ``pipe:`` commands and
anything else webdataset can open all work; brace patterns (``shards/{00000..00127}.tar``) and
``::``-separated lists expand as in webdataset. A truncated or corrupt tar yields the samples
before the damage and then raises :class:`ShardReadError` saying where it stopped.
"""

from __future__ import annotations

import io
import json
import os
import re
import tarfile
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import braceexpand

__all__ = [
    "IMAGE_EXTENSIONS",
    "Sample",
    "ShardReadError",
    "ShardWriter",
    "expand_urls",
    "iter_samples",
    "read_shard_stats",
    "shard_name",
    "split_key",
]

#: Member extensions taken as the sample's image, in order of preference.
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff")

#: Fixed member mtime, so converting the same input twice gives byte-identical shards.
_MTIME = 1_700_000_000

_KEY = re.compile(r"^((?:.*/|)[^./]+)\.([^/]+)$")  # webdataset's key/extension split


class ShardReadError(IOError):
    """A shard could not be read to its end (missing, truncated, not a tar).

    ``key`` is the sample being read when the data ran out (``None`` if none was).
    """

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


@dataclass
class Sample:
    """One sample: its key and the bytes of each member, by lower-case extension."""

    key: str
    files: dict[str, bytes] = field(default_factory=dict)

    def image(self) -> tuple[str, bytes] | None:
        """``(extension, bytes)`` of the image member, or ``None``."""
        for ext in IMAGE_EXTENSIONS:
            if ext in self.files:
                return ext, self.files[ext]
        return None

    def text(self) -> str | None:
        """The caption (``key.txt``) as text, or ``None`` when missing or not UTF-8."""
        raw = self.files.get("txt")
        if raw is None:
            return None
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return None

    def meta(self) -> dict[str, Any]:
        """``key.json`` as a dict (``{}`` when missing or not a JSON object)."""
        raw = self.files.get("json")
        if raw is None:
            return {}
        try:
            value = json.loads(raw)
        except (UnicodeDecodeError, ValueError):
            return {}
        return value if isinstance(value, dict) else {}


def expand_urls(spec: str | Sequence[str]) -> list[str]:
    """Shard URLs from a brace pattern, a ``::``-separated list, or a list of either."""
    items = [spec] if isinstance(spec, (str, os.PathLike)) else list(spec)
    urls: list[str] = []
    for item in items:
        for part in str(item).split("::"):
            if part:
                urls.extend(braceexpand.braceexpand(part))
    if not urls:
        raise ValueError(f"no shards in {spec!r}")
    return urls


def shard_name(url: str) -> str:
    """The shard's file name without ``.tar`` (``pipe:cat a/00003.tar`` → ``00003``)."""
    last = url.rstrip("/").split("/")[-1].split()[-1] if url.strip() else url
    for suffix in (".tar.gz", ".tgz", ".tar"):
        if last.endswith(suffix):
            return last[: -len(suffix)]
    return last


def split_key(name: str) -> tuple[str, str] | None:
    """``"dir/000123.jpg"`` → ``("dir/000123", "jpg")``; ``None`` for names without an extension."""
    m = _KEY.match(name)
    return (m.group(1), m.group(2).lower()) if m else None


def _open(url: str):
    import webdataset as wds

    if "://" not in url and not url.startswith("pipe:") and not Path(url).exists():
        raise ShardReadError(f"{url}: no such shard")
    try:
        return wds.gopen(url, "rb")
    except Exception as exc:  # gopen raises many types: all mean "cannot open"
        raise ShardReadError(f"{url}: cannot open ({exc})") from exc


def iter_samples(url: str) -> Iterator[Sample]:
    """The samples of one shard, in order (consecutive members with the same key form a sample).

    Raises:
        ShardReadError: once the samples before the damage were yielded, if the shard is missing,
            not a tar, truncated or corrupt. A sample whose members were cut off is not yielded.
    """
    stream = _open(url)
    tail = _Tail(stream)
    current: Sample | None = None
    try:
        with tarfile.open(fileobj=tail, mode="r|*") as tar:
            for info in tar:
                if not info.isfile():
                    continue
                parts = split_key(info.name)
                data = tar.extractfile(info).read()  # type: ignore[union-attr]
                if len(data) != info.size:
                    raise tarfile.ReadError(f"member {info.name} is truncated")
                if parts is None:
                    continue  # not a sample member (no extension), e.g. a README
                key, ext = parts
                if current is not None and key != current.key:
                    yield current
                    current = None
                if current is None:
                    current = Sample(key)
                current.files[ext] = data
            compressed = getattr(tar.fileobj, "comptype", "tar") != "tar"
            if not compressed and not tail.zero_block_at(tar.offset):
                # tarfile stops quietly when the data ends at a member boundary
                raise tarfile.ReadError("the archive ends without its end-of-archive blocks")
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        where = f" in sample {current.key!r}" if current else ""
        key = current.key if current else None
        raise ShardReadError(f"{url}: truncated or corrupt tar{where} ({exc})", key) from exc
    finally:
        close = getattr(stream, "close", None)
        if close is not None:
            try:
                close()
            except Exception:  # a pipe: command that failed is reported by the read error
                pass
    if current is not None:
        yield current


class _Tail:
    """A read-only stream wrapper that remembers the last bytes read (to check the tar's end)."""

    KEEP = 1 << 15

    def __init__(self, stream) -> None:
        self.stream = stream
        self.total = 0
        self.tail = b""

    def read(self, size: int = -1) -> bytes:
        data = self.stream.read(size)
        self.total += len(data)
        self.tail = (self.tail + data)[-self.KEEP :]
        return data

    def zero_block_at(self, offset: int) -> bool:
        """Whether a complete all-zero 512-byte block starts at ``offset`` of what was read."""
        start = len(self.tail) - (self.total - offset)
        if start < 0:
            return False
        block = self.tail[start : start + 512]
        return len(block) == 512 and not any(block)


def read_shard_stats(url: str) -> dict[str, Any] | None:
    """The ``<shard>_stats.json`` beside a local shard (img2dataset writes one), or ``None``."""
    if "://" in url or url.startswith("pipe:"):
        return None
    path = Path(url).with_name(f"{shard_name(url)}_stats.json")
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


class ShardWriter:
    """Write one tar shard to a temporary name; :meth:`commit` renames it into place atomically.

    Used as a context manager, an exception inside the block removes the temporary file, so a
    crash never leaves a partial shard under the final name.
    """

    def __init__(self, path: str | os.PathLike, tag: str = "") -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.path.with_name(f".{self.path.name}.{tag or os.getpid()}.tmp")
        self._file = open(self.tmp, "wb")  # noqa: SIM115 - closed by commit/abort
        self._tar = tarfile.open(fileobj=self._file, mode="w", format=tarfile.USTAR_FORMAT)
        self.count = 0
        self.bytes = 0

    def write(self, key: str, files: dict[str, bytes | str]) -> None:
        """Add one sample: ``files`` maps extensions to bytes (str is UTF-8 encoded)."""
        for ext, data in files.items():
            raw = data.encode("utf-8") if isinstance(data, str) else bytes(data)
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size, info.mtime, info.mode = len(raw), _MTIME, 0o444
            info.uname = info.gname = "gsvision"
            self._tar.addfile(info, io.BytesIO(raw))
            self.bytes += len(raw)
        self.count += 1

    def commit(self) -> Path:
        """Finish the tar, flush it to disk and rename it to its final name."""
        self._tar.close()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self.tmp, self.path)
        return self.path

    def abort(self) -> None:
        """Drop the partial shard."""
        try:
            self._tar.close()
        except Exception:
            pass
        self._file.close()
        self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self._file.closed:  # not committed: an error, or the caller gave up
            self.abort()
