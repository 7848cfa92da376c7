"""Our own Prometheus metrics for training, the data stage and serving, exported through Ray's metrics agent.

Recording goes through ``ray.util.metrics``, so every Ray node's metrics endpoint serves these next to
Ray's own metrics and one Prometheus scrape job (``dashboards/prometheus.yml``) covers both. Ray
exports a metric named ``x`` as ``ray_x`` (its agent's namespace); a counter adds ``_total`` and a
histogram ``_bucket``/``_sum``/``_count``.

Measured on Ray 2.60: the agent drops a gauge that has not been set for two export intervals (~20 s),
while a counter stays until the node stops, even after the process that counted has exited. So the
training loop sets gauges every step, and the data stage, which reports once when it finishes,
counts its rows with counters.

Serving: each Serve replica records through a ``ServeRecorder`` tagged with its application,
deployment and replica id, so every replica's series reach Prometheus separately (through the agent of
the node it runs on) and dashboards sum them. The replica's own prometheus_client registry
(``components/serving/metrics.py``, at the app's ``/metrics``) keeps the same numbers for one replica.
Ray's agent rebuilds a histogram's ``_sum`` from bucket midpoints (Ray 2.60,
``OpenTelemetryMetricRecorder.record_histogram_aggregated_batch``), so it is approximate; buckets and
``_count`` are exact, and the encoder's inputs are also counted exactly for the mean batch size.

``METRICS`` lists every metric we export; the dashboard tests read it. Metric objects are created on
first use in the recording process, never at import.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass

log = logging.getLogger(__name__)

# Prepended by Ray's metrics agent to every metric it exports, ours included (Ray 2.60's OpenTelemetry
# recorder registers each metric as f"{NAMESPACE}_{name}" with NAMESPACE = "ray"; a test checks it).
EXPORT_PREFIX = "ray_"
_PROMETHEUS_SUFFIXES = {"gauge": ("",), "counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}


@dataclass(frozen=True)
class MetricSpec:
    name: str  # as given to Ray; Prometheus shows EXPORT_PREFIX + name (+ a suffix for counters)
    description: str
    tag_keys: tuple[str, ...]
    kind: str = "gauge"
    boundaries: tuple[float, ...] = ()  # histograms only: upper bounds of the buckets (Ray needs them explicit)

    @property
    def prometheus_names(self) -> tuple[str, ...]:
        """The series names a Prometheus scrape of Ray's metrics endpoint shows for this metric."""
        return tuple(f"{EXPORT_PREFIX}{self.name}{suffix}" for suffix in _PROMETHEUS_SUFFIXES[self.kind])


_TRAIN_TAGS = ("run", "rank")
TRAIN_STEP = MetricSpec("align_train_step", "Optimizer steps done in this training run", _TRAIN_TAGS)
TRAIN_LOSS = MetricSpec("align_train_loss", "Contrastive loss of the last step on this worker", _TRAIN_TAGS)
TRAIN_TEMPERATURE = MetricSpec("align_train_temperature", "Learnable softmax temperature after the last step",
                               _TRAIN_TAGS)
TRAIN_SAMPLES_PER_S = MetricSpec(
    "align_train_samples_per_second", "Global-batch pairs per second over the last step (wait included)", _TRAIN_TAGS
)
TRAIN_DATA_WAIT = MetricSpec(
    "align_train_data_wait_fraction", "Share of the last step's time spent waiting for the next batch", _TRAIN_TAGS
)

_DATA_TAGS = ("dataset", "version")
DATA_ROWS_IN = MetricSpec("align_data_rows_in", "Rows read by the filter stage", _DATA_TAGS, "counter")
DATA_ROWS_KEPT = MetricSpec("align_data_rows_kept", "Rows the filter stage kept for training", _DATA_TAGS, "counter")
DATA_ROWS_REJECTED = MetricSpec("align_data_rows_rejected", "Rows the filter stage rejected", _DATA_TAGS, "counter")
DATA_REJECTED_BY_RULE = MetricSpec(
    "align_data_rows_rejected_by_rule", "Rows the filter stage rejected, by the rule that rejected them",
    (*_DATA_TAGS, "rule"), "counter",
)

# Serving, one series per replica; the names match the replica's own /metrics (components/serving/metrics.py,
# which takes its buckets from here), with Ray's prefix.
SERVE_LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
SERVE_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
_SERVE_TAGS = ("application", "deployment", "replica")  # as Ray Serve tags its own replica metrics
SERVE_REQUESTS = MetricSpec("align_serve_requests", "HTTP requests by endpoint and status code",
                            (*_SERVE_TAGS, "endpoint", "status"), "counter")
