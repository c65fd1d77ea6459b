"""Geometry codes chosen for the image, not rounded one by one (encoder only; any reader decodes them).

Rounding every position and shape to its grid point at once adds independent errors that nothing
compensates. :func:`refined_geometry` quantises progressively instead: it works in the code space
of the level (``code = (value − lo) / step`` per field, with the image's own ranges), rounds one
block of Gaussians at a time — the largest-energy ones first, the ranges' extremes in the first
block so the encoder recomputes the same ranges — and between blocks takes a few Adam steps on the
positions, shapes and colours of the Gaussians not yet rounded, so they absorb the error of those
that were. The result lies exactly on the grid, so the ordinary quantised modes write it: the
format is unchanged. The grid is the mode's: the range coder's log-covariance shapes (mode 4) or
the polar ones of modes 2 and 3. The closed-loop encoder (:mod:`gsvision.codec.rate`) then re-solves and
chooses the colours for it (:mod:`gsvision.codec.colour_rd`).

Measured on the six sample photos at 224² (closed loop with and without it, same bytes ±1%,
``docs/benchmarks.md``, on mode 3's polar grid): at N = 1,024 +0.10 dB at ``lower`` (11, 6, 7, 8), +0.35 at ``xlow``
(10, 6, 6, 7), +0.79 at ``xxlow`` (9, 5, 6, 7); at N = 3,136 +1.5, +1.2 and +2.6 dB. The same steps at
16/12/12/12 bits change nothing: it wins back quantisation error, it does not prolong the fit.
Cost: ~1 s of CPU per image of 1,024 Gaussians (16 × 20 renders and backward passes, batched).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from gsvision.codec.quant import (
    QuantSpec,
    Ranges,
    _levels,
    _step,
    anisotropy_range,
    f16_bounds,
    to_logcov,
    to_shape,
)
from gsvision.raster import render
from gsvision.splats import Splats

__all__ = ["refined_geometry", "ROUNDS", "STEPS"]

ROUNDS = 16  # blocks rounded one after another
STEPS = 20  # Adam steps on the Gaussians not yet rounded, after each block but the last
_LR_CODES = 0.2  # geometry learning rate, in code steps per iteration (cosine-decayed per round)
_LR_COLOURS = 0.002


def _codes_space(s: Splats, b: int, spec: QuantSpec, logcov: bool) -> dict[str, Tensor] | None:
    """Image ``b``'s continuous codes and the constants that map them to values, computed in
    float32 on the CPU exactly as :func:`~gsvision.codec.quant.quantise` does; ``None`` when a
    field has no spread (one Gaussian, or all at one place): nothing to refine.

    The shape is two fields: ``pair`` (two codes per Gaussian) and ``single`` (one): the
    log-scales and the angle, or with ``logcov`` the log anisotropy ``(u, v)`` and the log size."""
    n = int(s.counts[b])
    h, w = (int(v) for v in s.image_sizes[b])
    means, chol, colors = (
        t[b, :n].detach().to("cpu", torch.float32) for t in (s.means, s.chol, s.colors)
    )
    shape = to_shape(chol * torch.tensor([w, h, h], dtype=torch.float32))
    r = Ranges.from_values(means, shape[:, :2], colors)
    if logcov:  # mode 4: range ends on float16 values, as quantise() widens them
        r.pos_lo, r.pos_hi = f16_bounds(r.pos_lo, r.pos_hi)
    step_p = _step(r.pos_lo, r.pos_hi, spec.pos_bits)
    out = {"pos_lo": r.pos_lo, "step_p": step_p.expand(2), "colors": colors}
    if logcov:
        suv = to_logcov(shape)
        size, uv = suv[:, 0], suv[:, 1:]
        s_lo, s_hi = (t[0] for t in f16_bounds(size.amin().view(1), size.amax().view(1)))
        uv_lo, uv_hi = anisotropy_range(uv, spec.angle_bits)
        step_s = _step(s_lo, s_hi, spec.scale_bits)
        step_uv = _step(uv_lo, uv_hi, spec.angle_bits)
        spare = torch.where(step_uv > 0, step_uv, 1.0)
        out |= {
            "pair": torch.where(step_uv > 0, (uv - uv_lo) / spare, 0.0),
            "single": (size - s_lo) / torch.where(step_s > 0, step_s, 1.0),
            "pair_lo": uv_lo.expand(2),
            "step_pair": step_uv.expand(2),
            "single_lo": s_lo,
            "step_single": step_s,
        }
    else:
        step_s = _step(r.scale_lo, r.scale_hi, spec.scale_bits)
        out |= {
            "pair": (shape[:, :2] - r.scale_lo) / step_s,
            "single": shape[:, 2] * ((1 << spec.angle_bits) / math.pi),
            "pair_lo": r.scale_lo,
            "step_pair": step_s.expand(2),
        }
    if n < 2 or float(step_p) <= 0 or float(step_s) <= 0:
        return None
    out["pos"] = (means - r.pos_lo) / step_p
    if logcov:
        _pin_ends(out, spec)
    return out


def _pin_ends(k: dict[str, Tensor], spec: QuantSpec) -> None:
    """Put the Gaussians that hold the range ends exactly on the grid's end codes (the ends were
    widened to float16 values, so they may lie a fraction of a step inside): rounded there,
    they make the encoder recompute the same ends. Only the widest channel of a field reaches
    its top code (``k["pos_top"]``: the others stop one below), so that it stays the widest and
    its end, the step."""
    for name, bits in (("pos", spec.pos_bits), ("single", spec.scale_bits)):
        codes = k[name].view(len(k[name]), -1)
        codes[codes.argmin(0), torch.arange(codes.shape[1])] = 0.0
        top = codes.max(0)
        wide = int(top.values.argmax())
        codes[int(top.indices[wide]), wide] = _levels(bits)
        if name == "pos":
            k["pos_top"] = torch.full((2,), _levels(bits) - 1)
            k["pos_top"][wide] = _levels(bits)
    pair = k["pair"]
    if float(k["step_pair"][0]) > 0:
        zero = float(k["pair_lo"][0].abs() / k["step_pair"][0])
        far = (pair - zero).abs().flatten().argmax()
        flat = pair.view(-1)
        top = _levels(spec.angle_bits)
        flat[far] = top if float(flat[far]) > zero else min(1.0, top - 1)


def _values(pos, pair, single, k, spec: QuantSpec, hw, logcov: bool) -> tuple[Tensor, Tensor]:
    """Normalised means and Cholesky factors from (continuous) codes, as the decoder computes
    them from integer ones (``kernels.dequantise_into``)."""
    h, w = hw
    means = k["pos_lo"] + pos * k["step_p"]
    if logcov:  # Σ = exp(2s I + [[u, v], [v, -u]]) in closed form, smooth at u = v = 0
        uv = (k["pair_lo"] + pair * k["step_pair"]).double()
        size = (k["single_lo"] + single * k["step_single"]).double()
        u, v = uv[..., 0], uv[..., 1]
        d2 = u * u + v * v
        d = torch.sqrt(d2.clamp_min(1e-20))
        small = d2 < 1e-8
        sinhc = torch.where(small, 1 + d2 / 6, torch.sinh(d) / d)
        cosh = torch.where(small, 1 + d2 / 2, torch.cosh(d))
        area = torch.exp(2 * size)  # σ_major σ_minor
        l11 = torch.sqrt(area * (cosh + u * sinhc))
        chol = torch.stack([l11 / w, area * v * sinhc / l11 / h, area / l11 / h], -1)
        return means, chol.float()
    log_s = k["pair_lo"] + pair * k["step_pair"]
    theta = single * (math.pi / (1 << spec.angle_bits))
    s1, s2 = torch.exp(log_s[..., 0]), torch.exp(log_s[..., 1])
    cos, sin = torch.cos(theta), torch.sin(theta)
    d = torch.sqrt(s1 * s1 * cos * cos + s2 * s2 * sin * sin)
    chol = torch.stack([d / w, (s1 * s1 - s2 * s2) * sin * cos / d / h, s1 * s2 / d / h], -1)
    return means, chol


def _order(k: dict[str, Tensor], n: int, cap: int, logcov: bool) -> Tensor:
    """The order blocks are rounded in: the ranges' extremes, then by energy ``|c|² σ₁σ₂``."""
    if logcov:
        log_area = 2 * (k["single_lo"] + k["single"] * k["step_single"])
        zero = k["pair_lo"].abs() / torch.where(k["step_pair"] > 0, k["step_pair"], 1.0)
        ends = [k["pos"].argmin(0), k["pos"].argmax(0), k["single"].argmin(0)[None]]
        ends += [k["single"].argmax(0)[None], (k["pair"] - zero).abs().argmax(0)]
    else:
        log_area = k["pair_lo"].sum() + k["pair"].sum(-1) * k["step_pair"][0]
        ends = [k[f].argmin(0) for f in ("pos", "pair")] + [k[f].argmax(0) for f in ("pos", "pair")]
    energy = (k["colors"] ** 2).sum(-1) * torch.exp(log_area)
    order = torch.argsort(energy, descending=True, stable=True)
    first = torch.zeros(n, dtype=torch.bool)
    first[torch.cat(ends)] = True
    rank = torch.full((cap,), cap, dtype=torch.int64)  # padding: never rounded (stays frozen)
    rank[:n] = torch.argsort(order)
    rank[:n][first] = -1
    return rank


