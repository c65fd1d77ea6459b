"""gsvision.io: image decoding and conversions, bad input, splat files in every format."""

from __future__ import annotations

import io
import json
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gsvision.io import (
    MAX_IMAGE_PIXELS,
    SPLAT_FORMATS,
    ImageError,
    SplatFileError,
    SplatFormat,
    load_image,
    load_splats,
    register_splat_format,
    sample_images,
    save_image,
    save_splats,
)
from gsvision.splats import Splats


# ------------------------------------------------------------------------------ helpers
def _png_chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims ``width × height`` RGB, with a token IDAT: cheap at any size."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(b"\0" * 4))
        + _png_chunk(b"IEND", b"")
    )


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def make_splats(b: int = 2, n: int = 5, opacities: bool = False, dtype=torch.float32) -> Splats:
    g = torch.Generator().manual_seed(1)
    return Splats.create(
        means=torch.rand(b, n, 2, generator=g, dtype=dtype),
        chol=torch.stack(
            [
                torch.rand(b, n, generator=g) * 0.1 + 0.01,
                torch.rand(b, n, generator=g) * 0.02 - 0.01,
                torch.rand(b, n, generator=g) * 0.1 + 0.01,
            ],
            -1,
        ).to(dtype),
        colors=torch.rand(b, n, 3, generator=g, dtype=dtype),
        image_size=torch.tensor([[32, 40], [24, 24]][:b]),
        counts=[n, n - 2][:b],
        opacities=torch.rand(b, n, 1, generator=g, dtype=dtype) if opacities else None,
    )


ASTRONAUT = next(p for p in sample_images() if p.stem == "astronaut")


# ------------------------------------------------------------------------------ good images
def test_sample_images_are_listed_sorted_and_load():
    paths = sample_images()
    assert [p.name for p in paths] == sorted(p.name for p in paths)
    assert {p.stem for p in paths} >= {"astronaut", "chelsea", "coffee", "ihc", "retina", "rocket"}
    for p in paths:
        img = load_image(p)
        assert img.dtype == np.uint8 and img.shape == (256, 256, 3)


def test_rgb_png_round_trips_exactly(tmp_path):
    arr = np.random.default_rng(0).integers(0, 256, (7, 9, 3), dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "a.png")
    out = load_image(tmp_path / "a.png")
    assert out.dtype == np.uint8 and out.flags.c_contiguous
    np.testing.assert_array_equal(out, arr)


def test_grayscale_and_bilevel_become_rgb(tmp_path):
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    Image.fromarray(gray).save(tmp_path / "g.png")
    np.testing.assert_array_equal(load_image(tmp_path / "g.png"), np.stack([gray] * 3, -1))
    Image.fromarray(gray > 100).save(tmp_path / "b.png")  # mode "1"
    out = load_image(tmp_path / "b.png")
    np.testing.assert_array_equal(out[..., 0], np.where(gray > 100, 255, 0))


def test_rgba_and_la_are_composited_on_white(tmp_path):
    rgba = np.zeros((1, 3, 4), dtype=np.uint8)
    rgba[0, :, :3] = [200, 100, 0]
    rgba[0, :, 3] = [0, 255, 128]  # transparent, opaque, half
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    out = load_image(tmp_path / "a.png").astype(int)
    np.testing.assert_array_equal(out[0, 0], [255, 255, 255])
    np.testing.assert_array_equal(out[0, 1], [200, 100, 0])
    expected = np.array([200, 100, 0]) * 128 / 255 + 255 * (1 - 128 / 255)
    np.testing.assert_allclose(out[0, 2], expected, atol=1)
    la = Image.fromarray(np.array([[[50, 0], [50, 255]]], dtype=np.uint8), "LA")
    la.save(tmp_path / "la.png")
    np.testing.assert_array_equal(load_image(tmp_path / "la.png")[0], [[255] * 3, [50] * 3])


def test_palette_with_and_without_transparency(tmp_path):
    p = Image.new("P", (2, 1))
    p.putpalette([10, 20, 30, 200, 150, 100] + [0] * 762)
    p.putpixel((0, 0), 0)
    p.putpixel((1, 0), 1)
    p.save(tmp_path / "p.png")
    np.testing.assert_array_equal(
        load_image(tmp_path / "p.png")[0], [[10, 20, 30], [200, 150, 100]]
    )
    p.save(tmp_path / "pt.png", transparency=0)  # index 0 transparent → white
    np.testing.assert_array_equal(load_image(tmp_path / "pt.png")[0], [[255] * 3, [200, 150, 100]])


