"""Range ends widened to float16 values (``quant.f16_bounds``, format version 4's compact records):
outwards, stable under float32 rounding (the closed loop recomputes them from grid values), and
never changing a shared step."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gsvision.codec.quant import f16_bounds


def _is_f16(t: torch.Tensor) -> bool:
    return torch.equal(t.to(torch.float16).to(torch.float32), t)


@pytest.mark.parametrize("seed", range(20))
def test_ends_are_float16_outwards_and_stable(seed):
    g = torch.Generator().manual_seed(seed)
    scale = 10.0 ** float(torch.empty(()).uniform_(-3, 1, generator=g))
    lo = (torch.rand(3, generator=g) - 0.5) * scale * 0.01  # some ends near 0: fine float16 spacing
    hi = lo + torch.rand(3, generator=g) * scale + 0.1 * scale
    down, up = f16_bounds(lo, hi)
    assert _is_f16(down) and _is_f16(up)
    slack = float(torch.cat([lo, hi]).abs().max()) * 2.0**-20
    assert bool((down <= lo + slack).all()) and bool((up >= hi - slack).all())
    # values on the grid these ends define, recomputed in float32 with rounding noise
    levels = 1023
    step = (up - down).max() / levels
    wide = int((hi - down).argmax())
    codes = torch.randint(0, levels, (500, 3), generator=g).float()
    codes[0] = 0.0
    codes[1, wide] = levels
    values = down + codes * step
    noise = 1 + (torch.rand(values.shape, generator=g) - 0.5) * 2.0**-22
    again = f16_bounds((values * noise).amin(0), (values * noise).amax(0))
    assert torch.equal(again[0], down)
    assert float((again[1] - again[0]).max()) == float((up - down).max())  # the same step


def test_channels_share_the_widest_step():
    """A narrower channel whose top rounds up past the widest's range is lowered: the step is
    the widest channel's."""
    lo = torch.tensor([0.0, 0.0004])
    hi = torch.tensor([1.0, 1.0004])  # the same span; the second's top is no float16 value
    down, up = f16_bounds(lo, hi)
    assert float((up - down)[1]) <= float((up - down)[0])


def test_fields_of_one_value_and_ends_beyond_float16_stay_float32():
    down, up = f16_bounds(torch.tensor([0.3]), torch.tensor([0.3]))
    assert float(down) == float(up) == np.float32(0.3)  # step 0: exact, not widened
    down, up = f16_bounds(torch.tensor([-1.0]), torch.tensor([1e5]))
    assert float(up) == 1e5 and _is_f16(down)