def _bounds(spec: QuantSpec, logcov: bool) -> tuple[tuple[float, float] | None, ...]:
    """The code range each of (pos, pair, single) keeps to (``None``: the angle, which wraps).
    The log-anisotropy codes stay within ``±R`` (code 0 is one step beyond ``−R`` when
    ``A ≥ 2``), so the range the encoder recomputes, ``R = max |u|, |v|``, is the one refined
    for."""
    pos = (0.0, _levels(spec.pos_bits))
    if logcov:
        top = _levels(spec.angle_bits)
        return pos, (min(1.0, top - 1), top), (0.0, _levels(spec.scale_bits))
    return pos, (0.0, _levels(spec.scale_bits)), None


def _round(pos: Tensor, pair: Tensor, single: Tensor, k: dict[str, Tensor], bounds, logcov: bool):
    """Integer codes: nearest grid points, within the field's bounds; polar shapes keep the
    major axis's value at least the minor's (else the encoder would swap them and re-round)."""
    pos = torch.round(pos).clamp(*bounds[0])
    pair = torch.round(pair).clamp(*bounds[1])
    if logcov:
        return pos, pair, torch.round(single).clamp(*bounds[2])
    lo, step = k["pair_lo"], k["step_pair"][..., 0]
    gap = (lo[..., 0] - lo[..., 1]) / step  # lo_major − lo_minor, in codes
    swapped = pair[..., 0] + gap < pair[..., 1]
    lowered = torch.floor(pair[..., 0] + gap + 1e-4).clamp(min=0)
    pair = torch.stack([pair[..., 0], torch.where(swapped, lowered, pair[..., 1])], -1)
    return pos, pair, torch.round(single)


