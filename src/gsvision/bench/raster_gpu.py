"""GPU rasteriser throughput: images/s for forward + backward, Triton vs sparse vs dense reference.

``gsvision bench raster_gpu [--batches 1 16 256] [--n 1024] ...`` renders random splats shaped like
fitted ones (N Gaussians spread over a 224×224 raster, σ log-uniform in ``--sigma`` pixels, up to
3:1 anisotropy, random rotations, opacity folded in) and times, per backend and batch size:

- ``images_per_s``: forward + backward (``out.backward(g)`` with a fixed upstream gradient), the
  cost a fitting step pays;
- ``fwd_images_per_s``: forward alone (no autograd graph), the cost of drawing;
- ``peak_mib``: peak CUDA memory above what was allocated before the timed loop.

Timing brackets each timed loop with ``torch.cuda.synchronize()``. The dense reference holds
several ``B × N × H × W`` tensors, so it is skipped where its estimate exceeds free memory (and an
out-of-memory error is recorded rather than raised). Results go to
``benchmarks/results/raster_gpu.json`` (``--out-dir`` to change), with the machine's description.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch

from gsvision.bench._common import RESULTS_DIR, write_result
from gsvision.splats import Splats

__all__ = ["main", "build_parser", "make_splats"]

NAME = "raster_gpu"
#: Dense reference: live ``B × N × H × W`` tensors per forward + backward (a generous estimate).
_REFERENCE_TENSORS = 12


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"gsvision bench {NAME}", description=__doc__.split("\n")[0])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 16, 256], help="batch sizes")
    p.add_argument("--n", type=int, default=1024, help="Gaussians per image")
    p.add_argument("--height", type=int, default=224)
    p.add_argument("--width", type=int, default=224)
    p.add_argument(
        "--backends",
        nargs="+",
        default=["triton", "sparse", "reference"],
        help="backends to time (those unusable here are recorded with the reason)",
    )
    p.add_argument("--sigma", type=float, nargs=2, default=[1.0, 8.0], help="σ range in pixels")
    p.add_argument("--iters", type=int, default=20, help="timed iterations per measurement")
    p.add_argument("--warmup", type=int, default=3, help="untimed iterations (JIT compile, caches)")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fwd-chunk", type=int, help="override triton.FWD_CHUNK (power of 2)")
    p.add_argument("--bwd-chunk", type=int, help="override triton.BWD_CHUNK (power of 2)")
    p.add_argument("--fwd-warps", type=int, help="override triton.FWD_WARPS")
    p.add_argument("--bwd-warps", type=int, help="override triton.BWD_WARPS")
    p.add_argument("--out-dir", default=str(RESULTS_DIR), help="folder for raster_gpu.json")
    return p


def make_splats(
    batch: int,
    n: int,
    height: int,
    width: int,
    sigma_px: tuple[float, float],
    device: torch.device | str,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
) -> Splats:
    """Random splats with the statistics of fitted ones, every slot valid, built on ``device``.

    Args:
        batch: images.
        n: Gaussians per image.
        height: raster rows the σ range refers to.
        width: raster columns.
        sigma_px: ``(lo, hi)`` for the log-uniform major-axis σ, in pixels.
        device: where to build the tensors.
        dtype: floating dtype.
        seed: generator seed (the draw happens on CPU, so it is device-independent).
    """
    g = torch.Generator().manual_seed(seed)

    def u(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=g, dtype=torch.float64)

    means = u(batch, n, 2)  # [B, N, 2] normalised
    lo, hi = math.log(sigma_px[0]), math.log(sigma_px[1])
    s1 = torch.exp(lo + (hi - lo) * u(batch, n))  # [B, N] major σ, pixels
    s2 = s1 / (1 + 2 * u(batch, n))  # up to 3:1
    theta = u(batch, n) * math.pi
    c, s = torch.cos(theta), torch.sin(theta)
    sxx = c * c * s1**2 + s * s * s2**2  # Σ = R diag(s1², s2²) Rᵀ
    sxy = c * s * (s1**2 - s2**2)
    syy = s * s * s1**2 + c * c * s2**2
    l11 = torch.sqrt(sxx)
    l21 = sxy / l11
    l22 = torch.sqrt(syy - l21**2)
    chol = torch.stack([l11 / width, l21 / height, l22 / height], -1)  # [B, N, 3] normalised
    colors = u(batch, n, 3) * 0.64  # grid-init-like colour scale (overlaps sum)
    return Splats.create(
        means.to(device, dtype), chol.to(device, dtype), colors.to(device, dtype), (height, width)
    )


def _time_backend(
    name: str, splats: Splats, height: int, width: int, iters: int, warmup: int
) -> dict:
    """Forward + backward and forward-only throughput of one backend on one batch."""
    from gsvision.raster import render

    batch = splats.batch_size
    leaves = [t.detach().clone().requires_grad_(True) for t in (splats.means, splats.chol)]
    leaves.append(splats.colors.detach().clone().requires_grad_(True))
    s = Splats(*leaves, splats.counts, splats.image_sizes)
    upstream = torch.randn(
        (batch, height, width, 3), device=splats.device, dtype=splats.dtype,
        generator=torch.Generator(splats.device).manual_seed(1),
    )  # fmt: skip

    def step() -> None:
        for t in leaves:
            t.grad = None
        render(s, height, width, backend=name).backward(upstream)

    torch.cuda.synchronize()
    start = time.perf_counter()
    step()  # includes JIT compilation / autotuning on first use
    torch.cuda.synchronize()
    first_s = time.perf_counter() - start
    for _ in range(max(warmup - 1, 0)):
        step()
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(iters):
        step()
    torch.cuda.synchronize()
    total = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() - base
    with torch.no_grad():
        for _ in range(warmup):
            render(splats, height, width, backend=name)
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(iters):
            render(splats, height, width, backend=name)
        torch.cuda.synchronize()
        fwd_total = time.perf_counter() - start
    return {
        "status": "ok",
        "images_per_s": batch * iters / total,
        "ms_per_batch": 1e3 * total / iters,
        "fwd_images_per_s": batch * iters / fwd_total,
        "fwd_ms_per_batch": 1e3 * fwd_total / iters,
        "first_call_s": first_s,
        "peak_mib": peak / 2**20,
    }


def _reference_fits(batch: int, n: int, height: int, width: int, dtype: torch.dtype) -> bool:
    free, _ = torch.cuda.mem_get_info()
    elem = torch.finfo(dtype).bits // 8
    return _REFERENCE_TENSORS * batch * n * height * width * elem < 0.8 * free


def _check_against_reference(
    height: int, width: int, n: int, sigma: tuple[float, float], dtype: torch.dtype, seed: int
) -> dict[str, float]:
    """Relative error of the Triton output and gradients vs the reference, on one image."""
    from gsvision.raster import render
    from gsvision.raster.reference import render_reference

    base = make_splats(1, n, height, width, sigma, "cuda", dtype, seed + 1)
    outs = []
    for backend in ("triton", "reference"):
        leaves = [t.detach().clone().requires_grad_(True) for t in (base.means, base.chol)]
        leaves.append(base.colors.detach().clone().requires_grad_(True))
        s = Splats(*leaves, base.counts, base.image_sizes)
        out = (
            render(s, height, width, backend="triton")
            if backend == "triton"
            else (render_reference(s, height, width))
        )
        grads = torch.autograd.grad(out.square().sum(), leaves)
        outs.append((out.detach(), grads))

    def rel(a: torch.Tensor, b: torch.Tensor) -> float:
        return float(
            torch.linalg.vector_norm((a - b).double()) / torch.linalg.vector_norm(b.double())
        )

    (out, grads), (ref, ref_grads) = outs
    errors = {"values": rel(out, ref)}
    for name, g, r in zip(("means", "chol", "colors"), grads, ref_grads, strict=True):
        errors[name] = rel(g, r)
    return errors


def _measure(args: argparse.Namespace, status: dict[str, str | None]) -> list[dict]:
    """One row per (batch, backend), printed as it completes."""
    dtype = getattr(torch, args.dtype)
    results = []
    for batch in args.batches:
        splats = make_splats(
            batch, args.n, args.height, args.width, args.sigma, "cuda", dtype, args.seed
        )
        for name in args.backends:
            row = {"backend": name, "batch": batch}
            reason = status.get(name, f"unknown backend {name!r}")
            if reason is not None:
                row.update(status="unavailable", reason=reason)
            elif name == "reference" and not _reference_fits(
                batch, args.n, args.height, args.width, dtype
            ):
                row.update(status="skipped", reason="estimated dense memory exceeds free memory")
            else:
                try:
                    row.update(
                        _time_backend(
                            name, splats, args.height, args.width, args.iters, args.warmup
                        )
                    )
                except torch.cuda.OutOfMemoryError as exc:
                    row.update(status="oom", reason=str(exc).splitlines()[0])
                torch.cuda.empty_cache()
            results.append(row)
            print(json.dumps(row))
        del splats
        torch.cuda.empty_cache()
    return results


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark; return what was written to ``<out-dir>/raster_gpu.json``.

    Args:
        argv: command-line arguments (``None``: ``sys.argv[1:]``).

    Returns:
        The written JSON payload: ``config`` (including the Triton launch shape used),
        ``results`` (one row per backend × batch), ``check_vs_reference`` (Triton's relative
        errors on one image) and ``machine``.

    Raises:
        SystemExit: without a CUDA device (nothing is measured or written).
    """
    args = build_parser().parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit(
            f"{NAME}: needs a CUDA device (torch.cuda.is_available() is False); nothing measured"
        )
    from gsvision.raster import backend_status

    status = backend_status()
    config = {k: v for k, v in vars(args).items() if k != "out_dir"}
    knobs = ("fwd_chunk", "bwd_chunk", "fwd_warps", "bwd_warps")
    rt = None
    if status.get("triton") is None:
        from gsvision.raster import triton as rt
    saved = {k: getattr(rt, k.upper()) for k in knobs} if rt is not None else {}
    try:
        for k in saved:  # launch-shape overrides, restored afterwards
            if getattr(args, k) is not None:
                setattr(rt, k.upper(), getattr(args, k))
            config[k] = getattr(rt, k.upper())
        results = _measure(args, status)
        check = None
        if "triton" in args.backends and rt is not None:
            check = _check_against_reference(
                args.height, args.width, args.n, args.sigma, getattr(torch, args.dtype), args.seed
            )
    finally:
        for k, v in saved.items():
            setattr(rt, k.upper(), v)
    data = {"config": config, "results": results, "check_vs_reference": check}
    path = write_result(NAME, data, args.out_dir)
    print(f"wrote {path}")
    return json.loads(path.read_text())
