"""`align report` and `align ui`: a static HTML comparison of MLflow runs, and the local MLflow UI.

One throwaway SQLite tracking store per module (creating its tables takes seconds), filled through
MLflow's client the way the lifecycle fills it: params, train/loss per step, suite metrics with MLflow's
R_at_K names, lineage tags, registered versions with aliases and gate decision tags.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from align_cli.main import _parser, main
from components.config import load_config
from components.report.collect import RunSelection, collect_runs
from components.secrets import redact_uri
from components.report.render import render_html
from components.report.ui import (
    listening,
    mlflow_ui_command,
    mlflow_url,
    prefect_location,
    ray_dashboard_location,
    run_ui,
)

REPO = Path(__file__).resolve().parents[2]
EXPERIMENT = "align-lifecycle"
HOSTILE_NAME = '<script>alert("x")</script> & co'
# Start times a minute apart, so "newest" does not depend on how fast the fixture ran.
_START_MS = itertools.count(int(time.time() * 1000) - 3_600_000, 60_000)


def _log_run(
    client, experiment_id: str, name: str, params: dict, metrics: dict, losses: list[float], tags: dict | None = None
) -> str:
    from mlflow.entities import Metric, Param

    run_id = client.create_run(experiment_id, start_time=next(_START_MS), run_name=name, tags=tags or {}).info.run_id
    history = [Metric("train/loss", value, 0, step) for step, value in enumerate(losses)]
    final = [Metric(key, value, 0, 0) for key, value in metrics.items()]
    client.log_batch(run_id, metrics=history + final, params=[Param(k, str(v)) for k, v in params.items()])
    client.set_terminated(run_id)
    return run_id


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Two lifecycle runs (the second with a hostile name and no classification metric), each with a
    registered version, plus a parent run with two child runs and an empty parent."""
    import mlflow

    root = tmp_path_factory.mktemp("report-store")
    uri = f"sqlite:///{root}/mlflow.db"
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment_id = client.create_experiment(EXPERIMENT, artifact_location=(root / "artifacts").as_uri())
    lineage = {"align.recipe": "embedded", "align.config_hash": "cfg0123456789abc", "align.git_commit": "deadbeef"}
    champion = _log_run(
        client, experiment_id, "embedded-seed0",
        {"seed": 0, "model.image_tower": "tinynet_e", "train.steps": 4},
        {"retrieval/text_to_image/R_at_1": 0.4321, "retrieval/text_to_image/R_at_5": 0.7654,
         "retrieval/image_to_text/R_at_1": 0.3456, "retrieval/mean_recall": 0.5143, "shapes/acc1": 0.875},
        [2.5, 2.0, 1.6, 1.3], lineage,
    )
    challenger = _log_run(
        client, experiment_id, HOSTILE_NAME,
        {"seed": 1, "model.image_tower": "tinynet_e", "train.steps": 4},
        {"retrieval/text_to_image/R_at_1": 0.1234, "retrieval/text_to_image/R_at_5": 0.2345,
         "retrieval/image_to_text/R_at_1": 0.1111, "retrieval/mean_recall": 0.1563},
        [2.6, 2.4, 2.3, 2.2], lineage,
    )
    client.create_registered_model("align")
    for run_id, gate, reason, alias in (
        (champion, "passed", "all checks passed", "champion"),
        (challenger, "failed", "retrieval/mean_recall 0.1563 trails champion 0.5143 by more than 0", "challenger"),
    ):
        version = client.create_model_version("align", f"{root.as_uri()}/artifacts/{run_id}/model", run_id=run_id).version
        client.set_registered_model_alias("align", alias, version)
        client.set_model_version_tag("align", version, "align.gate", gate)
        client.set_model_version_tag("align", version, "align.gate.reason", reason)
    parent = client.create_run(experiment_id, start_time=next(_START_MS), run_name="sweep").info.run_id
    children = [
        _log_run(client, experiment_id, f"trial-{lr}", {"train.lr": lr}, {"retrieval/mean_recall": 0.2 + lr},
                 [1.0, 0.9], {"mlflow.parentRunId": parent})
        for lr in (0.01, 0.02)
    ]
    lonely_parent = client.create_run(experiment_id, start_time=next(_START_MS), run_name="empty-sweep").info.run_id
    return {
        "uri": uri, "root": root, "champion": champion, "challenger": challenger,
        "parent": parent, "children": children, "lonely_parent": lonely_parent,
    }