def test_16_bit_is_rescaled_not_clipped(tmp_path):
    a16 = np.array([[0, 257 * 100, 32768, 65535]], dtype=np.uint16)
    Image.fromarray(a16).save(tmp_path / "d.png")
    assert Image.open(tmp_path / "d.png").mode.startswith("I")
    out = load_image(tmp_path / "d.png")
    np.testing.assert_array_equal(out[0, :, 0], [0, 100, 128, 255])
    assert (out[..., 0] == out[..., 2]).all()


def test_32_bit_int_and_float_images(tmp_path):
    wide = np.array([[-1000, 0, 1000, 99000]], dtype=np.int32)  # outside 16 bits: stretched
    Image.fromarray(wide, "I").save(tmp_path / "i.tif")
    np.testing.assert_array_equal(load_image(tmp_path / "i.tif")[0, :, 0], [0, 3, 5, 255])
    unit = np.array([[0.0, 0.5, 1.0]], dtype=np.float32)  # [0, 1] floats: times 255
    Image.fromarray(unit, "F").save(tmp_path / "f.tif")
    np.testing.assert_array_equal(load_image(tmp_path / "f.tif")[0, :, 0], [0, 128, 255])
    hdr = np.array([[-1.0, 1.0, 3.0]], dtype=np.float32)  # other ranges: min→0, max→255
    Image.fromarray(hdr, "F").save(tmp_path / "h.tif")
    np.testing.assert_array_equal(load_image(tmp_path / "h.tif")[0, :, 0], [0, 128, 255])
    Image.fromarray(np.array([[0.0, np.nan]], dtype=np.float32), "F").save(tmp_path / "n.tif")
    with pytest.raises(ImageError, match="non-finite"):
        load_image(tmp_path / "n.tif")


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    Image.new("CMYK", (8, 8), (0, 0, 0, 0)).save(tmp_path / "c.jpg")
    out = load_image(tmp_path / "c.jpg")
    assert out.shape == (8, 8, 3) and out.min() >= 250  # no ink = white


def test_exif_orientation_is_applied(tmp_path):
    arr = np.zeros((10, 20, 3), dtype=np.uint8)
    arr[:3, :3] = [255, 0, 0]  # red patch at the top-left
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    Image.fromarray(arr).save(tmp_path / "o.png", exif=exif)
    out = load_image(tmp_path / "o.png")
    assert out.shape == (20, 10, 3)
    np.testing.assert_array_equal(out[0, -1], [255, 0, 0])  # now at the top-right
    np.testing.assert_array_equal(out[0, 0], [0, 0, 0])


# ------------------------------------------------------------------------------ bad images
def test_missing_directory_and_empty_files(tmp_path):
    with pytest.raises(ImageError, match=r"nope\.png: no such file"):
        load_image(tmp_path / "nope.png")
    with pytest.raises(ImageError, match="is a directory"):
        load_image(tmp_path)
    with pytest.raises(ImageError, match=r"empty\.jpg: file is empty"):
        load_image(write(tmp_path / "empty.jpg", b""))


def test_text_file_named_png(tmp_path):
    path = write(tmp_path / "notes.png", b"these are not pixels\n" * 10)
    with pytest.raises(ImageError, match=r"notes\.png: not an image"):
        load_image(path)
    assert issubclass(ImageError, ValueError)


@pytest.mark.parametrize("keep", [0.5, 0.05, 0.002])
def test_truncated_jpeg(tmp_path, keep):
    data = ASTRONAUT.read_bytes()
    path = write(tmp_path / "cut.jpg", data[: int(len(data) * keep)])
    with pytest.raises(ImageError, match=r"cut\.jpg: (corrupt or truncated|not an image)"):
        load_image(path)


def test_corrupt_jpeg_data(tmp_path):
    data = bytearray(ASTRONAUT.read_bytes())
    data[1000:3000] = b"\xff" * 2000
    with pytest.raises(ImageError, match=r"bad\.jpg: corrupt or truncated"):
        load_image(write(tmp_path / "bad.jpg", bytes(data)))


