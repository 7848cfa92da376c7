"""A newcomer's first contact: a clean clone, an empty HOME, the README's `make run`, then search and down.

Nothing of this machine's set-up may help: the clone installs its own ./.venv (no shared cache), HOME
is a new empty folder (no ~/.ray token, no caches), and no RAY_*, MLFLOW_*, PREFECT_*, AWS_* or
ALIGN_* variable is passed on. The lifecycle must then finish, serve, answer `align search` and
`curl /healthz`, print a console a person can read, and `align down` must leave no Ray, Serve or
Prefect process behind (checked by process: everything started here carries the clone's path or the
fresh HOME). This is the suite's slowest test: an install (~2–3 min) and the embedded lifecycle (~5 min).
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from components.runtime.local_server import listening
from components.runtime.ray_cluster import free_port, listening_sockets

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(2400)]

ROOT = Path(__file__).resolve().parents[2]
INHERITED_PREFIXES = ("RAY_", "MLFLOW_", "PREFECT_", "AWS_", "ALIGN_", "PYTEST_", "HF_", "TOKENIZERS_")
# The one socket of the embedded default not on loopback (README, Security): each Ray Serve replica's
# inter-deployment gRPC server, which Ray 2.60 binds to [::]:0 with no setting, behind Ray's token.
SERVE_REPLICA_PROCESS = "ray::ServeRepli"  # the kernel keeps 15 characters of a retitled process's name
# The outer `make test` passes its own state on through the environment (and a nested make then prints
# "Entering directory" lines a newcomer's shell would not show).
INHERITED_NAMES = {"VENV_CACHE", "VIRTUAL_ENV", "PYTHONPATH", "DO_NOT_TRACK", "MAKEFLAGS", "MAKELEVEL", "MFLAGS"}
CONSOLE_MAX_LINES = 60
# Lines from Ray's, Python's or a library's logging and warning machinery, which belong in the log file.
NOISE = re.compile(
    r"Warning\b|warnings\.warn|\bWARNING\b|\bINFO\b|\bDEBUG\b|Traceback|\((?:pid|raylet|RayTrainWorker|"
    r"PlacementGroupCleaner|ServeReplica)[^)]*\)|^\s*\d{4}-\d\d-\d\d[ T]\d\d:\d\d"
)


def _clean_copy(destination: Path) -> None:
    """What a clone of this work would hold: the commit, plus the working tree's uncommitted changes."""
    subprocess.run(["git", "clone", "--quiet", "--no-hardlinks", str(ROOT), str(destination)], check=True)

    def listed(*flags: str) -> list[str]:
        out = subprocess.run(["git", "ls-files", "-z", *flags], cwd=ROOT, capture_output=True, text=True, check=True)
        return [name for name in out.stdout.split("\0") if name]

    for name in listed("--modified", "--others", "--exclude-standard"):
        source = ROOT / name
        if source.is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / name)
    for name in listed("--deleted"):
        (destination / name).unlink(missing_ok=True)


def _fresh_env(home: Path) -> dict[str, str]:
    keep = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(INHERITED_PREFIXES) and name not in INHERITED_NAMES
    }
    return keep | {"HOME": str(home)}


def _ours(clone: Path, home: Path) -> list[psutil.Process]:
    """Live processes this test's lifecycle started: they run from the clone or inherited its HOME."""
    found = []
    for process in psutil.process_iter(["cmdline", "status"]):
        if process.pid == os.getpid() or process.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        try:
            mine = str(clone) in " ".join(process.info["cmdline"] or []) or process.environ().get("HOME") == str(home)
        except psutil.Error:
            continue
        if mine:
            found.append(process)
    return found


def _describe(processes: list[psutil.Process]) -> list[str]:
    described = []
    for process in processes:
        try:
            described.append(f"{process.pid}: {' '.join(process.cmdline())[:160]}")
        except psutil.Error:
            continue
    return described


def _run(command: list[str], clone: Path, env: dict, timeout: int, log: Path) -> subprocess.CompletedProcess:
    with log.open("w") as out:
        done = subprocess.run(command, cwd=clone, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=timeout,
                              stdin=subprocess.DEVNULL)
    return subprocess.CompletedProcess(command, done.returncode, log.read_text())


