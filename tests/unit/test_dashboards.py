"""The Grafana dashboards, their provisioning and Prometheus config agree with the metrics the code exports.

Every metric a panel or variable queries must come from one of two places, none listed by hand here:
- ours, recorded through Ray (components/runtime/metrics.py: training, data stage, serving replicas), under
  the prefix Ray's agent adds;
- Ray's and Ray Serve's built-in metrics, proven by their definition in the installed ray package's source.
The serving app's own registry (components/serving/metrics.py, its GET /metrics) is not scraped: each of its
metrics must have a twin in METRICS. Also here: the training loop's, the data stage's and the serving
replicas' recorders, without a Ray cluster.
"""

import functools
import importlib.util
import json
import logging
import re
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml

from components.config import PROJECT_ROOT, ServeConfig, SourceConfig, load_config
from components.runtime import metrics as runtime_metrics

DASHBOARDS = PROJECT_ROOT / "dashboards"
DASHBOARD_JSON = sorted((DASHBOARDS / "grafana").glob("*.json"))
DATASOURCE_FILE = DASHBOARDS / "grafana/provisioning/datasources/prometheus.yaml"
EXPECTED_UIDS = {"align-training": "align-training", "align-serving": "align-serving", "align-data": "align-data"}
RAY_PACKAGE = Path(importlib.util.find_spec("ray").submodule_search_locations[0])
# Ray's own Grafana panels and its tests mention metrics without defining them.
NOT_DEFINITIONS = ("dashboard/modules/metrics/dashboards/", "/tests/")
PROMETHEUS_SUFFIXES = ("_total", "_bucket", "_sum", "_count")


def _rel(path: Path) -> str:
    return str(path.relative_to(PROJECT_ROOT))


def _yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


# ------------------------------------------------------------------------------ PromQL and exported names

_PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
                 "offset", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers, bare or before ``{``, that are not functions,
    aggregations, keywords or label names."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)  # label values, string arguments
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers; the metric name before them stays
    text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges and subqueries: [5m], [$__rate_interval]
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)  # label lists
    text = re.sub(r"\$\{?\w+\}?", " ", text)  # Grafana variables
    names = set()
    for match in re.finditer(r"(?<![\w.])[A-Za-z_:][\w:]*", text):
        if match.group() in _PROMQL_WORDS or re.match(r"\s*\(", text[match.end():]):
            continue  # a keyword, or a function / aggregation call
        names.add(match.group())
    return names


def variable_exprs(variable: dict) -> list[str]:
    """The PromQL inside a query variable: ``label_values(<expr>, label)`` or ``query_result(<expr>)``."""
    if variable.get("type") != "query":
        return []
    query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
    match = re.fullmatch(r"\s*label_values\((.*),\s*\w+\s*\)\s*|\s*query_result\((.*)\)\s*", query)
    assert match, f"variable {variable['name']}: unexpected query {query!r}"
    return [match.group(1) or match.group(2)]


@functools.cache
def _ray_sources() -> tuple[list[str], list[re.Pattern]]:
    """Texts of the ray package's Python files that deal with metrics, and the f-string names passed straight to
    a metric constructor (``Counter(f"serve_num_{protocol_name}_requests", ...)`` becomes a pattern with a
    wildcard per placeholder; other f-strings, such as Ray Data's ``f"data_{name}"``, would accept anything)."""
    texts, templates = [], []
    for path in RAY_PACKAGE.rglob("*.py"):
        if any(part in "/" + path.relative_to(RAY_PACKAGE).as_posix() for part in NOT_DEFINITIONS):
            continue
        text = path.read_text(errors="replace")
        if "metric" not in text:
            continue
        texts.append(text)
        for match in re.finditer(r"\b(?:Gauge|Counter|Histogram)\(\s*(?:name\s*=\s*)?f([\"'])([a-z][\w{}.]*)\1", text):
            templates.append(re.compile(re.sub(r"\\\{[^}]*\\\}", "[a-z0-9_]+", re.escape(match.group(2)))))
    return texts, templates


