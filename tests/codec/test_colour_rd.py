"""Colour codes chosen for the image (codec/colour_rd.py): on the grid, reproduced by the encoder,
and closer to the image than rounding the least-squares colours."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gsvision.codec import decode, encode, using_coder
from gsvision.codec import rate as rate_mod
from gsvision.codec.colour_rd import footprints, quantised_colours
from gsvision.codec.quant import QuantSpec, quantise
from gsvision.fit import fit, refit_colors
from gsvision.raster import render
from gsvision.raster.reference import render_reference
from gsvision.splats import Splats

SPEC = QuantSpec(10, 6, 6, 5)  # coarse colour: rounding errors large enough to matter


@pytest.fixture(scope="module")
def fitted():
    rng = np.random.default_rng(3)
    y, x = np.mgrid[0:40, 0:40] / 40
    rgb = np.stack([np.sin(5 * x + 1), np.cos(4 * y), np.sin(3 * (x + y))], -1) * 0.4 + 0.5
    rgb = rgb + 0.05 * rng.standard_normal(rgb.shape)
    image = (np.clip(rgb, 0, 1) * 255).astype(np.uint8)
    result = fit([image], 80, iters=60)
    return result.splats[0].fold_opacity(), result.targets[0]


def _mse(splats: Splats, image: torch.Tensor) -> float:
    h, w = image.shape[:2]
    return float(((render(splats, h, w)[0] - image) ** 2).mean())


def test_weights_are_the_reference_rasteriser_s():
    s = Splats.create(
        torch.tensor([[[0.3, 0.4], [0.95, 0.1], [0.5, 0.5]]]),
        torch.tensor([[[0.05, 0.01, 0.03], [0.1, -0.05, 0.02], [0.002, 0.0, 0.002]]]),
        torch.ones(1, 3, 3),
        (24, 32),
    )
    wm, diag = footprints(
        s.pixel_means(24, 32)[0].double(), s.pixel_chol(24, 32)[0].double(), 24, 32
    )
    for i in range(3):
        one = Splats.create(
            s.means[:, i : i + 1], s.chol[:, i : i + 1], torch.ones(1, 1, 3), (24, 32)
        )
        ref = render_reference(one.to(torch.float64), 24, 32)[0, ..., 0].reshape(-1)
        row = wm.to_dense()[i]
        torch.testing.assert_close(row, ref, rtol=1e-5, atol=1e-6)
        assert float(diag[i]) == pytest.approx(float((ref * ref).sum()))


# the coder, and whether its grid is mode 4's (log-covariance shapes, colour steps by size)
CODERS = [("range", True), ("zstd", False)]


@pytest.mark.parametrize("coder,logcov", CODERS)
@pytest.mark.parametrize("spec", [SPEC, QuantSpec(13, 9, 8, 12)], ids=["coarse", "fine"])
def test_colours_lie_on_the_grid_and_the_encoder_keeps_them(fitted, coder, logcov, spec):
    """Also where a colour step (~2⁻¹¹) is finer than float16's spacing near 1: the range
    coder's ends, widened to float16 values, are recomputed exactly."""
    splats, image = fitted
    geometry = decode(encode(splats, spec, coder=coder))
    chosen = quantised_colours(geometry, image, spec, logcov=logcov)
    assert torch.equal(chosen.means, geometry.means) and torch.equal(chosen.chol, geometry.chol)
    payload = encode(chosen, spec, coder=coder)
    back = decode(payload)
    # the decoder returns the chosen values: a code one off would be a colour step (~1e-2) away
    torch.testing.assert_close(back.colors, chosen.colors, rtol=0, atol=1e-5)
    codes, _ = quantise(chosen.means[0], chosen.chol[0], chosen.colors[0], (40, 40), spec, logcov)
    assert int(codes["color"].max()) == (1 << spec.color_bits) - 1  # the full range kept
    assert int(codes["color"].min()) == 0
    if logcov:  # every channel's origin kept (each has a code 0), steps scaled by size
        assert (codes["color"].amin(0) == 0).all()


@pytest.mark.parametrize("coder,logcov", CODERS)
def test_chosen_codes_beat_rounding_the_least_squares_colours(fitted, coder, logcov):
    splats, image = fitted
    geometry = decode(encode(splats, SPEC, coder=coder))
    solved = refit_colors(geometry, image[None])
    rounded = decode(encode(solved, SPEC, coder=coder))
    chosen = quantised_colours(solved, image, SPEC, logcov=logcov)
    chosen = decode(encode(chosen, SPEC, coder=coder))
    base = _mse(solved, image)  # the error before the colours are quantised
    # mode 4's size-scaled steps already spend the error where it costs least, so choosing wins
    # back less there (measured on the six photos at N = 1,024, 7 colour bits: +0.14 dB against
    # +0.25 dB for mode 3)
    kept = 0.9 if logcov else 0.75
    assert _mse(chosen, image) - base < kept * (_mse(rounded, image) - base)


def test_closed_loop_chooses_codes_with_the_range_coder(fitted, monkeypatch):
    splats, image = fitted
    monkeypatch.setattr(rate_mod, "REFINE_GEOMETRY", False)  # its own switch: test_geometry_rd.py
    monkeypatch.setattr(rate_mod, "PRUNE", False)  # ... and test_prune_rd.py

    def closed(coder: str) -> bytes:
        with using_coder(coder):
            return rate_mod.encode_closed_loop_batch([splats], [image], SPEC)[0]

    on = closed("range")  # default (CHOOSE_COLOURS None): chosen with the range coder only
    assert decode(on).counts.tolist() == [80]
    monkeypatch.setattr(rate_mod, "CHOOSE_COLOURS", False)
    off = closed("range")
    assert _mse(decode(on), image) < _mse(decode(off), image)
    monkeypatch.setattr(rate_mod, "CHOOSE_COLOURS", None)
    plain_zstd = closed("zstd")
    monkeypatch.setattr(rate_mod, "CHOOSE_COLOURS", True)
    chosen_zstd = closed("zstd")
    assert _mse(decode(chosen_zstd), image) < _mse(decode(plain_zstd), image)
    single = rate_mod.encode_closed_loop(splats, image, SPEC)  # the one-image path too
    assert _mse(decode(single), image) < _mse(decode(plain_zstd), image)


def test_degenerate_cases_are_left_alone():
    empty = Splats.create(torch.zeros(1, 0, 2), torch.zeros(1, 0, 3), torch.zeros(1, 0, 3), (8, 8))
    image = torch.full((8, 8, 3), 0.5)
    assert quantised_colours(empty, image, SPEC) is empty
    flat = Splats.create(  # one colour for all: no colour range, nothing to choose
        torch.rand(1, 5, 2),
        torch.tensor([[[0.2, 0.0, 0.2]]]).expand(1, 5, 3),
        torch.full((1, 5, 3), 0.0),
        (8, 8),
    )
    out = quantised_colours(flat, torch.zeros(8, 8, 3), SPEC)
    assert torch.equal(out.colors, flat.colors)
