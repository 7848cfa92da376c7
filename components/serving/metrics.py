"""Prometheus metrics of one replica, served at ``/metrics``.

Each replica keeps its own registry (not prometheus_client's global one), so two apps in one process
(tests, or several deployments on one worker) do not collide. Ray Serve's own request metrics are
exported separately on Ray's metrics port; these add what only the app knows: per-endpoint status
codes, model swaps and the version being served.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class ServingMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "align_serve_requests", "HTTP requests by endpoint and status code", ["endpoint", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "align_serve_request_seconds", "Request latency inside the replica", ["endpoint"],
            buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self.batch_size = Histogram(
            "align_serve_encoder_batch_size", "Inputs per batched worker call: texts, images, or whole searches", ["modality"],
            buckets=(1, 2, 4, 8, 16, 32, 64), registry=self.registry,
        )
        self.swaps = Counter(
            "align_serve_model_swaps", "Model swaps by outcome", ["outcome"], registry=self.registry
        )
        self.model_version = Gauge(
            "align_serve_model_version", "The registered model version being served", registry=self.registry
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
