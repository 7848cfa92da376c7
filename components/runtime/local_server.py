"""A local helper server as a child process: started in its own session, ready when ``/health`` answers,
stopped as a whole process group. The MLflow UI (``align ui``) and the Prefect server (``align schedule``)
both run this way, bound to 127.0.0.1.

A command line is readable by every user of the machine (``ps``), so no credential goes on one: a store
URI that holds a password travels in the environment variable the server reads it from instead
(:func:`secret_free_command`), and a credential with no such variable is refused.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from components.secrets import contains_secret, redact_text

# ``mlflow server`` reads each of these options from an environment variable when the flag is absent
# (click's ``envvar``, in mlflow/cli/__init__.py), and hands them on to its uvicorn worker the same way.
ENV_FOR_FLAG = {
    "--backend-store-uri": "MLFLOW_BACKEND_STORE_URI",
    "--read-replica-backend-store-uri": "MLFLOW_READ_REPLICA_BACKEND_STORE_URI",
    "--registry-store-uri": "MLFLOW_REGISTRY_STORE_URI",
    "--default-artifact-root": "MLFLOW_DEFAULT_ARTIFACT_ROOT",
    "--artifacts-destination": "MLFLOW_ARTIFACTS_DESTINATION",
}


def secret_free_command(
    command: list[str], env: Mapping[str, str] | None = None
) -> tuple[list[str], dict[str, str] | None]:
    """``command`` without credentials, and the environment that carries them instead.

    A flag of :data:`ENV_FOR_FLAG` (``--flag value`` or ``--flag=value``) whose value holds a password or
    a secret query parameter is taken off the command line and put into its environment variable (over
    any value the environment had). Any other argument holding a credential is refused: it would be
    readable in ``ps`` by every user of the machine. A command without credentials comes back as it was.
    """
    if not any(contains_secret(arg) for arg in command):
        return list(command), None if env is None else dict(env)
    moved: dict[str, str] = {}
    kept: list[str] = []
    args = iter(command)
    for arg in args:
        flag, equals, inline = arg.partition("=")
        if flag in ENV_FOR_FLAG:
            value = inline if equals else next(args, "")
            if contains_secret(value):
                moved[ENV_FOR_FLAG[flag]] = value
            else:
                kept += [arg] if equals else [arg, value]
            continue
        if contains_secret(arg):
            raise ValueError(f"refusing to start {command[0]} with a credential in its arguments: {redact_text(arg)}")
        kept.append(arg)
    return kept, {**(os.environ if env is None else env), **moved}


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
    """Start ``command`` and wait until ``health_url`` answers 200; on failure nothing is left running.

    Credentials in ``command`` reach the server through its environment, not its arguments
    (:func:`secret_free_command`)."""
    command, env = secret_free_command(command, env)
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
