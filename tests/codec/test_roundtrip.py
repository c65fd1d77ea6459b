"""decode(encode(s)): bit-exact when lossless, float16 rounding for f16, and within the stated
quantisation error for the quantised levels, per Gaussian and as rendered pixels."""

from __future__ import annotations

import math

import codec_cases as C
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gsvision import render
from gsvision.codec import (
    LEVELS,
    LIMITS,
    CodecError,
    QuantSpec,
    decode,
    decode_images,
    encode,
    encoded_sizes,
    read_metadata,
)
from gsvision.codec import format as F
from gsvision.codec.quant import (
    _COLOR_BASIS,
    colour_gains_of,
    dequantise,
    morton_codes,
    quantise,
    to_logcov,
    to_shape,
)
from gsvision.io import SplatFileError, load_splats, save_splats
from gsvision.splats import Splats

QUANTISED = ["high", "medium", "low", "xxlow", QuantSpec(8, 6, 5, 6), QuantSpec(16, 12, 12, 12)]
QUANT_IDS = ["high", "medium", "low", "xxlow", "spec-8-6-5-6", "spec-16-12-12-12"]


def bits_of(t: torch.Tensor) -> torch.Tensor:
    """float32 → its bit pattern, so -0.0, subnormals and every last bit are compared."""
    return t.contiguous().view(torch.int32)


