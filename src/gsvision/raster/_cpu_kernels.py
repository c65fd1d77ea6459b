"""numba kernels behind :mod:`gsvision.raster.cpu` (imported lazily: numba may be missing).

Everything here works on plain numpy arrays. A Gaussian is packed as 8 numbers
``(cx, cy, l11, l21, l22, r, g, b)`` in pixel units (see :func:`gsvision.raster.cpu.render_cpu`).

Layout of the work:

1. :func:`bin_gaussians` culls each valid Gaussian to its 3σ ellipse (widened a little so rounding
   never loses a pixel) and lists per ``(image, tile)`` the Gaussians it reaches (CSR: ``offsets``,
   ``index``, in index order), each with a rectangle: the rows and :data:`LANES`-pixel chunks of
   the tile that the part of the ellipse inside the tile spans (both found in closed form).
2. :func:`forward` runs ``prange`` over ``(image, tile)`` jobs. A job accumulates its tile in three
   planar stack buffers, visiting for each listed Gaussian only its rectangle, then writes every
   pixel of the tile (touched or not) to ``out``.
3. :func:`backward` runs the same jobs; for each (Gaussian, tile) pair it reduces the
   :data:`N_SUMS` sums the gradient needs into ``partial[pair]``; :func:`reduce_partials` adds them
   per Gaussian and turns them into gradients. Nothing is written by two threads: no atomics.

The chunk loops are fixed-width, branch-free and index stack buffers with unsigned offsets, so
LLVM turns them into SIMD code (512-bit where the CPU has AVX-512: :data:`LANES` is 16 there, 8
elsewhere); ``exp`` is :func:`vexp` (Cody–Waite range reduction, a polynomial, ``2**k`` from the
exponent bits) instead of a libm call that would stay scalar. The Mahalanobis distance is computed
with the reference's exact operations (true divisions, no FMA contraction, no reassociation) so
every pixel falls on the same side of the cut-off as in the dense reference.
"""

from __future__ import annotations

import math

import numpy as np
from llvmlite import binding, ir
from numba import carray, config, njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic, overload


def _host_has_avx512() -> bool:
    """True when numba compiles for this host (no portable CPU name set) and it has AVX-512F."""
    if config.CPU_NAME or config.CPU_FEATURES:
        return False
    try:
        return bool(binding.get_host_cpu_features().get("avx512f", False))
    except Exception:  # pragma: no cover - exotic platforms
        return False


_WIDE = _host_has_avx512()
#: Pixels per SIMD chunk: one 512-bit register of float32 with AVX-512, else one 256-bit register.
#: Tile widths are a multiple of it.
LANES = 16 if _WIDE else 8
#: Largest tile side: the per-thread tile buffers live on the stack at this size.
MAX_TILE = 32
#: Gradient sums per (Gaussian, tile): Σ w·g_c for the 3 channels, then, with
#: ``G = -w (g · c)`` (twice ∂L/∂q), Σ G z1, Σ G z2, Σ G z1², Σ G z1 z2, Σ G z2².
N_SUMS = 8

# Fast-math for the SIMD kernels: only flags that cannot change how q rounds (no ``contract``,
# ``arcp`` or ``reassoc``); the exp polynomial alone may fuse multiply-adds.
_SIMD = {"cache": True, "fastmath": {"nsz", "afn"}, "error_model": "numpy", "nogil": True}
_SCALAR = {"cache": True, "error_model": "numpy", "nogil": True}
_EXP_FLAGS = {"nsz", "afn", "contract", "nnan", "ninf"}


# --------------------------------------------------------------------------- intrinsics
@intrinsic
def _pow2(typingctx, k):
    """``2.0 ** k`` for an integral-valued float ``k`` in the normal range, via exponent bits."""
    if k == types.float32:
        ity, fty, bias, shift = ir.IntType(32), ir.FloatType(), 127, 23
    elif k == types.float64:
        ity, fty, bias, shift = ir.IntType(64), ir.DoubleType(), 1023, 52
    else:
        return None

    def codegen(context, builder, signature, args):
        ki = builder.fptosi(args[0], ity)
        bits = builder.shl(builder.add(ki, ir.Constant(ity, bias)), ir.Constant(ity, shift))
        return builder.bitcast(bits, fty)

    return k(k), codegen