def test_zero_sized_png(tmp_path):
    with pytest.raises(ImageError, match=r"zero\.png: zero-sized image \(0x5\)"):
        load_image(write(tmp_path / "zero.png", png_header_only(0, 5)))


@pytest.mark.parametrize("side", [9000, 10000, 20000])  # ours only / Pillow warns / Pillow raises
def test_enormous_png_header_is_refused_by_our_limit(tmp_path, side):
    assert side * side > MAX_IMAGE_PIXELS
    path = write(tmp_path / "huge.png", png_header_only(side, side))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Pillow's DecompressionBombWarning must not escape
        with pytest.raises(ImageError, match=r"huge\.png: image is too large") as info:
            load_image(path)
    assert f"{side * side:,} pixels" in str(info.value)
    assert f"{MAX_IMAGE_PIXELS:,}" in str(info.value)


# ------------------------------------------------------------------------------ save_image
def test_save_image_clamps_floats_and_accepts_tensors(tmp_path):
    x = torch.tensor([[[-1.0, 0.5, 2.0], [0.0, 1.0, float("nan")]]])  # [1, 2, 3]
    save_image(tmp_path / "f.png", x)
    np.testing.assert_array_equal(load_image(tmp_path / "f.png")[0], [[0, 128, 255], [0, 255, 0]])
    u8 = np.random.default_rng(1).integers(0, 256, (4, 5, 3), dtype=np.uint8)
    save_image(tmp_path / "sub" / "u.png", torch.from_numpy(u8)[None])  # [1, H, W, 3], new dir
    np.testing.assert_array_equal(load_image(tmp_path / "sub" / "u.png"), u8)
    save_image(tmp_path / "i.png", np.array([[[-5, 300, 7]]], dtype=np.int32))
    np.testing.assert_array_equal(load_image(tmp_path / "i.png")[0, 0], [0, 255, 7])
    with pytest.raises(ValueError, match="expected"):
        save_image(tmp_path / "bad.png", np.zeros((2, 3, 5)))


# ------------------------------------------------------------------------------ splat files
def _assert_same(a: Splats, b: Splats) -> None:
    for name, t in a.to_dict().items():
        u = b.to_dict()[name]
        assert t.dtype == u.dtype, name
        torch.testing.assert_close(t, u, rtol=0, atol=0)
    assert (a.opacities is None) == (b.opacities is None)


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
@pytest.mark.parametrize("opacities", [False, True])
def test_splat_round_trip(tmp_path, suffix, opacities):
    s = make_splats(opacities=opacities)
    meta = {"source": "x.jpg", "metrics": {"psnr": 31.5, "iterations": 12}, "tags": [1, None]}
    path = save_splats(tmp_path / "deep" / f"s{suffix}", s, meta)
    loaded, got = load_splats(path)
    _assert_same(s, loaded)
    assert got == meta
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left


@pytest.mark.parametrize("suffix", [".safetensors", ".PT"])
def test_splat_round_trip_half_precision_and_no_metadata(tmp_path, suffix):
    s = make_splats(b=1, dtype=torch.float16)
    loaded, meta = load_splats(save_splats(tmp_path / f"h{suffix}", s))
    _assert_same(s, loaded)
    assert meta == {}


def test_save_splats_refuses_bad_suffix_and_unserialisable_metadata(tmp_path):
    with pytest.raises(ValueError, match="unknown splat file suffix '.npz'"):
        save_splats(tmp_path / "s.npz", make_splats())
    with pytest.raises(ValueError, match="not JSON-serialisable"):
        save_splats(tmp_path / "s.safetensors", make_splats(), {"bad": object()})
    assert list(tmp_path.iterdir()) == []


def _raises_splat_error(path: Path, pattern: str) -> None:
    with pytest.raises(SplatFileError, match=pattern) as info:
        load_splats(path)
    assert str(path) in str(info.value)
    assert "\n" not in str(info.value)


