"""`gsvision bench serve`: a bounded load test of the embedding service on loopback.

The service (``gsvision serve``) runs in its own process, as deployed; the sample photos are fitted
and encoded once (the edge's work, not timed here), then clients in threads, each with its own
connection, post one payload per request to ``/v1/embed`` until a fixed number of requests is done.
This runs at concurrency 1 and at ``--clients``, so the effect of micro-batching (requests of
concurrent clients sharing one forward) is measured side by side. Recorded per level: requests/s,
images/s, p50/p90/p99 latency, errors (any non-200 answer or exception) and lost requests (sent
without an answer), and the mean images per model forward (from ``/metrics``); also the bytes per
request for splats against the same images as JPEG (Pillow, q90 and q75) and raw pixels. Writes
``benchmarks/results/serve.json``.
"""

from __future__ import annotations

import argparse
import io
import os
import re
import socket
import statistics
import subprocess
import sys
import threading
import time
from typing import Any

import numpy as np

from gsvision.bench._common import write_result

__all__ = ["main"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _payloads(args) -> tuple[list[bytes], dict[str, Any]]:
    """The sample photos fitted at ``--size`` with ``-n`` Gaussians: payloads and byte sizes."""
    from PIL import Image

    from gsvision.codec.rate import fit_and_encode
    from gsvision.io import load_image, sample_images

    images = [load_image(p) for p in sample_images()]
    coded = fit_and_encode(
        images, None, args.level, args.n, iters=args.iters, size=args.size, progress=False
    )
    sizes: dict[str, list[int]] = {"gsv": [], "jpeg_q90": [], "jpeg_q75": [], "raw": []}
    psnr = []
    for c in coded:
        pixels = (c.target.clamp(0, 1) * 255 + 0.5).byte().numpy()
        sizes["gsv"].append(len(c.payload))
        for q in (90, 75):
            buf = io.BytesIO()
            Image.fromarray(pixels).save(buf, format="JPEG", quality=q)
            sizes[f"jpeg_q{q}"].append(buf.tell())
        sizes["raw"].append(pixels.size)
        psnr.append(c.metrics["psnr"])
    mean = {k: float(np.mean(v)) for k, v in sizes.items()}
    info = {
        "images": len(coded),
        "image_size": args.size,
        "gaussians": args.n,
        "level": args.level,
        "fit_iters": args.iters,
        "decoded_psnr_mean": float(np.mean(psnr)),
        "bytes_per_request": mean,
        "x_smaller_than_jpeg_q90": mean["jpeg_q90"] / mean["gsv"],
        "x_smaller_than_jpeg_q75": mean["jpeg_q75"] / mean["gsv"],
        "x_smaller_than_raw": mean["raw"] / mean["gsv"],
    }
    return [c.payload for c in coded], info


class _Server:
    """``gsvision serve`` in a subprocess on a free loopback port."""

    def __init__(self, args, api_key: str):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [
            sys.executable, "-m", "gsvision.cli", "serve", "--model", args.model,
            "--port", str(self.port), "--max-batch", str(args.max_batch),
            "--batch-wait-ms", str(args.batch_wait_ms), "--log-level", "warning",
        ]  # fmt: skip
        if args.num_latents:
            cmd += ["--num-latents", str(args.num_latents)]
        env = {**os.environ, "GSVISION_API_KEY": api_key}
        self.proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)

    def wait_ready(self, timeout: float = 180.0) -> dict:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the service exited: {self.proc.stderr.read()[-2000:]}")
            try:
                return httpx.get(f"{self.url}/healthz", timeout=2).json()
            except httpx.TransportError:
                time.sleep(0.2)
        raise RuntimeError(f"the service did not answer within {timeout:.0f} s")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def _batches(url: str, key: str) -> tuple[float, float]:
    """``(forwards, images)`` so far, from the service's Prometheus metrics."""
    import httpx

    text = httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {key}"}).text
    count = re.search(r"^gsvision_batch_images_count (\S+)$", text, re.M)
    total = re.search(r"^gsvision_batch_images_sum (\S+)$", text, re.M)
    return (float(count.group(1)) if count else 0.0, float(total.group(1)) if total else 0.0)