@intrinsic
def _wide_vectors(typingctx):
    """Let LLVM use 512-bit vectors in the calling function (on AVX-512 hosts; else a no-op).

    LLVM prefers 256-bit vectors on Intel CPUs by default; the per-function attribute
    ``"prefer-vector-width"="512"`` lifts that for the kernels' chunk loops only. llvmlite's
    attribute set accepts only keyword attributes, hence the plain ``set.add``.
    """

    def codegen(context, builder, signature, args):
        if _WIDE:
            try:
                set.add(builder.function.attributes, '"prefer-vector-width"="512"')
            except Exception:  # pragma: no cover - a changed llvmlite: stay at 256 bits
                pass
        return context.get_dummy_value()

    return types.none(), codegen


def _stack_buffer(size: int):
    """An intrinsic ``f(dtype) -> pointer`` to ``size`` elements of stack memory.

    Stack memory is a distinct object to LLVM (no aliasing with the arguments), which is what lets
    it vectorise the chunk loops; the allocation sits in the function's entry block.
    """

    @intrinsic
    def stack_buffer(typingctx, dtype):
        elt = dtype.dtype

        def codegen(context, builder, signature, args):
            return cgutils.alloca_once(builder, context.get_value_type(elt), size=size)

        return types.CPointer(elt)(dtype), codegen

    return stack_buffer


_stack_tile = _stack_buffer(MAX_TILE * MAX_TILE)
_stack_lanes = _stack_buffer(LANES)


def vexp(x):
    """``exp(x)`` for ``-80 <= x <= 0`` as branch-free arithmetic (jitted through an overload)."""
    return math.exp(x)


@overload(vexp, jit_options={"fastmath": _EXP_FLAGS})
def _vexp_overload(x):
    if x == types.float32:

        def exp32(x):  # Cephes expf: ~1 ulp on the reduced range
            f32 = np.float32
            k = np.floor(x * f32(1.44269504088896341) + f32(0.5))
            r = x - k * f32(0.693359375) - k * f32(-2.12194440e-4)
            p = f32(1.9875691500e-4)
            p = p * r + f32(1.3981999507e-3)
            p = p * r + f32(8.3334519073e-3)
            p = p * r + f32(4.1665795894e-2)
            p = p * r + f32(1.6666665459e-1)
            p = p * r + f32(5.0000001201e-1)
            return (p * (r * r) + r + f32(1.0)) * _pow2(k)

        return exp32
    if x == types.float64:

        def exp64(x):  # Cephes exp: Padé form, ~1 ulp
            k = np.floor(x * 1.4426950408889634073599 + 0.5)
            r = x - k * 6.93145751953125e-1 - k * 1.42860682030941723212e-6
            rr = r * r
            p = r * ((1.26177193074810590878e-4 * rr + 3.02994407707441961300e-2) * rr + 1.0)
            q = ((3.00198505138664455042e-6 * rr + 2.52448340349684104192e-3) * rr) * rr
            q = q + 2.27265548208155028766e-1 * rr + 2.0
            return (1.0 + 2.0 * p / (q - p)) * _pow2(k)

        return exp64
    return None


@njit(cache=True, fastmath={"contract"})
def _madd(a, b, c):  # pragma: no cover - jitted
    """``a * b + c``, allowed to fuse into one FMA (for gradient sums, never for ``q``)."""
    return a * b + c


@njit(cache=True, fastmath={"reassoc", "nsz"})
def _hsum(a):  # pragma: no cover - jitted
    """Sum of a short array in any order (a SIMD horizontal sum), as float64."""
    acc = a[0] - a[0]
    for i in range(a.shape[0]):
        acc += a[i]
    return float(acc)


# --------------------------------------------------------------------------- binning
@njit(**_SCALAR)
def _cutoff(params, b, i, cutoff_q, eps):  # pragma: no cover - jitted
    """A cut-off no pixel lit by the kernel's rounded ``q`` can exceed (0 if never lit).

    The kernel computes ``q`` in the data's precision with the reference's operations; its worst
    error comes from cancellation in ``dy - l21 z1`` before the division by ``l22``, about
    ``eps (|dy| + |l21 z1|) / |l22|`` in ``z2``. Widening the cut-off by a generous multiple of
    that bound keeps the culling (boxes, tiles, rectangles) conservative, so it never changes
    a pixel. Non-finite or degenerate Gaussians (the reference never lights them) get 0.
    """
    cx, cy = float(params[b, i, 0]), float(params[b, i, 1])
    l11, l21, l22 = float(params[b, i, 2]), float(params[b, i, 3]), float(params[b, i, 4])
    syy = l21 * l21 + l22 * l22
    ok = math.isfinite(cx) and math.isfinite(cy) and math.isfinite(l11) and math.isfinite(syy)
    if not (ok and l11 != 0.0 and l22 != 0.0 and syy < 1e300):
        return 0.0
    growth = 1.0 + (math.sqrt(syy) + abs(l21)) / abs(l22)
    return cutoff_q * (1.0 + 1e-5 + 64.0 * eps * growth)


