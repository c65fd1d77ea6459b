import numpy as np
import pytest
import torch
from PIL import Image

import gsvision
from gsvision.fit import fit, initialise, prepare_images, prune
from gsvision.fit.init import grid_shape
from gsvision.raster import render
from gsvision.splats import Splats

ASSETS = sorted((__import__("pathlib").Path(gsvision.__file__).parent / "assets").glob("*.jpg"))


def sample(name="coffee", size=32):
    path = next(p for p in ASSETS if p.stem == name)
    return np.asarray(Image.open(path).convert("RGB").resize((size, size), Image.LANCZOS))


def test_fitting_raises_psnr_on_a_shipped_image():
    img = sample()
    start = fit([img], 64, iters=0)
    done = fit([img], 64, iters=120)
    assert done.metrics[0]["psnr"] > start.metrics[0]["psnr"] + 2
    assert done.metrics[0]["iterations"] == 120
    assert done.splats.image_sizes.tolist() == [[32, 32]]
    done.splats.validate()


def test_structured_init_beats_random_at_a_small_budget():
    imgs = [sample("astronaut"), sample("chelsea")]
    scores = {m: fit(imgs, 64, iters=40, init=m).metrics for m in ("random", "grid", "adaptive")}
    mean = {m: np.mean([r["psnr"] for r in v]) for m, v in scores.items()}
    assert mean["grid"] > mean["random"] + 2, mean
    assert mean["adaptive"] > mean["random"] + 2, mean


def test_init_shapes_and_grid_layout():
    imgs = torch.rand(2, 20, 30, 3)
    for method in ("random", "grid", "adaptive"):
        m, c, col = initialise(imgs, 37, method)
        assert m.shape == (2, 37, 2) and c.shape == (2, 37, 3) and col.shape == (2, 37, 3)
        assert (m[..., 0] >= 0).all() and (m[..., 0] <= 30).all()
        assert (c[..., 0] > 0).all() and (c[..., 2] > 0).all()
    assert grid_shape(1024, 224, 224) == (32, 32)
    rows, cols = grid_shape(600, 200, 300)
    assert rows * cols <= 600 and abs(cols / rows - 1.5) < 0.1


def test_adaptive_init_puts_more_gaussians_where_the_detail_is():
    img = torch.full((1, 32, 32, 3), 0.5)
    img[0, :, 16:] = torch.rand(32, 16, 3, generator=torch.Generator().manual_seed(0))
    means, _, _ = initialise(img, 64, "adaptive")
    right = (means[0, :, 0] > 16).sum()
    assert right > 48, f"only {int(right)} of 64 Gaussians on the detailed half"


def test_batched_fit_matches_fitting_one_at_a_time():
    a, b = sample("coffee"), sample("rocket")
    both = fit([a, b], 32, iters=30)
    alone = fit([b], 32, iters=30)
    assert abs(both.metrics[1]["psnr"] - alone.metrics[0]["psnr"]) < 1e-3
    assert torch.allclose(both.splats.means[1], alone.splats.means[0], atol=1e-5)


def test_fit_is_deterministic_with_a_seed():
    img = sample()
    r1 = fit([img], 32, iters=20, init="random", seed=3)
    r2 = fit([img], 32, iters=20, init="random", seed=3)
    assert torch.equal(r1.splats.means, r2.splats.means)


def test_target_psnr_stops_each_image_on_its_own():
    flat = np.full((24, 24, 3), 100, np.uint8)
    busy = sample(size=24)
    r = fit([flat, busy], 36, iters=200, target_psnr=32)
    assert r.metrics[0]["iterations"] < 200
    assert r.metrics[0]["psnr"] >= 32
    assert r.metrics[1]["iterations"] > r.metrics[0]["iterations"]


def test_mixed_sizes_are_padded_and_stored_at_their_own_size():
    small = sample(size=20)
    tall = np.asarray(Image.fromarray(sample(size=32)).resize((24, 32)))  # 32 rows, 24 cols
    r = fit([small, tall], 40, iters=60)
    assert r.splats.image_sizes.tolist() == [[20, 20], [32, 24]]
    out = render(r.splats[0], 20, 20)
    ref = torch.tensor(small).float()[None] / 255
    assert gsvision.metrics.psnr(out, ref)[0] > 22


def test_size_option_resizes_and_centre_crops():
    wide = np.zeros((40, 80, 3), np.uint8)
    batch, sizes = prepare_images([wide], size=20)
    assert batch.shape == (1, 20, 20, 3) and sizes.tolist() == [[20, 20]]
    batch, _ = prepare_images([wide], size=(10, 30))
    assert batch.shape == (1, 10, 30, 3)


