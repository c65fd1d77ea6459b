"""Reading and writing images and splat files, with bad input turned into clear errors.

Images:
    :func:`load_image` decodes any format Pillow reads into ``uint8 [H, W, 3]`` RGB. It decodes
    fully (so truncated files fail here, not later), applies the EXIF orientation, converts every
    mode to RGB (alpha is composited on **white**; 16-bit and float images are rescaled to 8 bits,
    not clipped) and refuses images above :data:`MAX_IMAGE_PIXELS`. Every failure is an
    :class:`ImageError` naming the path and the problem.

Splat files:
    :func:`save_splats` / :func:`load_splats` pick the format by suffix from :data:`SPLAT_FORMATS`
    (``.safetensors``: tensors plus one JSON metadata string; ``.pt``: ``torch.save`` of plain
    tensors and JSON-like metadata, read back with ``weights_only=True``).
    :func:`register_splat_format` adds a suffix (the codec's ``.gsv``). Every read failure is a
    :class:`SplatFileError`.
"""

from __future__ import annotations

import io
import json
import os
import re
import struct
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor

from gsvision.splats import Splats

__all__ = [
    "ImageError",
    "SplatFileError",
    "MAX_IMAGE_PIXELS",
    "SPLAT_FORMATS",
    "decode_image",
    "jsonable",
    "write_atomic",
    "load_image",
    "save_image",
    "sample_images",
    "save_splats",
    "load_splats",
    "register_splat_format",
]

#: Largest image :func:`load_image` accepts, in pixels (64 Mpx; Pillow's own bomb check is higher).
MAX_IMAGE_PIXELS = 64 * 1024 * 1024

#: Where the shipped sample photographs live (package data).
ASSETS_DIR = Path(__file__).resolve().parent / "assets"

PathLike = str | os.PathLike


class ImageError(ValueError):
    """An image file could not be read; the message names the path and the problem."""


class SplatFileError(ValueError):
    """A splat file could not be read; the message names the path and the problem."""


# ============================================================================ images
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png_header_size(source: Path | bytes) -> tuple[int, int] | None:
    """``(width, height)`` from a PNG's IHDR chunk, or None if the data is not a PNG."""
    if isinstance(source, bytes):
        head = source[:24]
    else:
        try:
            with open(source, "rb") as f:
                head = f.read(24)
        except OSError:
            return None
    if len(head) < 24 or not head.startswith(_PNG_SIGNATURE) or head[12:16] != b"IHDR":
        return None
    return struct.unpack(">II", head[16:24])


def _too_large(path: Path | str, pixels: int | None, detail: str = "") -> ImageError:
    what = f"{pixels:,} pixels" if pixels is not None else detail
    return ImageError(
        f"{path}: image is too large ({what}); the limit is {MAX_IMAGE_PIXELS:,} pixels "
        f"({MAX_IMAGE_PIXELS // 2**20} Mpx)"
    )


def _open_checked(path: Path) -> Image.Image:
    """Open ``path`` with Pillow (header only); every failure becomes an :class:`ImageError`."""
    if not path.exists():
        raise ImageError(f"{path}: no such file")
    if path.is_dir():
        raise ImageError(f"{path}: is a directory, not an image file")
    try:
        if path.stat().st_size == 0:
            raise ImageError(f"{path}: file is empty (0 bytes)")
    except OSError as exc:
        raise ImageError(f"{path}: cannot read file: {exc.strerror or exc}") from exc
    return _open_pillow(path, path)


def _open_pillow(source: Path | bytes, path: Path | str) -> Image.Image:
    """Pillow's lazy open of a file or bytes; failures become an :class:`ImageError` on ``path``."""
    try:
        with warnings.catch_warnings():
            # Pillow warns (above ~89 Mpx) or raises (above ~179 Mpx) on its own; we decide instead.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        match = re.search(r"\((\d+) pixels\)", str(exc))
        raise _too_large(path, int(match.group(1)) if match else None, str(exc)) from None
    except UnidentifiedImageError:
        size = _png_header_size(source)
        if size is not None and 0 in size:
            raise ImageError(f"{path}: zero-sized image ({size[0]}x{size[1]})") from None
        raise ImageError(f"{path}: not an image, or a format Pillow cannot identify") from None
    except OSError as exc:
        if exc.errno is not None:  # the OS failed (permissions, I/O), not the decoder
            raise ImageError(f"{path}: cannot read file: {exc.strerror or exc}") from exc
        raise ImageError(f"{path}: corrupt or truncated image data ({exc})") from exc
    except (SyntaxError, ValueError, EOFError, struct.error) as exc:  # raised by format plugins
        raise ImageError(f"{path}: corrupt or truncated image data ({exc})") from exc