def assert_bits_equal(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.dtype == b.dtype == torch.float32 and a.shape == b.shape
    assert torch.equal(bits_of(a), bits_of(b))


def batch() -> Splats:
    """Three images of different sizes and counts (one empty), with opacities and padded garbage."""
    return C.random_splats(
        [(37, 53), (8, 61), (64, 64)], 40, seed=11, counts=[40, 0, 13], opacity=True
    )


# ------------------------------------------------------------------------------ lossless
def test_lossless_is_bit_exact_for_a_batch():
    s = batch()
    out = decode(encode(s, "lossless"))
    assert out.batch_size == 3 and out.capacity == 40
    assert out.counts.tolist() == [40, 0, 13]
    assert out.image_sizes.tolist() == [[37, 53], [8, 61], [64, 64]]
    assert out.opacities is not None
    for b in range(3):
        want, got = s.image(b), out.image(b)
        assert set(want) == set(got) == {"means", "chol", "colors", "opacities"}
        for name in want:
            assert_bits_equal(got[name], want[name])


def test_lossless_keeps_awkward_float32_values_exactly():
    """-0.0, subnormals, huge and tiny magnitudes: every finite float32 survives bit for bit."""
    tiny = float(torch.finfo(torch.float32).tiny)
    means = torch.tensor([[-0.0, 1e38], [tiny / 8, -3.4e38], [0.1, 1 / 3]])
    chol = torch.tensor([[1e-30, -0.0, 1e30], [tiny / 2, 5.0, 1e-3], [0.1, 0.2, 0.3]])
    colors = torch.tensor([[-1e20, 0.0, -0.0], [1.0, 2.0, 3.0], [math.pi, -math.e, 1e-40]])
    s = Splats.create(means, chol, colors, (37, 53))
    out = decode(encode(s, "lossless"))
    for name, t in s.image(0).items():
        assert_bits_equal(out.image(0)[name], t)


def test_lossless_float64_input_is_stored_as_float32():
    s = C.random_splats([(20, 30)], 9, seed=3, dtype=torch.float64)
    out = decode(encode(s, "lossless"))
    for name, t in s.image(0).items():
        assert_bits_equal(out.image(0)[name], t.to(torch.float32))


@pytest.mark.parametrize("level", ["lossless", "f16", "medium"])
def test_empty_images(level):
    """N = 0 is allowed: alone, or beside non-empty images."""
    empty = Splats.create(torch.zeros(0, 2), torch.ones(0, 3), torch.zeros(0, 3), (5, 7))
    out = decode(encode(empty, level))
    assert out.counts.tolist() == [0] and out.capacity == 0
    assert out.image_sizes.tolist() == [[5, 7]]
    s = C.random_splats([(9, 9), (4, 4)], 3, seed=2, counts=[0, 3])
    out = decode(encode(s, level))
    assert out.counts.tolist() == [0, 3] and out.image_sizes.tolist() == [[9, 9], [4, 4]]


def test_decode_pads_to_the_largest_count_and_decode_images_does_not():
    s = batch()
    payload = encode(s, "lossless")
    items = decode_images(payload)
    assert [x.capacity for x in items] == [40, 0, 13]
    assert [x.counts.tolist() for x in items] == [[40], [0], [13]]
    padded = decode(payload)
    for b, item in enumerate(items):
        for name, t in item.image(0).items():
            assert_bits_equal(padded.image(b)[name], t)


@given(
    n=st.integers(0, 12),
    h=st.integers(1, 300),
    w=st.integers(1, 300),
    opacity=st.booleans(),
    data=st.data(),
)
@settings(C.CI, max_examples=60)
def test_lossless_property(n, h, w, opacity, data):
    """Any finite float32 values with a positive Cholesky diagonal come back bit-exact."""
    n = min(n, h * w)
    finite = st.floats(width=32, allow_nan=False, allow_infinity=False)
    positive = st.floats(min_value=0.0, max_value=2.0**127, exclude_min=True, width=32)
    unit = st.floats(0.0, 1.0, width=32)

    def table(k: int, cols: list) -> torch.Tensor:
        rows = [[data.draw(c) for c in cols] for _ in range(k)]
        return torch.tensor(rows, dtype=torch.float32).reshape(k, len(cols))

    s = Splats.create(
        table(n, [finite, finite]),
        table(n, [positive, finite, positive]),
        table(n, [finite] * 3),
        (h, w),
        opacities=table(n, [unit]) if opacity else None,
    )
    out = decode(encode(s, "lossless"))
    assert out.image_sizes.tolist() == [[h, w]]
    for name, t in s.image(0).items():
        assert_bits_equal(out.image(0)[name], t)


# ------------------------------------------------------------------------------ float16
def test_f16_is_float16_rounding_exactly():
    s = batch()
    out = decode(encode(s, "f16"))
    assert out.counts.tolist() == [40, 0, 13] and out.opacities is not None
    for b in range(3):
        for name, t in s.image(b).items():
            got = out.image(b)[name]
            assert_bits_equal(got, t.to(torch.float16).to(torch.float32))
            # float16 keeps 11 significant bits: relative error at most 2^-11 for normal values
            assert torch.all((got - t).abs() <= t.abs() * 2.0**-11 + 2.0**-24)


def test_f16_refuses_values_it_cannot_hold():
    s = C.random_splats([(16, 16)], 3, seed=1)
    s.colors[0, 0, 0] = 1e5  # beyond float16's 65504
    with pytest.raises(ValueError, match="overflow"):
        encode(s, "f16")
    s = C.random_splats([(16, 16)], 3, seed=1)
    s.chol[0, 1, 0] = 1e-9  # rounds to 0 in float16: not positive-definite any more
    with pytest.raises(ValueError, match="rounds to 0"):
        encode(s, "f16")


# ------------------------------------------------------------------------------ quantised
def _reference(s: Splats, b: int, spec: QuantSpec, logcov: bool = False):
    """What decode must return for image ``b``: the quantiser's own round trip, in Z-order,
    plus that order (to match decoded Gaussians with the originals)."""
    img = s[b].fold_opacity().image(0)
    h, w = (int(v) for v in s.image_sizes[b])
    codes, ranges = quantise(img["means"], img["chol"], img["colors"], (h, w), spec, logcov)
    order = torch.sort(morton_codes(codes["pos"]), stable=True).indices
    sorted_codes = {k: v[order] for k, v in codes.items()}
    values = dequantise(sorted_codes, ranges, (h, w), spec, logcov)
    return order, values, ranges, img, sorted_codes


def _check_quantised_image(
    s: Splats, out: Splats, b: int, spec: QuantSpec, coder: str = "zstd"
) -> None:
    logcov = coder == "range"
    order, (means, chol, colors), ranges, img, codes = _reference(s, b, spec, logcov)
    got = out.image(b)
    # 1. exactly what the quantiser's dequantise gives: encoder and decoder agree bit for bit
    assert_bits_equal(got["means"], means)
    assert_bits_equal(got["chol"], chol)
    assert_bits_equal(got["colors"], colors)
    n = len(order)
    if n == 0:
        return
    h, w = (int(v) for v in s.image_sizes[b])
    want = {k: v[order] for k, v in img.items()}
    levels = lambda bits: (1 << bits) - 1  # noqa: E731

    # 2. positions: within half of the shared step (widest axis range / levels) of the original
    pos_step = float((ranges.pos_hi - ranges.pos_lo).max()) / levels(spec.pos_bits)
    assert float((got["means"] - want["means"]).abs().max()) <= pos_step / 2 + 1e-6

    # 3. colours: each coded (orthonormal luma/chroma) channel is within half the shared step, so
    #    the RGB error vector has length at most sqrt(3)/2 steps (the basis preserves lengths);
    #    mode 4: the step times each Gaussian's gain, over the range of (t - lo) / gain
    coded = want["colors"].to(torch.float32) @ _COLOR_BASIS.T
    gain = torch.ones(n)
    if logcov:
        gain = colour_gains_of(ranges, codes["scale"][:, 0], spec.scale_bits)
        assert float(gain.min()) >= 1 - 1e-6  # the largest Gaussians keep the finest step
    lo = coded.min(0).values
    col_step = float(((coded - lo) / gain[:, None]).max(0).values.max()) / levels(spec.color_bits)
    err = torch.linalg.vector_norm(got["colors"] - want["colors"], dim=1)
    assert (err <= math.sqrt(3) / 2 * col_step * gain + 1e-5).all()

    scale = torch.tensor([w, h, h], dtype=torch.float32)
    shape_in = to_shape(want["chol"].to(torch.float32) * scale)
    shape_out = to_shape(got["chol"] * scale)
    if logcov:
        # 4'. log-covariance shape (mode 4): the log size within half its step, each of the log
        #     anisotropy's u, v within half theirs, everywhere (no angle to wrap or swap)
        size_step = float(ranges.scale_hi[0] - ranges.scale_lo[0]) / levels(spec.scale_bits)
        uv_step = float(ranges.scale_hi[1] - ranges.scale_lo[1]) / levels(spec.angle_bits)
        err = (to_logcov(shape_out) - to_logcov(shape_in)).abs()
        assert float(err[:, 0].max()) <= size_step / 2 + 1e-4
        assert float(err[:, 1:].max()) <= uv_step / 2 + 1e-4
        return
    # 4. shape: log-scales (sorted, so a major/minor swap cannot hide an error) within half the
    #    shared log-scale step. The angle is within half an angle step wherever it is defined:
    #    where the original and the stored shape are both clearly elongated, and the stored major
    #    axis is still the major one (coarse scale steps can swap near-round axes, a 90° turn of
    #    a shape that is round to within a step).
    log_step = float((ranges.scale_hi - ranges.scale_lo).max()) / levels(spec.scale_bits)
    assert float((shape_out[:, :2] - shape_in[:, :2]).abs().max()) <= log_step / 2 + 1e-4
    stored = ranges.scale_lo + codes["scale"].to(torch.float32) * log_step
    elongated = (shape_in[:, 0] - shape_in[:, 1] > 0.1) & (stored[:, 0] - stored[:, 1] > 0.1)
    d = torch.remainder(shape_out[:, 2] - shape_in[:, 2], math.pi)
    d = torch.minimum(d, math.pi - d)[elongated]
    if d.numel():
        assert float(d.max()) <= math.pi / (1 << (spec.angle_bits + 1)) + 1e-4


@pytest.mark.parametrize("coder", ["zstd", "range"])
@pytest.mark.parametrize("level", QUANTISED, ids=QUANT_IDS)
def test_quantised_levels_within_the_stated_error(level, coder):
    s = batch()
    out = decode(encode(s, level, coder=coder))
    spec = LEVELS[level] if isinstance(level, str) else level
    assert out.opacities is None  # folded into the colours
    assert out.counts.tolist() == [40, 0, 13]
    assert out.image_sizes.tolist() == [[37, 53], [8, 61], [64, 64]]
    for b in range(3):
        _check_quantised_image(s, out, b, spec, coder)


def test_zero_width_ranges_decode_exactly():
    """One Gaussian, or identical ones: every range has width 0, so step 0, and positions,
    colours and sizes come back exactly (up to the colour basis' float32 rounding); only the
    angle, quantised over a fixed [0, pi), moves (with log-covariances, the smaller of u, v)."""
    s = C.random_splats([(30, 20)], 1, seed=4)
    same = Splats.create(
        s.means[0].repeat(5, 1), s.chol[0].repeat(5, 1), s.colors[0].repeat(5, 1), (30, 20)
    )
    for case in (s, same):
        out = decode(encode(case, "low"))
        assert torch.equal(out.means[0], case.means[0, : out.capacity])
        assert torch.allclose(out.colors[0], case.colors[0], rtol=0, atol=1e-6)
        scale = torch.tensor([20.0, 30.0, 30.0])
        got, want = to_shape(out.chol[0] * scale), to_shape(case.chol[0] * scale)
        assert torch.allclose(got[:, :2], want[:, :2], rtol=0, atol=1e-5)
        _check_quantised_image(case, out, 0, LEVELS["low"])
        # log-covariances: the size exactly; of the anisotropy (u, v) the larger holds the range
        payload = encode(case, "low", coder="range")
        lc = decode(payload)
        assert torch.equal(lc.means[0], case.means[0, : lc.capacity])
        _check_quantised_image(case, lc, 0, LEVELS["low"], "range")
        assert payload[4] == 3  # ends that are not float16 values: the 80-byte header


def test_range_coder_writes_compact_headers_where_the_ends_are_float16():
    """Version 4 when every image's range ends are float16 values (the range coder widens them
    so); else, for the whole payload, version 3's float32 header (same values either way)."""
    s = batch()
    payload = encode(s, "low", {"k": "v"}, coder="range")
    sizes = encoded_sizes(payload)
    assert payload[4] == 4 and 8 + len(b'{"k":"v"}') + sum(sizes) + 4 == len(payload)
    v3 = encode(s, "low", {"k": "v"}, coder="zstd")
    assert len(payload) < len(v3)
    far = s.clone()
    far.means[2, :13, 0] += 70000.0  # beyond float16: this image keeps float32 ends
    mixed = encode(far, "low", coder="range")
    assert mixed[4] == 3
    a, b = decode(payload), decode(mixed)
    for k in range(2):  # the other images: the same values in either layout
        assert torch.equal(a.image(k)["means"], b.image(k)["means"])
        assert torch.equal(a.image(k)["colors"], b.image(k)["colors"])
    _check_quantised_image(far, b, 2, LEVELS["low"], "range")


@given(
    n=st.integers(0, 10),
    h=st.integers(1, 120),
    w=st.integers(1, 120),
    bits=st.tuples(st.integers(1, 16), st.integers(1, 12), st.integers(1, 12), st.integers(1, 12)),
    seed=st.integers(0, 2**16),
    sigma=st.sampled_from([(0.05, 0.5), (0.6, 6.0), (5.0, 80.0)]),
    coder=st.sampled_from(["zstd", "range"]),
)
@settings(C.CI, max_examples=60)
def test_quantised_property(n, h, w, bits, seed, sigma, coder):
    """Any image size, count and bit depths: exact agreement with the quantiser, error bounds."""
    spec = QuantSpec(*bits)
    s = C.random_splats([(h, w)], n, seed=seed, sigma_px=sigma, opacity=seed % 2 == 0)
    if n > h * w:  # the format allows at most one Gaussian per pixel
        with pytest.raises(ValueError, match="more than its pixels"):
            encode(s, spec, coder=coder)
        return
    _check_quantised_image(s, decode(encode(s, spec, coder=coder)), 0, spec, coder)


# Rendered PSNR of decode(encode(s)) against s at the fitted size, 400 + 250 Gaussians of 0.7-8 px
# on 64x64 and 48x80, colours in [0, 0.5] (peak about 1-2 where Gaussians pile up). Measured
# minimum over 6 seeds (with and without opacities): f16 58.7 dB, high 56.0, medium 52.6,
# low 44.5, QuantSpec(8, 6, 5, 6) 34.4. Each level is asserted about 4 dB below its minimum: a
# quantiser or ordering bug (e.g. Gaussians paired with the wrong colours) costs tens of dB.
PSNR_FLOOR = {"f16": 55.0, "high": 52.0, "medium": 48.5, "low": 40.5, "spec-8-6-5-6": 30.0}


@pytest.mark.parametrize("seed", [0, 1])
def test_rendered_images_stay_close(seed):
    s = C.random_splats(
        [(64, 64), (48, 80)], 400, seed, counts=[400, 250], opacity=seed == 1,
        sigma_px=(0.7, 8.0), colors=(0.0, 0.5),
    )  # fmt: skip
    levels = {"f16": "f16", "high": "high", "medium": "medium", "low": "low"}
    levels["spec-8-6-5-6"] = QuantSpec(8, 6, 5, 6)
    for b, (h, w) in enumerate([(64, 64), (48, 80)]):
        ref = render(s[b].fold_opacity(), h, w)
        for name, level in levels.items():
            out = render(decode(encode(s[b], level)), h, w)
            psnr = float(10 * torch.log10(1 / ((out - ref) ** 2).mean()))
            assert psnr >= PSNR_FLOOR[name], (name, b, psnr)
        lossless = render(decode(encode(s[b], "lossless")).fold_opacity(), h, w)
        assert torch.allclose(lossless, ref, rtol=0, atol=1e-6)


# ------------------------------------------------------------------------------ around the data
@given(meta=C.json_metadata())
@settings(C.CI, max_examples=40)
def test_metadata_round_trip(meta):
    payload = encode(C.random_splats([(8, 8)], 2, seed=0), "lossless", meta)
    assert read_metadata(payload) == C.json_roundtrip(meta)


def test_metadata_defaults_and_levels_agree():
    s = C.random_splats([(8, 8)], 2, seed=0)
    assert read_metadata(encode(s, "lossless")) == {}
    assert read_metadata(encode(s, "lossless", {})) == {}
    meta = {"source": "photo.jpg", "psnr": 31.5, "nested": {"ü": [1, None, True]}}
    for level in ["lossless", "f16", "medium"]:
        assert read_metadata(encode(s, level, meta)) == meta


def test_encoded_sizes_add_up():
    s = batch()
    meta = {"k": "v"}
    for level in ["lossless", "f16", "low"]:
        payload = encode(s, level, meta)
        sizes = encoded_sizes(payload)
        assert len(sizes) == 3 and all(size > 80 for size in sizes)
        meta_len = len(b'{"k":"v"}')
        assert 12 + meta_len + sum(sizes) + 4 == len(payload)
        # each image alone costs its size plus the container overhead
        alone = [len(encode(s[b], level)) for b in range(3)]
        assert [a - 16 for a in alone] == sizes


@pytest.mark.parametrize("version", [1, 4])
def test_payload_is_little_endian_as_documented(version):
    s = C.random_splats([(37, 53)], 3, seed=9)
    payload = encode(s, "medium", {"a": 1}, coder="zstd" if version == 1 else "range")
    head, meta, images = C.split(payload)
    assert head == (b"\x89GSV", version, 0, 1, 7) and meta == b'{"a":1}'
    if version == 4:  # compact: the file header's count and metadata length are varints
        assert payload[:8] == b"\x89GSV\x04\x00\x01\x07" and payload[8:15] == b'{"a":1}'
        assert payload[15:19] == bytes([37, 53, 3, 4])  # height, width, n, mode: varints, u8
    ((header, body),) = images
    assert (header["height"], header["width"], header["n"]) == (37, 53, 3)
    mode = C.MODE_QUANTISED if version == 1 else C.MODE_QUANTISED_LC
    assert header["mode"] == mode and header["reserved"] == 0
    bits = LEVELS["medium"]
    assert (header["pos_bits"], header["scale_bits"], header["angle_bits"], header["color_bits"]) == (
        bits.pos_bits, bits.scale_bits, bits.angle_bits, bits.color_bits,
    )  # fmt: skip
    if version == 1:
        assert body[:4] == b"\x28\xb5\x2f\xfd"  # one zstd frame
    else:
        assert header["raw_len"] == 0 and body[0] == 0  # a range-coded stream
    assert C.with_crc(payload[:-4]) == payload


def test_encode_is_deterministic():
    s = batch()
    for level in ["lossless", "f16", "medium"]:
        assert encode(s, level) == encode(s.clone(), level)


# ------------------------------------------------------------------------------ .gsv files
def test_gsv_files_through_save_and_load_splats(tmp_path):
    s = batch()
    path = save_splats(tmp_path / "x.gsv", s, {"fit": {"psnr": 30.0}})
    loaded, meta = load_splats(path)
    assert meta == {"fit": {"psnr": 30.0}}
    assert path.read_bytes() == encode(s, "medium", meta, coder="range")  # the default level
    want = decode(encode(s, "medium", coder="range"))
    assert loaded.counts.tolist() == [40, 0, 13]
    for b in range(3):
        for name, t in want.image(b).items():
            assert_bits_equal(loaded.image(b)[name], t)


def test_broken_gsv_files_are_splat_file_errors(tmp_path):
    path = save_splats(tmp_path / "y.gsv", batch())
    data = path.read_bytes()
    path.write_bytes(data[:-5])
    with pytest.raises(SplatFileError, match="checksum"):
        load_splats(path)
    path.write_bytes(b"GSV!" + data[4:])
    with pytest.raises(SplatFileError, match="not a .gsv payload"):
        load_splats(path)


# ------------------------------------------------------------------------------ bad input to encode
def _ok() -> Splats:
    return C.random_splats([(8, 8)], 3, seed=0)


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda s: s.means.__setitem__((0, 1, 0), float("nan")), "not finite"),
        (lambda s: s.colors.__setitem__((0, 0, 2), float("inf")), "not finite"),
        (lambda s: s.chol.__setitem__((0, 2, 2), 0.0), "positive-definite"),
        (lambda s: s.counts.__setitem__(0, 4), "count"),
    ],
    ids=["nan-mean", "inf-colour", "zero-chol", "bad-count"],
)
@pytest.mark.parametrize("level", ["lossless", "medium"])
def test_encode_refuses_invalid_splats(change, match, level):
    s = _ok()
    change(s)
    with pytest.raises(ValueError, match=match):
        encode(s, level)


