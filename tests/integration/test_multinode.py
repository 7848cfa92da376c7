"""Two Ray nodes: training spreads over both, the worker node dies mid-run, the run recovers and finishes.

A second node joins the session's head on 127.0.0.1 (``ray start --address`` in its own process group,
token auth on, one CPU and a marker resource of its own). The run places one worker on each node
(``train.placement_strategy: SPREAD``) and checkpoints to the session's S3-compatible server (moto),
the storage both nodes share. Once a checkpoint is registered, the worker node is SIGKILLed as a
whole, as a machine loss; the group restarts on the head from that checkpoint and finishes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import boto3
import mlflow
import psutil
import pytest

from components.runtime.ray_cluster import free_port
from components.runtime.tracking import ensure_experiment, prepare_tracking
from components.storage import join_uri, read_text
from components.train.trainer import run_training
from tests.train_fixtures import tiny_config, tiny_dataset

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(420)]

STEPS, EVERY = 24, 4  # the node is killed once the checkpoint of step EVERY is registered; 20 steps are left
BUCKET = "align-multinode"


class WorkerNode:
    """A second Ray node on this machine, joined to the session's head, that the test can kill."""

    def __init__(self, gcs_address: str, log_path: Path):
        self.marker = f"align_test_node_{uuid.uuid4().hex[:8]}"  # a resource only this node has
        command = [
            str(Path(sys.executable).with_name("ray")),
            "start",
            f"--address={gcs_address}",
            "--node-ip-address=127.0.0.1",
            "--num-cpus=1",
            f"--resources={json.dumps({self.marker: 1})}",
            "--object-store-memory=200000000",
            f"--dashboard-agent-listen-port={free_port()}",  # the default (52365) is the head's
            "--min-worker-port=0",
            "--max-worker-port=0",
            "--disable-usage-stats",
            "--block",
        ]
        # Same environment as the head: RAY_AUTH_MODE=token with the same token (the session state folder's,
        # in RAY_AUTH_TOKEN_PATH since `connect`), and the moto endpoint in AWS_ENDPOINT_URL for the workers'
        # checkpoint uploads.
        env = dict(os.environ) | {"RAY_AUTH_MODE": "token"}
        self.log = log_path.open("w")
        self.process = subprocess.Popen(
            command, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.node_id = ""

    def wait_alive(self, ray, timeout_s: float = 90) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for node in ray.nodes():
                if node["Alive"] and self.marker in node["Resources"]:
                    self.node_id = node["NodeID"]
                    return self.node_id
            if self.process.poll() is not None:
                break
            time.sleep(0.5)
        raise RuntimeError(f"the second node did not join: {self.log.name}:\n{Path(self.log.name).read_text()[-3000:]}")

    def kill(self) -> None:
        """SIGKILL every process of the node at once (its raylet, agents and workers): a lost machine."""
        try:
            processes = [psutil.Process(self.process.pid), *psutil.Process(self.process.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            processes = []
        try:
            os.killpg(self.process.pid, signal.SIGKILL)  # its own group (start_new_session): only our processes
        except ProcessLookupError:
            pass
        for process in processes:  # any that left the group
            try:
                process.kill()
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(processes, timeout=15)
        self.process.wait(timeout=15)
        self.log.close()
        assert not alive, f"processes of the killed node still run: {alive}"

    def wait_dead(self, ray, timeout_s: float = 90) -> None:
        deadline = time.monotonic() + timeout_s
        while any(n["Alive"] for n in ray.nodes() if n["NodeID"] == self.node_id):
            if time.monotonic() > deadline:
                raise TimeoutError(f"the head still lists node {self.node_id} as alive after {timeout_s} s")
            time.sleep(0.5)


@pytest.fixture
def worker_node(ray_session, tmp_path):
    ray = ray_session
    head, head_cpus = ray.get_runtime_context().get_node_id(), ray.cluster_resources().get("CPU")
    node = WorkerNode(ray.get_runtime_context().gcs_address, tmp_path / "worker-node.log")
    try:
        node.wait_alive(ray)
        yield node
    finally:
        if node.process.poll() is None:
            node.kill()
        if node.node_id:
            node.wait_dead(ray)
    # The session's head is left as it was: its CPUs only, no trace of the node, and it runs tasks.
    deadline = time.monotonic() + 30
    while ray.cluster_resources().get("CPU") != head_cpus and time.monotonic() < deadline:
        time.sleep(0.5)
    assert ray.cluster_resources().get("CPU") == head_cpus
    assert node.marker not in ray.cluster_resources()
    assert [n["NodeID"] for n in ray.nodes() if n["Alive"]] == [head]
    assert ray.get(ray.remote(lambda: "ok").remote(), timeout=60) == "ok"


def _registered_checkpoints(run_uri: str) -> list[dict]:
    """Ray Train's record of the checkpoints it registered (written to storage after each one)."""
    try:
        return json.loads(read_text(join_uri(run_uri, "checkpoint_manager_snapshot.json")))["checkpoint_results"]
    except (FileNotFoundError, OSError):
        return []


def _wait_for_checkpoint(run_uri: str, step: int, training: threading.Thread, outcome: dict, timeout_s: float = 180) -> dict:
    deadline = time.monotonic() + timeout_s
    name = f"checkpoint_{step:08d}"
    while time.monotonic() < deadline and training.is_alive():
        found = [c for c in _registered_checkpoints(run_uri) if c["checkpoint_dir_name"] == name]
        if found:
            return found[0]
        time.sleep(0.1)
    state = "still running" if training.is_alive() else f"ended with {outcome.get('error') or outcome.get('result')!r}"
    raise TimeoutError(f"no registered checkpoint of step {step} under {run_uri}; training {state}")


def test_training_on_two_nodes_survives_losing_the_worker_node(ray_session, s3_server, worker_node, tmp_path):
    ray = ray_session
    head = ray.get_runtime_context().get_node_id()
    boto3.client("s3").create_bucket(Bucket=BUCKET)
    kept = tiny_dataset(tmp_path / "kept")
    cfg = tiny_config(
        tmp_path, steps=STEPS, checkpoint_every=EVERY, keep_checkpoints=STEPS // EVERY, max_failures=1,
        placement_strategy="SPREAD",  # one worker per node while there are two
    )
    cfg.storage.checkpoints_uri = f"s3://{BUCKET}/checkpoints"
    run_name = "two-nodes"
    run_uri = join_uri(cfg.storage.checkpoints_uri, run_name)
    prepare_tracking(cfg.storage)
    client = mlflow.MlflowClient(cfg.storage.tracking_uri)
    run_id = client.create_run(ensure_experiment(cfg.storage, "multinode")).info.run_id

    outcome = {}

    def train():
        try:
            outcome["result"] = run_training(
                cfg, kept, run_name, str(tmp_path / "model"), cfg.storage.tracking_uri, run_id
            )
        except Exception as err:  # noqa: BLE001 - handed to the test thread
            outcome["error"] = err

    started = time.monotonic()
    training = threading.Thread(target=train, daemon=True)
    training.start()
    try:
        first = _wait_for_checkpoint(run_uri, EVERY, training, outcome)

        # (a) Before the failure the two workers ran on two different nodes: the head and the worker node.
        assert first["metrics"]["attempt_start_step"] == 0
        assert sorted(first["metrics"]["worker_nodes"].split(",")) == sorted([head, worker_node.node_id])

        # (b) The node goes while training runs, after a checkpoint reached S3.
        worker_node.kill()
        killed_at = time.monotonic()
        assert training.is_alive(), "training had already finished: the node was not lost mid-run"
        worker_node.wait_dead(ray)
        seen_dead = time.monotonic()
    finally:  # a failed check above must not leave the run going into the next test
        training.join(timeout=300)
    assert not training.is_alive(), "training did not finish within 300 s"
    assert "error" not in outcome, outcome.get("error")
    result = outcome["result"]
    print(
        f"node killed {killed_at - started:.0f} s after the start, seen dead by the head {seen_dead - killed_at:.1f} s "
        f"later; the run finished {time.monotonic() - killed_at:.0f} s after the kill"
    )

    # (c) The group restarted, on the head only, from a registered checkpoint (not step 0), and finished.
    resumed = result.metrics["attempt_start_step"]
    assert EVERY <= resumed < STEPS and resumed % EVERY == 0, result.metrics
    assert result.metrics["step"] == STEPS
    assert result.metrics["worker_nodes"].split(",") == [head, head]
    assert client.get_run(run_id).data.tags["align.train.worker_nodes"] == f"{head},{head}"
    logged = [m.step for m in client.get_metric_history(run_id, "train/loss")]
    assert set(logged) == set(range(1, STEPS + 1))
    assert all(logged.count(step) == 1 for step in range(1, resumed + 1)), logged  # nothing before it trained twice
    attempts = {c["checkpoint_dir_name"]: c["metrics"]["attempt_start_step"] for c in _registered_checkpoints(run_uri)}
    assert attempts[f"checkpoint_{resumed:08d}"] == 0  # the checkpoint it resumed from was the first attempt's

    # (d) The checkpoints live in the S3 bucket (moto), where any node can reach them.
    assert result.checkpoint_path == f"{BUCKET}/checkpoints/{run_name}/checkpoint_{STEPS:08d}"  # on Ray's S3 filesystem
    listing = boto3.client("s3").list_objects_v2(Bucket=BUCKET, Prefix=f"checkpoints/{run_name}/")
    keys = [o["Key"] for o in listing["Contents"]]
    for step in (resumed, STEPS):
        assert f"checkpoints/{run_name}/checkpoint_{step:08d}/model.safetensors" in keys, keys