def _high_depth_to_uint8(img: Image.Image, path: Path | str) -> np.ndarray:
    """Rescale a 16-bit, 32-bit integer or float single-channel image to ``uint8 [H, W]``.

    ``I;16*`` modes are 16-bit by definition and divide by 257 (65535 → 255). ``I`` (32-bit ints)
    holding values in ``[0, 65535]`` is 16-bit data in disguise and is treated the same way; other
    ranges are stretched min→0, max→255. ``F`` (float) in ``[0, 1]`` is multiplied by 255; other
    ranges are stretched the same way.
    """
    arr = np.asarray(img)
    if img.mode.startswith("I;16"):
        scaled = arr.astype(np.float64) / 257.0
    else:
        arr = arr.astype(np.float64)
        if not np.isfinite(arr).all():
            raise ImageError(f"{path}: image holds non-finite (NaN or infinite) pixel values")
        lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
        if img.mode == "F" and lo >= 0.0 and hi <= 1.0:
            scaled = arr * 255.0
        elif img.mode == "I" and lo >= 0 and hi <= 65535:
            scaled = arr / 257.0
        elif hi > lo:
            scaled = (arr - lo) * (255.0 / (hi - lo))
        else:
            scaled = np.zeros_like(arr)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _to_rgb(img: Image.Image, path: Path | str) -> np.ndarray:
    """Convert a decoded image of any mode to ``uint8 [H, W, 3]`` (alpha over white)."""
    if img.mode in ("I", "F") or img.mode.startswith("I;16"):
        gray = _high_depth_to_uint8(img, path)
        return np.repeat(gray[..., None], 3, axis=2)
    has_alpha = img.mode in ("RGBA", "RGBa", "LA", "La", "PA") or (
        img.mode == "P" and "transparency" in img.info
    )
    if has_alpha:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"))
    if img.mode != "RGB":
        img = img.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV
    return np.asarray(img)


def load_image(path: PathLike) -> np.ndarray:
    """Read an image file as RGB.

    Args:
        path: any format Pillow reads. Only the first frame of animated/multi-page files is used.

    Returns:
        ``uint8 [H, W, 3]``, EXIF orientation applied. Images with alpha (RGBA, LA, palette with
        transparency) are composited on a white background; grayscale, palette and CMYK images are
        converted to RGB; 16-bit and float images are rescaled to 8 bits (see
        :func:`_high_depth_to_uint8`), never clipped.

    Raises:
        ImageError: naming the path, for a missing or empty file, a file that is not an image,
            corrupt or truncated data, a zero-sized image, or one above :data:`MAX_IMAGE_PIXELS`.
    """
    path = Path(path)
    return _decode(_open_checked(path), path)


