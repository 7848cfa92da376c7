"""Connect to Ray; on the embedded default, start a local head that outlives the CLI process.

Serving must keep running after ``align run`` returns, as it would in production, so the embedded
default is not ``ray.init()`` in-process but a local head started on demand (``ray start --head``),
recorded under ``<home>/ray/head.json`` and stopped by ``align down``. Token authentication stays on
(Ray 2.60's default): the head and every client run with ``RAY_AUTH_MODE=token``.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from components.config import AlignConfig

log = logging.getLogger(__name__)
HEAD_STATE = "head.json"


def _state_dir(home: str) -> Path:
    if "://" in home:
        raise ValueError("a local Ray head needs a local state folder; set ray.address for remote storage")
    return Path(home) / "ray"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _listening(address: str) -> bool:
    from components.runtime.local_server import listening

    host, port = address.rsplit(":", 1)
    return listening(host, int(port))


def _auth_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("RAY_AUTH_MODE", "token")
    return env


def read_head_state(home: str) -> dict | None:
    path = _state_dir(home) / HEAD_STATE
    return json.loads(path.read_text()) if path.is_file() else None


def ensure_local_head(cfg: AlignConfig) -> str:
    """Address of the running local head for this state folder, starting one if needed."""
    state = read_head_state(cfg.storage.home)
    if state and _listening(state["address"]):
        return state["address"]
    port = free_port()
    num_cpus = cfg.ray.num_cpus or 2 * (os.cpu_count() or 1)
    ray_cli = Path(sys.executable).with_name("ray")
    command = [
        str(ray_cli),
        "start",
        "--head",
        "--node-ip-address=127.0.0.1",
        f"--port={port}",
        f"--num-cpus={num_cpus}",
        f"--include-dashboard={'true' if cfg.ray.dashboard else 'false'}",
        "--dashboard-host=127.0.0.1",
        "--disable-usage-stats",
    ]
    log.info("starting a local Ray head: %s", " ".join(command))
    env = dict(cfg.ray.env) | _auth_env()  # the caller's environment wins over the config's defaults
    env.pop("RAY_ADDRESS", None)  # a new head: not the cluster this process may already be connected to
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise RuntimeError(f"`ray start --head` failed ({done.returncode}):\n{done.stderr[-3000:]}")
    address = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while not _listening(address):
        if time.monotonic() > deadline:
            raise TimeoutError(f"local Ray head did not listen on {address}")
        time.sleep(0.5)
    directory = _state_dir(cfg.storage.home)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / HEAD_STATE).write_text(json.dumps({"address": address, "num_cpus": num_cpus}))
    return address


def connect(cfg: AlignConfig) -> str:
    """Connect this process to the configured cluster (idempotent); returns the GCS address."""
    os.environ.setdefault("RAY_AUTH_MODE", "token")  # read when ray is imported: set it first
    import ray

    if cfg.ray.address.startswith("ray://"):
        raise ValueError(
            f"ray.address {cfg.ray.address!r} is a Ray Client address, and Ray Client cannot run Ray Data's "
            "streaming executor (the ingest stage). Use the cluster's GCS address (host:6379) from a machine "
            "on its network, or run on the cluster: `ray job submit -- align run --address auto`."
        )
    if ray.is_initialized():
        return ray.get_runtime_context().gcs_address
    address = ensure_local_head(cfg) if cfg.ray.address == "local" else cfg.ray.address
    # Worker output reaches this console: training's per-step progress lines are printed by rank 0.
    ray.init(address=address, logging_level=logging.WARNING, log_to_driver=True)
    # Helper processes this driver starts (Ray Train's placement-group cleaner) call ray.init() without
    # an address; with several Ray instances on one machine they would pick the newest, not ours.
    os.environ["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address
    quiet_ray_data()
    return address


def quiet_ray_data() -> None:
    """Ray Data's per-operator progress output drowns the lifecycle's own log lines."""
    import ray.data

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)


def stop_local_head(home: str) -> bool:
    """Stop the head this state folder started (``align down``); False if none was running."""
    state = read_head_state(home)
    if not state:
        return False
    running = _listening(state["address"])
    if running:
        # Children too: the dashboard and runtime-env agents retitle themselves ("ray::DashboardAgent"),
        # so only their parent, the raylet, names the session; a killed raylet would leave them behind.
        _terminate(local_head_processes(home), grace_s=10)
    (_state_dir(home) / HEAD_STATE).unlink(missing_ok=True)
    return running


def local_head_processes(home: str) -> list:
    """Every process of the head this state folder started, its Ray worker processes included."""
    state = read_head_state(home)
    if not state:
        return []
    import psutil

    found = {}
    for process in _head_processes(int(state["address"].rsplit(":", 1)[1])):
        found[process.pid] = process
        try:
            found |= {child.pid: child for child in process.children(recursive=True)}
        except psutil.NoSuchProcess:
            continue
    return list(found.values())


def _head_processes(port: int) -> list:
    """The processes of the head whose GCS listens on ``port``: those sharing its session directory.

    ``ray stop`` would stop every Ray instance on the machine (another user's, a parallel test run's);
    this finds ours through the GCS server's command line instead.
    """
    import psutil

    def cmdline(process) -> list[str]:
        try:
            return process.info["cmdline"] or []
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return []

    processes = list(psutil.process_iter(["cmdline"]))
    session = next(
        (
            arg.split("=", 1)[1]
            for p in processes
            if f"--gcs_server_port={port}" in cmdline(p)
            for arg in cmdline(p)
            if arg.startswith("--session-dir=")
        ),
        None,
    )
    if session is None:
        return []

    def ours(process) -> bool:
        # Most processes name the session directory; the Ray Client server only names the GCS address.
        return any(session in arg or (arg.startswith("--address=") and arg.endswith(f":{port}")) for arg in cmdline(process))

    return [p for p in processes if p.pid != os.getpid() and ours(p)]


def _terminate(processes: list, grace_s: float) -> None:
    """SIGTERM, then SIGKILL whatever is still alive after ``grace_s``."""
    import psutil

    for process in processes:
        try:
            process.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(processes, timeout=grace_s)
    for process in alive:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
