"""Ray Train on 2 CPU workers: global-batch training runs, logs to MLflow, checkpoints and resumes."""

import mlflow
import pytest

from components.model.artifact import load_encoder
from components.runtime.tracking import ensure_experiment, prepare_tracking
from components.train.trainer import run_training
from tests.train_fixtures import tiny_config, tiny_dataset

pytestmark = pytest.mark.integration


def test_two_workers_train_log_checkpoint_and_resume(ray_session, tmp_path):
    kept = tiny_dataset(tmp_path / "kept")
    cfg = tiny_config(tmp_path, steps=2, log_system_metrics=True)
    prepare_tracking(cfg.storage)
    client = mlflow.MlflowClient(cfg.storage.tracking_uri)
    run_id = client.create_run(ensure_experiment(cfg.storage, "t")).info.run_id

    first = run_training(cfg, kept, "resume-me", str(tmp_path / "model-a"), cfg.storage.tracking_uri, run_id)
    assert first.metrics["step"] == 2
    encoder = load_encoder(first.artifact_dir)
    assert encoder.encode_texts(["a plain red square"]).shape == (1, 160)
    history = client.get_metric_history(run_id, "train/loss")
    assert [m.step for m in history] == [1, 2]
    for name in ("train/temperature", "train/lr", "train/data_wait_fraction", "train/samples_per_s"):
        assert client.get_metric_history(run_id, name), name
    params = client.get_run(run_id).data.params
    assert params["train.global_batch_size"] == "8" and params["train.world_size"] == "2"
    assert params["model.image_tower"] == "tinynet_e" and params["model.label_smoothing"] == "0.1"

    # Same run name + storage path: Ray Train V2 resumes from the last checkpoint (step 2), not from 0.
    more = cfg.model_copy(update={"train": cfg.train.model_copy(update={"steps": 4})})
    second = run_training(more, kept, "resume-me", str(tmp_path / "model-b"), cfg.storage.tracking_uri, run_id)
    assert second.metrics["step"] == 4
    steps = [m.step for m in client.get_metric_history(run_id, "train/loss")]
    assert steps == [1, 2, 3, 4]  # no step was trained twice
