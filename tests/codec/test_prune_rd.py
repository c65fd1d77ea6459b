"""Gaussians not worth their bytes (codec/prune_rd.py): exact removal costs, the threshold, what
every image keeps, and the closed loop that uses it."""

from __future__ import annotations

import pytest
import torch
from codec_cases import smooth_image

from gsvision.codec import decode, using_coder
from gsvision.codec import rate as rate_mod
from gsvision.codec.prune_rd import kappa_for, rd_pruned, removal_costs
from gsvision.codec.quant import QuantSpec
from gsvision.fit import fit
from gsvision.raster import render
from gsvision.splats import Splats

H = W = 32


def _random(b: int, n: int, seed: int) -> tuple[Splats, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    chol = torch.stack(
        [
            torch.rand(b, n, generator=g) * 0.1 + 0.02,
            torch.randn(b, n, generator=g) * 0.02,
            torch.rand(b, n, generator=g) * 0.1 + 0.02,
        ],
        -1,
    )
    faint = torch.rand(b, n, 1, generator=g) ** 4  # some Gaussians matter, some hardly
    splats = Splats.create(
        torch.rand(b, n, 2, generator=g),
        chol,
        torch.randn(b, n, 3, generator=g) * 0.3 * faint,
        (H, W),
        opacities=torch.rand(b, n, 1, generator=g),
    )
    noise = torch.randn(b, H, W, 3, generator=g) * 0.02  # an image the splats nearly fit
    return splats, render(splats, H, W) + noise


def _error(s: Splats, image: torch.Tensor) -> float:
    return float(((render(s, H, W)[0].double() - image.double()) ** 2).sum())


def _without(s: Splats, i: int) -> Splats:
    keep = torch.ones(int(s.counts[0]), dtype=torch.bool)
    keep[i] = False
    opac = None if s.opacities is None else s.opacities[:, keep]
    return Splats(
        s.means[:, keep], s.chol[:, keep], s.colors[:, keep], s.counts - 1, s.image_sizes, opac
    )


def test_removal_costs_are_what_removing_changes():
    splats, images = _random(2, 30, seed=1)
    costs, errors = removal_costs(splats, images)
    for b in range(2):
        assert float(errors[b]) == pytest.approx(_error(splats[b], images[b]), rel=1e-5)
        for i in torch.randperm(30)[:6].tolist():  # fresh Gaussians each time
            changed = _error(_without(splats[b], i), images[b]) - float(errors[b])
            assert float(costs[b, i]) == pytest.approx(changed, rel=1e-4, abs=1e-4)


def test_padding_costs_nothing_and_images_are_judged_alone():
    splats, images = _random(2, 30, seed=2)
    short = Splats(
        splats.means,
        splats.chol,
        splats.colors,
        torch.tensor([30, 18]),
        splats.image_sizes,
        splats.opacities,
    ).compact()
    costs, _ = removal_costs(short, images)
    assert torch.isinf(costs[1, 18:]).all() and torch.isfinite(costs[0]).all()
    alone, _ = removal_costs(short[1].compact(18), images[1:])
    assert torch.allclose(alone[0], costs[1, :18])


def test_pruning_drops_exactly_what_costs_less_than_kappa_mean_error():
    splats, images = _random(2, 40, seed=3)
    costs, errors = removal_costs(splats, images)
    for kappa in (0.0, 0.5, 1.5):
        kept, dropped = rd_pruned(splats, images, kappa)
        for b in range(2):
            worth = costs[b] >= kappa * errors[b] / 40
            assert 0 < int(worth.sum()) < 40 or kappa == 0
            assert int(dropped[b]) == int((~worth).sum()) == 40 - int(kept.counts[b])
            n = int(kept.counts[b])
            assert torch.equal(kept.means[b, :n], splats.means[b][worth])  # order kept
            assert torch.equal(kept.opacities[b, :n], splats.opacities[b][worth])
            assert kept.capacity == splats.capacity


def test_the_default_threshold_grows_with_the_number_of_gaussians():
    n = torch.tensor([1, 100, 200, 400, 800, 1600, 3136])
    assert kappa_for(n).tolist() == pytest.approx([1.5, 1.5, 2.125, 2.75, 3.375, 4.0, 4.0])
    full, images = _random(2, 400, seed=3)
    counts = torch.tensor([400, 150])  # each image is judged at its own count's κ
    splats = Splats(full.means, full.chol, full.colors, counts, full.image_sizes, full.opacities)
    kept, dropped = rd_pruned(splats, images)
    costs, errors = removal_costs(splats, images)
    for b, n in enumerate(counts.tolist()):
        kappa = float(kappa_for(torch.tensor(n)))
        worth = costs[b, :n] >= kappa * errors[b] / n
        assert int(dropped[b]) == int((~worth).sum()) > 0
    assert int(dropped[0]) > int((costs[0] < 1.5 * errors[0] / 400).sum())  # κ = 2.75 there


def test_every_image_keeps_its_most_useful_gaussian():
    splats, images = _random(1, 12, seed=4)
    dim = Splats(splats.means, splats.chol, splats.colors * 1e-3, splats.counts, splats.image_sizes)
    kept, dropped = rd_pruned(dim, images)  # every one is worth far less than E / N
    costs, _ = removal_costs(dim, images)
    assert int(kept.counts[0]) == 1 and int(dropped[0]) == 11
    assert torch.equal(kept.means[0, 0], dim.means[0, int(costs[0].argmax())])


def test_bad_arguments_are_named():
    splats, images = _random(2, 10, seed=5)
    with pytest.raises(ValueError, match="images must be"):
        rd_pruned(splats, images[0])
    with pytest.raises(ValueError, match="fitted at"):
        rd_pruned(splats, torch.rand(2, H, W + 1, 3))
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="kappa"):
            rd_pruned(splats, images, bad)
    broken = splats.clone()
    broken.colors[1, 3, 0] = float("nan")  # refused, not silently dropped
    with pytest.raises(ValueError, match="finite|NaN|nan"):
        rd_pruned(broken, images)


def test_the_closed_loop_prunes_with_the_range_coder(monkeypatch):
    result = fit([smooth_image(1), smooth_image(2)], 120, iters=60)
    items, targets = [result.splats[b] for b in range(2)], [result.targets[b] for b in range(2)]
    spec = QuantSpec(9, 5, 5, 7)
    expected = rd_pruned(result.splats, result.targets)[0].counts.tolist()
    assert min(expected) < 120  # something to drop

    def closed(prune: bool | None, level=spec) -> list[bytes]:
        monkeypatch.setattr(rate_mod, "PRUNE", prune)
        return rate_mod.encode_closed_loop_batch(items, targets, level)

    with using_coder("range"):
        on, off, default = closed(True), closed(False), closed(None)
        assert [decode(p).counts.item() for p in on] == expected
        assert [decode(p).counts.item() for p in off] == [120, 120]
        assert default == on
        assert sum(map(len, on)) < sum(map(len, off))
        single = rate_mod.encode_closed_loop(items[1], targets[1], spec)  # the one-image path
        assert decode(single).counts.item() == expected[1]
        f16 = closed(True, "f16")  # the float levels keep every Gaussian (the f16 reference)
        assert [decode(p).counts.item() for p in f16] == [120, 120]
    with using_coder("zstd"):
        assert [decode(p).counts.item() for p in closed(None)] == [120, 120]
