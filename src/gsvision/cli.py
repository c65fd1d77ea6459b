"""The ``gsvision`` command line: ``fit | render | info | demo | convert | train | eval | serve |
send | bench``.

Each subcommand is one entry of :data:`COMMANDS`: a help line, a function that adds its arguments
and a function that runs it and returns the exit code; the larger ones live in their own modules
(``cli_convert``, ``cli_eval``, ``cli_serve``) and are imported when run. User errors (bad files, bad flags) print one line to stderr and exit
with a non-zero code; tracebacks are kept for bugs. Heavy modules are imported inside the commands
so that ``gsvision --help`` and ``--version`` stay fast.
"""

from __future__ import annotations

import argparse
import importlib
import json
import pkgutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gsvision import __version__
from gsvision.io import jsonable, write_atomic

__all__ = ["main", "build_parser", "COMMANDS", "CLIError"]


class CLIError(Exception):
    """A user error: printed as one line, exit code 2."""


@dataclass(frozen=True)
class Command:
    """One subcommand."""

    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


# ==================================================================================== helpers
def _parse_fit_size(text: str) -> int | tuple[int, int] | None:
    """``"224"`` → 224 (shorter side, centre crop), ``"WxH"`` → ``(H, W)``, ``"native"`` → None."""
    if text.lower() in ("native", "none", "0"):
        return None
    if "x" in text.lower():
        return _parse_wxh(text)
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected an int, WxH or 'native', got {text!r}"
        ) from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"size must be positive, got {value}")
    return value


