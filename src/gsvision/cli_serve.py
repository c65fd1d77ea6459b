"""``gsvision serve`` (the embedding service) and ``gsvision send`` (the edge client).

gsvision serve --model run/model.safetensors --api-key "$KEY"          # http://127.0.0.1:8000
gsvision send photo1.jpg photo2.png --url http://127.0.0.1:8000 --ratio 20 --out emb.npy
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

__all__ = ["add_serve_arguments", "run_serve", "add_send_arguments", "run_send"]


def _need_extra() -> None:
    from gsvision.cli import CLIError

    try:
        import fastapi  # noqa: F401
        import httpx  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise CLIError(
            f"serving needs the 'serve' extra ({exc.name} is missing): "
            "pip install 'gsvision[serve]'"
        ) from None


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


# ======================================================================================== serve
def add_serve_arguments(p: argparse.ArgumentParser) -> None:
    from gsvision.cli import _positive_int

    p.add_argument(
        "--model",
        required=True,
        metavar="CKPT_OR_NAME",
        help="a checkpoint from `gsvision train` (.safetensors) or a backbone name such as "
        "ViT-B-16 (random weights unless --pretrained: for testing)",
    )
    p.add_argument("--pretrained", default=None, help="open_clip weights for a backbone name")
    p.add_argument("--num-latents", type=_positive_int, default=None, metavar="K")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument(
        "--api-key",
        default=None,
        help="clients must send 'Authorization: Bearer KEY' (default: env GSVISION_API_KEY; "
        "neither: no authentication)",
    )
    p.add_argument("--max-body-mb", type=_positive_float, default=8.0, help="request body limit")
    p.add_argument("--max-gaussians", type=_positive_int, default=4096, help="per image")
    p.add_argument("--max-images", type=_positive_int, default=256, help="per request")
    p.add_argument("--max-batch", type=_positive_int, default=64, help="images per forward")
    p.add_argument(
        "--batch-wait-ms",
        type=float,
        default=5.0,
        help="how long a short batch waits for other clients' images",
    )
    p.add_argument(
        "--max-queue", type=_positive_int, default=2048, help="images waiting; 503 beyond"
    )
    p.add_argument(
        "--rate-limit",
        type=_positive_float,
        default=None,
        metavar="R",
        help="requests/s per API key (per client address without a key)",
    )
    p.add_argument("--burst", type=_positive_float, default=None, help="bucket size (default 2R)")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if present)")
    p.add_argument("--log-level", default="info", help="uvicorn log level")


def run_serve(args: argparse.Namespace) -> int:
    _need_extra()
    import gsvision  # noqa: F401  (before torch: sets OMP_WAIT_POLICY)
    from gsvision.serve.app import API_KEY_ENV, ServeConfig, load_embedding_model, serve

    cfg = ServeConfig(
        api_key=args.api_key or os.environ.get(API_KEY_ENV) or None,
        max_body_bytes=int(args.max_body_mb * (1 << 20)),
        max_gaussians=args.max_gaussians,
        max_images=args.max_images,
        max_batch=args.max_batch,
        batch_wait_ms=args.batch_wait_ms,
        max_queue=args.max_queue,
        rate_limit=args.rate_limit,
        burst=args.burst,
    ).check()
    service = load_embedding_model(args.model, args.pretrained, args.num_latents, args.device)
    print(
        f"gsvision serve: {service.name} (embedding dim {service.dim}, K={service.num_latents}) "
        f"on {service.device}, http://{args.host}:{args.port} "
        f"({'API key required' if cfg.api_key else 'no API key'})",
        file=sys.stderr,
    )
    serve(service, cfg, args.host, args.port, args.log_level)
    return 0


# ========================================================================================= send
def add_send_arguments(p: argparse.ArgumentParser) -> None:
    from gsvision.cli import _add_effort, _parse_fit_size, _positive_int

    p.add_argument("images", nargs="+", metavar="IMG", help="images to fit, send and embed")
    p.add_argument("--url", required=True, help="the service, e.g. http://127.0.0.1:8000")
    p.add_argument("--api-key", default=None, help="default: env GSVISION_API_KEY")
    p.add_argument("-n", "--n-gaussians", type=_positive_int, default=1024, metavar="N")
    target = p.add_mutually_exclusive_group()
    target.add_argument("--bytes", type=_positive_int, default=None, help=".gsv bytes per image")
    target.add_argument(
        "--ratio", type=_positive_float, default=None, help="raw pixel bytes / .gsv bytes"
    )
    target.add_argument("--psnr", type=_positive_float, default=None, help="decoded PSNR (dB)")
    p.add_argument(
        "--level",
        default="auto",
        help="codec level (default auto: with --bytes, --ratio or --psnr the bit depths best at "
        "that rate, else medium)",
    )
    p.add_argument(
        "--coder",
        choices=["range", "zstd"],
        default="range",
        help="lossless stage: range (default; 12-20%% smaller payloads) or zstd",
    )
    _add_effort(p)
    p.add_argument("--iters", type=_positive_int, default=300, help="fitting iterations")
    p.add_argument(
        "--size", type=_parse_fit_size, default=224, metavar="S|WxH", help="fit size (default 224)"
    )
    p.add_argument("--backend", default="cpu", help="rasteriser backend (default: the CPU kernel)")
    p.add_argument("--batch", type=_positive_int, default=16, help="images per request")
    p.add_argument("--jpeg-quality", type=int, default=90, help="JPEG quality compared against")
    p.add_argument("--retries", type=int, default=4, help="retries on connection errors/5xx/429")
    p.add_argument("--timeout", type=_positive_float, default=60.0, help="seconds per attempt")
    p.add_argument(
        "--out",
        default=None,
        metavar="FILE",
        help="write the embeddings: .npy (array [B, E]) or .json (with the byte report)",
    )


def _report(records: list[dict[str, Any]], totals: dict[str, Any]) -> None:
    rows = [["image", "N", "PSNR", ".gsv B", "JPEG B", "raw B", "vs JPEG", "vs raw"]]
    for r in records:
        if "error" in r:
            continue
        rows.append(
            [
                Path(r["name"]).name,
                str(r["gaussians"]),
                f"{r['psnr']:.2f}" if r.get("psnr") is not None else "-",
                f"{r['gsv_bytes']:,}",
                f"{r['jpeg_bytes']:,}",
                f"{r['raw_bytes']:,}",
                f"{r['jpeg_bytes'] / r['gsv_bytes']:.1f}x",
                f"{r['raw_bytes'] / r['gsv_bytes']:.1f}x",
            ]
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print(
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w)
                for i, (c, w) in enumerate(zip(r, widths, strict=True))
            )
        )
    for r in records:
        if "error" in r:
            print(f"not sent: {r['name']}: {r['error']}")
    if totals["images"]:
        print(
            f"sent {totals['images']} image(s) in {totals['gsv_bytes']:,} bytes: "
            f"{totals['x_smaller_than_jpeg']:.1f}x smaller than JPEG, "
            f"{totals['x_smaller_than_raw']:.1f}x smaller than raw pixels"
        )


def run_send(args: argparse.Namespace) -> int:
    _need_extra()
    import numpy as np

    import gsvision  # noqa: F401
    from gsvision.cli import CLIError
    from gsvision.io import jsonable, write_atomic
    from gsvision.serve.client import EdgeClient, ServiceError

    if args.out and Path(args.out).suffix not in (".npy", ".json"):
        raise CLIError(f"--out: expected a .npy or .json file, got {args.out}")
    with EdgeClient(args.url, args.api_key, timeout=args.timeout, retries=args.retries) as client:
        try:
            result = client.embed_images(
                args.images,
                n_gaussians=args.n_gaussians,
                bytes=args.bytes,
                ratio=args.ratio,
                psnr=args.psnr,
                level=args.level,
                coder=args.coder,
                effort=args.effort,
                jpeg_quality=args.jpeg_quality,
                batch=args.batch,
                iters=args.iters,
                size=args.size,
                backend=None if args.backend == "auto" else args.backend,
            )
        except ServiceError as exc:
            raise CLIError(str(exc)) from None
    totals = result.totals()
    _report(result.images, totals)
    if args.out:
        out = Path(args.out)
        if out.suffix == ".npy":
            out.parent.mkdir(parents=True, exist_ok=True)
            np.save(out, result.embeddings)
        else:
            doc = {
                "url": args.url,
                "images": result.images,
                "totals": totals,
                "seconds": result.seconds,
                "embeddings": result.embeddings.tolist(),
            }
            write_atomic(out, json.dumps(jsonable(doc)) + "\n")
        print(f"wrote {out}")
    if totals["failed"]:
        return 2 if not totals["images"] else 1
    return 0
