"""A Prefect server on 127.0.0.1 for ``align schedule`` when no ``PREFECT_API_URL`` is configured.

Scheduled runs need a real server: its scheduler service creates the runs that a served deployment
picks up; the ephemeral API that plain flow calls use has no such service. The server's database
lives under ``storage.prefect_home``; it is a child process, stopped with the command that started it.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)
READY_TIMEOUT_S = 90.0


def server_command(port: int) -> list[str]:
    prefect = Path(sys.executable).parent / "prefect"
    return [str(prefect), "server", "start", "--host", "127.0.0.1", "--port", str(port), "--analytics-off"]


def _healthy(api_url: str) -> bool:
    import httpx

    try:
        return httpx.get(f"{api_url}/health", timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False


@contextmanager
def local_prefect_server(prefect_home: str, port: int, log_path: str | None = None):
    """Yield the API URL of a Prefect server started on 127.0.0.1:``port``; stop it on exit."""
    api_url = f"http://127.0.0.1:{port}/api"
    if _healthy(api_url):
        raise RuntimeError(f"something already answers on {api_url}; set PREFECT_API_URL to use it, or pick another port")
    Path(prefect_home).mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PREFECT_HOME=prefect_home, PREFECT_SERVER_ANALYTICS_ENABLED="false")
    env.pop("PREFECT_API_URL", None)
    out = open(log_path or os.devnull, "ab")
    process = subprocess.Popen(server_command(port), env=env, stdout=out, stderr=subprocess.STDOUT,
                               start_new_session=True)
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not _healthy(api_url):
            if process.poll() is not None:
                raise RuntimeError(f"prefect server exited with code {process.returncode}" +
                                   (f"; see {log_path}" if log_path else ""))
            if time.monotonic() > deadline:
                raise TimeoutError(f"prefect server did not answer on {api_url} within {READY_TIMEOUT_S:.0f} s")
            time.sleep(0.5)
        log.info("Prefect server on %s (UI at http://127.0.0.1:%d)", api_url, port)
        yield api_url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        out.close()