def _parse_wxh(text: str) -> tuple[int, int]:
    """``"WxH"`` → ``(H, W)``."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WxH such as 320x240, got {text!r}") from None
    if w <= 0 or h <= 0:
        raise argparse.ArgumentTypeError(f"size must be positive, got {text!r}")
    return h, w


def _add_effort(p: argparse.ArgumentParser, note: str = "") -> None:
    """The encoder's ``--effort`` (``gsvision.codec.rate.EFFORT_ROUNDS``), as fit, convert and
    send take it."""
    p.add_argument(
        "--effort",
        type=int,
        choices=range(4),
        default=1,
        help="encoder effort: 0 (a third of the encoding time, no geometry refinement: 0.2-0.6 "
        "dB lower), 1 (default), 2, 3 (~3x the time, +0.05-0.13 dB); the same format" + note,
    )


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _unique_names(paths: Sequence[Path]) -> list[str]:
    """Output stems for ``paths``, made unique with ``-2``, ``-3``, ... in argument order."""
    used: set[str] = set()
    names = []
    for p in paths:
        name, k = p.stem, 1
        while name in used:
            k += 1
            name = f"{p.stem}-{k}"
        used.add(name)
        names.append(name)
    return names


def _out_dir(path: str) -> Path:
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise CLIError(f"{out}: exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    return out


def _add_fit_arguments(
    p: argparse.ArgumentParser, n: int | None, iters: int | None, size: str | None
) -> None:
    p.add_argument(
        "-n",
        "--n-gaussians",
        type=_positive_int,
        default=n,
        metavar="N",
        help="Gaussians per image",
    )
    p.add_argument("--iters", type=_positive_int, default=iters, help="iteration budget per image")
    p.add_argument(
        "--psnr",
        type=float,
        default=None,
        metavar="DB",
        help="quality target: with .gsv, the fewest Gaussians whose decoded PSNR reaches it "
        "(-n is the most tried); otherwise stop fitting an image at this PSNR",
    )
    p.add_argument(
        "--bytes", type=_positive_int, default=None, metavar="B", help=".gsv bytes per image"
    )
    p.add_argument(
        "--ratio", type=float, default=None, metavar="R", help="raw pixel bytes / .gsv bytes"
    )
    p.add_argument(
        "--level",
        default="auto",
        help="codec level: auto (default: with --bytes, --ratio or --psnr the bit depths best at "
        "that rate, else medium), lossless, f16, high, medium, low, lower, xlow, xxlow, or bit "
        "depths P-S-A-C (e.g. 10-5-5-7)",
    )
    _add_effort(p)
    p.add_argument(
        "--format",
        default="gsv",
        choices=("gsv", "safetensors", "pt"),
        help="output format (default gsv, the compact codec)",
    )
    p.add_argument(
        "--size",
        metavar="S|WxH",
        type=_parse_fit_size,
        default=None if size is None else _parse_fit_size(size),
        help="S (shorter side S, centre-cropped to SxS), WxH (exact) or 'native' "
        "(default: %(default)s)",
    )
    p.add_argument("--init", default="adaptive", help="initialisation: adaptive, grid or random")
    p.add_argument(
        "--relocate",
        type=float,
        default=0.05,
        help="share of Gaussians moved to high-error pixels per relocation round (0: off; "
        "default %(default)s)",
    )
    p.add_argument("--l1", type=float, default=0.0, help="L1 colour penalty λ (prepares pruning)")
    p.add_argument("--prune-tau", type=float, default=0.0, help="prune Gaussians scoring below τ")
    p.add_argument("--prune-score", default="luminance", help="luminance or footprint")
    p.add_argument("--finetune-iters", type=int, default=0, help="optimisation steps after pruning")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backend", default="auto", help="rasteriser backend (see `info --backends`)")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if present)")
    p.add_argument("--batch", type=_positive_int, default=16, help="images per optimisation")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def _fit_settings(args: argparse.Namespace) -> dict[str, Any]:
    from gsvision.codec.rate import check_level

    if args.format != "gsv" and (args.bytes is not None or args.ratio is not None):
        raise CLIError("--bytes and --ratio need --format gsv (the codec)")
    given = [f"--{k}" for k in ("bytes", "ratio", "psnr") if getattr(args, k) is not None]
    if args.format == "gsv" and len(given) > 1:
        raise CLIError(f"give one rate target, not {' and '.join(given)}")
    if args.ratio is not None and not args.ratio > 0:
        raise CLIError(f"--ratio must be positive, got {args.ratio}")
    if not 0 <= args.relocate <= 1:
        raise CLIError(f"--relocate must be in [0, 1], got {args.relocate}")
    try:
        check_level(args.level)
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    return {
        "n_gaussians": args.n_gaussians,
        "iters": args.iters,
        "target_psnr": args.psnr,
        "size": args.size,
        "init": args.init,
        "relocate": args.relocate,
        "l1": args.l1,
        "prune_tau": args.prune_tau,
        "prune_score": args.prune_score,
        "finetune_iters": args.finetune_iters,
        "seed": args.seed,
        "backend": None if args.backend == "auto" else args.backend,
        "device": args.device,
        "format": args.format,
        "level": args.level,
        "effort": args.effort,
        "bytes": args.bytes,
        "ratio": args.ratio,
    }


@dataclass
class _Fitted:
    """One image that was fitted and written."""

    name: str
    source: Path
    output: Path
    splats: Any  # Splats of one image
    target: Any  # [H, W, 3] float tensor, the fitted (resized) image
    metrics: dict[str, Any]


def _load_images(paths: Sequence[str]) -> tuple[list[tuple[Path, Any]], list[dict[str, str]]]:
    """Load every image; bad ones are reported on stderr and returned as failures."""
    from gsvision.io import ImageError, load_image

    loaded, failures = [], []
    for text in paths:
        path = Path(text)
        try:
            loaded.append((path, load_image(path)))
        except ImageError as exc:
            print(f"gsvision: skipping {exc}", file=sys.stderr)
            failures.append({"source": str(path), "reason": str(exc)})
    return loaded, failures


def _fit_and_write(
    loaded: list[tuple[Path, Any]],
    out: Path,
    settings: dict[str, Any],
    batch: int,
    progress: bool,
    failures: list[dict[str, str]],
) -> list[_Fitted]:
    """Fit ``loaded`` images in batches and write ``out/<name>.<format>`` for each.

    A batch that the fitter rejects is retried one image at a time, so one bad image only fails
    itself; its reason is appended to ``failures``.
    """
    names = _unique_names([p for p, _ in loaded])
    items = list(zip(names, loaded, strict=True))
    groups = [items[i : i + batch] for i in range(0, len(items), batch)]
    # (label, images); a batch that fails is re-queued image by image without a label
    queue: list[tuple[str | None, list]] = [
        (f"batch {k + 1}/{len(groups)}" if len(groups) > 1 else None, g)
        for k, g in enumerate(groups)
    ]
    done: list[_Fitted] = []
    while queue:
        label, group = queue.pop(0)
        if label:
            print(f"gsvision: {label} ({len(group)} images)", file=sys.stderr)
        try:
            results = _fit_group([img for _, (_, img) in group], settings, progress)
        except ValueError as exc:
            if len(group) > 1:  # find which image(s) the fitter rejects: retry one by one
                print(f"gsvision: batch failed ({exc}); retrying its images alone", file=sys.stderr)
                queue[:0] = [(None, [item]) for item in group]
                continue
            path = group[0][1][0]
            print(f"gsvision: cannot fit {path}: {exc}", file=sys.stderr)
            failures.append({"source": str(path), "reason": str(exc)})
            continue
        for (name, (path, image)), (one, target, metrics, payload) in zip(
            group, results, strict=True
        ):
            h, w = (int(v) for v in one.image_sizes[0])
            metrics = jsonable(metrics)
            meta = {
                "source": str(path),
                "original_size": [int(image.shape[0]), int(image.shape[1])],
                "fitted_size": [h, w],
                "metrics": metrics,
                "settings": jsonable(settings),
                "gsvision_version": __version__,
            }
            output = out / f"{name}.{settings['format']}"
            if payload is not None:  # .gsv: the payload alone; metrics.json holds the rest
                write_atomic(output, payload)
            else:
                from gsvision.io import save_splats

                save_splats(output, one, meta)
            done.append(_Fitted(name, path, output, one, target, metrics))
    return done


def _fit_group(images: list, settings: dict[str, Any], progress: bool) -> list[tuple]:
    """Fit (and for .gsv, encode) one batch: ``(splats, target, metrics, payload or None)`` each."""
    kwargs = {k: v for k, v in settings.items() if k not in _CODING_SETTINGS}
    if settings["format"] != "gsv":
        from gsvision.fit import fit

        result = fit(images, progress=progress, **kwargs)
        return [
            (
                result.splats[i].detach().to("cpu"),
                result.targets[i, : int(hw[0]), : int(hw[1])].detach().cpu(),
                result.metrics[i],
                None,
            )
            for i, hw in enumerate(result.splats.image_sizes)
        ]
    from gsvision.codec.rate import RateTarget, fit_and_encode

    target = RateTarget(settings["bytes"], settings["ratio"], kwargs.pop("target_psnr"))
    n = kwargs.pop("n_gaussians")
    from gsvision.codec import using_coder

    with using_coder("range"):  # files: the smaller coder (format version 4)
        level, effort = settings["level"], settings["effort"]
        coded = fit_and_encode(images, target, level, n, effort, progress=progress, **kwargs)
    return [(c.splats, c.target, c.metrics, c.payload) for c in coded]


_CODING_SETTINGS = ("format", "level", "effort", "bytes", "ratio")


def _metrics_json(out: Path, fitted: list[_Fitted], failures: list, settings: dict) -> Path:
    doc = {
        "gsvision_version": __version__,
        "settings": jsonable(settings),
        "images": [
            {
                "name": f.name,
                "source": str(f.source),
                "output": str(f.output),
                "fitted_size": [int(v) for v in f.splats.image_sizes[0]],
                "bytes": f.output.stat().st_size,
                **f.metrics,
            }
            for f in fitted
        ],
        "failures": failures,
    }
    path = out / "metrics.json"
    path.write_text(json.dumps(doc, indent=2) + "\n")
    return path


def _table_rows(fitted: list[_Fitted]) -> list[list[str]]:
    rows = []
    for f in fitted:
        m = f.metrics
        rows.append(
            [
                f.name,
                str(int(f.splats.counts[0])),
                f"{m.get('psnr', float('nan')):.2f}",
                f"{m.get('ssim', float('nan')):.4f}",
                str(m.get("iterations", "")),
                f"{m.get('seconds', float('nan')):.1f}",
                f"{f.output.stat().st_size:,}",
            ]
        )
    return rows


_HEADER = ["image", "N", "PSNR", "SSIM", "iterations", "seconds", "bytes"]


def _print_table(rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in [_HEADER, *rows]) for i in range(len(_HEADER))]
    for r in [_HEADER, *rows]:
        cells = [
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        ]
        print("  ".join(cells))


def _exit_code(n_ok: int, n_failed: int) -> int:
    if n_ok == 0 and n_failed > 0:
        return 2
    return 1 if n_failed else 0


# ==================================================================================== fit
def _fit_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("images", nargs="+", metavar="IMG", help="image files")
    p.add_argument("-o", "--output", required=True, metavar="OUTDIR", help="output folder")
    _add_fit_arguments(p, n=1024, iters=500, size="224")


def _run_fit(args: argparse.Namespace) -> int:
    settings = _fit_settings(args)
    out = _out_dir(args.output)
    loaded, failures = _load_images(args.images)
    fitted = (
        _fit_and_write(loaded, out, settings, args.batch, not args.quiet, failures)
        if loaded
        else []
    )
    path = _metrics_json(out, fitted, failures, settings)
    if fitted:
        _print_table(_table_rows(fitted))
    print(f"wrote {len(fitted)} splat file(s) and {path}; {len(failures)} failed")
    return _exit_code(len(fitted), len(failures))


# ==================================================================================== render
def _render_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", metavar="FILE", help="splat file (.gsv, .safetensors, .pt)")
    p.add_argument("-o", "--output", required=True, metavar="PNG", help="image to write")
    p.add_argument(
        "--size", type=_parse_wxh, default=None, metavar="WxH", help="default: the fitted size"
    )
    p.add_argument("--ellipses", action="store_true", help="draw each Gaussian's 1σ outline")
    p.add_argument("--scale", type=_positive_int, default=3, help="upscaling for --ellipses")
    p.add_argument("--index", type=int, default=0, help="which image of a batch file")
    p.add_argument("--backend", default="auto", help="rasteriser backend")


def _run_render(args: argparse.Namespace) -> int:
    import torch

    from gsvision.io import load_splats, save_image
    from gsvision.raster import render
    from gsvision.viz import draw_ellipses

    splats, _ = load_splats(args.file)
    if not -splats.batch_size <= args.index < splats.batch_size:
        raise CLIError(
            f"--index {args.index} is out of range: {args.file} holds {len(splats)} image(s)"
        )
    h, w = args.size or (int(v) for v in splats.image_sizes[args.index])
    backend = None if args.backend == "auto" else args.backend
    if args.ellipses:
        picture = draw_ellipses(
            None, splats, h, w, scale=args.scale, index=args.index, backend=backend
        )
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        picture.save(args.output)
        size_note = f"{w * args.scale}x{h * args.scale}, 1σ ellipses"
    else:
        with torch.no_grad():
            pixels = render(splats[args.index], h, w, backend=backend)[0]
        save_image(args.output, pixels.clamp(0, 1))
        size_note = f"{w}x{h}"
    print(f"wrote {args.output} ({size_note}, {int(splats.counts[args.index])} Gaussians)")
    return 0


# ==================================================================================== info
def _info_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("files", nargs="*", metavar="FILE", help="splat files")
    p.add_argument("--backends", action="store_true", help="list rasteriser backends here")


def _describe(path: Path) -> list[str]:
    from gsvision.io import load_splats

    splats, meta = load_splats(path)
    size = path.stat().st_size
    counts = [int(c) for c in splats.counts]
    sizes = [tuple(int(v) for v in hw) for hw in splats.image_sizes]
    pixels = sum(h * w for h, w in sizes)
    raw = 3 * pixels
    shown = ", ".join(f"{w}x{h}" for h, w in sizes[:4]) + (" ..." if len(sizes) > 4 else "")
    per_image = (
        "" if len(counts) == 1 else f" (per image: {counts[:8]}{' ...' * (len(counts) > 8)})"
    )
    bpp = 8 * size / pixels
    versus = f"{raw / size:.1f}x smaller" if size <= raw else f"{size / raw:.1f}x larger"
    lines = [
        f"{path}",
        f"  images: {len(splats)}, capacity: {splats.capacity}, "
        f"Gaussians: {sum(counts)}{per_image}",
        f"  numbers per Gaussian: {splats.numbers_per_gaussian} ({str(splats.dtype)[6:]})",
        f"  fitted size (WxH): {shown}",
        f"  bytes on disk: {size:,}; raw pixels at the fitted size: {raw:,} bytes",
        f"  bits per pixel: {bpp:.3f}; ratio to raw pixels: {size / raw:.4f} ({versus})",
    ]
    if path.suffix.lower() == ".gsv":
        from gsvision.codec import describe

        lines += [f"  coding: {d}" for d in describe(path.read_bytes())[:4]]
    metrics = meta.get("metrics")
    if isinstance(metrics, dict) and metrics:
        parts = []
        for key, value in metrics.items():
            parts.append(f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}")
        lines.append("  metrics: " + ", ".join(parts))
    if "source" in meta:
        lines.append(f"  source: {meta['source']}")
    return lines


def _run_info(args: argparse.Namespace) -> int:
    from gsvision.io import SplatFileError

    if not args.files and not args.backends:
        raise CLIError("give splat file(s) to describe, or --backends")
    failed = 0
    if args.backends:
        from gsvision.raster import BACKENDS, available_backends, backend_status

        status = backend_status()
        width = max(len(n) for n in status)
        for name, reason in status.items():
            state = "usable" if reason is None else f"unavailable: {reason}"
            print(f"{name.ljust(width)}  {state}  ({BACKENDS[name].doc})")
        for device in ("cpu", "cuda"):
            usable = available_backends(device)
            print(f"auto on {device}: {usable[0] if usable else 'none'}")
    for text in args.files:
        try:
            print("\n".join(_describe(Path(text))))
        except SplatFileError as exc:
            print(f"gsvision info: error: {exc}", file=sys.stderr)
            failed += 1
    return _exit_code(len(args.files) - failed, failed) if args.files else 0


# ==================================================================================== demo
_PHOTO_DEMO = {"n_gaussians": 1024, "iters": 400, "size": "224"}  # `demo --photos` defaults


def _demo_args(p: argparse.ArgumentParser) -> None:
    p.description = (
        "The GS-CLIP demo (default): synthetic captioned shapes → splat shards → a small RGB CLIP "
        "→ the splat tower on its frozen backbone → zero-shot accuracy of both → report.html. "
        "With --photos: only fit the shipped photos and write pictures."
    )
    p.add_argument("-o", "--output", default="demo-out", metavar="OUTDIR", help="output folder")
    p.add_argument("--photos", action="store_true", help="only fit the shipped photos (quick)")
    p.add_argument("--quick", action="store_true", help="tiny sizes (a minute; for tests)")
    p.add_argument("--train-pairs", type=_positive_int, default=None, help="synthetic train pairs")
    p.add_argument("--test-pairs", type=_positive_int, default=None, help="held-out pairs")
    p.add_argument(
        "--model",
        default=None,
        help="backbone (default GS-ViT-Tiny-8-64-MiniLM with the minilm extra, else "
        "GS-ViT-Tiny-8-64)",
    )
    p.add_argument(
        "--pretrained",
        default=None,
        help="open_clip weights (tag or file) for the backbone; skips the RGB stage",
    )
    _add_fit_arguments(p, n=None, iters=None, size=None)
    p.add_argument("--scale", type=_positive_int, default=3, help="upscaling of ellipse overlays")


def _run_demo(args: argparse.Namespace) -> int:
    if args.photos:
        for name, value in _PHOTO_DEMO.items():
            if getattr(args, name) is None:
                setattr(args, name, _parse_fit_size(value) if name == "size" else value)
        return _run_photo_demo(args)
    from gsvision.train.demo import DemoConfig, run_demo

    d = DemoConfig()
    size = args.size if isinstance(args.size, int) else d.image_size
    cfg = DemoConfig(
        out=args.output,
        n_train=args.train_pairs or d.n_train,
        n_test=args.test_pairs or d.n_test,
        image_size=size,
        n_gaussians=args.n_gaussians or d.n_gaussians,
        fit_iters=args.iters or d.fit_iters,
        level=d.level if args.level == "auto" else args.level,  # its shards: no rate target
        model=args.model or d.model,
        pretrained=args.pretrained,
        quick=args.quick,
    )
    run_demo(cfg)
    return 0


def _markdown_table(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(_HEADER) + " |", "|" + "---|" * len(_HEADER)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _run_photo_demo(args: argparse.Namespace) -> int:
    import torch

    from gsvision.io import sample_images, save_image
    from gsvision.raster import render
    from gsvision.viz import comparison_figure, draw_ellipses

    start = time.perf_counter()
    settings = _fit_settings(args)
    out = _out_dir(args.output)
    loaded, failures = _load_images([str(p) for p in sample_images()])
    if not loaded:
        raise CLIError("no sample images found in the installed package")
    fitted = _fit_and_write(loaded, out, settings, args.batch, not args.quiet, failures)
    for f in fitted:
        h, w = (int(v) for v in f.splats.image_sizes[0])
        with torch.no_grad():
            pixels = render(f.splats, h, w, backend=settings["backend"])[0].clamp(0, 1)
        save_image(out / f"{f.name}_render.png", pixels)
        overlay = draw_ellipses(None, f.splats, h, w, scale=args.scale, backend=settings["backend"])
        overlay.save(out / f"{f.name}_ellipses.png")
        n = int(f.splats.counts[0])
        comparison_figure(
            f.target,
            pixels,
            overlay,
            out / f"{f.name}_comparison.png",
            titles=[f"original ({w}x{h})", f"{n} Gaussians", "1σ ellipses"],
            suptitle=f.name,
        )
    rows = _table_rows(fitted)
    (out / "metrics.md").write_text(
        f"# gsvision demo\n\nN = {args.n_gaussians}, iterations ≤ {args.iters}, size "
        f"{args.size}, level {args.level}, gsvision {__version__}. Seconds are the wall time of "
        f"the batch that fitted the image; bytes are the .{args.format} file; PSNR and SSIM are "
        "measured on what that file decodes to.\n\n" + _markdown_table(rows)
    )
    _metrics_json(out, fitted, failures, settings)
    _print_table(rows)
    print(
        f"\nwrote to {out}/ in {time.perf_counter() - start:.0f} s: per image <name>_render.png, "
        f"<name>_ellipses.png, <name>_comparison.png, <name>.{args.format}; metrics.md, metrics.json"
    )
    return _exit_code(len(fitted), len(failures))


# ==================================================================================== bench
def bench_names() -> list[str]:
    """Benchmark modules under :mod:`gsvision.bench` (empty if the package is absent)."""
    try:
        import gsvision.bench as package
    except Exception:  # absent, or broken: `bench NAME` then says none are installed
        return []
    return sorted(
        m.name for m in pkgutil.iter_modules(package.__path__) if not m.name.startswith("_")
    )


def _bench_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", metavar="NAME", help="benchmark module in gsvision.bench")
    p.add_argument("args", nargs=argparse.REMAINDER, help="arguments passed to the benchmark")


def _run_bench(args: argparse.Namespace) -> int:
    import importlib

    names = bench_names()
    if args.name not in names:
        available = ", ".join(names) if names else "none installed"
        raise CLIError(f"unknown benchmark {args.name!r}; available: {available}")
    module = importlib.import_module(f"gsvision.bench.{args.name}")
    if not hasattr(module, "main"):
        raise CLIError(f"gsvision.bench.{args.name} has no main(args) function")
    try:
        result = module.main(list(args.args))
    except SystemExit as exc:  # a benchmark's own argparse (--help, usage errors), or its refusal
        if isinstance(exc.code, int) or exc.code is None:
            return exc.code or 0
        print(exc.code, file=sys.stderr)
        return 2
    return result if isinstance(result, int) else 0  # benchmarks return their results dict


# ==================================================================================== registry
#: Subcommands by name. Later issues add ``convert``, ``train``, ``eval`` and ``serve`` here, each a
def _lazy(module: str, name: str) -> Callable:
    """A function of another module, imported only when called (keeps ``--help`` fast)."""

    def call(*args: Any) -> Any:
        return getattr(importlib.import_module(module), name)(*args)

    return call


#: ``Command(help, add_arguments, run)``; ``run`` returns the exit code.
COMMANDS: dict[str, Command] = {
    "fit": Command("fit images with Gaussians; write one splat file each", _fit_args, _run_fit),
    "render": Command("render a splat file to an image", _render_args, _run_render),
    "info": Command("describe splat files, or the rasteriser backends", _info_args, _run_info),
    "demo": Command(
        "the GS-CLIP demo end to end on built-in data (--photos: fit the sample photos)",
        _demo_args,
        _run_demo,
    ),
    "convert": Command(
        "convert image-text shards to splat shards (torchrun-aware)",
        _lazy("gsvision.cli_convert", "add_arguments"),
        _lazy("gsvision.cli_convert", "run"),
    ),
    "train": Command(
        "train GS-CLIP (stages rgb, distill, contrastive; torchrun-aware)",
        _lazy("gsvision.train.main", "add_arguments"),
        _lazy("gsvision.train.main", "run"),
    ),
    "eval": Command(
        "zero-shot top-1/top-5 of the splat and RGB towers (ImageNet-1K, clip_benchmark layouts)",
        _lazy("gsvision.cli_eval", "add_arguments"),
        _lazy("gsvision.cli_eval", "run"),
    ),
    "serve": Command(
        "the embedding service: .gsv payloads and texts in, embeddings out (HTTP)",
        _lazy("gsvision.cli_serve", "add_serve_arguments"),
        _lazy("gsvision.cli_serve", "run_serve"),
    ),
    "send": Command(
        "edge client: fit images, send their splats to a service, get embeddings",
        _lazy("gsvision.cli_serve", "add_send_arguments"),
        _lazy("gsvision.cli_serve", "run_send"),
    ),
    "bench": Command("run a benchmark from gsvision.bench", _bench_args, _run_bench),
}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every registered subcommand."""
    parser = argparse.ArgumentParser(
        prog="gsvision", description="Images as compact sets of 2D Gaussian splats."
    )
    parser.add_argument("--version", action="version", version=f"gsvision {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, command in COMMANDS.items():
        p = sub.add_parser(name, help=command.help, description=command.help)
        command.add_arguments(p)
        p.set_defaults(run=command.run)
    bench = sub.choices.get("bench")
    if bench is not None:
        bench.epilog = "benchmarks: " + (", ".join(bench_names()) or "none installed")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (0 ok, 1 partly failed, 2 user error)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version and argparse's own usage errors
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    from gsvision.io import ImageError, SplatFileError

    try:
        return int(args.run(args))
    except (CLIError, ImageError, SplatFileError, ValueError) as exc:
        print(f"gsvision {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"gsvision {args.command}: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("gsvision: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
