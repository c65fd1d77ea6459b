"""The numba CPU rasteriser against the dense reference: values and every gradient."""

from __future__ import annotations

import pytest
import raster_cases as H
import torch

from gsvision.raster import cpu, render, resolve_backend, set_backend
from gsvision.raster.reference import render_reference
from gsvision.raster.sparse import render_sparse
from gsvision.splats import Splats

random_splats, compare_with_reference, relative_error = (
    H.random_splats,
    H.compare_with_reference,
    H.relative_error,
)

pytestmark = pytest.mark.skipif(
    cpu.unavailable_reason() is not None, reason=f"numba kernel: {cpu.unavailable_reason()}"
)

# Worst relative errors seen on these cases (float32): <= 4e-7 for values and all gradients, so
# the 1e-4 bound of ``compare_with_reference`` holds with a wide margin. float64: <= 1e-15.
F32_TOL = 1e-4
F64_TOL = 1e-10

CASES = [  # seed, batch, n, height, width, counts, opacity
    (0, 1, 1, 16, 16, None, False),
    (1, 2, 64, 37, 53, [64, 0], False),
    (2, 3, 512, 64, 64, [512, 300, 17], True),
    (3, 2, 128, 33, 17, None, True),
    (4, 4, 200, 8, 61, [0, 1, 199, 200], False),
]


def _case_id(case) -> str:
    seed, b, n, h, w, counts, opacity = case
    return f"s{seed}-b{b}-n{n}-{h}x{w}" + ("-op" if opacity else "") + ("-counts" if counts else "")


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_matches_reference_float32(case):
    seed, b, n, h, w, counts, opacity = case
    splats = random_splats(b, n, h, w, seed=seed, counts=counts, opacity=opacity)
    errors = compare_with_reference(cpu.render_cpu, splats, h, w, tol=F32_TOL)
    assert max(errors.values()) < F32_TOL, errors


@pytest.mark.parametrize("seed", [5, 6])
def test_matches_reference_float64(seed):
    splats = random_splats(2, 96, 29, 41, seed=seed, dtype=torch.float64, counts=[96, 50])
    errors = compare_with_reference(cpu.render_cpu, splats, 29, 41, tol=F64_TOL)
    assert max(errors.values()) < F64_TOL, errors


@pytest.mark.parametrize(
    "sigma_px, anisotropy",
    [((0.05, 0.4), 1.5), ((0.3, 3.0), 60.0), ((40.0, 300.0), 3.0)],
    ids=["tiny", "thin-tilted", "larger-than-image"],
)
def test_thin_tiny_and_huge_gaussians(sigma_px, anisotropy):
    """Sub-pixel, needle-thin tilted (cancellation in q) and image-sized Gaussians."""
    splats = random_splats(2, 48, 40, 24, seed=7, sigma_px=sigma_px, anisotropy=anisotropy)
    errors = compare_with_reference(cpu.render_cpu, splats, 40, 24, tol=F32_TOL)
    assert max(errors.values()) < F32_TOL, errors


