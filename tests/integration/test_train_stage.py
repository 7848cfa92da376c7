"""Ray Train on 2 CPU workers: global-batch training runs, logs to MLflow, checkpoints and resumes."""

import io

import mlflow
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from components.config import AlignConfig, ModelConfig, StorageConfig, TextTowerConfig, TrainConfig
from components.model.artifact import load_encoder
from components.runtime.tracking import ensure_experiment, prepare_tracking
from components.train.trainer import run_training

pytestmark = pytest.mark.integration

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220), "yellow": (230, 230, 40)}


def _dataset(path, rows: int = 48):
    images, texts = [], []
    for i in range(rows):
        name, rgb = list(COLOURS.items())[i % len(COLOURS)]
        buffer = io.BytesIO()
        Image.new("RGB", (40, 40), rgb).save(buffer, format="JPEG")
        images.append(buffer.getvalue())
        texts.append(f"a plain {name} square number {i}")
    path.mkdir(parents=True)
    pq.write_table(pa.table({"image": images, "text": texts}), path / "part-0.parquet")
    return str(path)


def _config(tmp_path, steps: int) -> AlignConfig:
    storage = StorageConfig(
        home=str(tmp_path),
        tracking_uri=f"sqlite:///{tmp_path}/mlflow.db",
        artifact_uri=str(tmp_path / "mlartifacts"),
        checkpoints_uri=str(tmp_path / "checkpoints"),
        datasets_uri=str(tmp_path / "datasets"),
        prefect_home=str(tmp_path / "prefect"),
    )
    model = ModelConfig(
        image_tower="tinynet_e",
        train_preprocess="resize_short(36)|random_crop(32)|flip_lr",
        eval_preprocess="resize_short(36)|center_crop(32)",
        text=TextTowerConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, max_length=16, tokenizer_vocab_size=200),
        init_temperature=0.07,
    )
    train = TrainConfig(
        num_workers=2, global_batch_size=8, steps=steps, warmup_steps=1, checkpoint_every=2, log_every=1,
        optimizer="lamb", cache_shard=True,
    )
    return AlignConfig(storage=storage, model=model, train=train)


def test_two_workers_train_log_checkpoint_and_resume(ray_session, tmp_path):
    kept = _dataset(tmp_path / "kept")
    cfg = _config(tmp_path, steps=2)
    prepare_tracking(cfg.storage)
    client = mlflow.MlflowClient(cfg.storage.tracking_uri)
    run_id = client.create_run(ensure_experiment(cfg.storage, "t")).info.run_id

    first = run_training(cfg, kept, "resume-me", str(tmp_path / "model-a"), cfg.storage.tracking_uri, run_id)
    assert first.metrics["step"] == 2
    encoder = load_encoder(first.artifact_dir)
    assert encoder.encode_texts(["a plain red square"]).shape == (1, 160)
    history = client.get_metric_history(run_id, "train/loss")
    assert [m.step for m in history] == [1, 2]
    for name in ("train/temperature", "train/data_time", "train/step_time", "train/samples_per_s"):
        assert client.get_metric_history(run_id, name), name

    # Same run name + storage path: Ray Train V2 resumes from the last checkpoint (step 2), not from 0.
    more = cfg.model_copy(update={"train": cfg.train.model_copy(update={"steps": 4})})
    second = run_training(more, kept, "resume-me", str(tmp_path / "model-b"), cfg.storage.tracking_uri, run_id)
    assert second.metrics["step"] == 4
    steps = [m.step for m in client.get_metric_history(run_id, "train/loss")]
    assert steps == [1, 2, 3, 4]  # no step was trained twice