@njit(**_SCALAR)
def _slab_extent(o_lo, o_hi, v_other, v_own, cov, det, cut):  # pragma: no cover - jitted
    """Extent along one axis of the ellipse part whose other-axis offset lies in ``[o_lo, o_hi]``.

    The ellipse is ``{d : dᵀ Σ⁻¹ d <= cut}`` around the origin; ``v_other``/``v_own`` are the
    variances along the other/own axis, ``cov`` the covariance, ``det = |Σ|``. At other-axis
    offset ``o`` the chord along the own axis is ``(cov o ± sqrt(det (cut v_other - o²))) /
    v_other``; its lower end is convex in ``o`` with the minimum at the ellipse's extreme point
    ``o = -cov sqrt(cut / v_own)`` (upper end: concave, maximum at ``+cov sqrt(cut / v_own)``), so
    the extent over the slab is the chord end at the slab point nearest to those.

    Returns:
        ``(lo, hi)`` offsets along the own axis; ``lo > hi`` when the slab misses the ellipse.
    """
    lim = math.sqrt(cut * v_other)
    a, z = max(o_lo, -lim), min(o_hi, lim)
    if not a <= z:
        return 1.0, 0.0
    o_ext = cov * math.sqrt(cut / v_own)
    o1 = min(max(-o_ext, a), z)
    o2 = min(max(o_ext, a), z)
    lo = (cov * o1 - math.sqrt(max(det * (cut * v_other - o1 * o1), 0.0))) / v_other
    hi = (cov * o2 + math.sqrt(max(det * (cut * v_other - o2 * o2), 0.0))) / v_other
    return lo, hi


@njit(**_SCALAR)
def _centres_within(centre, lo, hi, first, last):  # pragma: no cover - jitted
    """Pixel indices ``k`` in ``[first, last]`` with centre ``k + 0.5`` in ``centre + [lo, hi]``."""
    a = math.ceil(min(max(centre + lo - 0.5 - 1e-3, first - 1.0), last + 1.0))
    z = math.floor(min(max(centre + hi - 0.5 + 1e-3, first - 1.0), last + 1.0))
    return max(a, first), min(z, last)