def test_a_fresh_clone_with_an_empty_home_runs_the_readmes_main_job(tmp_path):
    clone, home = tmp_path / "align-platform", tmp_path / "home"
    home.mkdir()
    _clean_copy(clone)
    env = _fresh_env(home)
    port = 8000 if not listening("127.0.0.1", 8000) else free_port()  # the README's default when it is free
    endpoint = f"http://127.0.0.1:{port}"
    align = [str(clone / ".venv" / "bin" / "align")]
    try:
        setup = _run(["make", "setup"], clone, env, 1200, tmp_path / "setup.txt")
        assert setup.returncode == 0, setup.stdout[-4000:]
        assert not [line for line in setup.stdout.splitlines() if re.search(r"warning", line, re.I)], setup.stdout

        run = _run(["make", "run", *([f"ARGS=serve.port={port}"] if port != 8000 else [])], clone, env, 1500,
                   tmp_path / "console.txt")
        assert run.returncode == 0, run.stdout[-6000:]
        console = [line for line in run.stdout.splitlines() if not line.startswith(".venv/bin/align run")]  # make's echo
        assert len(console) <= CONSOLE_MAX_LINES, f"{len(console)} lines:\n{run.stdout}"
        noisy = [line for line in console if NOISE.search(line)]
        assert not noisy, "\n".join(noisy)
        assert "ALIGN lifecycle finished" in run.stdout and f"serving: {endpoint}" in run.stdout
        logs = re.findall(r"(\S+\.log)\b", run.stdout)
        assert logs and Path(logs[-1]).is_file(), f"the summary names the run's log file:\n{run.stdout}"
        assert Path(logs[-1]).resolve().is_relative_to(clone / ".align"), "the log lives in the state folder"

        search = subprocess.run([*align, "search", "two red circles", "-k", "3", *(["--url", endpoint] if port != 8000 else [])],
                                cwd=clone, env=env, capture_output=True, text=True, timeout=120)
        assert search.returncode == 0, search.stderr[-3000:]
        assert len(json.loads(search.stdout)["results"]) == 3
        health = subprocess.run(["curl", "-sf", f"{endpoint}/healthz"], capture_output=True, text=True, timeout=60)
        assert health.returncode == 0, health.stderr

        report = subprocess.run([*align, "report"], cwd=clone, env=env, capture_output=True, text=True, timeout=300)
        assert report.returncode == 0 and Path(report.stdout.strip().splitlines()[-1]).is_file(), report.stderr[-3000:]

        assert _ours(clone, home), "the Ray head serving the model runs from the clone"
        sockets = listening_sockets(_ours(clone, home))
        exposed = [f"{ip}:{port_} ({name})" for ip, port_, name in sockets
                   if not ipaddress.ip_address(ip.removeprefix("::ffff:")).is_loopback
                   and not name.startswith(SERVE_REPLICA_PROCESS)]
        assert not exposed, f"listening beyond 127.0.0.1, other than the README's Security table says: {exposed}"
        assert any(port_ == port for _, port_, _ in sockets), "the serving port is among the sockets checked"
        down = subprocess.run([*align, "down"], cwd=clone, env=env, capture_output=True, text=True, timeout=120)
        assert down.returncode == 0 and "stopped" in down.stdout, down.stdout + down.stderr
        deadline = time.monotonic() + 30
        while _ours(clone, home) and time.monotonic() < deadline:
            time.sleep(1)
        assert not _ours(clone, home), _describe(_ours(clone, home))
        assert not listening("127.0.0.1", port)
        again = subprocess.run([*align, "down"], cwd=clone, env=env, capture_output=True, text=True, timeout=120)
        assert again.returncode == 0 and "nothing was running" in again.stdout, again.stdout + again.stderr
        assert not (home / ".ray").exists(), "the platform's token lives in its state folder, not in HOME"
    finally:
        if (clone / ".venv" / "bin" / "align").exists():
            subprocess.run([*align, "down"], cwd=clone, env=env, capture_output=True, timeout=120)
        for process in _ours(clone, home):
            process.kill()
        shutil.rmtree(clone / ".venv", ignore_errors=True)  # ~7 GB: pytest keeps its last tmp folders