@pytest.mark.parametrize(
    "level", ["nope", "LOSSLESS", QuantSpec(pos_bits=17), QuantSpec(color_bits=0), 3, None]
)
def test_encode_refuses_unknown_levels(level):
    with pytest.raises(ValueError, match="level|QuantSpec"):
        encode(_ok(), level)


@pytest.mark.parametrize("meta", [{"x": object()}, {"t": torch.ones(1)}, [1, 2], "text"])
def test_encode_refuses_metadata_that_is_not_a_json_object(meta):
    with pytest.raises(ValueError, match="encode"):
        encode(_ok(), "lossless", meta)


def test_encode_refuses_what_the_decoder_would_refuse():
    """Never write a payload decode() rejects: image too large for the format, more Gaussians than
    pixels, quantisation ranges beyond the limit, too many images."""
    side = LIMITS["max_side"]
    for size in [(side + 1, 4), (4, 70_000)]:
        s = Splats.create(
            torch.full((1, 2), 0.5), torch.tensor([[0.1, 0.0, 0.1]]), torch.ones(1, 3), size
        )
        with pytest.raises(ValueError, match="outside 1..16384"):
            encode(s, "lossless")
    tiny = C.random_splats([(2, 2)], 5, seed=0)
    for level in ["lossless", "medium"]:
        with pytest.raises(ValueError, match="more than its pixels"):
            encode(tiny, level)
    far = _ok()
    far.means[0, 0, 0] = 2e6
    with pytest.raises(ValueError, match="quantisation range"):
        encode(far, "medium")
    assert decode(encode(far, "lossless")).means[0, 0, 0] == 2e6  # float modes have no ranges
    many = Splats.create(
        torch.zeros(LIMITS["max_images"] + 1, 0, 2), torch.ones(LIMITS["max_images"] + 1, 0, 3),
        torch.zeros(LIMITS["max_images"] + 1, 0, 3), (4, 4),
    )  # fmt: skip
    with pytest.raises(ValueError, match="images"):
        encode(many, "lossless")