def decode_image(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """:func:`load_image` for encoded bytes (e.g. a JPEG member of a tar shard).

    Raises:
        ImageError: naming ``name``, for empty, unidentifiable, corrupt, truncated or oversized data.
    """
    if not data:
        raise ImageError(f"{name}: image data is empty (0 bytes)")
    return _decode(_open_pillow(bytes(data), name), name)


def _decode(img: Image.Image, path: Path | str) -> np.ndarray:
    """Fully decode an opened image to ``uint8 [H, W, 3]`` (see :func:`load_image`)."""
    with img:
        width, height = img.size
        if width <= 0 or height <= 0:
            raise ImageError(f"{path}: zero-sized image ({width}x{height})")
        if width * height > MAX_IMAGE_PIXELS:
            raise _too_large(path, width * height)
        try:
            img.load()  # force the full decode: truncated or corrupt data fails here
            img = ImageOps.exif_transpose(img)
        except (OSError, SyntaxError, ValueError, EOFError, struct.error) as exc:
            raise ImageError(f"{path}: corrupt or truncated image data ({exc})") from exc
        except Image.DecompressionBombError as exc:  # e.g. a frame larger than its header said
            raise _too_large(path, None, str(exc)) from exc
        rgb = _to_rgb(img, path)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ImageError(f"{path}: decoded to an unexpected array {rgb.dtype} {list(rgb.shape)}")
    return np.ascontiguousarray(rgb)


def _as_uint8(image: np.ndarray | Tensor) -> np.ndarray:
    """``[H, W, 3]``, ``[H, W]`` or ``[1, H, W, 3]``, float in [0, 1] or integer → clamped uint8."""
    if isinstance(image, Tensor):
        image = image.detach().cpu()
        image = image.float().numpy() if image.is_floating_point() else image.numpy()
    arr = np.asarray(image)
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (3, 4))):
        raise ValueError(
            f"save_image: expected [H, W, 3], [H, W, 4] or [H, W], got {list(arr.shape)}"
        )
    if arr.dtype == np.uint8:
        return arr
    if np.issubdtype(arr.dtype, np.floating):
        arr = np.nan_to_num(arr.astype(np.float64), nan=0.0)
        return np.rint(np.clip(arr, 0.0, 1.0) * 255.0).astype(np.uint8)
    if np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_:
        scale = 255 if arr.dtype == np.bool_ else 1
        return np.clip(arr.astype(np.int64) * scale, 0, 255).astype(np.uint8)
    raise ValueError(f"save_image: unsupported dtype {arr.dtype}")


def save_image(path: PathLike, image: np.ndarray | Tensor) -> Path:
    """Write an image; the format follows the suffix. Parent folders are created.

    Args:
        path: destination, e.g. ``out.png``.
        image: ``[H, W, 3]`` (or ``[H, W]``, ``[1, H, W, 3]``) array or tensor: floats are taken as
            ``[0, 1]`` and clamped, integers as ``[0, 255]`` and clamped.

    Returns:
        The path written.
    """
    path = Path(path)
    arr = _as_uint8(image)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(arr)).save(path)
    return path


def sample_images() -> list[Path]:
    """The shipped sample photographs (``gsvision/assets/*.jpg``), sorted by name."""
    return sorted(ASSETS_DIR.glob("*.jpg"))


# ============================================================================ splat files
#: Value of the ``format`` key written into every splat file.
SPLATS_FORMAT = "gsvision.splats"
SPLATS_FORMAT_VERSION = 1


@dataclass(frozen=True)
class SplatFormat:
    """How one file suffix is read and written."""

    read: Callable[[Path], tuple[dict[str, Tensor], dict[str, Any]]]  # -> (tensors, metadata)
    write: Callable[[Path, Splats, dict[str, Any]], None]  # writes to the (temporary) path given


def jsonable(value: Any) -> Any:
    """Plain Python values for JSON: numbers from tensors/numpy, paths as strings, tuples as lists."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "tolist"):  # tensors and numpy scalars/arrays
        return value.tolist()
    return value


def write_atomic(path: PathLike, data: bytes | str) -> Path:
    """Write ``data`` to a temporary file beside ``path`` and rename it into place.

    Readers never see a half-written file, and a crash leaves at most a hidden ``.tmp`` file.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        if isinstance(data, str):
            tmp.write_text(data)
        else:
            tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _write_safetensors(path: Path, splats: Splats, metadata: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().contiguous() for k, v in splats.to_dict().items()}
    header = {
        "format": SPLATS_FORMAT,
        "version": str(SPLATS_FORMAT_VERSION),
        "metadata": json.dumps(metadata),
    }
    save_file(tensors, str(path), metadata=header)


def _read_safetensors(path: Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt", device="cpu") as f:
        header = f.metadata() or {}
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    raw = header.get("metadata", "{}")
    try:
        metadata = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"metadata is not valid JSON ({exc})") from exc
    return tensors, metadata


def _write_pt(path: Path, splats: Splats, metadata: dict[str, Any]) -> None:
    tensors = {k: v.detach().cpu().contiguous() for k, v in splats.to_dict().items()}
    torch.save(
        {
            "format": SPLATS_FORMAT,
            "version": SPLATS_FORMAT_VERSION,
            "splats": tensors,
            "metadata": json.loads(json.dumps(metadata)),  # plain JSON types only
        },
        path,
    )


