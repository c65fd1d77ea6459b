"""Geometry codes chosen for the image (codec/geometry_rd.py): on the grid, reproduced by the
encoder, independent of the batch, and closer to the image than rounding."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from codec_cases import smooth_image

from gsvision.codec import decode, quantised, using_coder
from gsvision.codec import rate as rate_mod
from gsvision.codec.geometry_rd import refined_geometry
from gsvision.codec.quant import QuantSpec
from gsvision.fit import fit
from gsvision.raster import render
from gsvision.splats import Splats

SPEC = QuantSpec(7, 4, 4, 7)  # coarse geometry: rounding errors large enough to matter


@pytest.fixture(scope="module")
def fitted():
    result = fit([smooth_image(1), smooth_image(2)], 80, iters=60)  # on a GPU where there is one
    return result.splats.fold_opacity().to("cpu"), result.targets.cpu()


def _sorted(s: Splats, b: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Image ``b``'s valid means and Cholesky factors in (x, y, l11) order."""
    n = int(s.counts[b])
    m, c = s.means[b, :n].double(), s.chol[b, :n].double()
    order = np.lexsort((c[:, 0].numpy(), m[:, 1].numpy(), m[:, 0].numpy()))
    return m[order], c[order]


def _mse(s: Splats, image: torch.Tensor) -> float:
    h, w = image.shape[:2]
    return float(((render(s, h, w)[0] - image) ** 2).mean())


CODERS = [("range", True), ("zstd", False)]  # the coder, and whether its shapes are log-covariances


@pytest.mark.parametrize("coder,logcov", CODERS)
@pytest.mark.parametrize("spec", [SPEC, QuantSpec(13, 9, 8, 10)], ids=["coarse", "high"])
def test_geometry_lies_on_the_grid_and_the_encoder_keeps_it(fitted, coder, logcov, spec):
    """Also where a position step (2⁻¹³) is finer than float16's spacing near 1 (2⁻¹¹): the
    range coder's ends, widened to float16 values, are recomputed exactly."""
    splats, images = fitted
    refined = refined_geometry(splats, images, spec, logcov=logcov)
    # decode(encode(...)): codes recomputed from the values
    again = quantised(refined, spec, coder=coder)
    for b in range(2):
        m1, c1 = _sorted(refined, b)
        m2, c2 = _sorted(again, b)
        assert torch.equal(m1, m2)  # positions exactly
        assert torch.allclose(c1, c2, rtol=1e-4, atol=1e-7)  # shapes up to float32 rounding
        assert not torch.equal(m1, _sorted(splats, b)[0])  # it did move them


@pytest.mark.parametrize("coder,logcov", CODERS)
def test_one_round_is_plain_rounding(fitted, coder, logcov):
    splats, images = fitted
    plain = quantised(splats, SPEC, coder=coder)
    once = quantised(refined_geometry(splats, images, SPEC, 1, logcov=logcov), SPEC, coder=coder)
    for b in range(2):
        assert torch.equal(_sorted(once, b)[0], _sorted(plain, b)[0])
        same = torch.isclose(_sorted(once, b)[1], _sorted(plain, b)[1], rtol=1e-4, atol=1e-7)
        # polar shapes: all but the few whose rounded minor axis came out longer than the major:
        # plain rounding lets the encoder swap and re-round those, refining lowers the minor
        # code. Log-covariances have no such case.
        assert int((~same).any(-1).sum()) <= (0 if logcov else 8)


def test_refining_beats_rounding_in_the_closed_loop(fitted, monkeypatch):
    splats, images = fitted
    items, targets = [splats[b] for b in range(2)], [images[b] for b in range(2)]
    monkeypatch.setattr(rate_mod, "PRUNE", False)  # its own switch: test_prune_rd.py

    def closed(refine: bool) -> list[Splats]:
        monkeypatch.setattr(rate_mod, "REFINE_GEOMETRY", refine)
        with using_coder("range"):
            return [decode(p) for p in rate_mod.encode_closed_loop_batch(items, targets, SPEC)]

    on, off = closed(True), closed(False)
    for b in range(2):  # what quantisation adds to the fit's error, at least halved
        fitted_error = _mse(items[b], targets[b])
        assert _mse(on[b], targets[b]) - fitted_error < 0.5 * (
            _mse(off[b], targets[b]) - fitted_error
        )
    monkeypatch.setattr(rate_mod, "REFINE_GEOMETRY", True)
    single = rate_mod.encode_closed_loop(items[0], targets[0], SPEC)  # the one-image path too
    fitted_error = _mse(items[0], targets[0])
    assert _mse(decode(single), targets[0]) - fitted_error < 0.5 * (
        _mse(off[0], targets[0]) - fitted_error
    )
    monkeypatch.setattr(rate_mod, "REFINE_GEOMETRY", None)  # default: with the range coder only
    with using_coder("zstd"):
        assert not rate_mod._refining()
    with using_coder("range"):
        assert rate_mod._refining()


