"""Driver side of training: tokenizer, Ray Train TorchTrainer, and export of the final model artifact."""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from components.config import AlignConfig
from components.model.artifact import TOKENIZER_DIR
from components.model.tokenizer import load_pretrained_tokenizer, load_tokenizer, save_tokenizer, train_wordpiece
from components.storage import exists, join_uri, list_names, read_text, write_bytes
from components.train.checkpointing import STATE_FILE
from components.train.loop import train_loop_per_worker
from components.train.validation import load_validation_pairs


_COMPLETE = "_COMPLETE"  # written last into a kept vocab's folder: the files before it are whole


@dataclass
class TrainResult:
    artifact_dir: str  # local folder: model.safetensors + align_config.json + tokenizer/
    checkpoint_path: str  # where Ray Train persisted the final checkpoint (may be s3://)
    metrics: dict = field(default_factory=dict)


def load_training_dataset(kept_uri: str):
    import ray.data

    return ray.data.read_parquet(kept_uri, columns=["image", "text"])


def fit_tokenizer(cfg: AlignConfig, dataset, kept_uri: str = "") -> dict[str, str]:
    """The run's tokenizer as file texts, so it travels with the loop config to workers on any node.

    Either WordPiece trained on the kept alt-texts (the paper's way) or an existing vocab: the one
    that ships with the pretrained text tower, or a tokenizer folder. Two WordPiece fits of the same
    texts can differ in a few tokens (``tokenizers`` breaks frequency ties in an order Rust randomises
    per process), which alone moved embedded runs' mean recall by up to 0.06. So the first fit on a
    dataset is kept beside it (``<dataset>/tokenizers/``, see ``dataset_vocab_uri``) and every later
    run on that dataset with the same vocab settings trains with it: trials of an experiment differ
    only in what they vary, and a re-run trains exactly as the first one did.
    """
    text_cfg = cfg.model.text
    if text_cfg.tokenizer_path:
        if not (Path(text_cfg.tokenizer_path) / "tokenizer.json").is_file():
            raise FileNotFoundError(f"text.tokenizer_path {text_cfg.tokenizer_path}: no tokenizer.json there (a Hugging Face tokenizer folder)")
        tokenizer = load_tokenizer(text_cfg.tokenizer_path)
    elif text_cfg.tokenizer == "pretrained":
        tokenizer = load_pretrained_tokenizer(text_cfg.pretrained)
    else:
        kept_vocab = dataset_vocab_uri(kept_uri, text_cfg.tokenizer_vocab_size, text_cfg.max_length)
        if kept_vocab and exists(join_uri(kept_vocab, _COMPLETE)):
            return _read_folder(kept_vocab)
        texts = (str(t) for batch in dataset.select_columns(["text"]).iter_batches(batch_format="numpy") for t in batch["text"])
        files = _files_of(train_wordpiece(texts, text_cfg.tokenizer_vocab_size, text_cfg.max_length))
        if kept_vocab:
            for name, text in files.items():
                write_bytes(join_uri(kept_vocab, name), text.encode("utf-8"))
            write_bytes(join_uri(kept_vocab, _COMPLETE), b"")  # last: a reader never sees half a vocab
        return files
    return _files_of(tokenizer)


def dataset_vocab_uri(kept_uri: str, vocab_size: int, max_length: int) -> str:
    """Where the WordPiece vocab fitted on a dataset's kept rows is kept: ``<dataset>/tokenizers/...``.

    "" (fit without keeping) when ``kept_uri`` is not a data-stage ``<dataset>/kept`` folder.
    """
    from components.data.schema import KEPT_DIR

    parent, _, leaf = kept_uri.rstrip("/").rpartition("/")
    if not parent or leaf != KEPT_DIR:
        return ""
    return join_uri(parent, "tokenizers", f"wordpiece-v{vocab_size}-len{max_length}")


def _read_folder(uri: str) -> dict[str, str]:
    """A stored tokenizer's files by name (a kept vocab's completion marker left out)."""
    return {name: read_text(join_uri(uri, name)) for name in list_names(uri) if name != _COMPLETE}


def _files_of(tokenizer) -> dict[str, str]:
    with tempfile.TemporaryDirectory() as tmp:
        save_tokenizer(tokenizer, tmp)
        return {p.name: p.read_text() for p in Path(tmp).iterdir() if p.is_file()}


def tokenizer_files(cfg: AlignConfig, run_name: str, dataset, kept_uri: str = "") -> dict[str, str]:
    """The run's tokenizer files: those of its checkpoints when it has any (a resume), else a new fit.

    Every checkpoint of a run holds the same tokenizer, so any complete one will do; refitting on a
    resume would cost minutes on a large corpus and could renumber the vocabulary under the weights.
    """
    run_dir = join_uri(cfg.storage.checkpoints_uri, run_name)
    for name in reversed(list_names(run_dir)):
        folder = join_uri(run_dir, name, TOKENIZER_DIR)
        if name.startswith("checkpoint_") and exists(join_uri(folder, "tokenizer.json")):
            return _read_folder(folder)
    return fit_tokenizer(cfg, dataset, kept_uri)


def run_training(
    cfg: AlignConfig,
    kept_uri: str,
    run_name: str,
    output_dir: str,
    tracking_uri: str = "",
    run_id: str = "",
    validation_json: str = "",
) -> TrainResult:
    """Train with Ray Train; rerunning the same ``run_name`` resumes from its last checkpoint.

    ``validation_json`` (a Karpathy-split file) enables retrieval on held-out pairs every
    ``train.val_every`` steps.
    """
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from components.runtime import progress

    dataset = load_training_dataset(kept_uri)
    if cfg.train.cache_shard:
        # Small data: read it once now, while Ray Data can still get CPUs; once the workers hold
        # theirs, iterating a materialised dataset needs no further read tasks.
        dataset = dataset.materialize()
    loop_config = {
        "config": cfg.model_dump(),
        "tokenizer_files": tokenizer_files(cfg, run_name, dataset, kept_uri),
        "tracking_uri": tracking_uri,
        "run_id": run_id,
        "validation": load_validation_pairs(
            validation_json, cfg.eval.retrieval_split, cfg.train.val_images if cfg.train.val_every else 0
        ),
    }
    # Rank 0 moves the console's step bar (a no-op reporter when nobody watches).
    with progress.worker_task("train", total=cfg.train.steps, unit="steps") as reporter:
        trainer = TorchTrainer(
            train_loop_per_worker,
            train_loop_config=loop_config | {"progress": reporter},
            scaling_config=ScalingConfig(
                num_workers=cfg.train.num_workers,
                use_gpu=cfg.train.use_gpu,
                resources_per_worker={"CPU": cfg.train.cpus_per_worker},
                placement_strategy=cfg.train.placement_strategy,
            ),
            run_config=RunConfig(
                name=run_name,
                storage_path=cfg.storage.checkpoints_uri,
                checkpoint_config=CheckpointConfig(num_to_keep=cfg.train.keep_checkpoints),
                # A lost worker restarts the whole group from the last checkpoint, up to this many times.
                failure_config=FailureConfig(max_failures=cfg.train.max_failures),
            ),
            datasets={"train": dataset},
            # Cached shards: every worker gets the whole (small) dataset and takes its own fixed slice, so
            # which rows a rank trains on does not depend on timing (Ray's streaming split hands blocks
            # to whichever worker asks first) and a restarted run sees the same rows.
            dataset_config=DataConfig(datasets_to_split=[] if cfg.train.cache_shard else "all"),
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