def defined_by_ray(name: str) -> bool:
    """A ``ray_*`` series whose base name (prefix and Prometheus suffix off) Ray's source defines: as a
    string literal in a file dealing with metrics, or matching one of their f-string names."""
    if not name.startswith(runtime_metrics.EXPORT_PREFIX):
        return False
    base = name.removeprefix(runtime_metrics.EXPORT_PREFIX)
    candidates = {base} | {base.removesuffix(s) for s in PROMETHEUS_SUFFIXES if base.endswith(s)}
    texts, templates = _ray_sources()
    for candidate in candidates:
        if any(f'"{candidate}"' in text or f"'{candidate}'" in text for text in texts):
            return True
        if any(template.fullmatch(candidate) for template in templates):
            return True
    return False


@functools.cache
def serving_app_names() -> frozenset[str]:
    """Series names of the serving app's registry as prometheus_client renders them (one child per labelled
    metric, so that _total/_bucket/_sum/_count/_created samples exist)."""
    from prometheus_client.metrics import MetricWrapperBase

    from components.serving.metrics import ServingMetrics

    served = ServingMetrics()
    for metric in vars(served).values():
        if isinstance(metric, MetricWrapperBase) and metric._labelnames:  # no public accessor
            metric.labels(*["x"] * len(metric._labelnames))
    return frozenset(sample.name for family in served.registry.collect() for sample in family.samples)


def unknown_metrics(expr: str) -> set[str]:
    """Names nothing that Prometheus scrapes exports: ours must be in METRICS (the app's /metrics is not scraped)."""
    ours = runtime_metrics.prometheus_names()
    return {name for name in metric_names(expr) if name not in ours and not defined_by_ray(name)}


def _panels(dashboard: dict) -> list[dict]:
    """Every panel, including those inside collapsed rows."""
    return [p for top in dashboard["panels"] for p in (top, *top.get("panels", []))]


def _exprs(dashboard: dict) -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target and query variable."""
    found = [(f"panel {p['id']} {p['title']!r}", t["expr"]) for p in _panels(dashboard) for t in p.get("targets", [])]
    found += [(f"variable {v['name']}", e) for v in dashboard["templating"]["list"] for e in variable_exprs(v)]
    return found


def dashboard_problems(dashboard: dict) -> list[str]:
    """Queries naming no metric, or a metric nothing exports."""
    problems = []
    for where, expr in _exprs(dashboard):
        if not metric_names(expr):
            problems.append(f"{where}: no metric in {expr!r}")
        if unknown := unknown_metrics(expr):
            problems.append(f"{where}: {sorted(unknown)} exported by nothing (in {expr!r})")
    return problems


# -------------------------------------------------------------------------------------------- the checker


@pytest.mark.parametrize(("expr", "names"), [
    (('histogram_quantile(0.95, sum by (le) (rate(ray_serve_http_request_latency_ms_bucket{route!~"/-/.*"}'
      '[$__rate_interval])))'), {"ray_serve_http_request_latency_ms_bucket"}),
    ('1000 * sum by (split) (rate(a_seconds{SessionName=~"$session"}[5m])) / sum(rate(b_total[1m] offset 5m))',
     {"a_seconds", "b_total"}),
    ("max(up) by (job) > bool 0.5 and on (job) group_left (instance) node_load1", {"up", "node_load1"}),
    ('sort_desc(max by (rule) (last_over_time(x_rule_total{dataset=~"$dataset"}[$__range]))) * 1e-3', {"x_rule_total"}),
    ('label_replace(vector(1), "dst", "$1", "src", "(.*)")', set()),
])
def test_metric_names_are_read_from_promql(expr, names):
    assert metric_names(expr) == names


def test_made_up_metrics_are_caught():
    assert unknown_metrics('sum(rate(ray_align_train_bogus{run="x"}[5m]))') == {"ray_align_train_bogus"}
    assert unknown_metrics("rate(ray_serve_num_http_requestz_total[1m])") == {"ray_serve_num_http_requestz_total"}
    assert unknown_metrics("rate(align_serve_latency_seconds_bucket[1m])") == {"align_serve_latency_seconds_bucket"}
    assert unknown_metrics("ray_data_made_up") == {"ray_data_made_up"}  # Ray Data's f"data_{name}" proves nothing
    assert unknown_metrics("align_train_loss") == {"align_train_loss"}  # ours without Ray's prefix
    # The app's own /metrics names: real, but no scrape job reads them (one replica per scrape).
    assert unknown_metrics(" + ".join(serving_app_names())) == serving_app_names() >= {"align_serve_requests_total"}
    bad = {"panels": [{"id": 1, "title": "t", "targets": [{"expr": "ray_made_up_metric"}]}],
           "templating": {"list": [{"name": "v", "type": "query", "query": "label_values(ray_nope, x)"}]}}
    assert len(dashboard_problems(bad)) == 2


def test_known_metrics_pass():
    assert not unknown_metrics("ray_align_train_loss + ray_align_data_rows_rejected_by_rule_total")
    assert not unknown_metrics("ray_align_serve_requests_total + ray_align_serve_encoder_batch_size_count"
                               " + ray_align_serve_model_version + ray_align_serve_encoder_batch_inputs_total")
    assert not unknown_metrics("ray_serve_num_http_requests_total + ray_node_cpu_utilization + ray_data_output_rows")


def test_serving_names_are_known_only_because_they_are_in_METRICS(monkeypatch):
    names = ("ray_align_serve_requests_total", "ray_align_serve_request_seconds_bucket",
             "ray_align_serve_encoder_batch_size_count", "ray_align_serve_encoder_batch_inputs_total",
             "ray_align_serve_model_swaps_total", "ray_align_serve_model_version")
    expr = " + ".join(names)
    assert not unknown_metrics(expr)
    without = tuple(s for s in runtime_metrics.METRICS if not s.name.startswith("align_serve_"))
    assert len(without) < len(runtime_metrics.METRICS)
    monkeypatch.setattr(runtime_metrics, "METRICS", without)
    assert unknown_metrics(expr) == set(names)  # not in Ray's source, not in the app's registry


def test_ray_exports_user_metrics_under_our_prefix():
    """Ray's metrics agent names each metric f"{NAMESPACE}_{name}"; a Ray upgrade that changes it breaks this."""
    recorder = (RAY_PACKAGE / "_private/telemetry/open_telemetry_metric_recorder.py").read_text()
    namespace = re.search(r'^NAMESPACE = "(\w+)"$', recorder, re.MULTILINE)
    assert namespace and f"{namespace.group(1)}_" == runtime_metrics.EXPORT_PREFIX
    assert 'name=f"{NAMESPACE}_{name}"' in recorder


