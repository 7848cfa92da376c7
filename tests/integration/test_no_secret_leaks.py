"""Credentials never leak: a lifecycle against a password-protected PostgreSQL store, then a search for
the password in everything it left behind and in every command line it showed.

The tracking store is a real PostgreSQL (tests/tracking_server.py) whose database belongs to a role that
must log in with a password (scram-sha-256 over TCP; a wrong password is refused), so the lifecycle
really uses the credential. The password is a fresh random string, planted only in the recipe the user
writes (``storage.tracking_uri``), which lives outside the state folder: the one file that holds the
credential by the user's choice. The real ``align run`` then runs (a child process, the tiny recipe,
on the session's Ray head, serving included), and the password must not appear in:

* any file under the state folder: MLflow's artifacts (``config.json``, dataset records, model
  files), datasets, checkpoints, the search index, the stage-cache records, Prefect's database (flow-run
  parameters, logs, artifacts) and the run's log under ``logs/``. Nothing is excluded there. (The
  PostgreSQL data directory is a separate temporary folder, never under the state folder; what the
  database holds is checked through MLflow's API and by SQL instead.)
* what ``align run`` printed, and the Ray session's logs (worker output of the run),
* MLflow's records: every experiment, run (params, tags, inputs, artifacts downloaded through the API),
  logged model, registered model and model version (tags, sources, aliases), and every row of every
  table of the tracking database,
* the command line of any process on the machine while the lifecycle ran (sampled every 0.3 s: the CLI,
  Prefect's temporary server, Ray's workers and Serve replicas), and of the MLflow UI (``align ui``'s
  ``mlflow server`` and its uvicorn worker), which must still serve the store.

Takes ~3-5 min on 2 cores (CLI start-up, the tiny lifecycle, the MLflow UI start).
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from components.config import DEFAULT_RECIPE, load_config
from components.runtime.ray_cluster import free_port
from components.secrets import redact_uri
from tests.tracking_server import PG_USER, start_postgres
from tests.train_fixtures import TINY_LIFECYCLE

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(1200)]

PASSWORD = "pw" + secrets.token_hex(16)  # unique to this session: found anywhere, it leaked from here
NEEDLE = PASSWORD.encode()
RUN_TIMEOUT_S = 900


class CommandLineWatch:
    """Samples the command line of every process on the machine until stopped; keeps those holding the
    password (redacted, for the message) and the processes that descended from ``root_pid``."""

    def __init__(self, root_pid: int, interval_s: float = 0.3):
        self.root_pid, self.interval_s = root_pid, interval_s
        self.leaks: dict[int, str] = {}
        self.descendants: dict[int, str] = {}
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> CommandLineWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _watch(self) -> None:
        import psutil

        while not self._stop.is_set():
            for process in psutil.process_iter(["pid", "cmdline"]):
                line = " ".join(process.info["cmdline"] or [])
                if PASSWORD in line:
                    self.leaks[process.info["pid"]] = line.replace(PASSWORD, "<PASSWORD>")
            try:
                for child in psutil.Process(self.root_pid).children(recursive=True):
                    self.descendants[child.pid] = " ".join(child.cmdline())[:200]
            except psutil.Error:
                pass
            self.samples += 1
            self._stop.wait(self.interval_s)


def files_holding(root: Path, needle: bytes = NEEDLE) -> list[str]:
    """Every regular file under ``root`` whose bytes contain ``needle`` (relative paths)."""
    found = []
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink():
            try:
                if needle in path.read_bytes():
                    found.append(str(path.relative_to(root)))
            except OSError:  # removed while we looked (a log rotated, a temp file)
                continue
    return found


@pytest.fixture(scope="module")
def postgres():
    import psycopg2

    with start_postgres(password=PASSWORD) as server:
        # The store really needs the password: whatever the lifecycle stores there, it logged in with it.
        with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
            psycopg2.connect(host="127.0.0.1", port=server.port, user="align", password="wrong", dbname="mlflow")
        yield server


@pytest.fixture(scope="module")
def leak_run(ray_session, postgres, tmp_path_factory):
    """``align run`` on the tiny recipe with the password in the tracking URI; what it left behind."""
    home = tmp_path_factory.mktemp("leak-home")  # the state folder
    outside = tmp_path_factory.mktemp("leak-user")  # the user's own files: the recipe, the terminal
    recipe = yaml.safe_load(DEFAULT_RECIPE.read_text())
    recipe["storage"] = {"tracking_uri": postgres.login_uri}
    recipe_path = outside / "recipe-with-credentials.yaml"
    recipe_path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    overrides = [f"storage.home={home}", f"ray.address={ray_session.get_runtime_context().gcs_address}",
                 f"serve.port={free_port()}", "serve.num_replicas=1", *TINY_LIFECYCLE]
    env = {k: v for k, v in os.environ.items()
           if k not in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "ALIGN_HOME")}
    env["PREFECT_HOME"] = str(home / "prefect")  # what `align` uses when nothing overrides it
    # A fresh Prefect database is migrated at start; on 2 busy cores that outlasts Prefect's default 20 s.
    env.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    console = outside / "terminal.txt"
    started = time.monotonic()
    with console.open("wb") as out:
        cli = subprocess.Popen(
            [sys.executable, "-m", "align_cli.main", "run", "--config", str(recipe_path), *overrides],
            stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )
    try:
        with CommandLineWatch(cli.pid) as watch:
            code = cli.wait(timeout=RUN_TIMEOUT_S)
    finally:
        if cli.poll() is None:
            os.killpg(cli.pid, 9)
            cli.wait(timeout=30)
    print(f"align run: {time.monotonic() - started:.0f} s, {watch.samples} process samples")
    assert code == 0, console.read_text(errors="replace")[-6000:]
    cfg = load_config(str(recipe_path), overrides)
    yield cfg, home, console, watch
    from ray import serve

    serve.shutdown()  # the session's Ray is shared: leave no app (or fixed HTTP port) behind


def test_no_process_shows_the_password_on_its_command_line(leak_run, tmp_path):
    """While the lifecycle ran (every process on the machine), and the MLflow UI that ``align ui`` starts
    over the same store: it gets the store URI through its environment, and still serves the store."""
    import psutil

    from components.report.ui import start_mlflow_ui, stop_mlflow_ui

    cfg, _, _, watch = leak_run
    assert watch.samples > 3 and watch.descendants, "the watch saw the lifecycle's processes"
    assert not watch.leaks, f"command lines with the password: {watch.leaks}"
    port = free_port()
    process = start_mlflow_ui(cfg.storage, port, log=tmp_path / "mlflow-ui.log")
    try:
        tree = [psutil.Process(process.pid), *psutil.Process(process.pid).children(recursive=True)]
        lines = [" ".join(p.cmdline()) for p in tree]
        assert len(lines) >= 2 and "mlflow" in lines[0]  # the CLI and its uvicorn worker
        assert not [line.replace(PASSWORD, "<PASSWORD>") for line in lines if PASSWORD in line]
        url = (f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/get-by-name"
               f"?experiment_name={cfg.registry.experiment}")
        with urllib.request.urlopen(url, timeout=30) as response:
            assert json.load(response)["experiment"]["name"] == cfg.registry.experiment  # the planted store
    finally:
        stop_mlflow_ui(process)
    assert NEEDLE not in (tmp_path / "mlflow-ui.log").read_bytes()


def test_no_file_the_lifecycle_wrote_holds_the_password(leak_run):
    """Under the state folder (nothing excluded), what ``align run`` printed, and the Ray session's logs."""
    import ray

    cfg, home, console, _ = leak_run
    written = [p for p in home.rglob("*") if p.is_file()]
    # What must be there for this to mean something: MLflow's config.json, stage records, Prefect's
    # database and the run's log (each would hold the password if it were recorded unredacted).
    configs = list(home.glob("mlartifacts/**/config.json"))
    assert configs and list(home.glob("stage-cache/train/*.json"))
    assert (home / "prefect" / "prefect.db").is_file() and list(home.glob("logs/run-*.log"))
    assert json.loads(configs[0].read_text())["storage"]["tracking_uri"] == cfg.storage.tracking_uri.replace(
        PASSWORD, "***")
    assert files_holding(home) == [], f"{len(written)} files searched"
    assert NEEDLE not in console.read_bytes(), "what `align run` printed"
    ray_logs = Path(ray._private.worker._global_node.get_session_dir_path()) / "logs"  # the session head's
    assert ray_logs.is_dir() and files_holding(ray_logs) == []


