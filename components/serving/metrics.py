"""The serving app's own metrics, recorded twice: in this replica's registry (``/metrics``) and through Ray.

Each replica keeps its own registry (not prometheus_client's global one), so two apps in one process
(tests, or several deployments on one worker) do not collide. ``GET /metrics`` renders it: one replica's
view, which a request through Serve's proxy reads from whichever replica answers (the serving bench
reads it with one replica). The same numbers also go through ``ray.util.metrics``
(``components.runtime.metrics.ServeRecorder``, tagged with the replica), which every Ray node's metrics
endpoint exports as ``ray_align_serve_*``, one series per replica: that is what Prometheus and the
dashboards read. Ray Serve's own request metrics are exported separately; these add what only the app
knows: per-endpoint status codes, encoder batch sizes, model swaps and the version being served.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from components.runtime.metrics import SERVE_BATCH_BUCKETS, SERVE_LATENCY_BUCKETS, ServeRecorder

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = SERVE_LATENCY_BUCKETS


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
            buckets=SERVE_BATCH_BUCKETS, registry=self.registry,
        )
        self.swaps = Counter(
            "align_serve_model_swaps", "Model swaps by outcome", ["outcome"], registry=self.registry
        )
        self.model_version = Gauge(
            "align_serve_model_version", "The registered model version being served", registry=self.registry
        )
        self.ray = ServeRecorder()  # a no-op unless this process is connected to Ray (a Serve replica is)

    # One call per event records it both ways; the Ray side never raises.
    def request(self, endpoint: str, status: str, seconds: float) -> None:
        self.requests.labels(endpoint, status).inc()
        self.latency.labels(endpoint).observe(seconds)
        self.ray.request(endpoint, status, seconds)

    def batch(self, modality: str, size: int) -> None:
        self.batch_size.labels(modality).observe(size)
        self.ray.batch(modality, size)

    def swap(self, outcome: str) -> None:
        self.swaps.labels(outcome).inc()
        self.ray.swap(outcome)

    def serving_version(self, version: str) -> None:
        value = float(version) if version.isdigit() else -1.0
        self.model_version.set(value)
        self.ray.model_version(value)

    def refresh(self) -> None:
        """Called periodically by the replica: Ray drops a gauge that is not set again within ~20 s."""
        self.ray.refresh()

    def render(self) -> bytes:
        return generate_latest(self.registry)
