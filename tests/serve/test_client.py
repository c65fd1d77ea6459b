"""The edge client and the `serve` / `send` commands against real servers."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest
import torch
from PIL import Image
from serve_cases import API_KEY, smooth_images

import gsvision
from gsvision.cli import main
from gsvision.codec import decode
from gsvision.serve.client import EdgeClient, ServiceError


def _reference(service, payloads: list[bytes]) -> np.ndarray:
    with torch.inference_mode():
        return np.concatenate(
            [
                service.model.encode_splats(gsvision.decode(p), normalize=True).numpy()
                for p in payloads
            ]
        )


def test_round_trip_equals_in_process(live, service, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    images = [*smooth_images(3, size=32, seed=5), bad]
    with EdgeClient(live.url, API_KEY) as client:
        assert client.health()["status"] == "ok"
        res = client.embed_images(images, n_gaussians=40, iters=10, size=None, batch=2)
    assert res.embeddings.shape == (3, 128) and len(res.payloads) == 3
    np.testing.assert_allclose(res.embeddings, _reference(service, res.payloads), atol=1e-5)
    assert "error" in res.images[3] and "broken.jpg" in res.images[3]["name"]
    totals = res.totals()
    assert totals["images"] == 3 and totals["failed"] == 1
    for im in res.sent:
        assert im["gsv_bytes"] == len(res.payloads[res.sent.index(im)])
        assert im["raw_bytes"] == 32 * 32 * 3 and im["jpeg_bytes"] > 0
        sent = decode(res.payloads[res.sent.index(im)])  # fewer: those not worth their bytes
        assert im["gaussians"] == int(sent.counts[0]) and 1 <= im["gaussians"] <= 40
    assert totals["x_smaller_than_raw"] == pytest.approx(3 * 3072 / totals["gsv_bytes"])
    with EdgeClient(live.url, API_KEY) as client:  # refused before anything is fitted or sent
        with pytest.raises(ValueError, match="effort must be an integer 0..3"):
            client.embed_images(images[:1], effort=5)


def test_client_endpoints_and_float16(live, service, packed):
    with EdgeClient(live.url, API_KEY, dtype="float16") as client:
        emb = client.embed(packed)
        np.testing.assert_allclose(emb, _reference(service, [packed]), atol=2e-3)
        text = client.embed_text(["a red circle"])
        assert text.shape == (1, 128)
        results = client.classify(packed, ["red circle", "blue star"], top_k=1)
        assert len(results) == 4 and len(results[0]["top"]) == 1
        assert "gsvision_requests_total" in client.metrics()


def test_refusals_raise_with_the_service_message(live, packed):
    with EdgeClient(live.url, "wrong", retries=3) as client:
        with pytest.raises(ServiceError, match="HTTP 401: wrong API key") as err:
            client.embed(packed)
        assert err.value.status == 401 and client.attempts == 1  # 4xx: not retried
    with EdgeClient(live.url, API_KEY) as client:
        with pytest.raises(ServiceError, match="HTTP 400: .*checksum"):
            client.embed(packed[:-1])


def test_retries_after_429_honouring_retry_after(start_server, packed):
    server = start_server(rate_limit=1.0, burst=1)
    with EdgeClient(server.url, API_KEY, retries=3, backoff=0.01) as client:
        client.embed(packed)
        start = time.perf_counter()
        client.embed(packed)  # refused once (429, Retry-After: 1), then served
        assert client.attempts == 3
        assert time.perf_counter() - start >= 0.9


def test_retries_connection_errors_then_gives_up():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: nothing listens there
    with EdgeClient(f"http://127.0.0.1:{port}", retries=2, backoff=0.01) as client:
        with pytest.raises(ServiceError, match="ConnectError"):
            client.health()
        assert client.attempts == 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_and_send_commands(tmp_path, capsys):
    port = _free_port()
    env = {**os.environ, "GSVISION_API_KEY": API_KEY}
    cmd = [sys.executable, "-m", "gsvision.cli", "serve", "--model", "GS-ViT-Tiny-8-64"]
    cmd += ["--num-latents", "8", "--port", str(port), "--log-level", "warning"]
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stderr.read()
            try:
                health = httpx.get(f"{url}/healthz", timeout=2).json()
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "gsvision serve did not start"
                time.sleep(0.2)
        assert health["model"] == "GS-ViT-Tiny-8-64" and health["num_latents"] == 8
        r = httpx.post(f"{url}/v1/embed_text", json={"texts": ["x"]})
        assert r.status_code == 401  # the key came from GSVISION_API_KEY

        paths = []
        for i, img in enumerate(smooth_images(2, size=48, seed=9)):
            paths.append(tmp_path / f"img{i}.png")
            Image.fromarray(img).save(paths[-1])
        (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
        out = tmp_path / "emb.json"
        argv = ["send", *map(str, paths), str(tmp_path / "bad.png"), "--url", url]
        argv += ["--api-key", API_KEY, "--bytes", "600", "--iters", "10", "--size", "48"]
        rc = main([*argv, "--out", str(out)])
        text = capsys.readouterr().out
        assert rc == 1  # one image could not be read; the others were sent
        assert "not sent: " in text and "bad.png" in text and "smaller than raw pixels" in text
        doc = json.loads(out.read_text())
        assert doc["totals"]["images"] == 2 and len(doc["embeddings"]) == 2
        assert all(im["gsv_bytes"] <= 600 for im in doc["images"] if "error" not in im)
        assert main([*argv[:3], "--url", url, "--api-key", "nope", "--iters", "5"]) == 2
        assert "wrong API key" in capsys.readouterr().err
        npy = tmp_path / "emb.npy"
        assert main([argv[0], str(paths[0]), *argv[4:], "--effort", "0", "--out", str(npy)]) == 0
        assert np.load(npy).shape == (1, 128)
    finally:
        proc.terminate()
        proc.wait(30)
