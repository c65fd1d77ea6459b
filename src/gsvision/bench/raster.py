"""CPU rasteriser speed: forward + backward per image, numba kernel vs sparse vs dense reference.

``gsvision bench raster [--quick] [--n 256 1024 4096] [--batch 1 16] ...`` renders splats laid out
like a fit (``grid``: one Gaussian per cell, σ ≈ half the cell, small jitter, as the grid init
places them) and ``random`` ones (uniform centres, log-uniform σ in 1–8 px, up to 3:1 anisotropy,
any rotation), and records for every usable CPU backend, side by side:

- ``fwd_bwd_ms_per_image``: median over timed iterations of ``render(...)`` + ``out.backward(g)``
  (a fixed upstream gradient; the cost a fitting step pays), divided by the batch size;
- ``fwd_ms_per_image``: forward alone under ``torch.no_grad()`` (the cost of drawing);
- ``lit_pairs_per_s``: (Gaussian, pixel) pairs inside the 3σ cut-off (the work any correct
  renderer must do) per second of forward + backward;
- ``peak_rss_mib``: peak resident memory of the measuring process above its resident memory just
  before the first render (``ru_maxrss``, Linux/macOS; each configuration runs in its own fresh
  subprocess so the peaks do not mix);
- ``speedup_vs_reference`` / ``speedup_vs_sparse`` of every row.

The dense reference holds several ``B × N × H × W`` tensors, so it is never run on the full
image unless it fits: it renders a band of rows (the same Gaussians, the raster cropped to rows
``[H/2 - R/2, H/2 + R/2)`` by re-normalising the splats) with at most ``--reference-pairs``
``B × N × R × W`` pairs, and its times are **extrapolated** linearly to the full image (×H/R; its
cost per pair does not depend on content). Bands must be large: on the 2-core machine a 2^23-pair
band ran ~40% faster per pair than the full image (caches), a 2^24-pair one within 3% of it (N =
1024, batch 1: 2.87 vs 2.93 s measured on the full image), hence the 2^25 default. Those rows say
``"extrapolated": true`` with the rows used, and their memory is the band's (``peak_rss_mib``)
and the band's scaled by H/R (``peak_rss_mib_full_estimate``).

The numba kernel runs with torch single-threaded (``torch.set_num_threads(1)``, as the fitting
loop does, so torch's spinning OpenMP workers do not compete with numba's threads); sparse and
reference run with torch's default threads. Writes ``benchmarks/results/raster.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time

import torch

from gsvision.bench._common import RESULTS_DIR, write_result
from gsvision.splats import Splats

__all__ = ["main", "build_parser", "make_case", "lit_pairs"]

NAME = "raster"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"gsvision bench {NAME}", description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, nargs="+", default=[256, 1024, 4096], help="Gaussians/image")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 16], help="batch sizes")
    p.add_argument("--size", type=int, nargs=2, default=[224, 224], metavar=("H", "W"))
    p.add_argument("--layouts", nargs="+", default=["grid", "random"], choices=["grid", "random"])
    p.add_argument("--backends", nargs="+", default=["cpu", "sparse", "reference"])
    p.add_argument("--iters", type=int, default=5, help="timed iterations (median is reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed iterations (compile, caches)")
    p.add_argument(
        "--reference-pairs",
        type=int,
        default=1 << 25,
        help="most B×N×rows×W pairs the dense reference renders at once (then extrapolated)",
    )
    p.add_argument("--reference-iters", type=int, default=2, help="timed iterations, reference")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="N=1024, batch 1 and 16, grid layout")
    p.add_argument("--out-dir", default=str(RESULTS_DIR), help="folder for raster.json")
    p.add_argument("--worker", help=argparse.SUPPRESS)  # JSON config: measure one, print JSON
    return p


# ------------------------------------------------------------------------------------ cases
def make_case(layout: str, batch: int, n: int, height: int, width: int, seed: int = 0) -> Splats:
    """Splats shaped like fitted ones (``grid``) or scattered at random (``random``)."""
    g = torch.Generator().manual_seed(seed)

    def u(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=g, dtype=torch.float64)

    if layout == "grid":
        rows = max(1, round(math.sqrt(n * height / width)))
        cols = math.ceil(n / rows)
        k = torch.arange(n)
        cell = torch.tensor([width / cols, height / rows], dtype=torch.float64)  # px
        centre = torch.stack([(k % cols) + 0.5, (k // cols) + 0.5], -1) * cell  # [n, 2] px
        mean_px = centre + (u(batch, n, 2) - 0.5) * 0.3 * cell
        s1 = 0.5 * cell[0] * (0.8 + 0.4 * u(batch, n))  # σ ≈ half the cell
        s2 = 0.5 * cell[1] * (0.8 + 0.4 * u(batch, n))
        theta = (u(batch, n) - 0.5) * 0.6
    elif layout == "random":
        mean_px = u(batch, n, 2) * torch.tensor([width, height], dtype=torch.float64)
        s1 = torch.exp(math.log(1.0) + math.log(8.0) * u(batch, n))
        s2 = s1 / torch.exp(math.log(3.0) * u(batch, n))
        theta = u(batch, n) * math.pi
    else:
        raise ValueError(f"unknown layout {layout!r}")
    c, s = torch.cos(theta), torch.sin(theta)
    sxx = c * c * s1**2 + s * s * s2**2
    sxy = c * s * (s1**2 - s2**2)
    syy = s * s * s1**2 + c * c * s2**2
    l11 = sxx.sqrt()
    l21 = sxy / l11
    l22 = (syy - l21**2).sqrt()
    scale = torch.tensor([width, height], dtype=torch.float64)
    means = (mean_px / scale).float()
    chol = torch.stack([l11 / width, l21 / height, l22 / height], -1).float()
    colors = (u(batch, n, 3) * 0.64).float()
    return Splats.create(means, chol, colors, (height, width))


def lit_pairs(splats: Splats, height: int, width: int) -> int:
    """(Gaussian, pixel) pairs with ``q <= CUTOFF_Q``, summed over the batch (sparse evaluation)."""
    from gsvision.raster import sparse

    ones = Splats(
        splats.means,
        splats.chol,
        torch.ones_like(splats.colors),
        splats.counts,
        splats.image_sizes,
    )
    total = 0
    with torch.no_grad():
        ok, ox, oy, px, py = sparse._boxes(
            ones.pixel_means(height, width),
            ones.pixel_chol(height, width),
            ones.mask,
            height,
            width,
        )
        mean_px, chol_px = ones.pixel_means(height, width), ones.pixel_chol(height, width)
        for b, i in ok.nonzero().tolist():
            _, contrib = sparse._splat_patches(
                torch.tensor([b]),
                torch.tensor([i]),
                mean_px,
                chol_px,
                ones.colors,
                ox,
                oy,
                int(py[b, i]),
                int(px[b, i]),
                height,
                width,
            )
            total += int((contrib[:, 0] > 0).sum())
    return total


def _band(splats: Splats, height: int, rows: int) -> Splats:
    """The same Gaussians seen through rows ``[r0, r0 + rows)`` of a ``height``-row raster."""
    r0 = (height - rows) // 2
    means = splats.means.clone()
    means[..., 1] = (splats.means[..., 1] * height - r0) / rows
    chol = splats.chol.clone()
    chol[..., 1:] = splats.chol[..., 1:] * height / rows
    return Splats(means, chol, splats.colors, splats.counts, splats.image_sizes)


# ------------------------------------------------------------------------------------ worker
def _rss_mib() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:  # not Linux: fall back to the peak so far (makes the delta conservative)
        return _peak_mib()


def _peak_mib() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def _measure(cfg: dict) -> dict:
    """Time one (backend, layout, n, batch) configuration in this process."""
    from gsvision.raster import render

    backend, height, width = cfg["backend"], cfg["height"], cfg["width"]
    batch = cfg["batch"]
    if backend == "cpu":
        torch.set_num_threads(1)
    splats = make_case(cfg["layout"], batch, cfg["n"], height, width, cfg["seed"])
    rows = height
    if backend == "reference":
        rows = max(1, min(height, cfg["reference_pairs"] // (batch * cfg["n"] * width)))
        splats = _band(splats, height, rows)
    leaves = {k: t.clone().requires_grad_(True) for k, t in splats.fields().items()}
    live = Splats(
        leaves["means"], leaves["chol"], leaves["colors"], splats.counts, splats.image_sizes
    )
    grad = torch.randn(batch, rows, width, 3, generator=torch.Generator().manual_seed(1))

    def fwd_bwd() -> None:
        render(live, rows, width, backend=backend).backward(grad)

    def fwd() -> None:
        with torch.no_grad():
            render(splats, rows, width, backend=backend)

    # Import the backend and load its compiled kernels before the memory baseline.
    tiny = make_case("random", 1, 1, 8, 8)
    tiny.means.requires_grad_(True)
    render(tiny, 8, 8, backend=backend).sum().backward()
    rss0 = _rss_mib()
    out = {}
    for name, fn in (("fwd_bwd", fwd_bwd), ("fwd", fwd)):
        for _ in range(cfg["warmup"]):
            fn()
        times = []
        for _ in range(cfg["iters"]):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        scale = height / rows  # 1 unless the reference rendered a band
        out[f"{name}_ms_per_image"] = statistics.median(times) * scale / batch * 1e3
    out["peak_rss_mib"] = round(max(0.0, _peak_mib() - rss0), 1)
    out["torch_threads"] = torch.get_num_threads()
    if backend == "cpu":
        import numba

        out["numba_threads"] = numba.get_num_threads()
        out["numba_threading_layer"] = numba.threading_layer()
    if rows != height:
        out.update(
            extrapolated=True,
            rows_rendered=rows,
            peak_rss_mib_full_estimate=round(out["peak_rss_mib"] * height / rows, 1),
        )
    return out


def _run_worker(cfg: dict) -> dict:
    """Run :func:`_measure` in a fresh interpreter (clean peak memory) and parse its JSON."""
    cmd = [sys.executable, "-m", "gsvision.bench.raster", "--worker", json.dumps(cfg)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark; print a table; write and return the results dict."""
    args = build_parser().parse_args(argv)
    if args.worker:
        result = _measure(json.loads(args.worker))
        print(json.dumps(result))
        return result
    if args.quick:
        args.n, args.layouts = [1024], ["grid"]
    from gsvision.raster import backend_status

    status = backend_status()
    backends = [b for b in args.backends if status.get(b, "unknown backend") is None]
    skipped = {b: status.get(b, "unknown backend") for b in args.backends if b not in backends}
    height, width = args.size
    load_at_start = os.getloadavg() if hasattr(os, "getloadavg") else None
    rows = []
    for layout in args.layouts:
        for n in args.n:
            pairs = lit_pairs(make_case(layout, 1, n, height, width, args.seed), height, width)
            for batch in args.batch:
                for backend in backends:
                    cfg = dict(
                        backend=backend,
                        layout=layout,
                        n=n,
                        batch=batch,
                        height=height,
                        width=width,
                        seed=args.seed,
                        iters=args.reference_iters if backend == "reference" else args.iters,
                        warmup=args.warmup,
                        reference_pairs=args.reference_pairs,
                    )
                    res = _run_worker(cfg)
                    row = {k: cfg[k] for k in ("backend", "layout", "n", "batch")}
                    row.update(lit_pairs_per_image=pairs, **res)
                    if "fwd_bwd_ms_per_image" in res:
                        row["lit_pairs_per_s"] = pairs / (res["fwd_bwd_ms_per_image"] / 1e3)
                    rows.append(row)
                    print(_fmt(row), flush=True)
    _speedups(rows)
    data = {
        "description": __doc__.split("\n")[0],
        "config": {
            k: v for k, v in vars(args).items() if k not in ("worker", "out_dir", "backends")
        },
        "backends": backends,
        "backends_skipped": skipped,
        "numba_default_threads": _numba_threads(),
        "environment": {
            k: os.environ.get(k)
            for k in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "NUMBA_NUM_THREADS", "GOMP_SPINCOUNT")
        },
        "load_average_at_start": load_at_start,
        "results": rows,
    }
    for r in rows:
        if r["backend"] == "cpu" and "fwd_bwd_ms_per_image" in r:
            print(
                f"cpu {r['layout']} n={r['n']} b={r['batch']}: "
                f"{r.get('speedup_vs_sparse', float('nan')):.1f}x sparse, "
                f"{r.get('speedup_vs_reference', float('nan')):.0f}x reference"
            )
    path = write_result(NAME, data, args.out_dir)
    print(f"wrote {path}")
    return data


