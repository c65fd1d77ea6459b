"""The service's Prometheus metrics (``GET /metrics``), in a registry of its own per app."""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

__all__ = ["ServeMetrics", "CONTENT_TYPE_LATEST"]

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class ServeMetrics:
    """Request counts and latencies per endpoint and status, bytes received, batching."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "gsvision_requests",
            "HTTP requests by endpoint and status",
            ["endpoint", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "gsvision_request_duration_seconds",
            "Request latency by endpoint",
            ["endpoint"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.received = Counter(
            "gsvision_received_bytes",
            "Request body bytes received by endpoint",
            ["endpoint"],
            registry=r,
        )
        self.in_flight = Gauge("gsvision_requests_in_flight", "Requests being served", registry=r)
        self.images = Counter("gsvision_images_embedded", "Splat images embedded", registry=r)
        self.gaussians = Counter("gsvision_gaussians_embedded", "Gaussians embedded", registry=r)
        self.texts = Counter("gsvision_texts_embedded", "Texts embedded", registry=r)
        self.batch_size = Histogram(
            "gsvision_batch_images",
            "Images per model forward (micro-batch size)",
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.batch_seconds = Histogram(
            "gsvision_batch_seconds",
            "Seconds per model forward",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.queue = Gauge("gsvision_queue_images", "Images waiting for a forward", registry=r)
        self.rejected = Counter(
            "gsvision_rejected", "Requests refused, by reason", ["reason"], registry=r
        )

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
