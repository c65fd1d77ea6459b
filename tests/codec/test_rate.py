"""Rate control: byte budgets, ratios and PSNR targets are met and reported honestly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gsvision.codec import decode, encode, using_coder
from gsvision.codec.quant import QuantSpec
from gsvision.codec.rate import RateTarget, bytes_per_gaussian, fit_and_encode, trim_to_bytes
from gsvision.fit.prune import luminance_score
from gsvision.splats import Splats


def smooth(seed: int, h: int = 32, w: int = 32) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    a, b = rng.random(2) * 5
    rgb = np.stack([np.sin(a * x + 1), np.cos(b * y), np.sin(3 * (x + y))], -1) * 0.4 + 0.5
    return (rgb * 255).astype(np.uint8)


def random_splats(n: int, seed: int = 0) -> Splats:
    g = torch.Generator().manual_seed(seed)
    means = torch.rand(1, n, 2, generator=g)
    chol = torch.stack(
        [
            0.01 + 0.05 * torch.rand(1, n, generator=g),
            0.02 * torch.randn(1, n, generator=g),
            0.01 + 0.05 * torch.rand(1, n, generator=g),
        ],
        -1,
    )
    return Splats.create(means, chol, torch.rand(1, n, 3, generator=g), (64, 64))


def test_trim_to_bytes_fits_the_budget_and_keeps_the_most_important():
    s = random_splats(300)
    full = len(encode(s))
    budget = full // 2
    trimmed, payload = trim_to_bytes(s, budget, "medium")
    assert len(payload) <= budget
    assert payload == encode(trimmed)
    k = int(trimmed.counts[0])
    assert 0 < k < 300
    # the k Gaussians with the largest footprint scores, most important first
    top = torch.sort(luminance_score(s, "footprint")[0], descending=True).indices[:k]
    assert torch.equal(trimmed.means[0], s.means[0, top])
    assert (
        len(
            encode(
                Splats.create(
                    *(
                        t[
                            :,
                            torch.sort(luminance_score(s, "footprint")[0], descending=True).indices[
                                : k + 1
                            ],
                        ]
                        for t in (s.means, s.chol, s.colors)
                    ),
                    (64, 64),
                )
            )
        )
        > budget
        or k == 299
    )
    assert decode(payload).counts.tolist() == [k]


def test_trim_to_bytes_leaves_a_fitting_payload_alone_and_refuses_an_impossible_budget():
    s = random_splats(20)
    same, payload = trim_to_bytes(s, 10_000, "high")
    assert int(same.counts[0]) == 20 and len(payload) <= 10_000
    with pytest.raises(ValueError, match="cannot hold even one Gaussian"):
        trim_to_bytes(s, 40, "medium")


def test_byte_budget_and_ratio_are_met_per_image():
    images = [smooth(0), smooth(1)]
    for target, budget in ((RateTarget(bytes=400), 400), (RateTarget(ratio=10), 307)):
        coded = fit_and_encode(images, target, iters=40, size=32)
        assert len(coded) == 2
        for c in coded:
            m = c.metrics
            assert len(c.payload) == m["bytes"] <= budget and m["reached"]
            assert m["ratio"] == pytest.approx(3072 / m["bytes"])
            assert m["bpp"] == pytest.approx(8 * m["bytes"] / 1024)
            assert m["n_gaussians"] == int(c.splats.counts[0]) >= 1
            assert np.isfinite(m["psnr"]) and m["psnr"] > 15
            assert c.target.shape == (32, 32, 3)
            # the reported splats are exactly what the payload decodes to
            again = decode(c.payload)
            assert torch.equal(again.means, c.splats.means)


def test_budget_sets_the_number_of_gaussians():
    small, large = (
        fit_and_encode([smooth(2)], RateTarget(bytes=b), iters=20, size=32)[0] for b in (300, 900)
    )
    assert small.metrics["n_gaussians"] < large.metrics["n_gaussians"]
    assert large.metrics["bytes"] > small.metrics["bytes"]


def test_psnr_target_picks_the_fewest_gaussians_that_reach_it():
    noise = (np.random.default_rng(0).random((32, 32, 3)) * 255).astype(np.uint8)
    kwargs = {"n_gaussians": 512, "iters": 80, "size": 32}
    easy = fit_and_encode(smooth(3), RateTarget(psnr=22), **kwargs)[0]
    hard = fit_and_encode(noise, RateTarget(psnr=18), **kwargs)[0]  # 128: ~12.6 dB, 512: ~21 dB
    assert easy.metrics["reached"] and easy.metrics["psnr"] >= 22
    assert easy.metrics["n_gaussians"] == 128  # the first rung already reaches it
    assert hard.metrics["target"] == {"psnr": 18}
    assert hard.metrics["reached"] and hard.metrics["psnr"] >= 18
    assert hard.metrics["n_gaussians"] == 512  # 5.4 dB short at 128: two doublings at once


def test_unreachable_psnr_reports_the_best_at_the_largest_count():
    c = fit_and_encode(smooth(4), RateTarget(psnr=80), n_gaussians=200, iters=10, size=32)[0]
    assert not c.metrics["reached"] and c.metrics["n_gaussians"] <= 200


def test_without_target_fits_n_and_encodes_at_the_level():
    c = fit_and_encode([smooth(5)], None, level=QuantSpec(10, 6, 6, 6), n_gaussians=24, iters=5)[0]
    assert c.metrics["n_gaussians"] == 24
    assert c.metrics["level"] == {"pos_bits": 10, "scale_bits": 6, "angle_bits": 6, "color_bits": 6}
    assert "reached" not in c.metrics


@pytest.mark.parametrize(
    ("target", "message"),
    [
        (RateTarget(bytes=100, psnr=30), "one rate target"),
        (RateTarget(ratio=-2), "positive"),
        (RateTarget(psnr=float("nan")), "positive"),
    ],
)
def test_bad_targets_are_refused(target, message):
    with pytest.raises(ValueError, match=message):
        fit_and_encode([smooth(0)], target, iters=1, size=32)


def test_too_small_budget_names_the_problem():
    with pytest.raises(ValueError, match="below what one Gaussian needs"):
        fit_and_encode([smooth(0)], RateTarget(bytes=60), iters=1, size=32)


def test_cost_table_orders_levels():
    names = ("lossless", "f16", "high", "medium", "low", "xlow", "xxlow")
    for coder in ("zstd", "range"):
        with using_coder(coder):
            costs = [bytes_per_gaussian(k) for k in names]
            # `lower` (11, 6, 7, 8) trades a scale bit for an angle bit: between medium and xlow
            # (with the range coder above `low`: its angle bits code two anisotropy values)
            assert bytes_per_gaussian("medium") > bytes_per_gaussian("lower")
            assert bytes_per_gaussian("lower") > bytes_per_gaussian("xlow")
        assert costs == sorted(costs, reverse=True)
    assert bytes_per_gaussian(QuantSpec(8, 5, 5, 5)) < bytes_per_gaussian("low")


def test_closed_loop_beats_plain_quantisation_and_meets_the_budget():
    from gsvision.codec.rate import encode_closed_loop
    from gsvision.fit import fit
    from gsvision.raster import render

    result = fit([smooth(8, 48, 48)], 96, iters=60)
    one, image = result.splats[0], result.targets[0]
    coarse = QuantSpec(9, 5, 5, 6)

    def mse(payload: bytes) -> float:
        return float(((render(decode(payload), 48, 48)[0] - image) ** 2).mean())

    plain, closed = encode(one, coarse), encode_closed_loop(one, image, coarse)
    assert mse(closed) < mse(plain)
    assert decode(closed).counts.tolist() == [96]
    budget = len(plain) * 3 // 4
    trimmed = encode_closed_loop(one, image, coarse, budget)
    assert len(trimmed) <= budget
    lossless = encode_closed_loop(one, image, "lossless")
    assert lossless == encode(one, "lossless")


@pytest.mark.parametrize("level", [QuantSpec(9, 5, 5, 6), "f16"])
def test_batched_closed_loop_reports_what_each_payload_decodes_and_renders_to(level):
    from gsvision.codec.rate import _closed_loop_batch, encode_closed_loop_batch
    from gsvision.fit import fit
    from gsvision.raster import render

    fits = [fit([smooth(s, h, w)], 40, iters=30) for s, (h, w) in enumerate([(32, 32), (24, 40)])]
    fits.append(fit([smooth(9)], 40, iters=30))
    items = [f.splats[0] for f in fits]
    images = [f.targets[0] for f in fits]
    budgets = [None, None, len(encode(items[2], level)) - 8]  # the third needs trimming
    payloads, decoded, shown = _closed_loop_batch(items, images, level, budgets, None, 1)
    assert payloads == encode_closed_loop_batch(items, images, level, budgets)
    assert len(payloads[2]) <= budgets[2]
    for payload, splats, picture, image, item, budget in zip(
        payloads, decoded, shown, images, items, budgets, strict=True
    ):
        h, w = image.shape[:2]
        again = decode(payload)
        assert torch.equal(splats.means, again.means) and torch.equal(splats.colors, again.colors)
        assert torch.allclose(picture, render(again, h, w)[0].clamp(0, 1), atol=1e-6)
        if budget is None:  # never worse than the plain payload
            plain = render(decode(encode(item, level)), h, w)[0].clamp(0, 1)
            assert ((picture - image) ** 2).sum() <= ((plain - image) ** 2).sum() + 1e-9


def test_auto_level_follows_the_measured_front_by_rate_and_means_medium_otherwise():
    from gsvision.codec.quant import resolve_level
    from gsvision.codec.rate import _AUTO_BY_BPP, _AUTO_BY_PSNR, AUTO_OTHERWISE, auto_level

    sizes = [(224, 224)]
    by_bpp = lambda bpp: RateTarget(ratio=24 / bpp)  # noqa: E731
    by_bytes = lambda bpp: RateTarget(bytes=round(bpp * 224 * 224 / 8))  # noqa: E731
    by_psnr = lambda db: RateTarget(psnr=db)  # noqa: E731
    with using_coder("range"):
        for table, makers in ((_AUTO_BY_BPP, (by_bpp, by_bytes)), (_AUTO_BY_PSNR, (by_psnr,))):
            tops = [top for top, _ in table]
            assert tops == sorted(tops) and tops[-1] == float("inf")
            for (top, level), (_, above) in zip(table, table[1:], strict=False):
                assert isinstance(resolve_level(level), QuantSpec) and level != above
                for make in makers:
                    assert auto_level(make(top * 0.98), sizes) == level
                    assert auto_level(make(top * 1.02), sizes) == above
        # a batch's level is chosen for its smallest budget (per pixel): the 448² image here
        (top, level), (_, above) = _AUTO_BY_BPP[:2]
        budget = RateTarget(bytes=round(top * 1.5 * 224 * 224 / 8))
        assert auto_level(budget, sizes) == above
        assert auto_level(budget, [*sizes, (448, 448)]) == level
        assert auto_level(None, sizes) == AUTO_OTHERWISE == "medium"
    with using_coder("zstd"):  # the table is the range coder's
        assert auto_level(by_bpp(0.2), sizes) == "medium"


def test_auto_level_is_what_rate_control_encodes_at_and_reports():
    from gsvision.codec.rate import auto_level

    target = RateTarget(bytes=400)
    with using_coder("range"):
        (c,) = fit_and_encode([smooth(0)], target, iters=10, size=32)
        chosen = auto_level(target, [(32, 32)])
    assert c.metrics["level"] == chosen and c.metrics["reached"]
    assert fit_and_encode([smooth(0)], None, n_gaussians=8, iters=2)[0].metrics["level"] == "medium"


def test_levels_may_be_written_as_bit_depths():
    from gsvision.codec.quant import resolve_level

    assert resolve_level("10-5-5-7") == QuantSpec(10, 5, 5, 7)
    s = random_splats(40)
    assert encode(s, "11-7-6-8") == encode(s, "low")  # low is (11, 7, 6, 8)
    for bad, message in (("10-5-5", "unknown codec level"), ("10-5-5-40", "color_bits must be")):
        with pytest.raises(ValueError, match=message):
            resolve_level(bad)