@pytest.fixture(scope="module")
def pair_html(store):
    selection = RunSelection(run_ids=(store["champion"], store["challenger"]))
    return render_html(collect_runs(store["uri"], EXPERIMENT, selection), EXPERIMENT, selection, store["uri"], 0)


def _row(html: str, label: str) -> list[str]:
    """The cells of the comparison table's row called ``label``."""
    match = re.search(rf"<tr><th>{re.escape(label)}</th>(.*?)</tr>", html)
    assert match, f"no row {label!r}"
    return re.findall(r"<td[^>]*>(.*?)</td>", match.group(1))


def test_every_run_is_a_column_with_its_metrics_lineage_versions_and_gate(store, pair_html):
    assert store["champion"] in pair_html and store["challenger"] in pair_html
    assert _row(pair_html, "retrieval/text_to_image/R_at_1") == ["0.4321", "0.1234"]
    assert _row(pair_html, "retrieval/mean_recall") == ["0.5143", "0.1563"]
    assert _row(pair_html, "train/loss") == ["1.3", "2.2"]  # the last logged step
    assert _row(pair_html, "seed") == ["0", "1"] and _row(pair_html, "recipe") == ["embedded", "embedded"]
    versions = _row(pair_html, "model version")
    assert "align v1" in versions[0] and "@champion" in versions[0]
    assert "align v2" in versions[1] and "@challenger" in versions[1]
    gate = _row(pair_html, "gate")
    assert "passed" in gate[0] and "failed" in gate[1] and "trails champion" in gate[1]


def test_a_missing_metric_is_an_empty_cell(pair_html):
    assert _row(pair_html, "shapes/acc1") == ["0.875", ""]


def test_plots_are_embedded_and_nothing_is_fetched(pair_html):
    images = re.findall(r'<img src="([^"]*)"', pair_html)
    assert len(images) == 3  # loss curves, R@K, classification accuracy
    assert all(src.startswith("data:image/png;base64,") and len(src) > 1000 for src in images)
    assert "<script" not in pair_html.lower() and "<link" not in pair_html.lower()
    assert not re.search(r'(src|href)="(https?:)?//', pair_html)


def test_html_in_a_run_name_is_escaped(pair_html):
    assert HOSTILE_NAME not in pair_html
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; co" in pair_html


def test_parent_selects_only_its_children(store):
    runs = collect_runs(store["uri"], EXPERIMENT, RunSelection(parent_run_id=store["parent"]))
    assert [run.run_id for run in runs] == store["children"]  # oldest first
    html = render_html(runs, EXPERIMENT, RunSelection(parent_run_id=store["parent"]), store["uri"], 0)
    assert store["champion"] not in html and store["parent"] in html  # named in the header and parent row
    assert _row(html, "train.lr") == ["0.01", "0.02"]


def test_a_parent_report_shows_the_experiments_claims_and_plots_first(store, tmp_path):
    from components.experiments.claims import ClaimSpec, check
    from components.experiments.compare import comparison_table, log_claims, log_comparison, TrialResult
    from components.report.render import write_report

    results = [TrialResult(f"trial-{lr}", [f"train.lr={lr}"], run_id, {"retrieval/mean_recall": 0.2 + lr})
               for lr, run_id in zip((0.01, 0.02), store["children"], strict=True)]
    claims = [
        ClaimSpec(name="higher_lr_helps", statement=HOSTILE_NAME, kind="better", better="trial-0.02", worse="trial-0.01"),
        ClaimSpec(name="reaches_half", kind="at_least", trial="trial-0.02", at_least=0.5),
    ]
    table = log_comparison(store["uri"], store["parent"], results, "sweep")
    assert table == comparison_table(results)
    log_claims(store["uri"], store["parent"], [check(c, table) for c in claims], claims, table)

    out = write_report(store["uri"], EXPERIMENT, RunSelection(parent_run_id=store["parent"]), tmp_path / "r.html")
    html = out.read_text()
    claims_at, runs_at = html.index("claims</h2>"), html.index("Runs compared")
    assert claims_at < runs_at
    section = html[claims_at:runs_at]
    assert "higher_lr_helps" in section and '<td class="passed">holds</td>' in section
    assert "reaches_half" in section and '<td class="failed">does not hold</td>' in section
    assert HOSTILE_NAME not in html and "&lt;script&gt;" in section  # the statement is user text
    assert section.count('<img src="data:image/png;base64,') == 2  # the claims and the trials plots