# ---------------------------------------------------------------------------------------------- dashboards


def test_the_three_dashboards_have_stable_uids():
    assert {p.stem: json.loads(p.read_text())["uid"] for p in DASHBOARD_JSON} == EXPECTED_UIDS


@pytest.mark.parametrize("path", DASHBOARD_JSON, ids=_rel)
def test_dashboard_shape(path):
    dashboard = json.loads(path.read_text())
    assert dashboard["id"] is None, "provisioned dashboards carry no numeric id"
    panels = _panels(dashboard)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    datasource_uid = _yaml(DATASOURCE_FILE)["datasources"][0]["uid"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["current"]["value"] == datasource_uid
    for panel in panels:
        if panel["type"] == "row":
            continue
        assert panel["targets"], f"panel {panel['id']} has no query"
        for t in [panel, *panel["targets"]]:
            assert t["datasource"] == {"type": "prometheus", "uid": "${datasource}"}


@pytest.mark.parametrize("path", DASHBOARD_JSON, ids=_rel)
def test_dashboard_queries_only_exported_metrics(path):
    assert dashboard_problems(json.loads(path.read_text())) == []


def test_every_exported_metric_is_on_a_dashboard():
    queried = {n for p in DASHBOARD_JSON for _, e in _exprs(json.loads(p.read_text())) for n in metric_names(e)}
    for spec in runtime_metrics.METRICS:
        assert set(spec.prometheus_names) & queried, spec.name


def test_every_metric_of_the_serving_app_is_also_recorded_through_ray():
    """Each family of the replica's own registry has a twin in METRICS: same name, kind, labels (plus the
    replica's) and buckets, so the dashboards' ray_align_serve_* panels show what GET /metrics shows."""
    from prometheus_client import Histogram

    from components.serving.metrics import ServingMetrics

    served = ServingMetrics()
    families = {family.name: family.type for family in served.registry.collect()}
    specs = {spec.name: spec for spec in runtime_metrics.METRICS if spec.name.startswith("align_serve_")}
    assert families.keys() <= specs.keys()
    replica_tags = ("application", "deployment", "replica")
    for metric in vars(served).values():
        if not hasattr(metric, "_labelnames"):
            continue
        name = metric._name.removesuffix("_total")
        spec = specs[name]
        assert spec.kind == families[name], name
        assert spec.tag_keys == (*replica_tags, *metric._labelnames), name
        if isinstance(metric, Histogram):
            assert tuple(float(b) for b in spec.boundaries) == tuple(metric._upper_bounds[:-1]), name  # +Inf last
    assert {s.kind for s in specs.values() if s.boundaries} == {"histogram"}
    assert all(s.boundaries for s in specs.values() if s.kind == "histogram")


def test_dashboards_cover_their_concern():
    exprs = {}
    for path in DASHBOARD_JSON:
        dashboard = json.loads(path.read_text())
        exprs[dashboard["uid"]] = [e for _, e in _exprs(dashboard)]
    expected = {
        "align-training": {"ray_align_train_loss", "ray_align_train_temperature", "ray_align_train_samples_per_second",
                           "ray_align_train_data_wait_fraction", "ray_data_iter_total_blocked_seconds",
                           "ray_train_controller_state", "ray_node_cpu_utilization"},
        "align-serving": {"ray_serve_num_http_requests_total", "ray_serve_num_http_error_requests_total",
                          "ray_serve_http_request_latency_ms_bucket", "ray_serve_deployment_replica_healthy",
                          "ray_align_serve_request_seconds_bucket", "ray_align_serve_requests_total",
                          "ray_align_serve_encoder_batch_inputs_total", "ray_align_serve_encoder_batch_size_count",
                          "ray_align_serve_model_version", "ray_align_serve_model_swaps_total"},
        "align-data": {"ray_align_data_rows_in_total", "ray_align_data_rows_kept_total",
                       "ray_align_data_rows_rejected_total", "ray_align_data_rows_rejected_by_rule_total"},
    }
    for uid, names in expected.items():
        assert names <= {n for e in exprs[uid] for n in metric_names(e)}, uid
    for q in ("0.5", "0.95", "0.99"):  # latency percentiles over all routes at Serve's proxy
        quantile = f"histogram_quantile({q}, sum by (le) (rate(ray_serve_http_request_latency_ms_bucket"
        assert any(e.startswith(quantile) for e in exprs["align-serving"]), q


# ------------------------------------------------------------------------------- provisioning, Prometheus


def test_grafana_provisioning_shapes():
    datasources = _yaml(DATASOURCE_FILE)
    assert datasources["apiVersion"] == 1 and datasources["datasources"][0]["type"] == "prometheus"
    providers = _yaml(DASHBOARDS / "grafana/provisioning/dashboards/align.yaml")
    assert providers["apiVersion"] == 1
    assert providers["providers"][0]["type"] == "file" and providers["providers"][0]["options"]["path"]


def test_prometheus_scrapes_ray_which_carries_the_serving_metrics():
    """One job: Ray's endpoints carry the replicas' metrics, one series per replica. The app's /metrics,
    read through Serve's proxy from one replica per scrape, is not scraped."""
    jobs = {job["job_name"]: job for job in _yaml(DASHBOARDS / "prometheus.yml")["scrape_configs"]}
    assert jobs.keys() == {"ray"}
    assert jobs["ray"]["file_sd_configs"][0]["files"] == ["/tmp/ray/prom_metrics_service_discovery.json"]
    assert f"{ServeConfig().port}/metrics" not in (DASHBOARDS / "prometheus.yml").read_text().split("scrape_configs")[1]
    serving = json.loads((DASHBOARDS / "grafana/align-serving.json").read_text())
    serve_names = {n for s in runtime_metrics.METRICS if s.name.startswith("align_serve_") for n in s.prometheus_names}
    app_exprs = [e for _, e in _exprs(serving) if metric_names(e) & serve_names]
    assert len(app_exprs) >= 6
    for expr in app_exprs:  # the same filters as the Ray Serve panels, no scrape-job selector
        assert 'application=~"$application"' in expr and 'SessionName=~"$session"' in expr and "job=" not in expr
    assert any("by (replica)" in e for e in app_exprs)  # per-replica panels exist


# ---------------------------------------------------------------------------------------------- recorders


class FakeMetric:
    def __init__(self, spec):
        self.spec, self.calls = spec, []

    def set(self, value, tags):
        self.calls.append(("set", value, tags))

    def inc(self, value, tags):
        self.calls.append(("inc", value, tags))

    def observe(self, value, tags):
        self.calls.append(("observe", value, tags))


@pytest.fixture
def recorded(monkeypatch):
    """Metric name -> FakeMetric, as if this process were connected to Ray."""
    created: dict[str, FakeMetric] = {}
    monkeypatch.setattr(runtime_metrics, "_created", {})
    monkeypatch.setattr(runtime_metrics, "_ray_connected", lambda: True)
    monkeypatch.setattr(runtime_metrics, "_new_metric", lambda spec: created.setdefault(spec.name, FakeMetric(spec)))
    return created


def test_training_loop_records_each_step(recorded):
    import torch

    from components.train.loop import record_step_metrics

    record_step_metrics("align-run", 1, 7, 0.5, torch.tensor(0.07), data_time=0.25, step_time=1.0, global_batch=64)
    tags = {"run": "align-run", "rank": "1"}
    calls = {name: metric.calls for name, metric in recorded.items()}
    assert calls.keys() == {s.name for s in runtime_metrics.METRICS if s.tag_keys == ("run", "rank")}
    assert calls["align_train_step"] == [("set", 7.0, tags)]
    assert calls["align_train_loss"] == [("set", 0.5, tags)]
    assert calls["align_train_temperature"][0][1] == pytest.approx(0.07)
    assert calls["align_train_samples_per_second"] == [("set", 64.0, tags)]
    assert calls["align_train_data_wait_fraction"] == [("set", 0.25, tags)]


def test_filter_stage_counts_rows_once_per_dataset(recorded, monkeypatch, tmp_path):
    from components.data import ingest as ingest_module
    from components.data.ingest import CorpusPaths, ingest
    from components.storage import join_uri, write_json

    report = {"rows_in": 10, "rows_kept": 7, "rows_rejected": 3,
              "rejected_by_rule": {"image_too_small": 2, "nsfw": 1, "text_rare_token": 0}}

    def fake_filter(sources, output_uri, *args, **kwargs):
        manifest = {"kept_uri": join_uri(output_uri, "kept")}
        write_json(join_uri(output_uri, "report.json"), report)
        write_json(join_uri(output_uri, "manifest.json"), manifest)
        return SimpleNamespace(report=report, manifest=manifest)

    monkeypatch.setattr(ingest_module, "run_filter", fake_filter)
    monkeypatch.setattr(ingest_module, "eval_image_hashes", lambda *a: np.zeros(0, dtype=np.uint64))
    monkeypatch.setattr(ingest_module, "dataset_key", lambda cfg, corpus: "v1")
    cfg = load_config(None, [f"storage.home={tmp_path}"])
    corpus = CorpusPaths([SourceConfig(name="synthetic", format="sidecar", path=str(tmp_path))], "eval.json", "")

    assert not ingest(cfg, corpus).cached
    tags = {"dataset": "synthetic", "version": "v1"}
    calls = {name: metric.calls for name, metric in recorded.items()}
    assert calls == {
        "align_data_rows_in": [("inc", 10.0, tags)],
        "align_data_rows_kept": [("inc", 7.0, tags)],
        "align_data_rows_rejected": [("inc", 3.0, tags)],
        "align_data_rows_rejected_by_rule": [("inc", 2.0, tags | {"rule": "image_too_small"}),
                                             ("inc", 1.0, tags | {"rule": "nsfw"})],  # zero counts left out
    }
    assert ingest(cfg, corpus).cached  # a cache hit filtered nothing: counted once
    assert {name: metric.calls for name, metric in recorded.items()} == calls


@pytest.mark.parametrize("ray_module", [None, SimpleNamespace(is_initialized=lambda: False)],
                         ids=["ray-not-imported", "ray-not-initialised"])
def test_recording_without_ray_does_nothing(monkeypatch, ray_module):
    def must_not_create(spec):
        raise AssertionError(f"{spec.name} created outside Ray")

    monkeypatch.setattr(runtime_metrics, "_created", {})
    monkeypatch.setattr(runtime_metrics, "_new_metric", must_not_create)
    if ray_module is None:
        monkeypatch.delitem(sys.modules, "ray", raising=False)
    else:
        monkeypatch.setitem(sys.modules, "ray", ray_module)
    runtime_metrics.record_training_step("r", 0, 1, 0.1, 1.0, 10.0, 0.5)
    runtime_metrics.record_filter_report("d", "v", {"rows_in": 1, "rejected_by_rule": {"nsfw": 1}})
    assert runtime_metrics._created == {}


def test_a_metrics_failure_never_fails_the_stage(monkeypatch, caplog):
    def broken(spec):
        raise RuntimeError("metrics agent unavailable")

    monkeypatch.setattr(runtime_metrics, "_created", {})
    monkeypatch.setattr(runtime_metrics, "_warned", False)
    monkeypatch.setattr(runtime_metrics, "_ray_connected", lambda: True)
    monkeypatch.setattr(runtime_metrics, "_new_metric", broken)
    with caplog.at_level(logging.WARNING, logger=runtime_metrics.__name__):
        runtime_metrics.record_training_step("r", 0, 1, 0.1, 1.0, 10.0, 0.5)
        runtime_metrics.record_training_step("r", 0, 2, 0.1, 1.0, 10.0, 0.5)
    assert [r.getMessage() for r in caplog.records] == [
        "metrics not recorded (metrics agent unavailable); the stage goes on without them"
    ]


def test_histograms_get_their_buckets_from_the_spec():
    """A real ray.util.metrics Histogram (creating one needs no cluster): Ray wants explicit boundaries."""
    for spec in (runtime_metrics.SERVE_REQUEST_SECONDS, runtime_metrics.SERVE_BATCH_SIZE):
        metric = runtime_metrics._new_metric(spec)
        assert metric.info["boundaries"] == [float(b) for b in spec.boundaries]
        assert metric.info["tag_keys"] == spec.tag_keys


def test_serve_recorder_tags_every_series_with_the_replica(recorded, monkeypatch):
    from ray import serve

    context = SimpleNamespace(app_name="align", deployment="AlignSearch", replica_id=SimpleNamespace(unique_id="r1x"))
    monkeypatch.setattr(serve, "get_replica_context", lambda: context)
    recorder = runtime_metrics.ServeRecorder()
    replica = {"application": "align", "deployment": "AlignSearch", "replica": "r1x"}
    assert recorder.tags == replica
    recorder.request("/v1/search", "200", 0.01)
    recorder.request("/v1/search", "200", 0.02)
    recorder.batch("search", 3)
    recorder.swap("ok")
    recorder.model_version(7.0)
    recorder.refresh()
    calls = {name: metric.calls for name, metric in recorded.items()}
    assert calls == {
        "align_serve_requests": [("inc", 1.0, replica | {"endpoint": "/v1/search", "status": "200"})] * 2,
        "align_serve_request_seconds": [("observe", 0.01, replica | {"endpoint": "/v1/search"}),
                                        ("observe", 0.02, replica | {"endpoint": "/v1/search"})],
        "align_serve_encoder_batch_size": [("observe", 3, replica | {"modality": "search"})],
        "align_serve_encoder_batch_inputs": [("inc", 3.0, replica | {"modality": "search"})],
        "align_serve_model_swaps": [("inc", 1.0, replica | {"outcome": "ok"})],
        "align_serve_model_version": [("set", 7.0, replica)] * 2,  # set, then set again by refresh
    }
    first, second = recorded["align_serve_requests"].calls
    assert first[2] is second[2]  # tags built once per label value, not per request
    for spec in runtime_metrics.METRICS:
        if spec.name in calls:
            assert all(set(tags) == set(spec.tag_keys) for _, _, tags in calls[spec.name]), spec.name


def test_serve_recorder_outside_ray_records_nothing(monkeypatch):
    monkeypatch.setattr(runtime_metrics, "_created", {})
    monkeypatch.setattr(runtime_metrics, "_ray_connected", lambda: False)
    monkeypatch.setattr(runtime_metrics, "_new_metric", lambda spec: pytest.fail(f"{spec.name} created outside Ray"))
    recorder = runtime_metrics.ServeRecorder()
    recorder.request("/v1/search", "200", 0.01)
    recorder.batch("text", 2)
    recorder.swap("failed")
    recorder.model_version(1.0)
    recorder.refresh()
    assert recorder.tags == {} and runtime_metrics._created == {}
