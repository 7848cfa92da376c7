"""Driver side of training: tokenizer, Ray Train TorchTrainer, and export of the final model artifact."""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from components.config import AlignConfig
from components.model.tokenizer import save_tokenizer, train_wordpiece
from components.train.loop import STATE_FILE, train_loop_per_worker


@dataclass
class TrainResult:
    artifact_dir: str  # local folder: model.safetensors + align_config.json + tokenizer/
    checkpoint_path: str  # where Ray Train persisted the final checkpoint (may be s3://)
    metrics: dict = field(default_factory=dict)


def load_training_dataset(kept_uri: str):
    import ray.data

    return ray.data.read_parquet(kept_uri, columns=["image", "text"])


def fit_tokenizer(cfg: AlignConfig, dataset) -> dict[str, str]:
    """Train WordPiece on the kept alt-texts; return its files as text so they travel with the config."""
    texts = (str(t) for batch in dataset.select_columns(["text"]).iter_batches(batch_format="numpy") for t in batch["text"])
    tokenizer = train_wordpiece(texts, cfg.model.text.tokenizer_vocab_size, cfg.model.text.max_length)
    with tempfile.TemporaryDirectory() as tmp:
        save_tokenizer(tokenizer, tmp)
        return {p.name: p.read_text() for p in Path(tmp).iterdir() if p.is_file()}


def run_training(
    cfg: AlignConfig, kept_uri: str, run_name: str, output_dir: str, tracking_uri: str = "", run_id: str = ""
) -> TrainResult:
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    dataset = load_training_dataset(kept_uri)
    if cfg.train.cache_shard:
        # Small data: read it once now, while Ray Data can still get CPUs; once the workers hold
        # theirs, iterating a materialised dataset needs no further read tasks.
        dataset = dataset.materialize()
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "config": cfg.model_dump(),
            "tokenizer_files": fit_tokenizer(cfg, dataset),
            "tracking_uri": tracking_uri,
            "run_id": run_id,
        },
        scaling_config=ScalingConfig(
            num_workers=cfg.train.num_workers,
            use_gpu=cfg.train.use_gpu,
            resources_per_worker={"CPU": cfg.train.cpus_per_worker},
        ),
        run_config=RunConfig(name=run_name, storage_path=cfg.storage.checkpoints_uri),
        datasets={"train": dataset},
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"training run {run_name!r} finished without a checkpoint")
    out = Path(output_dir)
    if out.exists():
        shutil.rmtree(out)
    with result.checkpoint.as_directory() as directory:
        shutil.copytree(directory, out, ignore=shutil.ignore_patterns(STATE_FILE))
    return TrainResult(artifact_dir=str(out), checkpoint_path=result.checkpoint.path, metrics=dict(result.metrics or {}))