def _read_pt(path: Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(obj, dict) or not isinstance(obj.get("splats"), dict):
        raise ValueError("not a gsvision splat file (no 'splats' dictionary inside)")
    return obj["splats"], obj.get("metadata") or {}


#: Splat file formats by lower-case suffix; extend with :func:`register_splat_format`.
SPLAT_FORMATS: dict[str, SplatFormat] = {
    ".safetensors": SplatFormat(_read_safetensors, _write_safetensors),
    ".pt": SplatFormat(_read_pt, _write_pt),
}


def register_splat_format(suffix: str, fmt: SplatFormat) -> None:
    """Read and write splat files ending in ``suffix`` (e.g. ``".gsv"``) with ``fmt``.

    ``fmt.read`` may raise anything on bad input: :func:`load_splats` reports it as a
    :class:`SplatFileError`.
    """
    if not suffix.startswith("."):
        raise ValueError(f"suffix must start with '.', got {suffix!r}")
    SPLAT_FORMATS[suffix.lower()] = fmt


def _format_for(path: Path, error: type[ValueError]) -> SplatFormat:
    fmt = SPLAT_FORMATS.get(path.suffix.lower())
    if fmt is None:
        known = ", ".join(sorted(SPLAT_FORMATS))
        raise error(f"{path}: unknown splat file suffix {path.suffix!r}; known: {known}")
    return fmt


def save_splats(path: PathLike, splats: Splats, metadata: dict[str, Any] | None = None) -> Path:
    """Write splats (and JSON-serialisable metadata) to ``path``; the suffix picks the format.

    The file is written to a temporary name in the same folder and renamed into place, so a crash
    never leaves a half-written file under ``path``. Parent folders are created.

    Args:
        path: destination ending in a suffix from :data:`SPLAT_FORMATS`.
        splats: the batch to store (moved to CPU; dtype kept).
        metadata: JSON-serialisable dict (source path, fit metrics, settings, ...).

    Returns:
        The path written.

    Raises:
        ValueError: for an unknown suffix, invalid splats or metadata that is not JSON-serialisable.
    """
    path = Path(path)
    fmt = _format_for(path, ValueError)
    splats.validate()
    metadata = dict(metadata or {})
    try:
        json.dumps(metadata)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"save_splats: metadata is not JSON-serialisable: {exc}") from exc
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        fmt.write(tmp, splats, metadata)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def load_splats(path: PathLike) -> tuple[Splats, dict[str, Any]]:
    """Read a splat file written by :func:`save_splats`.

    Args:
        path: a file ending in a suffix from :data:`SPLAT_FORMATS`.

    Returns:
        ``(splats, metadata)``: validated splats on the CPU and the stored metadata dict.

    Raises:
        SplatFileError: naming the path and the problem, for a missing file, an unknown suffix,
            and corrupt, truncated or foreign files (never a raw safetensors or pickle error).
    """
    path = Path(path)
    if not path.exists():
        raise SplatFileError(f"{path}: no such file")
    if path.is_dir():
        raise SplatFileError(f"{path}: is a directory, not a splat file")
    fmt = _format_for(path, SplatFileError)
    if path.stat().st_size == 0:
        raise SplatFileError(f"{path}: file is empty (0 bytes)")
    try:
        tensors, metadata = fmt.read(path)
    except SplatFileError:
        raise
    except Exception as exc:  # every reader failure is a bad file from the user's point of view
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SplatFileError(f"{path}: corrupt, truncated or not a splat file ({detail})") from exc
    if not isinstance(metadata, dict):
        raise SplatFileError(f"{path}: metadata is a {type(metadata).__name__}, expected a dict")
    if not isinstance(tensors, dict):
        raise SplatFileError(f"{path}: holds a {type(tensors).__name__}, expected named tensors")
    bad = sorted(str(k) for k, v in tensors.items() if not isinstance(v, Tensor))
    if bad:
        raise SplatFileError(f"{path}: entries {bad} are not tensors")
    try:
        splats = Splats.from_dict(dict(tensors))
    except (ValueError, RuntimeError, IndexError, TypeError) as exc:
        raise SplatFileError(f"{path}: invalid splats: {exc}") from exc
    return splats, metadata
