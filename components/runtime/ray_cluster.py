"""Connect to Ray; on the embedded default, start a local head that outlives the CLI process.

Serving must keep running after ``align run`` returns, as it would in production, so the embedded
default is not ``ray.init()`` in-process but a local head started on demand (``ray start --head``),
recorded under ``<home>/ray/head.json`` and stopped by ``align down``. Token authentication stays on
(Ray 2.60's default): the head and every client run with ``RAY_AUTH_MODE=token`` and the state
folder's own token (``components.runtime.ray_token``) unless the user supplies one.
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
from components.runtime.ray_token import local_head_token_env, user_token_source
from components.storage import write_bytes

log = logging.getLogger(__name__)
HEAD_STATE = "head.json"
LISTEN_TIMEOUT_S = 60  # after `ray start` returns, how long its GCS may take to accept connections
LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # "0": Ray keeps 127.0.0.1 (see use_loopback_node_ip)


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


def _write_head_state(home: str, state: dict) -> None:
    directory = _state_dir(home)
    directory.mkdir(parents=True, exist_ok=True)
    write_bytes(str(directory / HEAD_STATE), json.dumps(state).encode())  # never half-written: every command reads it


def ensure_local_head(cfg: AlignConfig) -> str:
    """Address of the running local head for this state folder, starting one if needed.

    What is started is recorded (``head.json``: the address and the launcher's session id) *before*
    waiting on it, and every failure path stops it again: a ``ray start`` that fails half-way leaves
    its GCS server running, orphaned, unless somebody knows to look for it.
    """
    home = cfg.storage.home
    state = read_head_state(home)
    if state and _listening(state["address"]):
        return state["address"]
    if state:  # recorded but not answering: a crashed or half-started head; clear what is left of it
        stop_local_head(home)
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
    token_env = local_head_token_env(_state_dir(home))
    # The caller's environment wins over the config's defaults; the token is the user's or the state folder's.
    env = dict(cfg.ray.env) | _auth_env() | token_env
    env.pop("RAY_ADDRESS", None)  # a new head: not the cluster this process may already be connected to
    if cfg.ray.loopback_only:
        env[LOOPBACK_ENV] = "0"
    address = f"127.0.0.1:{port}"
    state = {"address": address, "num_cpus": num_cpus, "token_source": user_token_source() or "state",
             "loopback_only": cfg.ray.loopback_only}
    _write_head_state(home, state)
    # Its own session: the daemons `ray start` leaves behind keep its session id, which finds them all.
    launcher = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)
    _write_head_state(home, state | {"session_id": launcher.pid})
    try:
        output, _ = launcher.communicate(timeout=300)
        if launcher.returncode != 0:
            raise RuntimeError(f"`ray start --head` failed ({launcher.returncode}):\n{output[-3000:]}")
        deadline = time.monotonic() + LISTEN_TIMEOUT_S
        while not _listening(address):
            if time.monotonic() > deadline:
                raise TimeoutError(f"local Ray head did not listen on {address}")
            time.sleep(0.5)
    except BaseException:  # a timeout or Ctrl-C too: nothing of a half-started head may outlive this call
        launcher.kill()
        stop_local_head(home)
        raise
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
    if cfg.ray.address == "local":
        address = ensure_local_head(cfg)
        # This process and every process it starts (Ray Train's helpers, a second node) use the head's token,
        # and find the head the way it was started (on loopback or on the routable address).
        state = read_head_state(cfg.storage.home) or {}
        os.environ.update(local_head_token_env(_state_dir(cfg.storage.home), state.get("token_source", "")))
        if state.get("loopback_only", False):
            use_loopback_node_ip()
    else:
        address = cfg.ray.address
    # Worker output reaches this process (the CLI puts it in the run's log; `-v` shows it): rank 0 prints each step.
    ray.init(address=address, logging_level=logging.WARNING, log_to_driver=True)
    # Helper processes this driver starts (Ray Train's placement-group cleaner) call ray.init() without
    # an address; with several Ray instances on one machine they would pick the newest, not ours.
    os.environ["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address
    quiet_ray_data()
    return address


def use_loopback_node_ip() -> None:
    """Make this process's Ray keep 127.0.0.1 as its node address, as the loopback-only head does.

    Ray rewrites ``--node-ip-address=127.0.0.1`` (and a 127.0.0.1 GCS address) to the machine's routable
    address, and its servers then listen on every interface. The one switch that keeps loopback is the
    one Ray uses for single-machine clusters on macOS and Windows (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``):
    the head gets it in its environment, so its daemons and workers have it; a driver needs it too, or
    it would look for the head on the routable address. Ray reads it once, at import, into a module flag
    that it consults at call time; if Ray was imported before this runs, the flag is set here as well.
    """
    os.environ[LOOPBACK_ENV] = "0"
    constants = sys.modules.get("ray._private.ray_constants")
    if constants is not None:
        constants.ENABLE_RAY_CLUSTER = False


def listening_sockets(processes) -> list[tuple[str, int, str]]:
    """(address, port, process name) of every TCP socket these ``psutil`` processes listen on.

    What the Security section of the README promises is checked against this: the embedded default
    exposes nothing beyond 127.0.0.1.
    """
    import psutil

    found = []
    for process in processes:
        try:
            name = process.name()
            for conn in process.net_connections(kind="tcp"):
                if conn.status == psutil.CONN_LISTEN:
                    found.append((conn.laddr.ip, conn.laddr.port, name))
        except psutil.Error:  # exited meanwhile, or not ours to inspect
            continue
    return sorted(set(found))


def quiet_ray_data() -> None:
    """Ray Data's per-operator progress output drowns the lifecycle's own log lines."""
    import ray.data

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)


def stop_local_head(home: str) -> bool:
    """Stop the head this state folder started (``align down``); False if none was running.

    Processes are found by the launcher's session id and by the GCS port, not by whether the head
    answers: a half-started or crashed head answers nothing, and its leftovers must go all the same.
    """
    state = read_head_state(home)
    if not state:
        return False
    running = _listening(state["address"])
    # Children too: the dashboard and runtime-env agents retitle themselves ("ray::DashboardAgent"),
    # so only their parent, the raylet, names the session; a killed raylet would leave them behind.
    processes = local_head_processes(home)
    _terminate(processes, grace_s=10)
    (_state_dir(home) / HEAD_STATE).unlink(missing_ok=True)
    return running or bool(processes)


def local_head_processes(home: str) -> list:
    """Every process of the head this state folder started, its Ray worker processes included."""
    state = read_head_state(home)
    if not state:
        return []
    import psutil

    found = {p.pid: p for p in _session_processes(state.get("session_id"))}
    for process in _head_processes(int(state["address"].rsplit(":", 1)[1])):
        found[process.pid] = process
        try:
            found |= {child.pid: child for child in process.children(recursive=True)}
        except psutil.NoSuchProcess:
            continue
    found.pop(os.getpid(), None)
    return list(found.values())


def _session_processes(session_id: int | None) -> list:
    """Ray's processes in the session ``ray start`` was launched in (the head's daemons and their workers)."""
    if not session_id:
        return []
    import psutil

    members = []
    for process in psutil.process_iter(["cmdline"]):
        try:
            if os.getsid(process.pid) == session_id and "ray" in " ".join(process.info["cmdline"] or []):
                members.append(process)
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
    return members


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
