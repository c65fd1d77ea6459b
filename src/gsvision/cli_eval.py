"""``gsvision eval``: zero-shot top-1 / top-5 of the splat and RGB towers (see train/zeroshot.py).

gsvision eval --model run/model.safetensors --dataset imagenet1k --data-dir imagenet/val
gsvision eval --model ViT-B-16 --pretrained openai --dataset wds --data-dir cifar10/ --limit 500
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["add_arguments", "run"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    from gsvision.cli import _parse_fit_size, _positive_int
    from gsvision.train.zeroshot import DATASETS

    p.add_argument(
        "--model",
        required=True,
        metavar="CKPT_OR_NAME",
        help="a GS-CLIP checkpoint (.safetensors from `gsvision train`) or a backbone name",
    )
    p.add_argument(
        "--pretrained",
        default=None,
        metavar="TAG_OR_FILE",
        help="open_clip weights for a backbone name (a tag or a local file)",
    )
    p.add_argument(
        "--num-latents", type=_positive_int, default=None, metavar="K", help="K for a new model"
    )
    p.add_argument(
        "--dataset",
        required=True,
        choices=DATASETS,
        help="imagenet1k (open_clip's 1,000 names and 80 templates), wds (clip_benchmark's "
        "webdataset layout) or folder (class sub-folders)",
    )
    p.add_argument("--data-dir", required=True, metavar="DIR", help="the dataset folder")
    p.add_argument("--split", default="test", help="shard sub-folder tried first (default test)")
    p.add_argument(
        "--templates",
        default=None,
        metavar="openai|simple|FILE",
        help="prompt templates (default: the dataset's; FILE: one per line, {c} = class name)",
    )
    p.add_argument("--towers", default="splat,rgb", help="comma-separated: splat, rgb")
    p.add_argument("--batch", type=_positive_int, default=64, help="images per batch")
    p.add_argument(
        "-n",
        "--n",
        type=_positive_int,
        default=1024,
        metavar="N",
        help="Gaussians per image: fitted, and the slots the splat tower reads",
    )
    p.add_argument("--iters", type=_positive_int, default=300, help="fitting iterations per image")
    p.add_argument(
        "--fit-size",
        type=_parse_fit_size,
        default=None,
        metavar="S|WxH",
        help="size images are fitted at (default: the model's image size)",
    )
    p.add_argument("--level", default="medium", help="codec level of fitted payloads")
    p.add_argument("--limit", type=_positive_int, default=None, help="read at most N samples")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if present)")
    p.add_argument("--backend", default="auto", help="rasteriser backend for fitting")
    p.add_argument("--seed", type=int, default=0, help="fitting seed")
    p.add_argument("--out", default=None, metavar="JSON", help="write the results here")
    p.add_argument(
        "--predictions",
        action="store_true",
        help="also write each sample's label and top-5 classes per tower to the JSON",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def _towers(text: str) -> tuple[str, ...]:
    from gsvision.cli import CLIError
    from gsvision.train.zeroshot import TOWERS

    towers = tuple(t.strip() for t in text.split(",") if t.strip())
    bad = [t for t in towers if t not in TOWERS]
    if not towers or bad:
        raise CLIError(f"--towers: expected a comma-separated subset of {', '.join(TOWERS)}")
    return towers


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def _print_report(result: dict[str, Any]) -> None:
    rows = [["tower", "top-1", "top-5", "images"]]
    for tower, r in result["towers"].items():
        rows.append([tower, _pct(r["top1"]), _pct(r["top5"]), f"{r['images']:,}"])
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        cells = [
            c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))
        ]
        print("  ".join(cells))
    sp = result.get("splat_payloads")
    if sp and (sp["read"] or sp["fitted"]):
        fitted = ""
        if sp["fitted"]:
            psnr = sp["fit_psnr_mean"]
            fitted = (
                f" ({sp['fitted']:,} fitted: N={sp['n']}, {sp['iters']} iterations, level "
                f"{sp['level']}, fit PSNR {psnr:.2f} dB)"
            )
        ratio = f", {sp['ratio']:.1f}x smaller than raw pixels" if sp["ratio"] else ""
        print(
            f"splat payloads: {sp['read']:,} read, {sp['fitted']:,} fitted; mean "
            f"{sp['bytes_mean']:,.0f} bytes{ratio}{fitted}"
        )
    for tower, k in result["no_input"].items():
        if k:
            print(f"{tower}: {k:,} sample(s) had nothing this tower reads (not scored)")
    if result["skipped"]:
        stages = ", ".join(f"{s}: {k}" for s, k in sorted(result["skipped_by_stage"].items()))
        print(f"skipped: {result['skipped']:,} bad sample(s) ({stages}); listed in the JSON")


def run(args: argparse.Namespace) -> int:
    import gsvision  # noqa: F401  (before torch: sets OMP_WAIT_POLICY)
    from gsvision import __version__
    from gsvision.cli import CLIError
    from gsvision.io import jsonable, write_atomic
    from gsvision.model.factory import create_model, get_tokenizer, rgb_transform
    from gsvision.train.zeroshot import evaluate, open_dataset

    towers = _towers(args.towers)
    data = open_dataset(args.dataset, args.data_dir, args.templates, args.split)
    device = args.device
    if device is None:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    is_ckpt = args.model.endswith(".safetensors")
    if is_ckpt and not Path(args.model).is_file():
        raise CLIError(f"{args.model}: no such checkpoint")
    if is_ckpt and args.pretrained:
        print("gsvision eval: --pretrained is ignored for a checkpoint", file=sys.stderr)
    model = create_model(
        args.model,
        None if is_ckpt else args.pretrained,
        num_latents=None if is_ckpt else args.num_latents,
        device=device,
    )
    print(
        f"zero-shot {data.name}: {len(data.classnames):,} classes x {len(data.templates)} "
        f"template(s); {data.source}; model {model.cfg.model_name} on {device}",
        file=sys.stderr,
    )
    result = evaluate(
        model,
        data,
        towers=towers,
        tokenizer=get_tokenizer(model.cfg.model_name),
        preprocess=rgb_transform(model.clip, is_train=False),
        batch=args.batch,
        n=args.n,
        iters=args.iters,
        fit_size=args.fit_size,
        level=args.level,
        limit=args.limit,
        device=device,
        backend=None if args.backend == "auto" else args.backend,
        seed=args.seed,
        predictions=args.predictions,
        progress=not args.quiet,
    )
    if result["read"] == 0:
        raise CLIError(f"{args.data_dir}: no samples")
    _print_report(result)
    doc = {
        "gsvision_version": __version__,
        "settings": {
            "model": args.model,
            "pretrained": args.pretrained,
            "dataset": args.dataset,
            "data_dir": args.data_dir,
            "templates": args.templates,
            "towers": list(towers),
            "limit": args.limit,
            "device": str(device),
        },
        **result,
    }
    if args.out:
        write_atomic(Path(args.out), json.dumps(jsonable(doc), indent=2) + "\n")
        print(f"wrote {args.out}")
    if result["images"] == 0:
        return 2
    return 1 if result["skipped"] else 0