def _numba_threads() -> int | None:
    try:
        import numba

        return numba.config.NUMBA_NUM_THREADS
    except ImportError:
        return None


def _speedups(rows: list[dict]) -> None:
    key = lambda r: (r["layout"], r["n"], r["batch"])  # noqa: E731
    by = {(key(r), r["backend"]): r for r in rows if "fwd_bwd_ms_per_image" in r}
    for r in rows:
        if "fwd_bwd_ms_per_image" not in r:
            continue
        for other in ("reference", "sparse"):
            base = by.get((key(r), other))
            if base is not None and r["backend"] != other:
                r[f"speedup_vs_{other}"] = base["fwd_bwd_ms_per_image"] / r["fwd_bwd_ms_per_image"]


def _fmt(row: dict) -> str:
    head = f"{row['layout']:>6} n={row['n']:<5} b={row['batch']:<3} {row['backend']:<9}"
    if "error" in row:
        return f"{head} error: {row['error']}"
    extra = " (extrapolated)" if row.get("extrapolated") else ""
    return (
        f"{head} fwd+bwd {row['fwd_bwd_ms_per_image']:9.3f} ms/img  fwd "
        f"{row['fwd_ms_per_image']:9.3f} ms/img  {row['lit_pairs_per_s'] / 1e6:8.1f} M pairs/s  "
        f"peak {row['peak_rss_mib']:7.1f} MiB{extra}"
    )


if __name__ == "__main__":
    main()