def refined_geometry(
    splats: Splats,
    images: Tensor,
    spec: QuantSpec,
    rounds: int = ROUNDS,
    steps: int = STEPS,
    logcov: bool = True,
) -> Splats:
    """Splats whose positions and shapes lie on ``spec``'s grid, chosen for ``images``.

    Args:
        splats: ``B`` images of one size (opacities folded), on any device.
        images: the ``[B, H, W, 3]`` images they were fitted to, in ``[0, 1]``.
        spec: the bit depths the result will be encoded at.
        rounds: blocks rounded in turn (1: plain rounding).
        steps: Adam steps between blocks on the Gaussians not yet rounded.
        logcov: the grid of the range coder's log-covariance shapes (format mode 4); ``False``:
            of the polar shapes of modes 2 and 3 (the zstd coder).

    Returns:
        the splats with grid geometry and refined (continuous) colours, on the same device;
        images with fewer than two Gaussians or no spread in a field come back unchanged.

    Raises:
        ValueError: if ``images`` is not ``[B, H, W, 3]`` at the size every image was fitted at.
    """
    size = tuple(images.shape[1:3])
    if images.dim() != 4 or images.shape[0] != splats.batch_size or images.shape[3] != 3:
        raise ValueError(
            f"refined_geometry: images must be [{splats.batch_size}, H, W, 3], got {tuple(images.shape)}"
        )
    if bool((splats.image_sizes.cpu() != torch.tensor(size)).any()):
        raise ValueError(
            f"refined_geometry: images are {size[0]}x{size[1]} but the splats were fitted at "
            f"{splats.image_sizes.tolist()}"
        )
    with torch.inference_mode(False), torch.enable_grad():  # callers may run without autograd
        return _refined(splats.fold_opacity(), images, spec, rounds, steps, logcov)