@njit(parallel=True, **_SCALAR)
def bin_gaussians(params, counts, height, width, tile, cutoff_q, eps):  # pragma: no cover - jitted
    """List, per tile, the Gaussians whose 3σ ellipse reaches it, and where in the tile.

    Args:
        params: ``[B, N, 8]`` packed Gaussians in pixel units.
        counts: ``[B]`` int64 valid Gaussians per image.
        height, width: raster size in pixels.
        tile: tile side in pixels.
        cutoff_q: squared Mahalanobis cut-off.
        eps: unit roundoff of the kernel's dtype (2**-24 for float32), see :func:`_cutoff`.

    Returns:
        ``(offsets, index, rect)``: job ``j = b * tiles + t`` visits the pairs
        ``offsets[j] <= k < offsets[j + 1]``: Gaussian ``index[k]`` (ascending), on image rows
        ``rect[k, 0] <= y < rect[k, 1]`` and tile-local :data:`LANES`-pixel chunks
        ``rect[k, 2] <= c < rect[k, 3]``: the bounding box of the (widened) ellipse's part in the
        tile, on pixel centres.
    """
    nb, n = params.shape[0], params.shape[1]
    ntx = (width + tile - 1) // tile
    ntiles = ntx * ((height + tile - 1) // tile)
    # 1. each Gaussian's box (rows and columns it may light) and widened cut-off; an upper
    #    bound on its pairs: the tiles its box covers
    geo = np.zeros((nb * n, 5))  # cut-off, first row, last row, first column, last column
    gstart = np.zeros(nb * n + 1, np.int64)
    for f in prange(nb * n):  # flat (image, Gaussian) index: parallel even for one image
        b, i = f // n, f % n
        if i < min(max(counts[b], 0), n):
            cut = _cutoff(params, b, i, cutoff_q, eps)
            cx, cy = float(params[b, i, 0]), float(params[b, i, 1])
            l21, l22 = float(params[b, i, 3]), float(params[b, i, 4])
            hx = math.sqrt(cut) * abs(float(params[b, i, 2]))
            hy = math.sqrt(cut * (l21 * l21 + l22 * l22))
            near = cx + hx >= -1.0 and cx - hx <= width + 1.0
            near = near and cy + hy >= -1.0 and cy - hy <= height + 1.0
            if cut > 0.0 and near:
                j0, j1 = _centres_within(cx, -hx, hx, 0, width - 1)
                i0, i1 = _centres_within(cy, -hy, hy, 0, height - 1)
                if i0 <= i1 and j0 <= j1:
                    geo[f, 0], geo[f, 1], geo[f, 2], geo[f, 3], geo[f, 4] = cut, i0, i1, j0, j1
                    ntiles_box = (j1 // tile - j0 // tile + 1) * (i1 // tile - i0 // tile + 1)
                    gstart[f + 1] = ntiles_box
    for f in range(nb * n):
        gstart[f + 1] += gstart[f]
    # 2. per Gaussian, per tile column: the rows the ellipse spans inside it, then per tile there
    #    the columns; pairs are stored Gaussian-major for now
    gtile = np.empty(gstart[nb * n], np.int64)
    grect = np.empty((gstart[nb * n], 4), np.int32)
    gcount = np.zeros(nb * n, np.int64)
    for f in prange(nb * n):
        b, i = f // n, f % n
        cut = geo[f, 0]
        if cut > 0.0:
            i0, i1, j0, j1 = int(geo[f, 1]), int(geo[f, 2]), int(geo[f, 3]), int(geo[f, 4])
            cx, cy = float(params[b, i, 0]), float(params[b, i, 1])
            l11, l21, l22 = float(params[b, i, 2]), float(params[b, i, 3]), float(params[b, i, 4])
            sxx, sxy, syy = l11 * l11, l11 * l21, l21 * l21 + l22 * l22
            det = (l11 * l22) * (l11 * l22)
            p = gstart[f]
            for tx in range(j0 // tile, j1 // tile + 1):
                xa, xb = max(tx * tile, j0), min(tx * tile + tile - 1, j1)
                lo, hi = _slab_extent(xa + 0.5 - cx, xb + 0.5 - cx, sxx, syy, sxy, det, cut)
                ra, rb = _centres_within(cy, lo, hi, i0, i1)
                if ra > rb:
                    continue
                for ty in range(ra // tile, rb // tile + 1):
                    ya, yb = max(ra, ty * tile), min(rb, ty * tile + tile - 1)
                    lo, hi = _slab_extent(ya + 0.5 - cy, yb + 0.5 - cy, syy, sxx, sxy, det, cut)
                    ca, cb = _centres_within(cx, lo, hi, xa, xb)
                    if ca > cb:
                        continue
                    gtile[p] = ty * ntx + tx
                    grect[p, 0], grect[p, 1] = ya, yb + 1
                    grect[p, 2] = (ca - tx * tile) // LANES
                    grect[p, 3] = (cb - tx * tile) // LANES + 1
                    p += 1
            gcount[f] = p - gstart[f]
    # 3. regroup tile-major (CSR over jobs), one image per iteration: count per tile, prefix,
    #    fill; Gaussians stay in ascending order within a tile
    first = np.zeros(nb + 1, np.int64)  # each image's first pair
    for b in range(nb):
        first[b + 1] = first[b]
        for f in range(b * n, b * n + n):
            first[b + 1] += gcount[f]
    offsets = np.empty(nb * ntiles + 1, np.int64)
    offsets[nb * ntiles] = first[nb]
    index = np.empty(first[nb], np.int32)
    rect = np.empty((first[nb], 4), np.int32)
    for b in prange(nb):
        fill = np.zeros(ntiles + 1, np.int64)
        for f in range(b * n, b * n + n):
            for p in range(gstart[f], gstart[f] + gcount[f]):
                fill[gtile[p] + 1] += 1
        fill[0] = first[b]
        for t in range(ntiles):
            fill[t + 1] += fill[t]
        offsets[b * ntiles : b * ntiles + ntiles] = fill[:ntiles]
        for f in range(b * n, b * n + n):
            for p in range(gstart[f], gstart[f] + gcount[f]):
                k = fill[gtile[p]]
                fill[gtile[p]] = k + 1
                index[k] = f - b * n
                rect[k, 0], rect[k, 1], rect[k, 2], rect[k, 3] = (
                    grect[p, 0],
                    grect[p, 1],
                    grect[p, 2],
                    grect[p, 3],
                )
    return offsets, index, rect


@njit(**_SIMD)
def _weight(dy, zt, zsq, l22, cutq, nhalf, qclamp, zero):  # pragma: no cover - jitted
    """``(w, z2)`` at one pixel: ``w = exp(-q/2)``, or 0 beyond the cut-off ``q > cutq``.

    ``q = z1² + z2²`` with ``z2 = (dy - l21 z1) / l22`` is rounded exactly as the reference rounds
    it (the caller passes ``zt = l21 z1`` and ``zsq = z1²``; these flags allow no FMA and no
    reordering), so the cut-off decides every pixel the same way.
    """
    z2 = (dy - zt) / l22
    q = zsq + z2 * z2
    e = vexp(nhalf * min(q, qclamp))
    return (e if q <= cutq else zero), z2


# --------------------------------------------------------------------------- forward
@njit(parallel=True, **_SIMD)
def forward(params, offsets, index, rect, xs, ys, consts, tile, out):  # pragma: no cover
    """Render into ``out`` ``[B, H, W, 3]`` (C-contiguous), writing every pixel.

    Args:
        params: ``[B, N, 8]`` packed Gaussians (pixel units).
        offsets, index, rect: the binning from :func:`bin_gaussians`.
        xs: ``[ntx * tile]`` pixel-centre x coordinates ``j + 0.5`` (past ``W`` too).
        ys: ``[nty * tile]`` pixel-centre y coordinates.
        consts: ``[2]`` in the data's dtype: ``(cutoff_q, -0.5)``.
        tile: tile side, a multiple of :data:`LANES` up to :data:`MAX_TILE`.
        out: ``[B, H, W, 3]`` output, overwritten.
    """
    nb, height, width = out.shape[0], out.shape[1], out.shape[2]
    ntx = (width + tile - 1) // tile
    ntiles = ntx * ((height + tile - 1) // tile)
    cutq, nhalf = consts[0], consts[1]
    qclamp = cutq + cutq
    zero = cutq - cutq
    flat = out.reshape(-1)
    for job in prange(nb * ntiles):
        _wide_vectors()
        b = job // ntiles
        ty = (job - b * ntiles) // ntx
        tx = job - b * ntiles - ty * ntx
        x0, y0 = tx * tile, ty * tile
        acc0 = carray(_stack_tile(out.dtype), MAX_TILE * MAX_TILE)
        acc1 = carray(_stack_tile(out.dtype), MAX_TILE * MAX_TILE)
        acc2 = carray(_stack_tile(out.dtype), MAX_TILE * MAX_TILE)
        zsq = carray(_stack_lanes(out.dtype), LANES)  # z1², per column of the chunk
        zt = carray(_stack_lanes(out.dtype), LANES)  # l21 z1
        for p in range(tile * tile):
            acc0[p] = zero
            acc1[p] = zero
            acc2[p] = zero
        for k in range(offsets[job], offsets[job + 1]):
            i = index[k]
            cx, cy = params[b, i, 0], params[b, i, 1]
            l11, l21, l22 = params[b, i, 2], params[b, i, 3], params[b, i, 4]
            c0, c1, c2 = params[b, i, 5], params[b, i, 6], params[b, i, 7]
            y_lo, y_hi = rect[k, 0], rect[k, 1]
            for ch in range(rect[k, 2] * LANES, rect[k, 3] * LANES, LANES):
                p = np.uintp(x0 + ch)
                for lane in range(LANES):  # z1 = (x - cx) / l11 depends on the column only
                    u = np.uintp(lane)
                    z1 = (xs[p + u] - cx) / l11
                    zsq[u] = z1 * z1
                    zt[u] = l21 * z1
                for y in range(y_lo, y_hi):
                    dy = ys[y] - cy
                    o = np.uintp((y - y0) * tile + ch)
                    for lane in range(LANES):
                        u = np.uintp(lane)
                        w, _ = _weight(dy, zt[u], zsq[u], l22, cutq, nhalf, qclamp, zero)
                        acc0[o + u] = _madd(w, c0, acc0[o + u])
                        acc1[o + u] = _madd(w, c1, acc1[o + u])
                        acc2[o + u] = _madd(w, c2, acc2[o + u])
        for r in range(min(tile, height - y0)):
            base = np.uintp(((b * height + y0 + r) * width + x0) * 3)
            for c in range(min(tile, width - x0)):
                a = np.uintp(r * tile + c)
                d = base + np.uintp(3 * c)
                flat[d] = acc0[a]
                flat[d + np.uintp(1)] = acc1[a]
                flat[d + np.uintp(2)] = acc2[a]


# --------------------------------------------------------------------------- backward
@njit(parallel=True, **_SIMD)
def backward(params, offsets, index, rect, xs, ys, consts, tile, grad_out):  # pragma: no cover
    """Per-(Gaussian, tile) gradient sums for the upstream gradient ``grad_out`` ``[B, H, W, 3]``.

    Returns:
        ``[pairs, N_SUMS]`` float64: row ``k`` belongs to Gaussian ``index[k]`` of its job.
    """
    nb, height, width = grad_out.shape[0], grad_out.shape[1], grad_out.shape[2]
    ntx = (width + tile - 1) // tile
    ntiles = ntx * ((height + tile - 1) // tile)
    cutq, nhalf = consts[0], consts[1]
    qclamp = cutq + cutq
    zero = cutq - cutq
    flat = grad_out.reshape(-1)
    partial = np.empty((index.shape[0], N_SUMS), np.float64)
    for job in prange(nb * ntiles):
        _wide_vectors()
        k0, k1 = offsets[job], offsets[job + 1]
        if k0 == k1:
            continue
        b = job // ntiles
        ty = (job - b * ntiles) // ntx
        tx = job - b * ntiles - ty * ntx
        x0, y0 = tx * tile, ty * tile
        dt = grad_out.dtype
        gp0 = carray(_stack_tile(dt), MAX_TILE * MAX_TILE)
        gp1 = carray(_stack_tile(dt), MAX_TILE * MAX_TILE)
        gp2 = carray(_stack_tile(dt), MAX_TILE * MAX_TILE)
        for p in range(tile * tile):  # zero outside the image, so those pixels add nothing
            gp0[p] = zero
            gp1[p] = zero
            gp2[p] = zero
        for r in range(min(tile, height - y0)):
            base = np.uintp(((b * height + y0 + r) * width + x0) * 3)
            for c in range(min(tile, width - x0)):
                a = np.uintp(r * tile + c)
                d = base + np.uintp(3 * c)
                gp0[a] = flat[d]
                gp1[a] = flat[d + np.uintp(1)]
                gp2[a] = flat[d + np.uintp(2)]
        # per lane (= column of the current chunk): z1 terms, then the row sums of the chunk
        zv = carray(_stack_lanes(dt), LANES)  # z1
        zsq = carray(_stack_lanes(dt), LANES)  # z1²
        zt = carray(_stack_lanes(dt), LANES)  # l21 z1
        sa = carray(_stack_lanes(dt), LANES)  # Σ_rows G
        sb = carray(_stack_lanes(dt), LANES)  # Σ_rows G z2
        sc = carray(_stack_lanes(dt), LANES)  # Σ_rows G z2²
        sw0 = carray(_stack_lanes(dt), LANES)  # Σ_rows w g_0
        sw1 = carray(_stack_lanes(dt), LANES)
        sw2 = carray(_stack_lanes(dt), LANES)
        t0 = carray(_stack_lanes(dt), LANES)  # the pair's N_SUMS sums, per lane
        t1 = carray(_stack_lanes(dt), LANES)
        t2 = carray(_stack_lanes(dt), LANES)
        t3 = carray(_stack_lanes(dt), LANES)
        t4 = carray(_stack_lanes(dt), LANES)
        t5 = carray(_stack_lanes(dt), LANES)
        t6 = carray(_stack_lanes(dt), LANES)
        t7 = carray(_stack_lanes(dt), LANES)
        for k in range(k0, k1):
            i = index[k]
            cx, cy = params[b, i, 0], params[b, i, 1]
            l11, l21, l22 = params[b, i, 2], params[b, i, 3], params[b, i, 4]
            c0, c1, c2 = params[b, i, 5], params[b, i, 6], params[b, i, 7]
            y_lo, y_hi = rect[k, 0], rect[k, 1]
            for lane in range(LANES):
                t0[lane] = t1[lane] = t2[lane] = t3[lane] = zero
                t4[lane] = t5[lane] = t6[lane] = t7[lane] = zero
            for ch in range(rect[k, 2] * LANES, rect[k, 3] * LANES, LANES):
                p = np.uintp(x0 + ch)
                for lane in range(LANES):
                    u = np.uintp(lane)
                    z1 = (xs[p + u] - cx) / l11
                    zv[u] = z1
                    zsq[u] = z1 * z1
                    zt[u] = l21 * z1
                    sa[u] = sb[u] = sc[u] = sw0[u] = sw1[u] = sw2[u] = zero
                for y in range(y_lo, y_hi):
                    dy = ys[y] - cy
                    o = np.uintp((y - y0) * tile + ch)
                    for lane in range(LANES):
                        u = np.uintp(lane)
                        w, z2 = _weight(dy, zt[u], zsq[u], l22, cutq, nhalf, qclamp, zero)
                        g0, g1, g2 = gp0[o + u], gp1[o + u], gp2[o + u]
                        gz = -w * _madd(g2, c2, _madd(g1, c1, g0 * c0))
                        gz2 = gz * z2
                        sa[u] += gz
                        sb[u] += gz2
                        sc[u] = _madd(gz2, z2, sc[u])
                        sw0[u] = _madd(w, g0, sw0[u])
                        sw1[u] = _madd(w, g1, sw1[u])
                        sw2[u] = _madd(w, g2, sw2[u])
                for lane in range(LANES):  # Σ G z1^a z2^b = Σ_columns z1^a Σ_rows G z2^b
                    t0[lane] += sw0[lane]
                    t1[lane] += sw1[lane]
                    t2[lane] += sw2[lane]
                    t3[lane] = _madd(zv[lane], sa[lane], t3[lane])
                    t4[lane] += sb[lane]
                    t5[lane] = _madd(zsq[lane], sa[lane], t5[lane])
                    t6[lane] = _madd(zv[lane], sb[lane], t6[lane])
                    t7[lane] += sc[lane]
            partial[k, 0], partial[k, 1] = _hsum(t0), _hsum(t1)
            partial[k, 2], partial[k, 3] = _hsum(t2), _hsum(t3)
            partial[k, 4], partial[k, 5] = _hsum(t4), _hsum(t5)
            partial[k, 6], partial[k, 7] = _hsum(t6), _hsum(t7)
    return partial


@njit(parallel=True, **_SCALAR)
def reduce_partials(params, offsets, index, partial, ntiles):  # pragma: no cover - jitted
    """Sum each Gaussian's per-tile sums and turn them into gradients.

    Returns:
        ``[B, N, 8]`` float64 gradients with respect to ``(cx, cy, l11, l21, l22, r, g, b)``;
        exact zeros for Gaussians that light no pixel (padded, culled or off-image).
    """
    nb, n = params.shape[0], params.shape[1]
    grads = np.zeros((nb, n, 8))
    for b in prange(nb):
        sums = np.zeros((n, N_SUMS))
        touched = np.zeros(n, np.bool_)
        for k in range(offsets[b * ntiles], offsets[(b + 1) * ntiles]):
            i = index[k]
            touched[i] = True
            for m in range(N_SUMS):
                sums[i, m] += partial[k, m]
        for i in range(n):
            if not touched[i]:
                continue
            l11, l21, l22 = float(params[b, i, 2]), float(params[b, i, 3]), float(params[b, i, 4])
            i11 = 1.0 / l11
            i22 = 1.0 / l22
            cross = l21 * i11 * i22
            grads[b, i, 0] = -sums[i, 3] * i11 + sums[i, 4] * cross
            grads[b, i, 1] = -sums[i, 4] * i22
            grads[b, i, 2] = -sums[i, 5] * i11 + sums[i, 6] * cross
            grads[b, i, 3] = -sums[i, 6] * i22
            grads[b, i, 4] = -sums[i, 7] * i22
            grads[b, i, 5] = sums[i, 0]
            grads[b, i, 6] = sums[i, 1]
            grads[b, i, 7] = sums[i, 2]
    return grads