def test_cutoff_boundary_pixels_match_reference():
    """Pixels exactly on the 3σ ellipse (q = 9 in float arithmetic) are lit exactly as in the
    reference: the kernel rounds q with the reference's own operations."""
    # Round Gaussians centred on pixel centres (σ = 1: pixels 3 away have q = 9 exactly) and on
    # pixel corners (σ = 0.5: offsets of 1.5 px), plus tilted ones, one per 16x16 cell.
    h = w = 64
    means, chol = [], []
    for k, (sx, l21, l22, off) in enumerate(
        [(1.0, 0.0, 1.0, 0.5), (0.5, 0.0, 0.5, 0.0), (2.0, 1.0, 1.5, 0.5), (1.5, -0.75, 1.0, 0.0)]
        * 4
    ):
        cx, cy = 16 * (k % 4) + 8 + off, 16 * (k // 4) + 8 + off
        means.append([cx / w, cy / h])
        chol.append([sx / w, l21 / h, l22 / h])
    splats = Splats.create(
        torch.tensor(means), torch.tensor(chol), torch.ones(len(means), 3), (h, w)
    )
    out, ref = cpu.render_cpu(splats, h, w), render_reference(splats, h, w)
    assert torch.equal(out > 0, ref > 0)
    assert relative_error(out, ref) < 1e-6


def test_gaussians_off_image():
    """Centres far outside the raster: only their tails (or nothing) may show."""
    splats = random_splats(2, 64, 24, 32, seed=8, margin=1.0, sigma_px=(1.0, 20.0))
    compare_with_reference(cpu.render_cpu, splats, 24, 32, tol=F32_TOL)


def test_other_resolution():
    """Splats fitted at one size render at another (up and down, odd sizes)."""
    splats = random_splats(2, 80, 32, 48, seed=9, opacity=True)
    for h, w in [(64, 96), (17, 23), (32, 48)]:
        compare_with_reference(cpu.render_cpu, splats, h, w, tol=F32_TOL)


def test_tile_sizes_agree():
    splats = random_splats(2, 100, 45, 50, seed=10)
    ref = cpu.render_cpu(splats, 45, 50)
    lanes = cpu._kernels().LANES  # 16 with AVX-512, else 8
    for tile in range(lanes, 33, lanes):
        out = cpu.render_cpu(splats, 45, 50, tile=tile)
        assert relative_error(out, ref) < 1e-6, tile


def test_poisoned_output_buffer_is_fully_written():
    """Every pixel is written, including the ones no Gaussian touches (left as exact zeros)."""
    splats = random_splats(2, 10, 50, 70, seed=11, sigma_px=(0.5, 2.0), counts=[10, 0])
    splats.means[0] = splats.means[0] * 0.2  # all in the top-left corner: most tiles are empty
    out = torch.full((2, 50, 70, 3), float("nan"))
    cpu.forward_into(
        out,
        splats.pixel_means(50, 70),
        splats.pixel_chol(50, 70),
        splats.colors,
        splats.counts,
    )
    assert torch.isfinite(out).all()
    ref = render_reference(splats, 50, 70)
    assert relative_error(out, ref) < 1e-6
    assert (out[1] == 0).all() and (out[0, 30:, 30:] == 0).all()


def test_forward_into_rejects_bad_buffers():
    splats = random_splats(1, 4, 8, 8, seed=12)
    args = (splats.pixel_means(8, 8), splats.pixel_chol(8, 8), splats.colors, splats.counts)
    with pytest.raises(ValueError, match="contiguous"):
        cpu.forward_into(torch.zeros(1, 8, 3, 8).transpose(2, 3), *args)
    with pytest.raises(ValueError, match="float32 or float64"):
        cpu.forward_into(torch.zeros(1, 8, 8, 3, dtype=torch.float64), *args)
    with pytest.raises(ValueError, match="tile"):
        cpu.forward_into(torch.zeros(1, 8, 8, 3), *args, tile=12)
    with pytest.raises(ValueError, match="tile"):
        cpu.forward_into(torch.zeros(1, 8, 8, 3), *args, tile=64)


def test_padded_slots_may_hold_garbage():
    splats = random_splats(2, 32, 20, 20, seed=13, counts=[20, 5])
    clean = cpu.render_cpu(splats, 20, 20)
    pad = ~splats.mask
    splats.means[pad] = float("nan")
    splats.chol[pad] = 0.0
    splats.colors[pad] = float("inf")
    assert torch.equal(cpu.render_cpu(splats, 20, 20), clean)


def test_empty_batch_and_no_gaussians():
    none = random_splats(2, 3, 9, 7, seed=14, counts=[0, 0])
    assert torch.equal(cpu.render_cpu(none, 9, 7), torch.zeros(2, 9, 7, 3))
    zero_n = Splats.create(torch.zeros(1, 0, 2), torch.ones(1, 0, 3), torch.zeros(1, 0, 3), (4, 4))
    assert torch.equal(cpu.render_cpu(zero_n, 5, 6), torch.zeros(1, 5, 6, 3))


def test_half_precision_renders_in_float32():
    splats = random_splats(1, 40, 30, 30, seed=15)
    half = splats.to(torch.float16)
    out = cpu.render_cpu(half, 30, 30)
    assert out.dtype == torch.float16
    assert relative_error(out.float(), render_reference(half.to(torch.float32), 30, 30)) < 1e-3


def test_gradcheck_float64():
    splats = random_splats(1, 3, 9, 11, seed=16, dtype=torch.float64, sigma_px=(1.0, 3.0))
    inputs = (
        splats.pixel_means(9, 11).requires_grad_(True),
        splats.pixel_chol(9, 11).requires_grad_(True),
        splats.colors.clone().requires_grad_(True),
    )

    def fn(m, c, col):
        return cpu.render_cpu_pixels(m, c, col, splats.counts, 9, 11)

    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-7)


def test_public_entry_backend_flag_env_and_setter(monkeypatch):
    splats = random_splats(2, 50, 21, 19, seed=17)
    direct = cpu.render_cpu(splats, 21, 19)
    assert torch.equal(render(splats, 21, 19, backend="cpu"), direct)
    monkeypatch.setenv("GSVISION_BACKEND", "cpu")
    assert resolve_backend("cpu") == "cpu"
    assert torch.equal(render(splats, 21, 19), direct)
    monkeypatch.setenv("GSVISION_BACKEND", "reference")
    assert resolve_backend("cpu") == "reference"
    monkeypatch.delenv("GSVISION_BACKEND")
    assert resolve_backend("cpu") == "cpu"  # auto: the fastest CPU backend that runs here


def test_backends_agree_when_flipped():
    """Flip the backend setting between cpu, sparse and reference: the images agree."""
    splats = random_splats(2, 120, 31, 37, seed=18, counts=[120, 77], opacity=True)
    outs = {}
    try:
        for name in ("cpu", "sparse", "reference"):
            set_backend(name)
            outs[name] = render(splats, 31, 37)
    finally:
        set_backend(None)
    assert relative_error(outs["cpu"], outs["reference"]) < 1e-6
    assert relative_error(outs["sparse"], outs["reference"]) < 1e-6
    assert relative_error(outs["cpu"], render_sparse(splats, 31, 37)) < 1e-6


def test_unavailable_reason_is_none_here():
    assert cpu.unavailable_reason() is None
    assert cpu.supports_device("cpu") and not cpu.supports_device("cuda")
