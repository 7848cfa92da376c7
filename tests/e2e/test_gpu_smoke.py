"""bench/gpu_smoke.sh, the first command a lent GPU runs, in its CPU fallback: the same CLI steps (ingest,
train, resume, evaluate, the MFU bench) on tiny settings, then the markdown report.

The script runs as a subprocess with a clean environment (as tests/e2e/test_newcomer.py does), on the
session's Ray head: ``storage.home=<ray_home>`` makes every verb find that state folder's head (and its
token) instead of starting a second one, and the script must leave the head it did not start running.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from components.runtime.local_server import listening
from components.runtime.ray_cluster import read_head_state

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "gpu_smoke.sh"
INHERITED_PREFIXES = ("RAY_", "MLFLOW_", "PREFECT_", "AWS_", "ALIGN_", "PYTEST_", "HF_", "TOKENIZERS_")
INHERITED_NAMES = {"VENV_CACHE", "VIRTUAL_ENV", "PYTHONPATH", "MAKEFLAGS", "MAKELEVEL", "MFLAGS"}
NUMBER = r"-?\d[\d,]*(?:\.\d+)?(?:e[+-]?\d+)?"


def _clean_env(prefect_home: Path) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items()
           if not name.startswith(INHERITED_PREFIXES) and name not in INHERITED_NAMES}
    if os.environ.get("RAY_AUTH_TOKEN"):  # a head started with the user's own token needs it again
        env["RAY_AUTH_TOKEN"] = os.environ["RAY_AUTH_TOKEN"]
    # Telemetry off and hubs offline, as in tests/conftest.py; Prefect's own home, as the killed run of
    # tests/e2e/test_stage_caching.py has: the session's in-process flows use <ray_home>/prefect.
    return env | {"PREFECT_HOME": str(prefect_home), "RAY_USAGE_STATS_ENABLED": "0", "DO_NOT_TRACK": "true",
                  "MLFLOW_DISABLE_TELEMETRY": "true", "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "HF_HUB_OFFLINE": "1"}


def _section(text: str, title: str) -> str:
    found = re.search(rf"^## {re.escape(title)}[^\n]*\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    assert found, f"no '## {title}' section in the report:\n{text}"
    return found.group(1)


@pytest.fixture(scope="module")
def smoke(ray_session, ray_home, tmp_path_factory):
    folder = tmp_path_factory.mktemp("gpu-smoke")
    head = read_head_state(str(ray_home))
    started = time.monotonic()
    done = subprocess.run(
        ["bash", str(SCRIPT), "--cpu", "--out", str(folder / "report"), "--state", str(folder / "state"),
         f"storage.home={ray_home}"],
        cwd=ROOT, env=_clean_env(folder / "prefect"), capture_output=True, text=True, timeout=900, stdin=subprocess.DEVNULL,
    )
    seconds = time.monotonic() - started
    print(f"bench/gpu_smoke.sh --cpu took {seconds:.0f} s")
    return done, folder, head, seconds


@pytest.mark.e2e
@pytest.mark.slow
def test_the_cpu_fallback_runs_every_step_and_prints_the_reports_path(smoke):
    done, folder, _, _ = smoke
    assert done.returncode == 0, done.stderr[-6000:]
    report = Path(done.stdout.strip().splitlines()[-1])
    assert report.is_file() and report.parent == folder / "report", done.stdout
    assert re.fullmatch(r"gpu-smoke-\d{4}-\d\d-\d\d(-\d{6})?\.md", report.name)
    steps = (folder / "state").glob("smoke-*/steps.tsv")
    rows = [line.split("\t")[:2] for path in steps for line in path.read_text().splitlines()]
    assert rows == [[name, "0"] for name in ("ingest", "train", "resume", "evaluate", "mfu_bench")]


@pytest.mark.e2e
@pytest.mark.slow
def test_the_report_has_the_device_steps_training_resume_evaluation_and_bench(smoke):
    done, _, _, _ = smoke
    text = Path(done.stdout.strip().splitlines()[-1]).read_text()
    assert re.search(r"\*\*device\*\*: cpu\b", text), text
    assert re.search(r"\*\*torch\*\*: \d+\.\d+", text)
    steps = _section(text, "Steps")
    for name in ("ingest", "train", "resume", "evaluate", "mfu_bench"):
        assert re.search(rf"^\| {name} \|.*\| 0 \(ok\) \| {NUMBER} s \|$", steps, re.M), steps

    training = _section(text, "Training")
    assert re.search(rf"train/loss: {NUMBER} at the first logged step \(2\), {NUMBER} at the last \(6\)", training), training
    assert re.search(rf"^\| samples/s \| {NUMBER} \| {NUMBER} \| {NUMBER} \|$", training, re.M), training
    assert re.search(rf"^\| data wait fraction \| {NUMBER} \|", training, re.M), training
    assert re.search(rf"val/text_to_image/R_at_1 by step: 2: {NUMBER}, 4: {NUMBER}, 6: {NUMBER}", training), training
    assert "precision bf16" in training  # the 1-GPU recipe's autocast path, on CPU here

    resume = _section(text, "Resume")
    assert re.search(r"resumed from step 4 → 6 \(run `[0-9a-f]{32}`, the same run\)", resume), resume

    evaluation = _section(text, "Evaluation")
    for metric in ("retrieval/text_to_image/R_at_1", "retrieval/mean_recall", "classification/acc1", "knn/k1/acc1"):
        assert re.search(rf"^\| {re.escape(metric)} \| {NUMBER} \|$", evaluation, re.M), evaluation

    bench = _section(text, "MFU bench")
    assert re.search(rf"^\| samples_per_s \| {NUMBER} \|$", bench, re.M), bench
    assert re.search(rf"^\| flops_per_step \| {NUMBER} \|$", bench, re.M), bench
    assert '"smoke": true' in bench
    assert "## Failures" not in text


@pytest.mark.e2e
@pytest.mark.slow
def test_it_used_the_sessions_ray_head_and_left_it_running(smoke, ray_session, ray_home):
    done, folder, head, _ = smoke
    assert "stopping the local Ray head" not in done.stderr, "it stopped a head it had not started"
    assert read_head_state(str(ray_home)) == head
    host, port = head["address"].rsplit(":", 1)
    assert listening(host, int(port))
    assert ray_session.is_initialized() and ray_session.cluster_resources().get("CPU", 0) > 0
    assert not (folder / "state" / "ray").exists(), "the script's own state folder started no head"
    assert (Path(ray_home) / "mlflow.db").is_file()


def test_without_a_gpu_and_without_cpu_it_refuses(tmp_path):
    """No visible GPU (CUDA_VISIBLE_DEVICES empty hides one from torch; most machines have no nvidia-smi)."""
    env = _clean_env(tmp_path / "prefect") | {"CUDA_VISIBLE_DEVICES": "", "TMPDIR": str(tmp_path)}
    done = subprocess.run(["bash", str(SCRIPT), "--out", str(tmp_path / "out")], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "GPU" in done.stderr and "bash bench/gpu_smoke.sh --cpu" in done.stderr, done.stderr
    assert done.stdout == "" and not (tmp_path / "out").exists()


def test_a_cpu_run_does_not_write_into_docs(tmp_path):
    done = subprocess.run(["bash", str(SCRIPT), "--cpu", "--out", "docs/results/cpu-smoke"], cwd=ROOT,
                          env=_clean_env(tmp_path / "prefect") | {"TMPDIR": str(tmp_path)}, capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL)
    assert done.returncode == 2 and "docs/" in done.stderr, done.stderr
    assert not (ROOT / "docs" / "results" / "cpu-smoke").exists()
