"""Stage caching: a lifecycle killed mid-train resumes its run on the next try, and a re-run with unchanged
inputs skips every finished stage; changing one input re-runs only the stages that depend on it.

The killed attempt is a real ``align run`` process, SIGKILLed (with its process group) once training
has written a checkpoint. It shares the session's Ray head and state folder with the e2e lifecycle
test, so its data stage is usually already cached.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest

from components.config import load_config
from components.runtime.ray_cluster import free_port
from components.runtime.stage_cache import StageCache
from tests.train_fixtures import TINY_LIFECYCLE

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

STEPS = 24  # long enough that the kill lands mid-run, on 2 cores
KILL_DEADLINE_S = 300
STAGES = ("train", "evaluate", "register")


def _key(record: dict) -> str:
    return json.dumps(record["inputs"], sort_keys=True)


def _record_keys(cache: StageCache, stage: str) -> set:
    return {_key(r) for r in cache.records(stage)}


def _wait_for_checkpoint(checkpoints: Path, before: set, process: subprocess.Popen, log: Path) -> Path:
    """A checkpoint of this test's run that Ray Train has *registered* (its snapshot names it): a
    folder alone may still be mid-upload, and a resume only sees registered checkpoints."""
    deadline = time.monotonic() + KILL_DEADLINE_S
    while time.monotonic() < deadline:
        for snapshot in checkpoints.glob("align-*/checkpoint_manager_snapshot.json"):
            try:
                registered = json.loads(snapshot.read_text())["checkpoint_results"]
            except (OSError, ValueError, KeyError):
                continue  # being written
            for result in registered:
                folder = snapshot.parent / result["checkpoint_dir_name"]
                if folder not in before:
                    return folder
        if process.poll() is not None:
            raise AssertionError(f"align run ended (rc {process.returncode}) before any checkpoint:\n{log.read_text()[-4000:]}")
        time.sleep(0.2)
    raise AssertionError(f"no checkpoint within {KILL_DEADLINE_S} s:\n{log.read_text()[-4000:]}")


@pytest.fixture(scope="module")
def runs(ray_session, ray_home, tmp_path_factory):
    os.environ["PREFECT_HOME"] = str(ray_home / "prefect")
    from flows.lifecycle import lifecycle

    overrides = [f"storage.home={ray_home}", f"serve.port={free_port()}", "serve.num_replicas=1", *TINY_LIFECYCLE,
                 "seed=7", f"train.steps={STEPS}", "train.checkpoint_every=3", "train.log_every=3"]
    cfg = load_config(None, overrides)
    cache = StageCache(cfg.storage.stage_cache_uri)
    # The state folder is shared with the other e2e tests: only what this test's runs add counts.
    checkpoints_before = set(Path(cfg.storage.checkpoints_uri).glob("align-*/checkpoint_*"))
    records_before = {stage: _record_keys(cache, stage) for stage in STAGES}

    def new_records(stage):
        return [r for r in cache.records(stage) if _key(r) not in records_before[stage]]

    log = tmp_path_factory.mktemp("killed") / "align-run.log"
    env = dict(os.environ, PREFECT_HOME=str(ray_home / "prefect-killed"))
    with log.open("wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "align_cli.main", "run", *overrides], stdout=out,
                                   stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        checkpoint = _wait_for_checkpoint(Path(cfg.storage.checkpoints_uri), checkpoints_before, process, log)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    after_kill = {stage: [r["status"] for r in new_records(stage)] for stage in STAGES}
    started_run = new_records("train")[0]["outputs"]["run_id"] if new_records("train") else None

    resumed = lifecycle(cfg)
    unchanged = lifecycle(cfg)
    eval_changed = lifecycle(load_config(None, [*overrides, "eval.batch_size=32"]))
    yield cfg, checkpoint, after_kill, started_run, resumed, unchanged, eval_changed, new_records
    from ray import serve

    serve.shutdown()  # the session's Ray is shared: leave no app (or fixed HTTP port) behind


def test_the_killed_attempt_had_started_training_and_finished_nothing_after_it(runs):
    _, checkpoint, after_kill, started_run, *_ = runs
    assert checkpoint.name.startswith("checkpoint_")
    assert after_kill == {"train": ["started"], "evaluate": [], "register": []}
    assert started_run


def test_the_rerun_reuses_the_dataset_and_resumes_the_started_run_from_its_checkpoint(runs):
    cfg, _, _, started_run, resumed, *_, new_records = runs
    assert resumed["cached"] == {"ingest": True, "train": False, "evaluate": False, "register": False}
    assert resumed["run_id"] == started_run
    final = new_records("train")[0]["outputs"]["metrics"]  # Ray Train's last report
    assert final["step"] == STEPS
    assert 0 < final["attempt_start_step"] < STEPS  # resumed, not restarted from step 0
    client = mlflow.MlflowClient(cfg.storage.tracking_uri)
    steps = [m.step for m in client.get_metric_history(started_run, "train/loss")]
    # Every logged step is there once or, for steps after the resumed checkpoint that the killed attempt
    # had already logged, twice: those were trained again from the checkpoint.
    assert sorted(set(steps)) == list(range(3, STEPS + 1, 3))
    assert all(step > final["attempt_start_step"] for step in steps if steps.count(step) > 1)


def test_an_unchanged_rerun_skips_every_cached_stage(runs):
    *_, resumed, unchanged, _, new_records = runs
    assert unchanged["cached"] == {"ingest": True, "train": True, "evaluate": True, "register": True}
    assert unchanged["run_id"] == resumed["run_id"] and unchanged["model_version"] == resumed["model_version"]
    assert unchanged["metrics"] == resumed["metrics"]
    assert [r["status"] for r in new_records("train")] == ["complete"]
    assert len(new_records("register")) == 1  # one version per run and weights, however often it runs


def test_a_changed_eval_setting_reruns_evaluation_only(runs):
    *_, resumed, _, eval_changed, new_records = runs
    assert eval_changed["cached"] == {"ingest": True, "train": True, "evaluate": False, "register": True}
    assert eval_changed["run_id"] == resumed["run_id"] and eval_changed["model_version"] == resumed["model_version"]
    assert len(new_records("evaluate")) == 2
