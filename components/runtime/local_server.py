"""A local helper server as a child process: started in its own session, ready when ``/health`` answers,
stopped as a whole process group. The MLflow UI (``align ui``) and the Prefect server (``align schedule``)
both run this way, bound to 127.0.0.1."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path


def listening(host: str, port: int) -> bool:
    """Whether something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def healthy(health_url: str) -> bool:
    try:
        with urllib.request.urlopen(health_url, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def start_server(
    command: list[str], health_url: str, name: str, timeout_s: float, env: dict[str, str] | None = None,
    log: Path | None = None, cwd: str | None = None,
) -> subprocess.Popen:
    """Start ``command`` and wait until ``health_url`` answers 200; on failure nothing is left running."""
    output = log.open("ab") if log is not None else None
    try:
        process = subprocess.Popen(command, env=env, cwd=cwd, stdout=output,
                                   stderr=subprocess.STDOUT if output else None, start_new_session=True)
    finally:
        if output is not None:
            output.close()  # the child has its own copy
    deadline = time.monotonic() + timeout_s
    try:
        while not healthy(health_url):
            if process.poll() is not None or time.monotonic() > deadline:
                exited = process.poll() is not None
                why = f"exited with {process.returncode}" if exited else f"not healthy within {timeout_s:.0f} s"
                raise RuntimeError(f"the {name} {why}" + (f"; see {log}" if log else ""))
            time.sleep(0.3)
    except BaseException:  # failed, or interrupted while waiting
        stop_server(process)
        raise
    return process


def stop_server(process: subprocess.Popen, grace_s: float = 10.0) -> None:
    """SIGTERM the server's process group (ours alone: it was started in a new session), SIGKILL leftovers."""
    def signal_group(sig: int) -> None:
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            pass

    if process.poll() is None:
        signal_group(signal.SIGTERM)
        try:
            process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            signal_group(signal.SIGKILL)
            process.wait(timeout=grace_s)
    signal_group(signal.SIGKILL)  # a worker process (uvicorn's) may outlive the main one