def test_an_image_is_refined_the_same_whatever_its_batch(fitted):
    splats, images = fitted
    alone = refined_geometry(splats[1], images[1:], SPEC)
    first = splats[0]  # fewer Gaussians than its neighbour: padded in the batch
    short = Splats(first.means, first.chol, first.colors, torch.tensor([60]), first.image_sizes)
    both = refined_geometry(Splats.cat([short.compact(80), splats[1]]), images, SPEC)
    assert torch.allclose(both.means[1], alone.means[0], atol=1e-6)
    assert torch.allclose(both.chol[1], alone.chol[0], atol=1e-6)
    assert torch.allclose(both.colors[1], alone.colors[0], atol=1e-5)
    assert int(both.counts[0]) == 60 and float(both.colors[0, 60:].abs().sum()) == 0.0


def test_degenerate_images_are_left_alone():
    image = torch.full((1, 8, 8, 3), 0.5)
    one = Splats.create(
        torch.tensor([[[0.5, 0.5]]]), torch.tensor([[[0.2, 0.0, 0.2]]]), torch.ones(1, 1, 3), (8, 8)
    )
    assert torch.equal(refined_geometry(one, image, SPEC).means, one.means)
    same = Splats.create(  # every Gaussian at one place: no position range to quantise over
        torch.full((1, 4, 2), 0.5), torch.rand(1, 4, 3) * 0.1 + 0.1, torch.rand(1, 4, 3), (8, 8)
    )
    assert torch.equal(refined_geometry(same, image, SPEC).chol, same.chol)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_the_gpu_the_geometry_lies_on_the_grid_and_beats_rounding(fitted):
    splats, images = fitted
    refined = refined_geometry(splats.to("cuda"), images.to("cuda"), SPEC).to("cpu")
    again = quantised(refined, SPEC, coder="range")
    plain = quantised(splats, SPEC, coder="range")
    for b in range(2):
        m1, c1 = _sorted(refined, b)
        m2, c2 = _sorted(again, b)
        assert torch.equal(m1, m2)
        assert torch.allclose(c1, c2, rtol=1e-4, atol=1e-7)
        fitted_error = _mse(splats[b], images[b])
        gained = _mse(refined[b], images[b]) - fitted_error  # colours still continuous here
        assert gained < 0.5 * (_mse(plain[b], images[b]) - fitted_error)


def test_images_of_another_size_or_shape_are_refused(fitted):
    splats, images = fitted
    with pytest.raises(ValueError, match="fitted at"):
        refined_geometry(splats, images[:, :32], SPEC)
    with pytest.raises(ValueError, match="images must be"):
        refined_geometry(splats, images[0], SPEC)


def test_effort_sets_how_long_the_closed_loop_refines(fitted, monkeypatch):
    splats, images = fitted
    items, targets = [splats[b] for b in range(2)], [images[b] for b in range(2)]
    monkeypatch.setattr(rate_mod, "PRUNE", False)

    def closed(effort: int | None = None, refine: bool | None = None) -> list[bytes]:
        monkeypatch.setattr(rate_mod, "REFINE_GEOMETRY", refine)
        kwargs = {} if effort is None else {"effort": effort}
        with using_coder("range"):
            return rate_mod.encode_closed_loop_batch(items, targets, SPEC, **kwargs)

    assert closed(1) == closed()  # 1 is the default
    assert closed(0) == closed(refine=False)  # 0: rounded as fitted, no refinement
    longer = closed(3)
    assert longer != closed(1)
    rounded_error = [_mse(decode(p), t) for p, t in zip(closed(0), targets, strict=True)]
    for b in range(2):  # refining longer still beats rounding by far
        fitted_error = _mse(items[b], targets[b])
        assert _mse(decode(longer[b]), targets[b]) - fitted_error < 0.5 * (
            rounded_error[b] - fitted_error
        )
    with using_coder("range"):  # the one-image path takes it too
        assert rate_mod.encode_closed_loop(items[0], targets[0], SPEC, effort=0) == closed(0)[0]


@pytest.mark.parametrize("effort", [-1, 4, 1.5, True, "1", None])
def test_unknown_efforts_are_refused(fitted, effort):
    splats, images = fitted
    with pytest.raises(ValueError, match="effort must be an integer 0..3"):
        rate_mod.encode_closed_loop_batch([splats[0]], [images[0]], SPEC, effort=effort)
    with pytest.raises(ValueError, match="effort must be an integer 0..3"):
        rate_mod.fit_and_encode([smooth_image(1)], None, SPEC, 16, effort=effort, iters=1)