def _load(url: str, key: str, payloads: list[bytes], clients: int, requests: int) -> dict:
    """``requests`` posts by ``clients`` threads; latencies, errors, lost requests."""
    import httpx

    lock = threading.Lock()
    next_i = [0]
    latencies: list[float] = []
    errors: list[str] = []
    sent = [0]
    answered = [0]

    def client() -> None:
        with httpx.Client(
            base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=300
        ) as http:
            while True:
                with lock:
                    i = next_i[0]
                    if i >= requests:
                        return
                    next_i[0] += 1
                    sent[0] += 1
                start = time.perf_counter()
                try:
                    r = http.post(
                        "/v1/embed",
                        content=payloads[i % len(payloads)],
                        params={"format": "f16"},
                        headers={"Content-Type": "application/octet-stream"},
                    )
                except httpx.HTTPError as exc:
                    with lock:
                        errors.append(repr(exc))
                    continue
                seconds = time.perf_counter() - start
                with lock:
                    answered[0] += 1
                    if r.status_code == 200:
                        latencies.append(seconds)
                    else:
                        errors.append(f"HTTP {r.status_code}: {r.text[:200]}")

    before = _batches(url, key)
    start = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    after = _batches(url, key)
    forwards, images = after[0] - before[0], after[1] - before[1]
    lat = sorted(latencies)

    def pct(q: float) -> float | None:
        return lat[min(len(lat) - 1, int(q * len(lat)))] if lat else None

    return {
        "clients": clients,
        "requests": requests,
        "ok": len(lat),
        "errors": len(errors),
        "error_samples": errors[:5],
        "lost": sent[0] - answered[0],  # no HTTP answer at all
        "seconds": wall,
        "requests_per_s": len(lat) / wall,
        "latency_s": {
            "p50": pct(0.50),
            "p90": pct(0.90),
            "p99": pct(0.99),
            "mean": statistics.fmean(lat) if lat else None,
        },
        "model_forwards": forwards,
        "images_per_forward": images / forwards if forwards else None,
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="gsvision bench serve", description=__doc__.split("\n")[0])
    p.add_argument("--model", default="ViT-B-16", help="backbone name (random weights)")
    p.add_argument("--num-latents", type=int, default=None, help="K (default 98)")
    p.add_argument("--clients", type=int, default=16, help="concurrent clients")
    p.add_argument("--requests", type=int, default=192, help="requests at --clients")
    p.add_argument("--serial-requests", type=int, default=32, help="requests at concurrency 1")
    p.add_argument("-n", type=int, default=1024, help="Gaussians per image")
    p.add_argument("--size", type=int, default=224, help="image size fitted")
    p.add_argument("--iters", type=int, default=150, help="fitting iterations")
    p.add_argument("--level", default="medium", help="codec level")
    p.add_argument("--max-batch", type=int, default=64)
    p.add_argument("--batch-wait-ms", type=float, default=5.0)
    p.add_argument("--quick", action="store_true", help="tiny model and images (tests)")
    p.add_argument(
        "--out", "--out-dir", dest="out_dir", default=None, help="default benchmarks/results"
    )
    args = p.parse_args(argv)
    if args.quick:
        args.model, args.num_latents, args.n, args.size, args.iters = (
            "GS-ViT-Tiny-8-64", 16, 64, 64, 30,
        )  # fmt: skip
        args.clients, args.requests, args.serial_requests = 8, 48, 8

    payloads, sizes = _payloads(args)
    key = os.urandom(16).hex()
    server = _Server(args, key)
    try:
        health = server.wait_ready()
        _load(server.url, key, payloads, 2, 4)  # warm-up: first forwards, connections
        levels = [
            _load(server.url, key, payloads, 1, args.serial_requests),
            _load(server.url, key, payloads, args.clients, args.requests),
        ]
    finally:
        server.stop()
    serial, loaded = levels
    result = {
        "settings": {
            k: getattr(args, k)
            for k in ("model", "num_latents", "clients", "requests", "serial_requests", "max_batch")
        }
        | {"batch_wait_ms": args.batch_wait_ms, "quick": args.quick},
        "service": health,
        "payloads": sizes,
        "levels": levels,
        "throughput_gain_under_load": loaded["requests_per_s"] / serial["requests_per_s"]
        if serial["requests_per_s"]
        else None,
        "errors_total": sum(lv["errors"] for lv in levels),
        "lost_total": sum(lv["lost"] for lv in levels),
    }
    path = write_result("serve", result, args.out_dir)
    for lv in levels:
        lat = lv["latency_s"]
        print(
            f"{lv['clients']:>3} client(s): {lv['requests_per_s']:.1f} requests/s, "
            f"p50 {1000 * (lat['p50'] or 0):.0f} ms, p99 {1000 * (lat['p99'] or 0):.0f} ms, "
            f"{lv['images_per_forward'] or 0:.1f} images/forward, {lv['errors']} errors, "
            f"{lv['lost']} lost"
        )
    b = sizes["bytes_per_request"]
    print(
        f"bytes/request: .gsv {b['gsv']:,.0f}, JPEG q90 {b['jpeg_q90']:,.0f}, "
        f"q75 {b['jpeg_q75']:,.0f}, raw {b['raw']:,.0f}; throughput under load "
        f"{result['throughput_gain_under_load']:.2f}x serial; wrote {path}"
    )
    return result


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
    sys.exit(0)