def test_prefect_recorded_the_flow_parameters_redacted(leak_run):
    _, home, _, _ = leak_run
    with sqlite3.connect(home / "prefect" / "prefect.db") as db:
        rows = db.execute("SELECT flow_run.parameters FROM flow_run").fetchall()
    uris = {json.loads(p)["config"]["storage"]["tracking_uri"] for (p,) in rows if "config" in json.loads(p)}
    assert len(rows) >= 6  # the lifecycle and its stage flows
    assert uris and all(":***@" in uri for uri in uris), uris


def test_stage_cache_records_and_keys_hold_the_redacted_uri(leak_run):
    from components.runtime.stage_cache import StageCache

    cfg, _, _, _ = leak_run
    cache = StageCache(cfg.storage.stage_cache_uri)
    train, register = cache.records("train"), cache.records("register")
    assert train and register
    for record in train + register:
        assert record["inputs"]["tracking"] == redact_uri(cfg.storage.tracking_uri)
        assert PASSWORD not in json.dumps(record)


def test_mlflow_records_hold_no_password(leak_run, postgres, tmp_path):
    import mlflow
    from mlflow.entities import ViewType

    cfg, _, _, _ = leak_run
    client = mlflow.MlflowClient(tracking_uri=postgres.login_uri, registry_uri=postgres.login_uri)
    seen: list[str] = []
    downloaded = 0

    def walk(run_id: str, path: str | None = None) -> None:
        nonlocal downloaded
        for item in client.list_artifacts(run_id, path):
            if item.is_dir:
                walk(run_id, item.path)
            else:
                local = Path(client.download_artifacts(run_id, item.path, str(tmp_path)))
                assert NEEDLE not in local.read_bytes(), f"artifact {item.path} of run {run_id}"
                downloaded += 1

    experiments = client.search_experiments(view_type=ViewType.ALL)
    runs = client.search_runs([e.experiment_id for e in experiments], run_view_type=ViewType.ALL, max_results=1000)
    assert runs, "the lifecycle logged runs"
    for experiment in experiments:
        seen.append(json.dumps([experiment.name, experiment.artifact_location, experiment.tags]))
    for run in runs:
        seen.append(json.dumps([run.data.params, run.data.tags, run.info.artifact_uri, run.info.run_name]))
        seen += [json.dumps([d.dataset.source, d.dataset.name, d.dataset.profile, d.dataset.schema])
                 for d in run.inputs.dataset_inputs]
        walk(run.info.run_id)
    for model in client.search_logged_models([e.experiment_id for e in experiments]):
        seen.append(json.dumps([model.params, model.tags, model.artifact_location, model.name]))
    for registered in client.search_registered_models():
        seen.append(json.dumps([registered.tags, registered.description, dict(registered.aliases)]))
        for version in client.search_model_versions(f"name='{registered.name}'"):
            seen.append(json.dumps([version.tags, version.source, version.run_link, version.description]))
    assert downloaded and any("config.json" in s or "align.config_hash" in s for s in seen)
    assert not [s for s in seen if PASSWORD in s]
    # And the database itself: no row of any table of the tracking store holds it.
    import psycopg2

    conn = psycopg2.connect(host="127.0.0.1", port=postgres.port, user=PG_USER, dbname="mlflow")
    try:
        with conn.cursor() as cursor:
            cursor.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
            tables = [name for (name,) in cursor.fetchall()]
            holding = []
            for table in tables:
                cursor.execute(f'SELECT count(*) FROM "{table}" AS r WHERE r::text LIKE %s', (f"%{PASSWORD}%",))
                if cursor.fetchone()[0]:
                    holding.append(table)
    finally:
        conn.close()
    assert len(tables) > 10 and holding == []
