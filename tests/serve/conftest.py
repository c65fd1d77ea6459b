"""Fixtures of the service tests: a small GS-CLIP service, real payloads, live servers."""

from __future__ import annotations

import pytest
from serve_cases import LiveServer, serve_config, smooth_images

import gsvision
from gsvision.serve.app import create_app, load_embedding_model


@pytest.fixture(scope="session")
def service():
    return load_embedding_model("GS-ViT-Tiny-8-64", num_latents=8, device="cpu")


@pytest.fixture(scope="session")
def fitted():
    """Four images fitted with 48 Gaussians (and one with 100, above the test server's limit)."""
    res = gsvision.fit(smooth_images(4), 48, iters=15, size=None, backend="cpu")
    big = gsvision.fit(smooth_images(1, seed=1), 100, iters=5, size=None, backend="cpu")
    return res.splats, big.splats


@pytest.fixture(scope="session")
def payloads(fitted):
    """One single-image payload per image (medium level)."""
    splats, _ = fitted
    return [gsvision.encode(splats[i]) for i in range(splats.batch_size)]


@pytest.fixture(scope="session")
def packed(fitted):
    """All four images in one payload."""
    return gsvision.encode(fitted[0])


@pytest.fixture(scope="session")
def too_many_gaussians(fitted):
    return gsvision.encode(fitted[1])


@pytest.fixture(scope="module")
def live(service):
    """The service with the test limits, served on loopback for the module."""
    with LiveServer(create_app(service, serve_config())) as server:
        yield server


@pytest.fixture
def start_server(service):
    """Start further servers with other settings; stopped after the test."""
    servers = []

    def start(**kw) -> LiveServer:
        s = LiveServer(create_app(service, serve_config(**kw))).__enter__()
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.__exit__(None, None, None)
