"""``align ui``: the MLflow UI on 127.0.0.1 over the configured tracking store, and where the Prefect
and Ray dashboards are.

The server gets only what the config says (backend store, artifact root) and binds 127.0.0.1; it runs
in its own process group so stopping it also stops its uvicorn worker. Building the command and the
dashboard lines is separate from starting anything, so both can be checked without a server.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

from components.config import AlignConfig, StorageConfig
from components.runtime.local_server import listening, start_server, stop_server
from components.secrets import redact_uri

HOST = "127.0.0.1"
RAY_DASHBOARD_PORT = 8265  # Ray's default; the local head is started without another (runtime/ray_cluster.py)
PREFECT_UI_PORT = 4200  # `prefect server start`'s default
START_TIMEOUT_S = 90.0
_SERVER_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no background job runner for a local UI


def is_tracking_server(tracking_uri: str) -> bool:
    return tracking_uri.startswith(("http://", "https://"))


def _artifact_root(artifact_uri: str) -> str:
    return artifact_uri if "://" in artifact_uri else Path(artifact_uri).resolve().as_uri()


def mlflow_ui_command(storage: StorageConfig, port: int) -> list[str]:
    """``mlflow server`` over the configured backend store, on 127.0.0.1:``port``, one worker."""
    if is_tracking_server(storage.tracking_uri):
        raise ValueError(f"{redact_uri(storage.tracking_uri)} is a tracking server already: open it, nothing to start")
    command = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", storage.tracking_uri,
        "--host", HOST, "--port", str(port), "--workers", "1",
    ]
    if storage.artifact_uri:
        command += ["--default-artifact-root", _artifact_root(storage.artifact_uri)]
    return command


def mlflow_url(storage: StorageConfig, port: int) -> str:
    return redact_uri(storage.tracking_uri) if is_tracking_server(storage.tracking_uri) else f"http://{HOST}:{port}"


def prefect_location(
    prefect_home: str, env: Mapping[str, str] = os.environ, probe: Callable[[str, int], bool] = listening
) -> str:
    """The Prefect UI named by ``PREFECT_API_URL``, a local one already up (e.g. ``align schedule``'s),
    or how to browse the flow runs that the embedded default's temporary servers recorded."""
    api = env.get("PREFECT_API_URL", "").rstrip("/")
    if api:
        return f"Prefect UI:     {redact_uri(api.removesuffix('/api'))}"
    if probe(HOST, PREFECT_UI_PORT):
        return f"Prefect UI:     http://{HOST}:{PREFECT_UI_PORT} (a local Prefect server is up)"
    prefect = Path(sys.executable).with_name("prefect")
    return (
        "Prefect UI:     not running (flows use a temporary server; their history stays in PREFECT_HOME). To browse it:\n"
        f"                PREFECT_HOME={prefect_home} {prefect} server start --host {HOST}"
        f"   -> http://{HOST}:{PREFECT_UI_PORT}"
    )


def ray_dashboard_location(cfg: AlignConfig, probe: Callable[[str, int], bool] = listening) -> str:
    """Where the Ray dashboard is: the local head's, if it runs with one; else how to get one."""
    if cfg.ray.address != "local":
        return (
            f"Ray dashboard:  on the head of {cfg.ray.address}, port {RAY_DASHBOARD_PORT} "
            f"(`ray dashboard ray-cluster.yaml` forwards it to {HOST}:{RAY_DASHBOARD_PORT})"
        )
    from components.runtime.ray_cluster import read_head_state

    try:
        state = read_head_state(cfg.storage.home)
    except ValueError:  # a remote state folder has no local head
        state = None
    url = f"http://{HOST}:{RAY_DASHBOARD_PORT}"
    head_address = state["address"] if state else ""
    if head_address and probe(*_host_port(head_address)):
        if probe(HOST, RAY_DASHBOARD_PORT):
            return f"Ray dashboard:  {url} (local head {head_address})"
        return (
            f"Ray dashboard:  off on the local head {head_address}; set ray.dashboard=true, then `align down` "
            "and the next stage starts the head with it"
        )
    if cfg.ray.dashboard:
        return f"Ray dashboard:  no local Ray head is running; the next stage starts one, with its dashboard at {url}"
    return f"Ray dashboard:  no local Ray head is running; run a stage with ray.dashboard=true to get one at {url}"


def _host_port(address: str) -> tuple[str, int]:
    host, port = address.rsplit(":", 1)
    return host, int(port)


def start_mlflow_ui(
    storage: StorageConfig, port: int, log: Path | None = None, timeout_s: float = START_TIMEOUT_S
) -> subprocess.Popen:
    """Start the MLflow UI and wait until ``/health`` answers; its output goes to ``log`` (or this console)."""
    if listening(HOST, port):
        raise RuntimeError(f"port {port} on {HOST} is taken; choose another with --port")
    if storage.tracking_uri.startswith("sqlite:///"):
        Path(storage.tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    cwd = storage.home if storage.home and "://" not in storage.home and Path(storage.home).is_dir() else None
    return start_server(mlflow_ui_command(storage, port), f"{mlflow_url(storage, port)}/health", "MLflow UI",
                        timeout_s, env={**_SERVER_ENV, **os.environ}, log=log, cwd=cwd)


def stop_mlflow_ui(process: subprocess.Popen, grace_s: float = 10.0) -> None:
    stop_server(process, grace_s)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _say(line: str) -> None:
    print(line, flush=True)  # the lines matter while the UI runs, also when output is piped


def run_ui(cfg: AlignConfig, port: int, out: Callable[[str], None] = _say) -> int:
    """Start the MLflow UI, print where every dashboard is, and keep it up until Ctrl-C."""
    lines = [prefect_location(cfg.storage.prefect_home), ray_dashboard_location(cfg)]
    if is_tracking_server(cfg.storage.tracking_uri):
        out(f"MLflow UI:      {mlflow_url(cfg.storage, port)} (the configured tracking server)")
        for line in lines:
            out(line)
        return 0
    # The server runs in its own session, so a closed terminal or `kill` would orphan it: treat those
    # like Ctrl-C. (A Ctrl-C that is ignored, as in background shell jobs, is out of our hands.)
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        try:
            process = start_mlflow_ui(cfg.storage, port)
        except RuntimeError as err:  # port taken, or the server did not come up: say so, no traceback
            print(f"align ui: {err}", file=sys.stderr)
            return 1
        try:
            out(f"MLflow UI:      {mlflow_url(cfg.storage, port)} (store {redact_uri(cfg.storage.tracking_uri)})")
            for line in lines:
                out(line)
            out("Ctrl-C stops the MLflow UI.")
            code = process.wait()
            out(f"the MLflow UI stopped by itself (exit code {code})")
            return code or 1  # it was meant to run until Ctrl-C
        finally:
            stop_mlflow_ui(process)
    except KeyboardInterrupt:
        return 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