def test_default_selection_is_the_newest_runs_oldest_on_the_left(store):
    runs = collect_runs(store["uri"], EXPERIMENT, RunSelection(last=2))
    assert [run.run_id for run in runs] == [store["children"][1], store["lonely_parent"]]


def test_no_runs_is_a_clear_error(store, tmp_path):
    with pytest.raises(LookupError, match="has no child runs"):
        collect_runs(store["uri"], EXPERIMENT, RunSelection(parent_run_id=store["lonely_parent"]))
    with pytest.raises(LookupError, match="no MLflow experiment 'nope'"):
        collect_runs(store["uri"], "nope", RunSelection())
    with pytest.raises(LookupError, match="no MLflow run 'f00d'"):
        collect_runs(store["uri"], EXPERIMENT, RunSelection(run_ids=("f00d",)))
    with pytest.raises(ValueError, match="not an MLflow run id"):
        RunSelection(run_ids=("x' OR '1'='1",))
    with pytest.raises(ValueError, match="not both"):
        RunSelection(run_ids=("a",), parent_run_id="b")


def _cli_overrides(store) -> list[str]:
    return [f"storage.tracking_uri={store['uri']}", f"registry.experiment={EXPERIMENT}"]


def test_report_verb_writes_the_file_and_prints_its_path(store, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ALIGN_HOME", str(tmp_path / "home"))
    out = tmp_path / "out" / "report.html"
    assert main(["report", "--runs", store["champion"], store["challenger"], "--out", str(out), *_cli_overrides(store)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert store["champion"] in out.read_text()
    assert main(["report", "--last", "1", *_cli_overrides(store)]) == 0  # default path: <home>/reports/
    printed = Path(capsys.readouterr().out.strip())
    assert printed.parent == tmp_path / "home" / "reports" and printed.name.startswith("report-") and printed.is_file()


def test_report_verb_without_runs_says_why(store, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ALIGN_HOME", str(tmp_path))
    assert main(["report", "--parent", store["lonely_parent"], *_cli_overrides(store)]) == 1
    assert "has no child runs" in capsys.readouterr().err
    assert main(["report", "--last", "0", *_cli_overrides(store)]) == 1
    assert "at least 1" in capsys.readouterr().err


def test_ui_command_binds_loopback_and_passes_only_the_configured_store(tmp_path, monkeypatch):
    monkeypatch.setenv("ALIGN_HOME", str(tmp_path))
    cfg = load_config(None, [])
    command = mlflow_ui_command(cfg.storage, 5001)
    assert command[command.index("--host") + 1] == "127.0.0.1" and command[command.index("--port") + 1] == "5001"
    assert command[command.index("--backend-store-uri") + 1] == cfg.storage.tracking_uri
    assert command[command.index("--default-artifact-root") + 1] == (tmp_path / "mlartifacts").as_uri()
    assert mlflow_url(cfg.storage, 5001) == "http://127.0.0.1:5001"
    server = load_config(None, ["storage.tracking_uri=https://bob:hunter2@mlflow.example:5000"])
    with pytest.raises(ValueError, match="tracking server already"):
        mlflow_ui_command(server.storage, 5001)
    assert mlflow_url(server.storage, 5001) == "https://bob:***@mlflow.example:5000"
    assert redact_uri("postgresql://u:pw@db:5432/mlflow") == "postgresql://u:***@db:5432/mlflow"


def test_ui_says_where_prefect_and_ray_dashboards_are(tmp_path, monkeypatch):
    monkeypatch.setenv("ALIGN_HOME", str(tmp_path))
    assert "http://127.0.0.1:4200" in prefect_location("/h/prefect", {"PREFECT_API_URL": "http://127.0.0.1:4200/api"})
    assert "http://127.0.0.1:4200" in prefect_location("/h/prefect", {}, probe=lambda host, port: port == 4200)
    local = prefect_location("/h/prefect", {}, probe=lambda host, port: False)
    assert "PREFECT_HOME=/h/prefect" in local and "server start --host 127.0.0.1" in local

    cfg = load_config(None, ["ray.dashboard=false"])
    assert "ray.dashboard=true" in ray_dashboard_location(cfg, probe=lambda host, port: False)
    (tmp_path / "ray").mkdir()
    (tmp_path / "ray" / "head.json").write_text(json.dumps({"address": "127.0.0.1:6390", "num_cpus": 4}))
    with_dashboard = ray_dashboard_location(cfg, probe=lambda host, port: True)
    assert "http://127.0.0.1:8265" in with_dashboard and "127.0.0.1:6390" in with_dashboard
    without = ray_dashboard_location(cfg, probe=lambda host, port: port == 6390)
    assert "off on the local head" in without and "ray.dashboard=true" in without
    remote = load_config(None, ["ray.address=ray://head:10001"])
    assert "on the head of ray://head:10001" in ray_dashboard_location(remote)


def test_ui_refuses_a_taken_port_and_starts_nothing_for_a_tracking_server(tmp_path, monkeypatch, capsys):
    import socket

    monkeypatch.setenv("ALIGN_HOME", str(tmp_path))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert run_ui(load_config(None, []), port, out=lambda line: None) == 1
    assert f"port {port} on 127.0.0.1 is taken" in capsys.readouterr().err
    printed: list[str] = []
    server = load_config(None, ["storage.tracking_uri=http://127.0.0.1:1"])
    assert run_ui(server, 5000, out=printed.append) == 0
    assert printed[0].startswith("MLflow UI:      http://127.0.0.1:1 ") and len(printed) == 3


def _alive(process) -> bool:
    import psutil

    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE  # a zombie has stopped
    except psutil.NoSuchProcess:
        return False


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_align_ui_serves_the_configured_store_on_loopback_until_stopped(store, tmp_path):
    """The real verb in a child process: MLflow answers on 127.0.0.1 over the configured store, the
    dashboard lines are printed, and a SIGTERM to the CLI (like a closed terminal) stops the server."""
    import psutil

    from components.runtime.ray_cluster import free_port

    port, log = free_port(), tmp_path / "align-ui.out"
    command = [sys.executable, "-m", "align_cli.main", "ui", "--port", str(port), *_cli_overrides(store)]
    with log.open("wb") as output:
        cli = subprocess.Popen(
            command, stdout=output, stderr=subprocess.STDOUT, cwd=REPO, env={**os.environ, "ALIGN_HOME": str(tmp_path)}
        )
    started = []
    try:
        deadline = time.monotonic() + 150
        while "Ctrl-C stops the MLflow UI" not in log.read_text(errors="replace"):
            assert cli.poll() is None and time.monotonic() < deadline, log.read_text(errors="replace")
            time.sleep(0.3)
        started = psutil.Process(cli.pid).children(recursive=True)
        printed = log.read_text(errors="replace")
        assert f"MLflow UI:      http://127.0.0.1:{port}" in printed
        assert "Prefect UI:" in printed and "Ray dashboard:" in printed
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as response:
            assert response.status == 200
        by_name = f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/get-by-name?experiment_name={EXPERIMENT}"
        with urllib.request.urlopen(by_name, timeout=10) as response:
            assert json.load(response)["experiment"]["name"] == EXPERIMENT  # the configured store, not a new one
    finally:
        cli.send_signal(signal.SIGTERM)
        try:
            assert cli.wait(timeout=30) == 0
        finally:
            cli.kill()
            for process in started:  # only if the CLI failed to stop its own server
                if _alive(process):
                    process.kill()
    assert started and not any(_alive(process) for process in started)
    assert not listening("127.0.0.1", port)


def test_report_chooses_runs_by_id_parent_or_newest_and_ui_takes_a_port():
    parser = _parser()
    report = parser.parse_args(["report", "--runs", "a1", "b2", "--out", "r.html", "seed=1"])
    assert (report.runs, report.out, report.overrides) == (["a1", "b2"], "r.html", ["seed=1"])
    assert parser.parse_args(["report", "--parent", "p1"]).parent == "p1"
    assert parser.parse_args(["report", "--last", "3"]).last == 3
    with pytest.raises(SystemExit):  # one way of choosing runs at a time
        parser.parse_args(["report", "--parent", "p1", "--last", "3"])
    assert parser.parse_args(["ui"]).port == 5000 and parser.parse_args(["ui", "--port", "5050"]).port == 5050


def test_importing_the_report_and_ui_modules_starts_nothing():
    """MLflow, matplotlib, Ray and Prefect load only when a report is written or the UI started."""
    code = (
        "import sys, components.report.collect, components.report.plots, components.report.render, components.report.ui;"
        "print(sorted(m for m in ('ray', 'prefect', 'mlflow', 'matplotlib') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO).stdout
    assert out.strip() == "[]"