def test_grayscale_and_rgba_are_converted():
    gray = np.full((16, 16), 200, np.uint8)
    rgba = np.zeros((16, 16, 4), np.uint8)
    rgba[..., 3] = 0  # fully transparent → white
    batch, _ = prepare_images([gray, rgba])
    assert torch.allclose(batch[0], torch.full((16, 16, 3), 200 / 255))
    assert torch.allclose(batch[1], torch.ones(16, 16, 3))


@pytest.mark.parametrize(
    "images, kwargs, message",
    [
        ([np.full((8, 8, 3), np.nan, np.float32)], {}, "image 0: contains NaN"),
        ([np.zeros((8, 8, 3), np.uint8), np.zeros((0, 8, 3), np.uint8)], {}, "image 1: zero-sized"),
        ([np.zeros((8, 8, 5), np.uint8)], {}, r"image 0: expected shape \[H, W, 3\]"),
        ([np.zeros((8, 8, 3), np.int32)], {}, "image 0: unsupported dtype"),
        (["not an image"], {}, "image 0: expected a numpy array"),
        ([], {}, "no images"),
        ([np.zeros((8, 8, 3), np.uint8)], {"n_gaussians": 0}, "n_gaussians must be a positive"),
        ([np.zeros((8, 8, 3), np.uint8)], {"n_gaussians": 65}, "exceeds the pixel count"),
        ([np.zeros((8, 8, 3), np.uint8)], {"init": "magic"}, "unknown init"),
        ([np.zeros((8, 8, 3), np.uint8)], {"l1": float("nan")}, "l1 must be"),
        ([np.zeros((8, 8, 3), np.uint8)], {"size": 0}, "size must be positive"),
        ([np.zeros((8, 8, 3), np.uint8)], {"prune_score": "x"}, "unknown prune_score"),
    ],
)
def test_bad_input_gets_a_clear_error(images, kwargs, message):
    kwargs = {"n_gaussians": 4, "iters": 1, **kwargs}
    with pytest.raises(ValueError, match=message):
        fit(images, **kwargs)


def test_enormous_image_is_refused_before_allocating():
    huge = np.lib.stride_tricks.as_strided(np.zeros(3, np.uint8), (5000, 5000, 3), (0, 0, 1))
    with pytest.raises(ValueError, match="exceeds"):
        fit([huge], 4, iters=1)


def test_pruning_removes_gaussians_from_a_flat_image_and_keeps_them_on_a_detailed_one():
    flat = np.full((32, 32, 3), 128, np.uint8)
    detailed = sample("coffee")
    r = fit([flat, detailed], 64, iters=150, l1=1e-4, prune_tau=0.05, prune_score="footprint")
    pruned_flat, pruned_busy = (m["pruned"] for m in r.metrics)
    assert pruned_flat >= 16, r.metrics
    assert pruned_busy <= pruned_flat / 2, r.metrics
    assert r.metrics[0]["psnr"] > 35
    assert r.splats.counts.tolist() == [64 - pruned_flat, 64 - pruned_busy]
    r.splats.validate()


def test_prune_keeps_the_survivors_in_order_and_zeroes_the_rest():
    colors = torch.tensor([[[0.5, 0.5, 0.5], [0.0, 0.0, 0.01], [0.2, 0.9, 0.1], [0.3, 0.3, 0.3]]])
    s = Splats.create(torch.rand(1, 4, 2), torch.full((1, 4, 3), 0.1), colors, (8, 8), counts=[3])
    out, removed = prune(s, tau=0.05)
    assert removed.tolist() == [1] and out.counts.tolist() == [2]
    assert torch.equal(out.colors[0, :2], colors[0, [0, 2]])
    assert (out.colors[0, 2:] == 0).all()


def test_refit_colors_solves_least_squares_for_fixed_geometry():
    from gsvision.fit import refit_colors

    rng = np.random.default_rng(3)
    images = [(rng.random((24, 24, 3)) * 255).astype(np.uint8) for _ in range(2)]
    result = gsvision.fit(images, 64, iters=30)
    s, targets = result.splats, result.targets
    padded = s.compact(70)
    spoiled = Splats(
        padded.means, padded.chol, padded.colors * 0.3 + 0.2, padded.counts, padded.image_sizes
    )
    fixed = refit_colors(spoiled, targets, steps=20)

    def err(x):
        return float(((gsvision.render(x, 24, 24) - targets) ** 2).mean())

    assert err(fixed) < err(spoiled) and err(fixed) <= err(s) * 1.05
    assert torch.equal(fixed.means, spoiled.means) and torch.equal(fixed.chol, spoiled.chol)
    assert torch.equal(fixed.colors[:, 64:], spoiled.colors[:, 64:])  # padded slots untouched
    with pytest.raises(ValueError, match="targets' size"):
        refit_colors(spoiled, targets[:, :20])
