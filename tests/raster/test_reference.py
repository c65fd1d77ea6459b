import math

import pytest
import torch

from gsvision.raster import render, resolve_backend, set_backend
from gsvision.raster.reference import render_reference
from gsvision.splats import Splats


def one(mean_px, chol_px, color, hw=(5, 7), dtype=torch.float64):
    h, w = hw
    means = torch.tensor([mean_px], dtype=dtype) / torch.tensor([w, h], dtype=dtype)
    chol = torch.tensor([chol_px], dtype=dtype) / torch.tensor([w, h, h], dtype=dtype)
    return Splats.create(means, chol, torch.tensor([color], dtype=dtype), hw)


def test_one_gaussian_matches_hand_computed_values():
    # Centre at pixel (row 2, col 3)'s centre, Σ = diag(4, 1) (l11 = 2, l22 = 1).
    s = one((3.5, 2.5), (2.0, 0.0, 1.0), (1.0, 0.5, 0.25))
    out = render_reference(s, 5, 7)[0]
    assert out.shape == (5, 7, 3)
    assert torch.allclose(out[2, 3], torch.tensor([1.0, 0.5, 0.25], dtype=out.dtype))
    # One pixel right: d = (1, 0), q = 1/4.
    assert math.isclose(float(out[2, 4, 0]), math.exp(-0.125), rel_tol=1e-12)
    # One pixel down: d = (0, 1), q = 1.
    assert math.isclose(float(out[3, 3, 1]), 0.5 * math.exp(-0.5), rel_tol=1e-12)
    # Diagonal: d = (1, 1), q = 1/4 + 1.
    assert math.isclose(float(out[3, 4, 2]), 0.25 * math.exp(-0.625), rel_tol=1e-12)
    # Beyond 3σ (d = (0, 2.?) has q = 4 → inside; d = (7, 0) would be q = 12.25 → cut).
    s_far = one((0.5, 2.5), (2.0, 0.0, 1.0), (1.0, 1.0, 1.0), hw=(5, 9))
    out_far = render_reference(s_far, 5, 9)[0]
    assert float(out_far[2, 6, 0]) > 0  # d = 6, q = 9: on the 3σ ellipse, kept
    assert float(out_far[2, 7, 0]) == 0  # d = 7, q = 12.25: cut


def test_correlated_gaussian_uses_the_inverse_covariance():
    # L = [[1, 0], [1, 1]] → Σ = [[1, 1], [1, 2]], Σ⁻¹ = [[2, -1], [-1, 1]]; d = (1, 1) → q = 1.
    s = one((2.5, 2.5), (1.0, 1.0, 1.0), (1.0, 1.0, 1.0))
    out = render_reference(s, 5, 7)[0]
    assert math.isclose(float(out[3, 3, 0]), math.exp(-0.5), rel_tol=1e-12)
    # d = (1, -1) → q = 2 + 2 + 1 = 5.
    assert math.isclose(float(out[1, 3, 0]), math.exp(-2.5), rel_tol=1e-12)


def test_two_gaussians_add_and_padding_is_ignored():
    dtype = torch.float64
    h, w = 4, 4
    means = torch.tensor([[[0.5, 1.5], [2.5, 1.5], [1.0, 1.0]]], dtype=dtype) / w
    chol = torch.tensor([[[1.0, 0.0, 1.0], [1.0, 0.0, 1.0], [1.0, 0.0, 1.0]]], dtype=dtype) / w
    colors = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [9.0, 9.0, 9.0]]], dtype=dtype)
    s = Splats.create(means, chol, colors, (h, w), counts=[2])
    out = render_reference(s, h, w)[0]
    # Pixel (1, 1) centre (1.5, 1.5): d1 = (1, 0), d2 = (-1, 0) → both exp(-0.5).
    expect = torch.tensor([math.exp(-0.5), math.exp(-0.5), 0.0], dtype=dtype)
    assert torch.allclose(out[1, 1], expect)


def test_opacity_multiplies_colour():
    s = one((3.5, 2.5), (1.0, 0.0, 1.0), (1.0, 1.0, 1.0))
    s.opacities = torch.full((1, 1, 1), 0.25, dtype=torch.float64)
    assert math.isclose(float(render_reference(s, 5, 7)[0, 2, 3, 0]), 0.25)


def test_renders_at_any_resolution():
    s = one((3.5, 2.5), (2.0, 0.0, 1.0), (1.0, 1.0, 1.0))  # fitted at 5×7
    big = render(s, 10, 14)[0]
    # The centre is now at (7, 5) in pixels, between pixel centres; σ doubled.
    assert big.shape == (10, 14, 3)
    assert math.isclose(float(big[4, 6, 0]), math.exp(-0.5 * (0.25 / 16 + 0.25 / 4)), rel_tol=1e-9)


def test_gradcheck_float64():
    g = torch.Generator().manual_seed(0)
    means = (torch.rand(1, 3, 2, generator=g, dtype=torch.float64) * 0.6 + 0.2).requires_grad_()
    chol = torch.tensor(
        [[[0.3, 0.05, 0.25], [0.2, -0.1, 0.3], [0.25, 0.0, 0.2]]], dtype=torch.float64
    )
    chol.requires_grad_()
    colors = torch.rand(1, 3, 3, generator=g, dtype=torch.float64).requires_grad_()
    opac = torch.rand(1, 3, 1, generator=g, dtype=torch.float64).requires_grad_()

    def f(m, c, col, o):
        return render_reference(Splats.create(m, c, col, (6, 5), opacities=o, validate=False), 6, 5)

    assert torch.autograd.gradcheck(f, (means, chol, colors, opac))


def test_render_rejects_bad_sizes_and_backends(monkeypatch):
    s = one((3.5, 2.5), (2.0, 0.0, 1.0), (1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="size must be positive"):
        render(s, 0, 5)
    with pytest.raises(ValueError, match="larger than the limit"):
        render(s, 1_000_000, 1_000_000)
    with pytest.raises(ValueError, match="unknown backend 'nope'"):
        render(s, 5, 5, backend="nope")
    monkeypatch.setenv("GSVISION_BACKEND", "reference")
    assert resolve_backend("cpu") == "reference"
    monkeypatch.setenv("GSVISION_BACKEND", "nope")
    with pytest.raises(ValueError, match="unknown backend"):
        render(s, 5, 5)
    set_backend("reference")
    try:
        assert resolve_backend("cpu") == "reference"  # the setter beats the env var
    finally:
        set_backend(None)
    with pytest.raises(ValueError, match="unknown backend"):
        set_backend("nope")