SERVE_REQUEST_SECONDS = MetricSpec("align_serve_request_seconds", "Request latency inside the replica",
                                   (*_SERVE_TAGS, "endpoint"), "histogram", SERVE_LATENCY_BUCKETS)
SERVE_BATCH_SIZE = MetricSpec("align_serve_encoder_batch_size",
                              "Inputs per batched worker call: texts, images, or whole searches",
                              (*_SERVE_TAGS, "modality"), "histogram", SERVE_BATCH_BUCKETS)
SERVE_BATCH_INPUTS = MetricSpec("align_serve_encoder_batch_inputs",
                                "Inputs of all batched worker calls (exact; over the batch-size count: the mean)",
                                (*_SERVE_TAGS, "modality"), "counter")
SERVE_MODEL_SWAPS = MetricSpec("align_serve_model_swaps", "Model swaps by outcome", (*_SERVE_TAGS, "outcome"),
                               "counter")
SERVE_MODEL_VERSION = MetricSpec("align_serve_model_version",
                                 "The registered model version being served (-1: not a registry version)", _SERVE_TAGS)

METRICS: tuple[MetricSpec, ...] = (
    TRAIN_STEP, TRAIN_LOSS, TRAIN_TEMPERATURE, TRAIN_SAMPLES_PER_S, TRAIN_DATA_WAIT,
    DATA_ROWS_IN, DATA_ROWS_KEPT, DATA_ROWS_REJECTED, DATA_REJECTED_BY_RULE,
    SERVE_REQUESTS, SERVE_REQUEST_SECONDS, SERVE_BATCH_SIZE, SERVE_BATCH_INPUTS, SERVE_MODEL_SWAPS, SERVE_MODEL_VERSION,
)


def prometheus_names() -> set[str]:
    """Every series name our metrics appear under in Prometheus."""
    return {name for spec in METRICS for name in spec.prometheus_names}


_created: dict[str, object] = {}
_warned = False


def _ray_connected() -> bool:
    """Ray exports only from a process connected to a cluster; anywhere else recording is a no-op.

    A process that never imported Ray cannot be connected, so this does not import it either.
    """
    ray = sys.modules.get("ray")
    return ray is not None and ray.is_initialized()


def _new_metric(spec: MetricSpec):
    from ray.util.metrics import Counter, Gauge, Histogram

    if spec.kind == "histogram":
        return Histogram(spec.name, description=spec.description, boundaries=[float(b) for b in spec.boundaries],
                         tag_keys=spec.tag_keys)
    kind = {"gauge": Gauge, "counter": Counter}[spec.kind]
    return kind(spec.name, description=spec.description, tag_keys=spec.tag_keys)


def _metric(spec: MetricSpec):
    if spec.name not in _created:
        _created[spec.name] = _new_metric(spec)
    return _created[spec.name]


def _warn_once(exc: Exception, who: str) -> None:
    global _warned
    if not _warned:
        _warned = True
        log.warning("metrics not recorded (%s); the %s goes on without them", exc, who)


def _record(values: list[tuple[MetricSpec, float, dict[str, str]]]) -> None:
    """Set each gauge or add to each counter; a failure is logged once and never fails the stage."""
    if not _ray_connected():
        return
    try:
        for spec, value, tags in values:
            metric = _metric(spec)
            if spec.kind == "counter":
                metric.inc(float(value), tags=tags)
            else:
                metric.set(float(value), tags=tags)
    except Exception as exc:  # noqa: BLE001 -- metrics are best effort; the stage's work matters more
        _warn_once(exc, "stage")


def record_training_step(run: str, rank: int, step: int, loss: float, temperature: float,
                         samples_per_s: float, data_wait_fraction: float) -> None:
    """One worker's numbers for the step it just finished (five gauge sets: cheap enough per step)."""
    tags = {"run": run, "rank": str(rank)}
    _record([
        (TRAIN_STEP, step, tags),
        (TRAIN_LOSS, loss, tags),
        (TRAIN_TEMPERATURE, temperature, tags),
        (TRAIN_SAMPLES_PER_S, samples_per_s, tags),
        (TRAIN_DATA_WAIT, data_wait_fraction, tags),
    ])