def test_load_splats_missing_empty_and_unknown(tmp_path):
    _raises_splat_error(tmp_path / "none.safetensors", "no such file")
    _raises_splat_error(write(tmp_path / "e.safetensors", b""), "file is empty")
    _raises_splat_error(write(tmp_path / "x.bin", b"123"), "unknown splat file suffix")
    assert issubclass(SplatFileError, ValueError)


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
@pytest.mark.parametrize("keep", [0.5, 0.9, 10])
def test_load_splats_truncated(tmp_path, suffix, keep):
    data = save_splats(tmp_path / f"ok{suffix}", make_splats()).read_bytes()
    cut = write(tmp_path / f"cut{suffix}", data[: int(keep) if keep > 1 else int(len(data) * keep)])
    _raises_splat_error(cut, "corrupt, truncated or not a splat file")


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_load_splats_garbage(tmp_path, suffix):
    rng = np.random.default_rng(0)
    _raises_splat_error(write(tmp_path / f"g{suffix}", rng.bytes(4096)), "corrupt, truncated")
    text = write(tmp_path / f"t{suffix}", b'{"means": [1, 2, 3]}' * 20)
    _raises_splat_error(text, "corrupt, truncated")


def test_load_splats_foreign_safetensors(tmp_path):
    from safetensors.torch import save_file

    save_file({"weight": torch.ones(3)}, str(tmp_path / "model.safetensors"))
    _raises_splat_error(tmp_path / "model.safetensors", r"missing field\(s\)")
    d = make_splats().to_dict()
    d["chol"][0, 0, 0] = -1.0  # not positive-definite
    save_file(d, str(tmp_path / "neg.safetensors"))
    _raises_splat_error(tmp_path / "neg.safetensors", "invalid splats: chol: image 0, Gaussian 0")
    save_file(make_splats().to_dict(), str(tmp_path / "m.safetensors"), metadata={"metadata": "{"})
    _raises_splat_error(tmp_path / "m.safetensors", "metadata is not valid JSON")
    save_file(make_splats().to_dict(), str(tmp_path / "l.safetensors"), metadata={"metadata": "[]"})
    _raises_splat_error(tmp_path / "l.safetensors", "metadata is a list")


def test_load_splats_foreign_pt(tmp_path):
    torch.save([torch.ones(2)], tmp_path / "list.pt")
    _raises_splat_error(tmp_path / "list.pt", "no 'splats' dictionary")
    torch.save({"splats": {"means": [1, 2]}}, tmp_path / "notensor.pt")
    _raises_splat_error(tmp_path / "notensor.pt", r"entries \['means'\] are not tensors")
    torch.save({"splats": make_splats().to_dict(), "evil": io.BytesIO(b"x")}, tmp_path / "pk.pt")
    _raises_splat_error(tmp_path / "pk.pt", "corrupt, truncated")  # weights_only refuses objects


def test_register_splat_format_extends_the_dispatch(tmp_path):
    def write_json(path: Path, splats: Splats, metadata: dict) -> None:
        d = {k: v.tolist() for k, v in splats.to_dict().items()}
        path.write_text(json.dumps({"tensors": d, "metadata": metadata}))

    def read_json(path: Path):
        obj = json.loads(path.read_text())
        ints = {"counts", "image_sizes"}
        t = {
            k: torch.tensor(v, dtype=torch.int64 if k in ints else torch.float32)
            for k, v in obj["tensors"].items()
        }
        return t, obj["metadata"]

    register_splat_format(".json", SplatFormat(read_json, write_json))
    try:
        s = make_splats()
        loaded, meta = load_splats(save_splats(tmp_path / "s.JSON", s, {"k": 1}))
        _assert_same(s, loaded)
        assert meta == {"k": 1}
        _raises_splat_error(write(tmp_path / "bad.json", b"{"), "corrupt, truncated")
    finally:
        SPLAT_FORMATS.pop(".json")


def test_decode_image_from_bytes_matches_load_image_and_names_bad_data(tmp_path):
    from gsvision.io import decode_image

    path = sample_images()[0]
    assert np.array_equal(decode_image(path.read_bytes(), "x.jpg"), load_image(path))
    data = path.read_bytes()
    with pytest.raises(ImageError, match="k.jpg: corrupt or truncated image data"):
        decode_image(data[: len(data) // 3], "k.jpg")
    with pytest.raises(ImageError, match="k.jpg: image data is empty"):
        decode_image(b"", "k.jpg")
    with pytest.raises(ImageError, match="k.png: not an image"):
        decode_image(b"hello world", "k.png")
