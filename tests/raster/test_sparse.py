"""The sparse-PyTorch rasteriser (the portable fallback) against the dense reference."""

from __future__ import annotations

import pytest
import raster_cases as H
import torch

from gsvision.raster import render, sparse
from gsvision.raster.reference import render_reference
from gsvision.raster.sparse import patch_sizes, render_sparse
from gsvision.splats import Splats

# The weights are computed with the reference's own operations, so values and gradients agree to
# float rounding in the scatter order: <= 4e-7 (float32), <= 1e-15 (float64) on these cases.
F32_TOL = 1e-4
F64_TOL = 1e-10


@pytest.mark.parametrize(
    "seed, b, n, h, w, counts, opacity",
    [
        (0, 1, 1, 16, 16, None, False),
        (1, 2, 64, 37, 53, [64, 0], True),
        (2, 3, 512, 64, 64, [512, 300, 17], False),
        (3, 2, 100, 9, 61, [1, 100], True),
    ],
)
def test_matches_reference_float32(seed, b, n, h, w, counts, opacity):
    splats = H.random_splats(b, n, h, w, seed=seed, counts=counts, opacity=opacity)
    errors = H.compare_with_reference(render_sparse, splats, h, w, tol=F32_TOL)
    assert max(errors.values()) < F32_TOL, errors


def test_matches_reference_float64():
    splats = H.random_splats(2, 80, 29, 41, seed=4, dtype=torch.float64, counts=[80, 33])
    errors = H.compare_with_reference(render_sparse, splats, 29, 41, tol=F64_TOL)
    assert max(errors.values()) < F64_TOL, errors


@pytest.mark.parametrize(
    "sigma_px, anisotropy, margin",
    [((0.05, 0.4), 1.5, 0.15), ((0.3, 3.0), 60.0, 0.15), ((40.0, 300.0), 3.0, 1.0)],
    ids=["tiny", "thin-tilted", "larger-than-image"],
)
def test_thin_tiny_huge_and_off_image(sigma_px, anisotropy, margin):
    splats = H.random_splats(
        2, 48, 40, 24, seed=5, sigma_px=sigma_px, anisotropy=anisotropy, margin=margin
    )
    errors = H.compare_with_reference(render_sparse, splats, 40, 24, tol=F32_TOL)
    assert max(errors.values()) < F32_TOL, errors


def test_cutoff_boundary_pixels_match_reference():
    """A Gaussian whose 3σ ellipse passes exactly through pixel centres (q = 9): same pixels lit."""
    means = torch.tensor([[8.5 / 17, 8.5 / 17], [4.0 / 17, 13.0 / 17]])
    chol = torch.tensor([[1.0 / 17, 0.0, 1.0 / 17], [0.5 / 17, 0.0, 0.5 / 17]])
    splats = Splats.create(means, chol, torch.ones(2, 3), (17, 17))
    out, ref = render_sparse(splats, 17, 17), render_reference(splats, 17, 17)
    assert torch.equal(out > 0, ref > 0)
    assert float(out[0, 8, 11, 0]) > 0  # q = 9 exactly: lit


def test_other_resolution():
    splats = H.random_splats(1, 60, 32, 48, seed=6, opacity=True)
    for h, w in [(64, 96), (13, 29)]:
        H.compare_with_reference(render_sparse, splats, h, w, tol=F32_TOL)


def test_small_step_budget_splits_groups(monkeypatch):
    """Forcing tiny evaluation steps (many groups, image-sized patches split) changes nothing."""
    splats = H.random_splats(2, 40, 30, 30, seed=7, sigma_px=(0.5, 40.0))
    want = render_sparse(splats, 30, 30)
    monkeypatch.setattr(sparse, "MAX_PAIRS_PER_STEP", 50)
    assert H.relative_error(render_sparse(splats, 30, 30), want) < 1e-6
    H.compare_with_reference(render_sparse, splats, 30, 30, tol=F32_TOL)


def test_patch_ladder():
    assert patch_sizes(224) == [4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 224]
    assert patch_sizes(3) == [3]
    assert patch_sizes(4) == [4]


def test_no_valid_gaussians_and_garbage_padding():
    splats = H.random_splats(2, 8, 11, 13, seed=8, counts=[0, 3])
    clean = render_sparse(splats, 11, 13)
    assert (clean[0] == 0).all()
    pad = ~splats.mask
    splats.means[pad] = float("nan")
    splats.chol[pad] = 0.0
    assert torch.equal(render_sparse(splats, 11, 13), clean)


def test_public_entry():
    splats = H.random_splats(1, 20, 15, 17, seed=9)
    assert torch.equal(render(splats, 15, 17, backend="sparse"), render_sparse(splats, 15, 17))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_reference():
    splats = H.random_splats(2, 256, 64, 48, seed=10, counts=[256, 100], opacity=True)
    v = torch.randn(2, 64, 48, 3, generator=torch.Generator().manual_seed(1))
    results = []
    for fn, device in ((render_sparse, "cuda"), (render_reference, "cpu")):
        s = splats.to(device)
        leaves = [t.requires_grad_(True) for t in s.fields().values()]
        out = fn(s, 64, 48)
        grads = torch.autograd.grad((out * v.to(device)).sum(), leaves)
        results.append([out.cpu()] + [g.cpu() * splats.mask[..., None] for g in grads])
    for got, want in zip(*results, strict=True):
        assert H.relative_error(got, want) < F32_TOL


def test_bench_band_is_a_crop_of_the_full_render():
    """The raster benchmark times the dense reference on a band of rows and extrapolates; the band
    must be exactly those rows of the full image."""
    from gsvision.bench.raster import _band, make_case

    for layout in ("grid", "random"):
        splats = make_case(layout, 2, 50, 40, 30, seed=3)
        full = render_sparse(splats, 40, 30)
        band = render_sparse(_band(splats, 40, 6), 6, 30)
        assert H.relative_error(band, full[:, 17:23]) < 1e-5
