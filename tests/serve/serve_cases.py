"""Helpers of the service tests: limits of the test server, images, a live uvicorn server."""

from __future__ import annotations

import threading
import time

import numpy as np
import uvicorn

from gsvision.serve.app import ServeConfig

API_KEY = "test-key-0123456789"
MAX_GAUSSIANS = 64
MAX_IMAGES = 8
MAX_BODY = 64 * 1024


def smooth_images(count: int, size: int = 32, seed: int = 0) -> list[np.ndarray]:
    """Blurry random images (quick to fit, not constant)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        low = rng.random((4, 4, 3))
        img = np.kron(low, np.ones((size // 4, size // 4, 1)))
        out.append((img * 255).astype(np.uint8))
    return out


class LiveServer:
    """The app under uvicorn in a thread, on a free loopback port."""

    def __init__(self, app):
        config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(30)


def serve_config(**kw) -> ServeConfig:
    base = dict(
        api_key=API_KEY,
        max_gaussians=MAX_GAUSSIANS,
        max_images=MAX_IMAGES,
        max_body_bytes=MAX_BODY,
        batch_wait_ms=20,
    )
    return ServeConfig(**(base | kw))
