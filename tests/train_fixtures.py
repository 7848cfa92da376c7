"""A tiny dataset and recipe for the training tests: real JPEG bytes in Parquet, a model that trains in seconds."""

from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from components.config import AlignConfig, ModelConfig, StorageConfig, TextTowerConfig, TrainConfig

# The smallest towers that still train, as config overrides: shared by the bench-script and lifecycle tests.
TINY_MODEL_OVERRIDES = [
    "model.train_preprocess=resize_short(40)|random_crop(32)|flip_lr",
    "model.eval_preprocess=resize_short(40)|center_crop(32)",
    "model.text.hidden_size=32",
    "model.text.num_layers=1",
    "model.text.num_heads=2",
    "model.text.intermediate_size=64",
]
# The whole lifecycle on a tiny corpus with the tiny towers: a couple of minutes on 2 cores.
TINY_LIFECYCLE = [
    "corpus.num_scenes=320",
    "corpus.eval_scenes=40",
    "corpus.classify_per_class=3",
    "corpus.many_texts_per_image=12",
    "filter.max_texts_per_image=10",
    "filter.vocab_top_n=400",
    "filter.resize_short_side=40",
    *TINY_MODEL_OVERRIDES,
    "model.text.tokenizer_vocab_size=300",
    "train.global_batch_size=32",
    "train.steps=6",
    "train.checkpoint_every=6",
    "train.log_every=3",
    "train.warmup_steps=2",
    "eval.batch_size=64",
    "gate.min_metrics={}",  # a 6-step model cannot promise quality; the floors are tested in unit tests
]
COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220), "yellow": (230, 230, 40)}


def tiny_dataset(path, rows: int = 48) -> str:
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


def tiny_config(tmp_path, steps: int, **train) -> AlignConfig:
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
    settings = {
        "num_workers": 2, "global_batch_size": 8, "steps": steps, "warmup_steps": 1, "checkpoint_every": 2,
        "log_every": 1, "optimizer": "lamb", "cache_shard": True, "log_system_metrics": False,
    } | train
    return AlignConfig(storage=storage, model=model, train=TrainConfig(**settings))