def record_filter_report(dataset: str, version: str, report: dict) -> None:
    """Count the rows of a filter run that just finished, from its report (rows in/kept/rejected, per
    rule). Called once per filtered dataset: a cache hit filtered nothing. Zero counts are left out
    (Ray counters only accept increments above zero)."""
    tags = {"dataset": dataset, "version": version}
    totals = ((DATA_ROWS_IN, "rows_in"), (DATA_ROWS_KEPT, "rows_kept"), (DATA_ROWS_REJECTED, "rows_rejected"))
    values = [(spec, report.get(key, 0), tags) for spec, key in totals]
    by_rule = report.get("rejected_by_rule", {})
    values += [(DATA_REJECTED_BY_RULE, count, tags | {"rule": rule}) for rule, count in by_rule.items()]
    _record([(spec, value, tags) for spec, value, tags in values if value > 0])


def replica_tags() -> dict[str, str]:
    """Application, deployment and replica id of the Serve replica running this code, as Ray Serve tags its
    own replica metrics (``replica`` is ``ReplicaID.unique_id``). Outside a replica (a process merely
    connected to Ray) the replica is named after the process id, so two such processes still differ."""
    try:
        from ray import serve

        context = serve.get_replica_context()
        return {"application": context.app_name, "deployment": context.deployment,
                "replica": context.replica_id.unique_id}
    except Exception:  # noqa: BLE001 -- Serve raises outside a replica
        return {"application": "", "deployment": "", "replica": f"pid-{os.getpid()}"}


_MAX_CACHED_TAG_SETS = 256  # per recorder and metric family: bounds the memory an odd path can cost


class ServeRecorder:
    """One serving replica's metrics through Ray, called on the request path: cheap and never raising.

    Whether Ray is connected and which replica this is are looked up once, when the replica builds its
    recorder (not connected: every call returns at once). Tag dicts are built once per label value and
    reused. Each metric is a process-wide object, so the replica's tags travel with every call rather than
    as ``set_default_tags`` (costs the same: Ray merges default and passed tags on each call).
    A failure logs one warning and the request goes on.
    """

    def __init__(self) -> None:
        self.enabled = _ray_connected()
        self.tags = replica_tags() if self.enabled else {}
        self._requests: dict[tuple[str, str], tuple[dict[str, str], dict[str, str]]] = {}
        self._modalities: dict[str, dict[str, str]] = {}
        self._version: float | None = None

    def _cache(self, cache: dict, key, value):
        if len(cache) < _MAX_CACHED_TAG_SETS:
            cache[key] = value
        return value

    def request(self, endpoint: str, status: str, seconds: float) -> None:
        if not self.enabled:
            return
        try:
            tags = self._requests.get((endpoint, status))
            if tags is None:
                tags = self._cache(self._requests, (endpoint, status), (
                    self.tags | {"endpoint": endpoint, "status": status}, self.tags | {"endpoint": endpoint}))
            _metric(SERVE_REQUESTS).inc(1.0, tags=tags[0])
            _metric(SERVE_REQUEST_SECONDS).observe(seconds, tags=tags[1])
        except Exception as exc:  # noqa: BLE001 -- never fail a request over a metric
            _warn_once(exc, "replica")

    def batch(self, modality: str, size: int) -> None:
        if not self.enabled:
            return
        try:
            tags = self._modalities.get(modality) or self._cache(self._modalities, modality,
                                                                 self.tags | {"modality": modality})
            _metric(SERVE_BATCH_SIZE).observe(size, tags=tags)
            _metric(SERVE_BATCH_INPUTS).inc(float(size), tags=tags)
        except Exception as exc:  # noqa: BLE001
            _warn_once(exc, "replica")

    def swap(self, outcome: str) -> None:
        if not self.enabled:
            return
        try:
            _metric(SERVE_MODEL_SWAPS).inc(1.0, tags=self.tags | {"outcome": outcome})
        except Exception as exc:  # noqa: BLE001
            _warn_once(exc, "replica")

    def model_version(self, value: float) -> None:
        """Set the version gauge; ``refresh`` sets it again (Ray drops a gauge left unset ~2 export intervals)."""
        self._version = value
        self.refresh()

    def refresh(self) -> None:
        """Re-set the gauges; the replica calls this from its periodic loops (health check, champion check)."""
        if not self.enabled or self._version is None:
            return
        try:
            _metric(SERVE_MODEL_VERSION).set(self._version, tags=self.tags)
        except Exception as exc:  # noqa: BLE001
            _warn_once(exc, "replica")