def _refined(
    splats: Splats, images: Tensor, spec: QuantSpec, rounds: int, steps: int, logcov: bool
) -> Splats:
    b, cap = splats.batch_size, splats.capacity
    h, w = (int(v) for v in images.shape[1:3])
    device = splats.means.device
    spaces = [_codes_space(splats, i, spec, logcov) for i in range(b)]
    todo = [i for i, k in enumerate(spaces) if k is not None]
    if not todo or rounds < 1:
        return splats
    bounds = _bounds(spec, logcov)

    def stack(name: str, width: int) -> Tensor:
        out = torch.zeros(len(todo), cap, width) if width else torch.zeros(len(todo), cap)
        for j, i in enumerate(todo):
            out[j, : int(splats.counts[i])] = spaces[i][name]
        return out.to(device)

    names = ("pos_lo", "step_p", "pair_lo", "step_pair") + (
        ("single_lo", "step_single") if logcov else ()
    )
    consts = {
        name: torch.stack([spaces[i][name] for i in todo])[:, None].to(device) for name in names
    }
    if logcov:  # each image's position codes stop below the top on its narrower axis
        top = torch.stack([spaces[i]["pos_top"] for i in todo])[:, None].to(device)
        bounds = ((torch.zeros_like(top), top), *bounds[1:])
    params = [stack("pos", 2), stack("pair", 2), stack("single", 0), stack("colors", 3)]
    params = [p.requires_grad_(True) for p in params]
    rank = torch.stack([_order(spaces[i], int(splats.counts[i]), cap, logcov) for i in todo]).to(
        device
    )
    frozen = rank >= cap  # padding
    n_max = int(splats.counts[todo].max())
    ends = [round(n_max * r / rounds) for r in range(1, rounds + 1)]
    counts = splats.counts[todo].to(device)
    sizes = splats.image_sizes[todo].to(device)
    targets = images[todo].to(device, torch.float32)
    opt = torch.optim.Adam(
        [{"params": params[:3], "lr": _LR_CODES}, {"params": params[3:], "lr": _LR_COLOURS}]
    )
    for r, end in enumerate(ends):
        block = (rank < end) & ~frozen
        with torch.no_grad():
            rounded = _round(params[0], params[1], params[2], consts, bounds, logcov)
            for p, q in zip(params[:3], rounded, strict=True):
                p.copy_(torch.where(block.view(*block.shape, *[1] * (p.dim() - 2)), q, p))
        frozen |= block
        if r == rounds - 1 or bool(frozen.all()):
            break
        keep = [p.detach().clone() for p in params[:3]]
        for t in range(steps):
            scale = 0.5 * (1 + math.cos(math.pi * t / steps))
            for group, rate in zip(opt.param_groups, (_LR_CODES, _LR_COLOURS), strict=True):
                group["lr"] = rate * scale
            means, chol = _values(params[0], params[1], params[2], consts, spec, (h, w), logcov)
            out = render(Splats(means, chol, params[3], counts, sizes), h, w)
            loss = ((out - targets) ** 2).mean((1, 2, 3)).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                for p, f, lim in zip(params[:3], keep, bounds, strict=True):
                    fixed = frozen.view(*frozen.shape, *[1] * (p.dim() - 2))
                    p.copy_(torch.where(fixed, f, p if lim is None else p.clamp(*lim)))
    with torch.no_grad():
        means, chol = _values(params[0], params[1], params[2], consts, spec, (h, w), logcov)
        out_means, out_chol, out_colors = (
            t.clone() for t in (splats.means, splats.chol, splats.colors)
        )
        idx = torch.tensor(todo, device=device)
        out_means[idx], out_chol[idx], out_colors[idx] = means, chol, params[3].detach()
    return Splats(out_means, out_chol, out_colors, splats.counts, splats.image_sizes).compact(cap)
