"""``gsvision convert IN_PATTERN OUT_DIR``: image–text shards to splat shards (see data/convert.py).

Run it as is for one process, or under ``torchrun --nproc_per_node K -m gsvision.cli convert ...``
to split the shards across K ranks (and GPUs, where there are some).
"""

from __future__ import annotations

import argparse

__all__ = ["add_arguments", "run"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    from gsvision.cli import _add_effort, _parse_fit_size, _positive_int

    p.add_argument(
        "inputs", metavar="IN_PATTERN", help="shards: 'data/{00000..00127}.tar', pipe:..."
    )
    p.add_argument("output", metavar="OUT_DIR", help="folder for the splat shards (created)")
    p.add_argument("-n", "--n-gaussians", type=_positive_int, default=1024, metavar="N")
    p.add_argument("--iters", type=_positive_int, default=500, help="iteration budget per image")
    p.add_argument("--size", type=_parse_fit_size, default=224, metavar="S|WxH", help="fit size")
    p.add_argument(
        "--level",
        default="medium",
        help="codec level (lossless, f16, high, medium, low, lower, xlow, xxlow, bit depths "
        "P-S-A-C such as 10-5-5-7, or auto: with a rate target and --coder range, the bit depths "
        "best at that rate; default medium)",
    )
    p.add_argument(
        "--coder",
        choices=["zstd", "range"],
        default="zstd",
        help="lossless stage of the quantised levels: zstd (fast training loads) or range "
        "(12-20%% smaller shards, ~4x slower to decode)",
    )
    _add_effort(p, " (with --coder range; zstd shards keep their fitted geometry, rounded)")
    target = p.add_mutually_exclusive_group()
    target.add_argument("--bytes", type=_positive_int, default=None, help=".gsv bytes per image")
    target.add_argument("--ratio", type=float, default=None, help="raw pixel bytes / .gsv bytes")
    target.add_argument("--psnr", type=float, default=None, help="decoded PSNR target (dB)")
    p.add_argument("--batch", type=_positive_int, default=64, help="images per fitting batch")
    p.add_argument("--workers", type=_positive_int, default=2, help="image-decoding threads")
    p.add_argument("--backend", default="auto", help="rasteriser backend")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--resume", action="store_true", help="continue in a folder holding another job's files"
    )
    p.add_argument(
        "--keep-image",
        action="store_true",
        help="also store each source image in the splat shard (for distillation and evaluation)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from gsvision.cli import CLIError
    from gsvision.data.convert import ConvertConfig, JobConflictError, convert

    cfg = ConvertConfig(
        n_gaussians=args.n_gaussians,
        iters=args.iters,
        size=args.size,
        level=args.level,
        coder=args.coder,
        effort=args.effort,
        bytes=args.bytes,
        ratio=args.ratio,
        psnr=args.psnr,
        batch=args.batch,
        workers=args.workers,
        seed=args.seed,
        backend=None if args.backend == "auto" else args.backend,
        resume=args.resume,
        progress=not args.quiet,
        keep_image=args.keep_image,
    )
    try:
        summary = convert(args.inputs, args.output, cfg)
    except (JobConflictError, ValueError) as exc:
        raise CLIError(str(exc)) from None
    if not summary:  # ranks other than 0
        return 0
    bad = summary["images_skipped"] or summary["shard_errors"] or summary["shards_incomplete"]
    return 1 if bad else 0
