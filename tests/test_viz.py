"""gsvision.viz: 1σ outlines are where the math says, overlays and figures are written."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from gsvision.raster.reference import mahalanobis
from gsvision.splats import Splats
from gsvision.viz import comparison_figure, draw_ellipses, ellipse_outlines

CYAN = (0, 255, 255)


def one_gaussian(chol=(0.25, 0.0, 0.25), mean=(0.5, 0.5), size=(16, 16)) -> Splats:
    return Splats.create(
        means=torch.tensor([[mean]]),
        chol=torch.tensor([[chol]]),
        colors=torch.tensor([[[0.2, 0.4, 0.6]]]),
        image_size=size,
    )


def test_outline_points_are_at_mahalanobis_distance_one():
    g = torch.Generator().manual_seed(0)
    n = 50
    means = torch.rand(n, 2, generator=g) * 100
    chol = torch.stack(
        [
            torch.rand(n, generator=g) * 9 + 0.5,
            torch.randn(n, generator=g) * 4,
            torch.rand(n) * 9 + 0.5,
        ],
        -1,
    )
    pts = ellipse_outlines(means, chol, segments=16)  # [n, 17, 2]
    assert pts.shape == (n, 17, 2)
    torch.testing.assert_close(pts[:, 0], pts[:, -1])  # closed
    d = pts - means.double()[:, None]
    c = chol.double()[:, None]
    q = mahalanobis(d[..., 0], d[..., 1], c[..., 0], c[..., 1], c[..., 2])
    torch.testing.assert_close(q, torch.ones_like(q))
    q2 = ellipse_outlines(means, chol, sigma=2.0) - means.double()[:, None]
    q2 = mahalanobis(q2[..., 0], q2[..., 1], c[..., 0], c[..., 1], c[..., 2])
    torch.testing.assert_close(q2, torch.full_like(q2, 4.0))


def test_circle_outline_lands_at_one_sigma_on_the_upscaled_canvas():
    black = np.zeros((16, 16, 3), dtype=np.uint8)
    out = draw_ellipses(black, one_gaussian(), 16, 16, scale=4, halo=0, alpha=255)
    assert out.size == (64, 64) and out.mode == "RGB"
    arr = np.asarray(out)
    # σ = 0.25 of the image = 16 canvas pixels around the centre (32, 32)
    for r, c in [(32, 48), (32, 16), (16, 32), (48, 32)]:
        patch = arr[r - 1 : r + 2, c - 1 : c + 2].reshape(-1, 3)
        assert any(tuple(p) == CYAN for p in patch), (r, c)
    assert tuple(arr[32, 32]) == (0, 0, 0)  # inside stays untouched
    assert tuple(arr[32, 60]) == (0, 0, 0)  # so does the outside
    assert tuple(arr[5, 5]) == (0, 0, 0)


def test_sheared_outline_passes_through_mu_plus_l_columns():
    s = one_gaussian(chol=(0.2, 0.15, 0.1), size=(20, 10))  # H = 20, W = 10
    out = np.asarray(draw_ellipses(np.zeros((20, 10, 3)), s, 20, 10, scale=4, halo=0, alpha=255))
    assert out.shape == (80, 40, 3)
    L = s.pixel_chol(80, 40)[0, 0]
    mu = s.pixel_means(80, 40)[0, 0]
    for u in ([1.0, 0.0], [-1.0, 0.0]):  # μ ± L e1 = (x ± l11, y ± l21)
        x = float(mu[0] + L[0] * u[0])
        y = float(mu[1] + L[1] * u[0])
        r, c = int(y), int(x)
        patch = out[max(r - 1, 0) : r + 2, max(c - 1, 0) : c + 2].reshape(-1, 3)
        assert any(tuple(p) == CYAN for p in patch), (r, c)


def test_padded_slots_and_max_gaussians_are_not_drawn():
    two = Splats.create(
        means=torch.tensor([[[0.25, 0.25], [0.75, 0.75]]]),
        chol=torch.full((1, 2, 3), 0.1) * torch.tensor([1.0, 0.0, 1.0]),
        colors=torch.zeros(1, 2, 3),
        image_size=(16, 16),
        counts=[1],
    )
    black = np.zeros((16, 16, 3), dtype=np.uint8)
    arr = np.asarray(draw_ellipses(black, two, 16, 16, scale=4, halo=0))
    assert arr[:32, :32].any() and not arr[32:, 32:].any()
    two.counts[0] = 2
    assert np.asarray(draw_ellipses(black, two, 16, 16, scale=4, halo=0))[32:, 32:].any()
    none = np.asarray(draw_ellipses(black, two, 16, 16, scale=4, halo=0, max_gaussians=0))
    assert not none.any()


def test_draw_ellipses_renders_when_no_image_is_given_and_checks_arguments():
    s = Splats.cat([one_gaussian(), one_gaussian(mean=(0.3, 0.3))])
    out = draw_ellipses(None, s, 12, 10, scale=2, index=1, backend="reference")
    assert out.size == (20, 24)
    assert np.asarray(out).reshape(-1, 3).max(0).sum() > 0
    with pytest.raises(ValueError, match="index 2 out of range"):
        draw_ellipses(None, s, 12, 10, index=2)
    with pytest.raises(ValueError, match="bad size"):
        draw_ellipses(None, s, 0, 10)


def test_draw_ellipses_is_fast_for_thousands():
    n = 4000
    g = torch.Generator().manual_seed(0)
    s = Splats.create(
        means=torch.rand(1, n, 2, generator=g),
        chol=torch.rand(1, n, 3, generator=g) * 0.03 + 0.002,
        colors=torch.rand(1, n, 3, generator=g),
        image_size=(64, 64),
    )
    import time

    start = time.perf_counter()
    out = draw_ellipses(torch.rand(64, 64, 3), s, 64, 64, scale=4)
    assert time.perf_counter() - start < 5.0
    assert out.size == (256, 256)


def test_comparison_figure_writes_a_png(tmp_path):
    rng = np.random.default_rng(0)
    original = rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)
    rendered = torch.from_numpy(original).float() / 255 * 0.9
    overlay = Image.new("RGB", (72, 72), (0, 255, 255))
    three = comparison_figure(original, rendered, overlay, tmp_path / "a" / "c3.png", suptitle="x")
    two = comparison_figure(original, rendered, None, tmp_path / "c2.png", psnr=20.0, titles=["a"])
    w3, h3 = Image.open(three).size
    w2, h2 = Image.open(two).size
    assert w3 > w2 > 0 and h3 == h2
    with pytest.raises(ValueError, match="differ in size"):
        comparison_figure(original, rendered[:10], None, tmp_path / "bad.png")
