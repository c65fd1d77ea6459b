"""`gsvision bench convert`: the conversion job end to end on synthetic image–text shards.

Reports images per second at 224×224 with 1,024 Gaussians, the time spent per stage (decoding runs
in background threads, so it overlaps fitting; ``wait_input`` is the time the fitter sat idle
waiting for decoded images), and the share of wall time spent fitting — the CPU analogue of the
GPU utilisation the paper reports. With ``--overlap`` encoding and writing run on a second thread
beside the fitting (``wait_encode`` is the time the fitter waited for it), so the stage times can
add up to more than the wall time. Writes ``benchmarks/results/convert.json``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from gsvision.bench._common import write_result
from gsvision.data.convert import ConvertConfig, convert
from gsvision.data.synthetic import make_image_text_shards
from gsvision.raster import resolve_backend

__all__ = ["main"]


def main(argv: list[str] | None = None) -> dict:
    """Run the conversion benchmark; returns what it writes to ``convert.json``."""
    ap = argparse.ArgumentParser(prog="gsvision bench convert", description=__doc__.split("\n")[0])
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--per-shard", type=int, default=16)
    ap.add_argument("-n", "--n-gaussians", type=int, default=1024)
    ap.add_argument("--iters", type=int, default=500)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--level", default="medium")
    ap.add_argument("--overlap", action="store_true",
                    help="encode and write on a second thread beside the fitting")  # fmt: skip
    ap.add_argument("--out", default=None, help="results folder (default benchmarks/results)")
    ap.add_argument("--quick", action="store_true", help="tiny settings, to check the harness")
    args = ap.parse_args(argv)
    if args.quick:
        args.shards, args.per_shard, args.n_gaussians, args.iters = 2, 3, 16, 5
        args.size, args.batch = 32, 2
    device = "cuda" if torch.cuda.is_available() else "cpu"
    backend = resolve_backend(device)
    print(f"gsvision bench convert: {args.shards}x{args.per_shard} images, backend {backend}")
    cfg = ConvertConfig(
        n_gaussians=args.n_gaussians,
        iters=args.iters,
        size=args.size,
        level=args.level,
        batch=args.batch,
        workers=args.workers,
        progress=False,
        overlap=args.overlap,
    )
    with tempfile.TemporaryDirectory(prefix="gsv-bench-convert-") as tmp:
        root = Path(tmp)
        make_image_text_shards(root / "in", args.shards, args.per_shard, seed=1)
        pattern = str(root / "in" / f"{{00000..{args.shards - 1:05d}}}.tar")
        t0 = time.perf_counter()
        summary = convert(pattern, root / "out", cfg)
        wall = time.perf_counter() - t0
    stages = summary["seconds_by_stage"]
    images = summary["images_converted"]
    result = {
        "settings": {**vars(args), "backend": backend, "device": device},
        "images": images,
        "wall_seconds": wall,
        "images_per_second": images / wall,
        "seconds_by_stage": stages,
        "share_of_wall": {k: v / wall for k, v in stages.items()},
        "fit_share": stages["fit"] / wall,
        "compute_share": (stages["fit"] + stages["encode"]) / wall,
        "mean_psnr": summary["mean_psnr"],
        "bytes_in": summary["bytes_in"],
        "bytes_out": summary["bytes_out"],
        "bytes_per_image_out": summary["bytes_out"] / max(images, 1),
    }
    print(
        f"  {images} images in {wall:.1f} s: {result['images_per_second']:.3f} images/s; "
        f"fit {result['fit_share']:.1%}, fit+encode {result['compute_share']:.1%} of wall, "
        f"waiting for input {stages['wait_input'] / wall:.1%}, "
        f"for the encoder {stages.get('wait_encode', 0.0) / wall:.1%}"
    )
    path = write_result("convert", result, args.out)
    print(f"wrote {path}")
    return result


if __name__ == "__main__":
    main()
