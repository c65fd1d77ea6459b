"""Random splat cases and the comparison every rasteriser backend must pass against the reference.

A plain module (not conftest.py) so the backend test files, and the Triton test's child process,
can import it by name: pytest puts this folder on sys.path.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from gsvision.raster.reference import render_reference
from gsvision.splats import Splats, chol_from_axes


def random_splats(
    batch: int,
    n: int,
    height: int,
    width: int,
    seed: int,
    dtype: torch.dtype = torch.float32,
    sigma_px: tuple[float, float] = (0.7, 12.0),
    margin: float = 0.15,
    counts: list[int] | None = None,
    opacity: bool = False,
    anisotropy: float = 4.0,
) -> Splats:
    """Splats with random centres (partly off-image by ``margin``), scales, rotations and colours.

    Cholesky factors come from random rotations and log-uniform scales in ``sigma_px`` pixels (with
    up to ``anisotropy`` between the two axes), so thin, round and large Gaussians all appear.
    """
    g = torch.Generator().manual_seed(seed)

    def u(*shape):
        return torch.rand(*shape, generator=g, dtype=torch.float64)

    means = u(batch, n, 2) * (1 + 2 * margin) - margin
    lo, hi = torch.log(torch.tensor(sigma_px, dtype=torch.float64))
    s1 = torch.exp(lo + (hi - lo) * u(batch, n))
    s2 = s1 / torch.exp(torch.log(torch.tensor(anisotropy)) * u(batch, n))
    theta = u(batch, n) * torch.pi
    # Σ = R diag(s1², s2²) Rᵀ in pixels, then its Cholesky factor, then normalised units.
    chol = chol_from_axes(s1, s2, theta) / torch.tensor([width, height, height], dtype=s1.dtype)
    colors = u(batch, n, 3) * 1.2 - 0.1
    opac = u(batch, n, 1) if opacity else None
    if counts is None:
        counts = [n] * batch
    out = Splats.create(
        means.to(dtype),
        chol.to(dtype),
        colors.to(dtype),
        (height, width),
        counts=counts,
        opacities=None if opac is None else opac.to(dtype),
    )
    # Padded slots hold garbage on purpose: every backend must ignore them.
    pad = ~out.mask
    out.colors[pad] = 1e3
    return out


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """‖out − ref‖ / ‖ref‖ (absolute when the reference is zero)."""
    num = torch.linalg.vector_norm((out - ref).double())
    den = torch.linalg.vector_norm(ref.double())
    return float(num / den) if den > 0 else float(num)


def compare_with_reference(
    render_fn: Callable[[Splats, int, int], torch.Tensor],
    splats: Splats,
    height: int,
    width: int,
    tol: float = 1e-4,
) -> dict[str, float]:
    """Check ``render_fn``'s values and all gradients against the dense reference.

    The upstream gradient is random, as in gsplat's tests: ``grad((out * v).sum())``.
    Returns the relative errors, by name, so tests can report the bound they reach.
    """
    names = list(splats.fields())
    errors = {}
    results = []
    for fn in (render_fn, render_reference):
        leaves = {k: t.detach().clone().requires_grad_(True) for k, t in splats.fields().items()}
        s = Splats(
            leaves["means"],
            leaves["chol"],
            leaves["colors"],
            splats.counts,
            splats.image_sizes,
            leaves.get("opacities"),
        )
        out = fn(s, height, width)
        assert out.shape == (splats.batch_size, height, width, 3)
        assert torch.isfinite(out).all(), "non-finite output (an unwritten, poisoned pixel?)"
        v = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=out.dtype)
        v = v.to(out.device)  # the same numbers on every device (a no-op on CPU)
        grads = torch.autograd.grad((out * v).sum(), [leaves[k] for k in names], allow_unused=True)
        results.append((out.detach(), grads))
    (out, grads), (ref, ref_grads) = results
    errors["values"] = relative_error(out, ref)
    for k, g, r in zip(names, grads, ref_grads, strict=True):
        mask = splats.mask[..., None]  # padded slots' gradients are unspecified
        g = torch.zeros_like(r) if g is None else g
        errors[k] = relative_error(g * mask, r * mask)
    bad = {k: e for k, e in errors.items() if not e < tol}
    assert not bad, f"relative errors above {tol}: {bad} (all: {errors})"
    return errors