def test_pack_refuses_headers_unpack_refuses():
    """The container writer checks every header against the limits, as the reader does."""
    body = b"\x28\xb5\x2f\xfd" + bytes(8)
    cases = [
        F.ImageHeader(16, 16, LIMITS["max_gaussians"] + 1, "float32", raw_len=0, body=body),
        F.ImageHeader(0, 16, 0, "float32", raw_len=0, body=body),
        F.ImageHeader(16, 16, 0, "float32", flags=2, raw_len=0, body=body),
        F.ImageHeader(16, 16, 1, "float32", raw_len=1 << 30, body=body),
    ]
    for header in cases:
        with pytest.raises(CodecError):
            F.pack([header])
    big = F.ImageHeader(16384, 16384, LIMITS["max_gaussians"], "float32", raw_len=0, body=body)
    with pytest.raises(CodecError, match="in all"):
        F.pack([big] * 5)
    zeros = F.ImageHeader(1024, 1024, 1024, "float32", raw_len=1 << 20, body=body)
    with pytest.raises(CodecError, match="in all"):
        F.pack([zeros] * 2)


@pytest.mark.parametrize("level", ["lossless", "f16", "medium", "xxlow", QuantSpec(13, 9, 8, 10)])
def test_quantised_is_what_the_decoder_returns_without_the_lossless_stage(level):
    from gsvision.codec import quantised

    s = C.random_splats([(40, 56), (32, 32), (17, 90)], 150, seed=4, counts=[150, 90, 7])
    for coder in ("zstd", "range"):
        fast = quantised(s, level, coder=coder)
        slow = decode(encode(s, level, coder=coder))
        for name in ("means", "chol", "colors", "counts", "image_sizes"):
            assert torch.equal(getattr(fast, name), getattr(slow, name)), (coder, name)
