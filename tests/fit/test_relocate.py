import numpy as np
import pytest
import torch
from PIL import Image

import gsvision
from gsvision.fit import fit
from gsvision.fit.loop import _splats
from gsvision.fit.relocate import MIN_ITERS, relocate, relocation_steps

ASSETS = {
    p.stem: p
    for p in (__import__("pathlib").Path(gsvision.__file__).parent / "assets").glob("*.jpg")
}


def sample(name="coffee", size=32):
    image = Image.open(ASSETS[name]).convert("RGB").resize((size, size), Image.LANCZOS)
    return np.asarray(image)


def test_relocation_rounds_follow_the_schedule():
    assert relocation_steps(MIN_ITERS - 1, 0.5) == set()
    assert relocation_steps(1000, 0.0) == set()
    assert sorted(relocation_steps(1000, 0.5)) == list(range(50, 500, 50))
    assert max(relocation_steps(120, 1.0)) < 120


def _state(b=2, n=16, h=12, w=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    means = torch.rand(b, n, 2, generator=g) * torch.tensor([w, h])
    chol = torch.tensor([2.0, 0.0, 2.0]).repeat(b, n, 1)
    colors = torch.rand(b, n, 3, generator=g) + 0.2
    params = [p.clone().requires_grad_(True) for p in (means, chol, colors)]
    opt = torch.optim.Adam(params, lr=0.01)
    targets = torch.rand(b, h, w, 3, generator=g)
    mask = torch.ones(b, h, w, dtype=torch.bool)
    counts = torch.full((b,), n)
    loss = sum((p * p).sum() for p in params)
    loss.backward()
    opt.step()
    return params, opt, targets, mask, counts


def test_relocate_moves_the_faintest_gaussians_of_the_chosen_images_only():
    params, opt, targets, mask, counts = _state()
    h, w = targets.shape[1:3]
    faint = [0, 5, 9]
    with torch.no_grad():
        params[2][1, faint] = 0.01  # image 1: three faint Gaussians
        params[2][0, faint] = 0.01  # image 0 too, but it is not relocated
    before = [p.detach().clone() for p in params]
    moments = [opt.state[p]["exp_avg"].clone() for p in params]
    typical = [opt.state[p]["exp_avg_sq"][1].mean(0) for p in params]
    splats = _splats(*(p.detach() for p in params), counts, (h, w))
    residual = targets - gsvision.raster.render(splats, h, w)
    relocate(params, opt, splats, targets, mask, torch.tensor([1]), 3 / 16, torch.Generator())
    for p, q in zip(params, before, strict=True):
        assert torch.equal(p[0], q[0])  # image 0 untouched
    changed = (params[0][1] != before[0][1]).any(-1).nonzero()[:, 0].tolist()
    assert changed == faint
    means = params[0][1, faint].detach()
    assert ((means % 1) == 0.5).all() and (means[:, 0] < w).all() and (means[:, 1] < h).all()
    assert torch.equal(params[1][1, faint].detach(), torch.tensor([1.0, 0, 1.0]).expand(3, 3))
    # each re-seeded Gaussian is coloured by the residual at its pixel
    px, py = means[:, 0].long(), means[:, 1].long()
    assert torch.allclose(params[2][1, faint].detach(), residual[1, py, px])
    for p, m, t in zip(params, moments, typical, strict=True):
        assert (opt.state[p]["exp_avg"][1, faint] == 0).all()
        assert torch.equal(opt.state[p]["exp_avg"][0], m[0])
        assert torch.allclose(opt.state[p]["exp_avg_sq"][1, faint], t.expand(3, -1))


def test_relocation_draws_only_pixels_inside_the_image_and_where_the_error_is():
    params, opt, targets, mask, counts = _state(b=1, n=40, h=16, w=16)
    mask[:, :, 8:] = False  # the right half is padding
    targets = targets * 0
    targets[:, 2:4, 2:4] = 1.0  # all the error in a 2×2 patch (colours start near 0)
    with torch.no_grad():
        params[2].zero_()
    before = params[0].detach().clone()
    splats = _splats(*(p.detach() for p in params), counts, (16, 16))
    relocate(params, opt, splats, targets, mask, torch.tensor([0]), 0.1, torch.Generator())
    moved = params[0][0][(params[0][0] != before[0]).any(-1)].detach()
    assert set(map(tuple, moved.tolist())) == {(2.5, 2.5), (3.5, 2.5), (2.5, 3.5), (3.5, 3.5)}


def test_relocation_raises_fitted_psnr_and_keeps_batches_reproducible():
    images = [sample("astronaut"), sample("rocket")]
    off = fit(images, 48, iters=200, relocate=0.0).metrics
    on = fit(images, 48, iters=200).metrics
    gain = np.mean([a["psnr"] - b["psnr"] for a, b in zip(on, off, strict=True)])
    assert gain > 0.2, gain
    alone = fit(images[1:], 48, iters=200)
    assert abs(alone.metrics[0]["psnr"] - on[1]["psnr"]) < 1e-3


@pytest.mark.parametrize("kwargs", [{"relocate": -0.1}, {"relocate": 1.5}])
def test_bad_relocation_share_is_refused(kwargs):
    with pytest.raises(ValueError, match="relocate must be a number in"):
        fit([np.zeros((8, 8, 3), np.uint8)], 4, iters=1, **kwargs)
