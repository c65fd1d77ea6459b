"""Tests for the Triton rasteriser (``raster/triton.py``) and its tile binning (``raster/_binning.py``).

How the CPU (interpreter) tests are isolated: triton decides *when it is first imported* whether
its own library functions (``tl.zeros``, ``tl.sum``, ...) are interpreted, so ``TRITON_INTERPRET=1``
cannot be switched on safely inside a pytest process that may already have imported triton, and
setting it here would leak into every later test module (and turn the GPU tests into interpreter
runs). Instead a module-scoped fixture runs this file as a script (``--worker``) in ONE child
Python process whose environment alone has ``TRITON_INTERPRET=1``; the child runs every case in
:data:`CASES` on CPU tensors and writes a JSON report, and each case is one test here that checks
its entry. This process's environment is never touched.

GPU tests (``@pytest.mark.gpu``) run the compiled kernels in-process at realistic sizes and are
skipped without CUDA.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

import pytest
import raster_cases as H
import torch

from gsvision.raster._binning import BOX_SLACK_PX, BOX_SLACK_REL, bin_gaussians
from gsvision.raster.reference import CUTOFF_Q, CUTOFF_SIGMA, mahalanobis, render_reference

# ----------------------------------------------------------------------------- interpreter cases
#: name -> (random_splats kwargs, height, width, tolerance). All float32 unless stated.
CASES: dict[str, tuple[dict, int, int, float]] = {
    "one_gaussian": (dict(batch=1, n=1, seed=0), 16, 16, 1e-4),
    "odd_size_counts": (dict(batch=2, n=32, seed=1, counts=[32, 17]), 37, 53, 1e-4),
    "n128_opacity_count0": (
        dict(batch=3, n=128, seed=2, counts=[128, 0, 77], opacity=True),
        37,
        53,
        1e-4,
    ),
    "thin": (dict(batch=2, n=64, seed=3, sigma_px=(0.3, 3.0), anisotropy=25.0), 33, 17, 1e-4),
    "large_off_image": (
        dict(batch=1, n=24, seed=4, sigma_px=(15.0, 60.0), margin=0.6, opacity=True),
        40,
        29,
        1e-4,
    ),
    "tiny_image": (dict(batch=2, n=9, seed=5, counts=[9, 4]), 1, 3, 1e-4),
    "wide_strip": (dict(batch=1, n=40, seed=6), 5, 70, 1e-4),
    "all_empty": (dict(batch=2, n=8, seed=7, counts=[0, 0]), 20, 18, 1e-4),
    "capacity_zero": (dict(batch=2, n=0, seed=8), 17, 19, 1e-4),
    "float64": (
        dict(batch=2, n=64, seed=9, counts=[64, 30], opacity=True, dtype=torch.float64),
        29,
        41,
        1e-10,
    ),
}
SPECIAL = ["poisoned_buffer", "render_dispatch"]


def _run_case(name: str) -> dict[str, float]:
    """Run one case in the interpreter child; return its relative errors (raises on failure)."""
    from gsvision.raster import render, resolve_backend
    from gsvision.raster.triton import rasterize_into, render_triton

    if name == "poisoned_buffer":
        # Small Gaussians leave most tiles empty and image 1 has none at all: every pixel must
        # still be written, since the buffer is never zero-filled.
        s = H.random_splats(2, 20, 45, 38, seed=10, sigma_px=(0.5, 3.0), counts=[20, 0])
        out = torch.full((2, 45, 38, 3), float("nan"))
        rasterize_into(out, s.pixel_means(45, 38), s.pixel_chol(45, 38), s.colors, s.counts)
        assert torch.isfinite(out).all(), f"{int((~torch.isfinite(out)).sum())} unwritten values"
        ref = render_reference(s, 45, 38)
        assert (out[1] == 0).all()
        return {"values": H.relative_error(out, ref)}
    if name == "render_dispatch":
        s = H.random_splats(2, 16, 21, 34, seed=11, opacity=True, counts=[16, 5])
        assert resolve_backend("cpu", "triton") == "triton"
        out = render(s, 21, 34, backend="triton")
        assert torch.equal(out, render_triton(s, 21, 34))
        return {"values": H.relative_error(out, render_reference(s, 21, 34))}
    kwargs, height, width, tol = CASES[name]
    s = H.random_splats(height=height, width=width, **kwargs)
    return H.compare_with_reference(render_triton, s, height, width, tol=tol)


def _worker_main(out_path: str) -> None:
    """Entry of the interpreter child: run every case, write ``{name: result}`` as JSON."""
    from gsvision.raster import triton as rt

    results: dict[str, dict] = {"_meta": {"interpreted": rt.interpreted()}}
    for name in [*CASES, *SPECIAL]:
        start = time.perf_counter()
        try:
            errors = _run_case(name)
            results[name] = {"ok": True, "errors": errors}
        except Exception:
            results[name] = {"ok": False, "error": traceback.format_exc()}
        results[name]["seconds"] = time.perf_counter() - start
    Path(out_path).write_text(json.dumps(results, indent=1))


@pytest.fixture(scope="module")
def interpreter_results(tmp_path_factory) -> dict[str, dict]:
    pytest.importorskip("triton")
    out = tmp_path_factory.mktemp("triton_interp") / "results.json"
    import gsvision

    # The child imports the same gsvision as this process, however it was put on the path.
    src = str(Path(gsvision.__file__).resolve().parents[1])
    path = os.pathsep.join(p for p in [src, os.environ.get("PYTHONPATH", "")] if p)
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=path)
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0 and out.exists(), (
        f"interpreter worker failed (rc {proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    )
    results = json.loads(out.read_text())
    assert results["_meta"]["interpreted"], "the child did not run in interpreter mode"
    return results


@pytest.mark.parametrize("name", [*CASES, *SPECIAL])
def test_interpreter_matches_reference(interpreter_results, name, record_property):
    result = interpreter_results[name]
    assert result["ok"], result["error"]
    record_property("relative_errors", result["errors"])
    tol = CASES[name][3] if name in CASES else 1e-4
    assert all(e < tol for e in result["errors"].values()), result["errors"]


# ----------------------------------------------------------------------------- binning (plain torch)
def _brute_force_pairs(s, height: int, width: int, tile: int = 16) -> set[tuple[int, int]]:
    """``{(global tile, flat Gaussian id)}`` from the box rule evaluated at every pixel centre."""
    mean, chol = s.pixel_means(height, width).double(), s.pixel_chol(height, width).double()
    xs = torch.arange(width, dtype=torch.float64) + 0.5
    ys = torch.arange(height, dtype=torch.float64) + 0.5
    tiles_x, tiles_y = -(-width // tile), -(-height // tile)
    pairs = set()
    for b in range(s.batch_size):
        for n in range(int(s.counts[b])):
            mx, my = mean[b, n]
            l11, l21, l22 = chol[b, n]
            rx = CUTOFF_SIGMA * abs(l11) * (1 + BOX_SLACK_REL) + BOX_SLACK_PX
            ry = CUTOFF_SIGMA * torch.hypot(l21, l22) * (1 + BOX_SLACK_REL) + BOX_SLACK_PX
            cols = ((xs - mx).abs() <= rx).nonzero().flatten() // tile
            rows = ((ys - my).abs() <= ry).nonzero().flatten() // tile
            for ty in rows.unique().tolist():
                for tx in cols.unique().tolist():
                    key = b * tiles_x * tiles_y + ty * tiles_x + tx
                    pairs.add((key, b * s.capacity + n))
    return pairs


def _check_structure(bins, s) -> None:
    start = bins.tile_start.long()
    assert start[0] == 0 and start[-1] == bins.num_pairs
    assert (start[1:] >= start[:-1]).all()
    keys, ids = bins.pairs()
    # Within a tile, Gaussians keep slot order; every listed one is a valid slot of its image.
    same_tile = keys[1:] == keys[:-1]
    assert (ids[1:][same_tile] > ids[:-1][same_tile]).all()
    image_of_id, slot = ids // max(s.capacity, 1), ids % max(s.capacity, 1)
    assert (image_of_id == keys // bins.tiles_per_image).all()
    assert (slot < s.counts[image_of_id]).all()


@pytest.mark.parametrize(
    "seed, batch, n, height, width, counts",
    [(0, 2, 40, 37, 53, [40, 13]), (1, 3, 25, 64, 48, [0, 25, 1]), (2, 1, 60, 5, 70, None)],
)
def test_binning_lists_exactly_the_box_pairs(seed, batch, n, height, width, counts):
    s = H.random_splats(
        batch, n, height, width, seed, dtype=torch.float64, sigma_px=(0.3, 30.0), margin=0.5,
        counts=counts,
    )  # fmt: skip
    s.means[~s.mask] = float("nan")  # padded slots may hold anything
    bins = bin_gaussians(
        s.pixel_means(height, width), s.pixel_chol(height, width), s.counts, height, width
    )
    _check_structure(bins, s)
    keys, ids = bins.pairs()
    got = set(zip(keys.tolist(), ids.tolist(), strict=True))
    assert len(got) == bins.num_pairs, "a pair is listed twice"
    want = _brute_force_pairs(s, height, width)
    assert got == want, f"missing {sorted(want - got)[:5]}, extra {sorted(got - want)[:5]}"


@pytest.mark.parametrize("seed", [0, 1])
def test_binning_covers_every_pixel_inside_the_cutoff(seed):
    height, width = 50, 41
    s = H.random_splats(2, 80, height, width, seed, sigma_px=(0.3, 20.0), anisotropy=20.0)
    mean, chol = s.pixel_means(height, width), s.pixel_chol(height, width)  # float32
    bins = bin_gaussians(mean, chol, s.counts, height, width)
    keys, ids = bins.pairs()
    listed = torch.zeros(2 * bins.tiles_per_image, 2 * s.capacity, dtype=torch.bool)
    listed[keys, ids] = True
    xs = torch.arange(width, dtype=torch.float32) + 0.5
    ys = torch.arange(height, dtype=torch.float32) + 0.5
    dx = xs.view(1, 1, 1, width) - mean[..., 0, None, None]  # [B, N, 1, W]
    dy = ys.view(1, 1, height, 1) - mean[..., 1, None, None]  # [B, N, H, 1]
    q = mahalanobis(dx, dy, *(chol[..., k, None, None] for k in range(3)))  # [B, N, H, W]
    b, n, i, j = (q <= CUTOFF_Q).nonzero().unbind(1)
    key = b * bins.tiles_per_image + (i // 16) * bins.tiles_x + j // 16
    assert listed[key, b * s.capacity + n].all()


def test_binning_memory_follows_pairs_not_pixels():
    # 64 small Gaussians on a 200×200 raster: a handful of tiles each, far fewer than N × tiles.
    s = H.random_splats(1, 64, 200, 200, 0, sigma_px=(0.5, 2.0), margin=0.0)
    bins = bin_gaussians(s.pixel_means(200, 200), s.pixel_chol(200, 200), s.counts, 200, 200)
    assert 64 <= bins.num_pairs <= 64 * 4
    assert bins.tile_start.numel() == 13 * 13 + 1


# ----------------------------------------------------------------------------- in-process checks
def test_cpu_needs_the_interpreter():
    pytest.importorskip("triton")
    from gsvision.raster import resolve_backend
    from gsvision.raster import triton as rt

    assert rt.supports_device("cpu") == rt.interpreted()
    if rt.interpreted():
        pytest.skip("this pytest process itself runs with TRITON_INTERPRET=1")
    s = H.random_splats(1, 4, 8, 8, 0)
    with pytest.raises(ValueError, match="TRITON_INTERPRET"):
        rt.render_triton(s, 8, 8)
    with pytest.raises(ValueError, match="triton"):
        resolve_backend("cpu", "triton")


@pytest.mark.parametrize("dtype", ["fp32", "fp64"])
def test_kernels_compile_for_sm90_without_a_gpu(dtype):
    """Ahead-of-time compile both kernels to cubin: catches what the interpreter cannot (typing,
    loop-carried dtypes, layouts), on machines with no GPU."""
    pytest.importorskip("triton")
    import triton
    import triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from gsvision.raster import triton as rt

    if rt.interpreted():
        pytest.skip("kernels are interpreted in this process")
    consts = {"TILE": 16, "CUTOFF": CUTOFF_Q, "ACC": tl.float32 if dtype == "fp32" else tl.float64}
    for kernel, chunk, warps in [
        (rt._forward_kernel, rt.FWD_CHUNK, rt.FWD_WARPS),
        (rt._backward_kernel, rt.BWD_CHUNK, rt.BWD_WARPS),
    ]:
        values = dict(consts, CHUNK=chunk)
        signature = {
            name: "constexpr"
            if name in values
            else ("*i32" if name in ("ids_ptr", "tile_start_ptr") else f"*{dtype}")
            if name.endswith("_ptr")
            else "i32"
            for name in kernel.arg_names
        }
        names = list(signature)
        src = ASTSource(
            fn=kernel,
            signature=signature,
            constexprs={(names.index(k),): v for k, v in values.items()},
        )
        compiled = triton.compile(
            src, target=GPUTarget("cuda", 90, 32), options={"num_warps": warps}
        )
        assert compiled.asm["cubin"], kernel.__name__
        if kernel is rt._backward_kernel:
            assert "atom.global" in compiled.asm["ptx"] or "red.global" in compiled.asm["ptx"]


def test_bench_parses_arguments_and_needs_cuda(tmp_path):
    from gsvision.bench import raster_gpu

    args = raster_gpu.build_parser().parse_args(["--batches", "1", "4", "--n", "64"])
    assert args.batches == [1, 4] and args.n == 64 and args.height == 224
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit, match="CUDA"):
            raster_gpu.main(["--out-dir", str(tmp_path)])
        assert not (tmp_path / "raster_gpu.json").exists()


# ----------------------------------------------------------------------------- GPU
def _gpu_ready() -> bool:
    if not torch.cuda.is_available():
        return False
    from gsvision.raster import triton as rt

    return rt.unavailable_reason() is None and not rt.interpreted()


# Evaluated cheaply at collection (no triton import); _gpu_ready() is asserted inside each test.
gpu = pytest.mark.skipif(
    not torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET", "0") == "1",
    reason="needs a CUDA device and compiled (not interpreted) kernels",
)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("opacity", [False, True])
def test_gpu_matches_reference_at_224(opacity):
    assert _gpu_ready()
    from gsvision.raster.triton import render_triton

    s = H.random_splats(4, 1024, 224, 224, 3, opacity=opacity, counts=[1024, 1000, 517, 0])
    errors = H.compare_with_reference(render_triton, s.to("cuda"), 224, 224, tol=1e-4)
    print("gpu relative errors", errors)


@pytest.mark.gpu
@gpu
def test_gpu_float64_and_poisoned_buffer():
    assert _gpu_ready()
    from gsvision.raster.triton import rasterize_into, render_triton

    s = H.random_splats(2, 200, 97, 131, 4, dtype=torch.float64, counts=[200, 3]).to("cuda")
    H.compare_with_reference(render_triton, s, 97, 131, tol=1e-10)
    s = H.random_splats(4, 1024, 224, 224, 5, sigma_px=(0.5, 3.0), counts=[1024, 0, 5, 800])
    s = s.to("cuda")
    out = torch.full((4, 224, 224, 3), float("nan"), device="cuda")
    rasterize_into(out, s.pixel_means(224, 224), s.pixel_chol(224, 224), s.colors, s.counts)
    assert torch.isfinite(out).all()
    assert H.relative_error(out, render_reference(s, 224, 224)) < 1e-4


@pytest.mark.gpu
@gpu
def test_gpu_binning_matches_cpu_and_memory_follows_pairs():
    assert _gpu_ready()
    from gsvision.raster.triton import render_triton

    s = H.random_splats(4, 1024, 224, 224, 6, counts=[1024, 900, 10, 0])
    args = (s.pixel_means(224, 224), s.pixel_chol(224, 224), s.counts, 224, 224)
    cpu_bins = bin_gaussians(*args)
    gpu_bins = bin_gaussians(*(a.cuda() if torch.is_tensor(a) else a for a in args))
    assert torch.equal(cpu_bins.tile_start, gpu_bins.tile_start.cpu())
    assert torch.equal(cpu_bins.gauss_ids, gpu_bins.gauss_ids.cpu())
    s = s.to("cuda")
    leaves = [t.requires_grad_(True) for t in (s.means, s.chol, s.colors)]
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    render_triton(s, 224, 224).square().sum().backward()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    dense = 4 * 1024 * 224 * 224 * 4  # one float32 B × N × H × W tensor
    assert peak < dense / 20, f"peak {peak / 2**20:.1f} MiB vs dense {dense / 2**20:.0f} MiB"
    assert all(t.grad is not None and torch.isfinite(t.grad).all() for t in leaves)


@pytest.mark.gpu
@gpu
def test_gpu_bench_runs(tmp_path):
    assert _gpu_ready()
    from gsvision.bench import raster_gpu

    out = tmp_path / "raster_gpu.json"
    result = raster_gpu.main(
        [
            "--batches",
            "1",
            "2",
            "--n",
            "128",
            "--iters",
            "2",
            "--warmup",
            "1",
            "--out-dir",
            str(tmp_path),
        ]
    )
    assert json.loads(out.read_text()) == result
    triton_rows = [r for r in result["results"] if r["backend"] == "triton"]
    assert len(triton_rows) == 2 and all(r["images_per_s"] > 0 for r in triton_rows)


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "--worker":
    _worker_main(sys.argv[2])
