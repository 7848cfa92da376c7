"""A Prefect server on 127.0.0.1 for ``align schedule`` when no ``PREFECT_API_URL`` is configured.

Scheduled runs need a real server: its scheduler service creates the runs that a served deployment
picks up; the ephemeral API that plain flow calls use has no such service. The server's database
lives under ``storage.prefect_home``; it is a child process, stopped with the command that started it.
"""

from __future__ import annotations

import logging
import os
import sys
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)
READY_TIMEOUT_S = 90.0


def server_command(port: int) -> list[str]:
    prefect = Path(sys.executable).parent / "prefect"
    return [str(prefect), "server", "start", "--host", "127.0.0.1", "--port", str(port), "--analytics-off"]


@contextmanager
def local_prefect_server(prefect_home: str, port: int, log_path: str | None = None):
    """Yield the API URL of a Prefect server started on 127.0.0.1:``port``; stop it on exit."""
    from components.runtime.local_server import healthy, start_server, stop_server

    api_url = f"http://127.0.0.1:{port}/api"
    if healthy(f"{api_url}/health"):
        raise RuntimeError(f"something already answers on {api_url}; set PREFECT_API_URL to use it, or pick another port")
    Path(prefect_home).mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PREFECT_HOME=prefect_home, PREFECT_SERVER_ANALYTICS_ENABLED="false")
    env.pop("PREFECT_API_URL", None)
    process = start_server(server_command(port), f"{api_url}/health", "Prefect server", READY_TIMEOUT_S, env=env,
                           log=Path(log_path) if log_path else None)
    try:
        log.info("Prefect server on %s (UI at http://127.0.0.1:%d)", api_url, port)
        yield api_url
    finally:
        stop_server(process, grace_s=20)
