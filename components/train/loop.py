"""The per-worker training loop run by Ray Train's TorchTrainer.

Each worker builds the same model (same seed), DDP averages gradients, the loss sees the global batch
through an all-gather with gradient, and rank 0 logs to MLflow (Ray Train V2 rejects MLflow callbacks).
Checkpoints hold safetensors weights plus a tensors-only training state, so resuming never unpickles
arbitrary objects.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import torch

from components.config import AlignConfig
from components.model.align import AlignModel
from components.model.artifact import TOKENIZER_DIR, WEIGHTS_FILE, save_artifact, unwrap
from components.model.loss import ContrastiveLoss
from components.model.tokenizer import load_tokenizer
from components.train.batches import BatchBuilder
from components.train.schedule import build_optimizer, build_scheduler

STATE_FILE = "training_state.pt"


def _mlflow_client(tracking_uri: str):
    import mlflow

    return mlflow.MlflowClient(tracking_uri=tracking_uri)


def _log_metrics(client, run_id: str, metrics: dict[str, float], step: int) -> None:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])


def _save_checkpoint(directory: Path, model, tokenizer, optimizer, scheduler, step: int) -> None:
    save_artifact(model, tokenizer, directory)
    state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "step": step}
    torch.save(state, directory / STATE_FILE)


def _restore(checkpoint, model, optimizer, scheduler) -> int:
    from safetensors.torch import load_file

    with checkpoint.as_directory() as directory:
        unwrap(model).load_state_dict(load_file(os.path.join(directory, WEIGHTS_FILE)))
        state = torch.load(os.path.join(directory, STATE_FILE), weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    return int(state["step"])


def _materialise_tokenizer(files: dict[str, str]):
    """The tokenizer travels inside the loop config, so workers on other nodes need no shared disk."""
    directory = Path(tempfile.mkdtemp(prefix="align-tokenizer-"))
    for name, text in files.items():
        (directory / name).write_text(text)
    return load_tokenizer(directory)


def train_loop_per_worker(loop_config: dict) -> None:
    import ray.train
    import ray.train.torch

    cfg = AlignConfig.model_validate(loop_config["config"])
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    if cfg.train.global_batch_size % world:
        raise ValueError(f"global_batch_size {cfg.train.global_batch_size} is not divisible by {world} workers")
    local_batch = cfg.train.global_batch_size // world
    threads = cfg.train.torch_threads_per_worker or max(1, int(cfg.train.cpus_per_worker))
    torch.set_num_threads(threads)
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:  # a resumed run keeps the vocabulary its weights were trained with
        with checkpoint.as_directory() as directory:
            tokenizer = load_tokenizer(os.path.join(directory, TOKENIZER_DIR))
    else:
        tokenizer = _materialise_tokenizer(loop_config["tokenizer_files"])
    model_cfg = cfg.model.model_copy(deep=True)
    model_cfg.text.vocab_size = len(tokenizer)
    model = AlignModel(model_cfg)
    if model_cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    mean, std = model.image_tower.mean, model.image_tower.std
    model = ray.train.torch.prepare_model(model)
    device = ray.train.torch.get_device()
    optimizer = build_optimizer(cfg.train.optimizer, model, cfg.train.lr, cfg.train.weight_decay)
    scheduler = build_scheduler(optimizer, cfg.train.warmup_steps, cfg.train.steps)

    step = 0
    if checkpoint is not None:
        step = _restore(checkpoint, model, optimizer, scheduler)
    if step >= cfg.train.steps:
        return  # resumed after the last step: nothing left to do

    loss_fn = ContrastiveLoss(cfg.model.label_smoothing, rank=rank, world_size=world)
    build_batch = BatchBuilder(model_cfg, tokenizer, mean, std, seed=cfg.seed * 1000 + rank + step)
    client = _mlflow_client(loop_config["tracking_uri"]) if rank == 0 and loop_config.get("run_id") else None
    shard = ray.train.get_dataset_shard("train")
    model.train()

    window = {"loss": 0.0, "data_time": 0.0, "step_time": 0.0, "n": 0}
    fetch_start = time.perf_counter()
    for epoch, raw in _batches(shard, cfg, local_batch, rank):
        inputs = {k: v.to(device) for k, v in build_batch(raw).items()}
        compute_start = time.perf_counter()
        image_emb, text_emb, temperature = model(inputs["images"], inputs["input_ids"], inputs["attention_mask"])
        loss = loss_fn(image_emb, text_emb, temperature)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite loss {loss.item()} at step {step}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        step += 1
        done = time.perf_counter()
        window["loss"] += loss.item()
        window["data_time"] += compute_start - fetch_start
        window["step_time"] += done - fetch_start
        window["n"] += 1
        fetch_start = done

        last = step >= cfg.train.steps
        if step % cfg.train.log_every == 0 or last or step % cfg.train.checkpoint_every == 0:
            n = max(window["n"], 1)
            metrics = {
                "train/loss": window["loss"] / n,
                "train/temperature": float(temperature.detach()),
                "train/lr": scheduler.get_last_lr()[0],
                "train/data_time": window["data_time"] / n,
                "train/step_time": window["step_time"] / n,
                "train/samples_per_s": cfg.train.global_batch_size * n / max(window["step_time"], 1e-9),
                "train/epoch": epoch,
            }
            window = {"loss": 0.0, "data_time": 0.0, "step_time": 0.0, "n": 0}
            if client is not None:
                _log_metrics(client, loop_config["run_id"], metrics, step)
            if step % cfg.train.checkpoint_every == 0 or last:
                # Only checkpointed reports persist in Ray Train V2; the rest went to MLflow above.
                _report_with_checkpoint(metrics | {"step": step}, model, tokenizer, optimizer, scheduler, step, rank)
        if last:
            break


def _batches(shard, cfg: AlignConfig, local_batch: int, rank: int):
    """Yield ``(epoch, batch)`` forever over this worker's shard.

    Streaming re-executes the Ray Data pipeline every epoch, which costs seconds per epoch; when the
    shard fits in memory (``train.cache_shard``) it is read once and reshuffled each epoch instead.
    """
    import numpy as np

    def stream(epoch: int):
        return shard.iter_batches(
            batch_size=local_batch,
            batch_format="numpy",
            drop_last=True,
            local_shuffle_buffer_size=cfg.train.shuffle_buffer or None,
            local_shuffle_seed=cfg.seed * 7919 + epoch + rank if cfg.train.shuffle_buffer else None,
        )

    if not cfg.train.cache_shard:
        epoch = 0
        while True:
            epoch += 1
            yield from ((epoch, batch) for batch in stream(epoch))
    cached = list(shard.iter_batches(batch_size=4096, batch_format="numpy"))
    columns = {k: np.concatenate([b[k] for b in cached]) for k in cached[0]} if cached else {}
    rows = len(next(iter(columns.values()))) if columns else 0
    if rows < local_batch:
        raise ValueError(f"worker {rank} holds {rows} rows, fewer than its batch of {local_batch}")
    rng = np.random.default_rng(cfg.seed * 7919 + rank)
    epoch = 0
    while True:
        epoch += 1
        order = rng.permutation(rows)
        for start in range(0, rows - local_batch + 1, local_batch):
            index = order[start : start + local_batch]
            yield epoch, {k: v[index] for k, v in columns.items()}


def _report_with_checkpoint(metrics, model, tokenizer, optimizer, scheduler, step: int, rank: int) -> None:
    import ray.train

    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = None
        if rank == 0:  # DDP keeps replicas identical; one copy is enough
            _save_checkpoint(Path(tmp), model, tokenizer, optimizer, scheduler, step)
            checkpoint = ray.train.Checkpoint.from_directory(tmp)
        ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=f"checkpoint_{step:08d}")
