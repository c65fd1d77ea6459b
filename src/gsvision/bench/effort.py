"""`gsvision bench effort`: what each encoder effort (0-3) buys, measured on the same fits.

The shipped photos are fitted once per N; each fit is then encoded closed-loop with the range
coder (as ``gsvision fit`` writes ``.gsv`` files) at every effort, and every payload is decoded
and rendered. An effort changes only how long the closed loop refines the geometry (in how many
blocks it rounds it, :data:`gsvision.codec.rate.EFFORT_ROUNDS`): the format and the Gaussians kept
are the same, so bytes stay within ~1% and the trade is PSNR against encoding time, both reported
against effort 1 (the default) side by side in one run. Writes ``benchmarks/results/effort.json``.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import torch

from gsvision.bench._common import write_result
from gsvision.bench.codec import _encoded, _fitted, _load
from gsvision.codec import using_coder
from gsvision.codec.geometry_rd import STEPS
from gsvision.codec.quant import resolve_level
from gsvision.codec.rate import DEFAULT_EFFORT, EFFORT_ROUNDS, encode_closed_loop_batch
from gsvision.fit import fit


def _rows(u8: np.ndarray, args, levels: list[str]) -> tuple[list[dict], list[dict]]:
    targets = torch.from_numpy(u8).float() / 255
    raw = 3 * targets.shape[1] * targets.shape[2]
    fits, rows = [], []
    for n, level in zip(args.n, levels, strict=True):
        r, fitted = _fitted(u8, n, args)
        fits.append(fitted)
        by_effort = {}
        for effort in args.efforts:
            row = _encoded(r, n, level, targets, raw, effort)
            row |= {"effort": effort, "rounds": EFFORT_ROUNDS[effort]}
            by_effort[effort] = row
            print(
                f"  N={n} {level} effort {effort}: {row['bytes']:.0f} B, {row['psnr']:.3f} dB, "
                f"{row['encode_seconds']:.1f} s",
                flush=True,
            )
        base = by_effort.get(DEFAULT_EFFORT)
        for row in by_effort.values():
            if base is not None:
                row["psnr_vs_default_db"] = row["psnr"] - base["psnr"]
                row["bytes_vs_default"] = row["bytes"] / base["bytes"]
                row["time_vs_default"] = row["encode_seconds"] / base["encode_seconds"]
            rows.append(row)
    return fits, rows


def main(argv: list[str] | None = None) -> dict:
    """Run the effort benchmark; returns what it writes to ``effort.json``."""
    ap = argparse.ArgumentParser(prog="gsvision bench effort", description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--n", type=int, nargs="+", default=[100, 400, 1600])
    ap.add_argument(
        "--levels",
        nargs="+",
        default=["9-5-5-7", "9-5-5-7", "xlow"],  # the codec's front at these N (docs/benchmarks.md)
        help="one level for every N, or one per N",
    )
    ap.add_argument(
        "--efforts", type=int, nargs="+", choices=range(len(EFFORT_ROUNDS)), default=[0, 1, 2, 3]
    )
    ap.add_argument("--iters", type=int, default=1000)
    ap.add_argument("--images", nargs="*", help="shipped image names (default: all)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="results folder (default benchmarks/results)")
    ap.add_argument("--quick", action="store_true", help="tiny settings, to check the harness")
    args = ap.parse_args(argv)
    if args.quick:
        args.size, args.n, args.iters, args.levels = 64, [24, 48], 40, ["9-5-5-7"]
        args.images = args.images or ["coffee", "rocket"]
        args.out = args.out or tempfile.mkdtemp(prefix="gsvision-bench-effort-")
    levels = args.levels * len(args.n) if len(args.levels) == 1 else args.levels
    if len(levels) != len(args.n):
        ap.error(f"--levels: give one level or one per N ({len(args.n)}), not {len(levels)}")
    for lv in levels:
        try:
            if isinstance(resolve_level(lv), str):
                ap.error(f"--levels: {lv} is a float level (no closed loop to spend effort on)")
        except (TypeError, ValueError) as exc:
            ap.error(f"--levels: {exc}")
    names, u8 = _load(args.images, args.size)
    print(f"gsvision bench effort: {len(names)} images at {args.size}², efforts {args.efforts}")
    with using_coder("range"):  # the closed loop refines on the range coder's grid only
        warm = fit(u8[:1], 16, iters=2, size=args.size)  # compile the kernels and the coder
        encode_closed_loop_batch([warm.splats[0]], [warm.targets[0]], levels[0])
        t0 = time.perf_counter()
        fits, rows = _rows(u8, args, levels)
    result = {
        "settings": {**vars(args), "levels": levels, "images": names, "coder": "range"},
        "effort_rounds": list(EFFORT_ROUNDS),
        "steps_per_round": STEPS,
        "default_effort": DEFAULT_EFFORT,
        "fits": fits,
        "rows": rows,
        "wall_seconds": time.perf_counter() - t0,
    }
    path = write_result("effort", result, args.out)
    print(f"wrote {path}")
    for row in rows:
        if "psnr_vs_default_db" in row:
            print(
                f"  N={row['n']} effort {row['effort']}: {row['psnr_vs_default_db']:+.3f} dB, "
                f"bytes x{row['bytes_vs_default']:.3f}, time x{row['time_vs_default']:.2f}"
            )
    return result
