"""The per-worker training loop run by Ray Train's TorchTrainer.

Each worker builds the same model (same seed), DDP averages gradients, the loss sees the global batch
through an all-gather with gradient, and rank 0 logs to MLflow (Ray Train V2 rejects MLflow callbacks)
and prints progress. Randomness is a function of (seed, rank, step) and the data order of (seed, rank,
epoch), so a run restarted from a checkpoint — after a lost worker or a re-run — trains the same
steps it would have trained without the interruption.
"""

from __future__ import annotations

import functools
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from components.accelerators import prepare_cuda
from components.config import AlignConfig
from components.model.align import AlignModel
from components.model.artifact import TOKENIZER_DIR
from components.model.loss import ContrastiveLoss
from components.model.tokenizer import load_tokenizer
from components.runtime.metrics import record_training_step
from components.model.preprocess import normalize
from components.train.batches import BatchBuilder, iterate_batches, prefetch, to_device_ahead
from components.train.checkpointing import Position, restore_checkpoint, save_checkpoint, step_seed
from components.train.schedule import build_optimizer, build_scheduler
from components.train.step import train_step
from components.train.validation import validation_metrics

# Ray Train patches ``print`` to log, and also tees to stdout when another library has wrapped
# sys.stdout (MLflow does): each line then reached the driver twice. An explicit stream prints once.
# Ray forwards these lines to the driver, whose CLI keeps them in the run's log; its console shows the
# step bar fed through ``loop_config["progress"]`` instead.
_CONSOLE = sys.__stdout__
_SMOOTHING = 0.1  # weight of the newest step in the bar's loss and rate


def _materialise_tokenizer(files: dict[str, str]):
    """The tokenizer travels inside the loop config, so workers on other nodes need no shared disk."""
    with tempfile.TemporaryDirectory(prefix="align-tokenizer-") as directory:
        for name, text in files.items():
            (Path(directory) / name).write_text(text)
        return load_tokenizer(directory)


def sync_batchnorm(model: torch.nn.Module, enabled: bool, device: torch.device, world: int) -> torch.nn.Module:
    """BatchNorm statistics over the global batch; torch implements that for GPUs (and XPUs) only."""
    if not enabled or world == 1:
        return model
    if device.type == "cpu":
        raise ValueError("train.sync_batchnorm needs GPU workers: torch's SyncBatchNorm does not run on CPU")
    return convert_sync_batchnorm(model)


def convert_sync_batchnorm(model: torch.nn.Module) -> torch.nn.Module:
    """SyncBN layers in place of BatchNorm, activations kept.

    torch's own conversion turns timm's fused ``BatchNormAct2d`` into a bare ``SyncBatchNorm`` and drops
    its activation (the tower then computes another function); timm's keeps norm and activation together.
    """
    from timm.layers import convert_sync_batchnorm as timm_convert

    return timm_convert(model)


def worker_nodes(world: int) -> list[str]:
    """The Ray node id of every rank, in rank order (one small all-gather as an attempt starts)."""
    import ray

    node = ray.get_runtime_context().get_node_id()
    if world == 1:
        return [node]
    nodes: list = [None] * world
    torch.distributed.all_gather_object(nodes, node)
    return nodes


def record_step_metrics(run: str, rank: int, step: int, loss: float, temperature, data_time: float, step_time: float,
                        global_batch: int) -> None:
    """This worker's last step as Prometheus gauges, every rank and step: Prometheus samples the
    latest values, and a gauge that stops being set drops out of Ray's export (a no-op outside Ray)."""
    step_time = max(step_time, 1e-9)
    record_training_step(run, rank, step, loss, float(temperature), global_batch / step_time, data_time / step_time)


class _Window:
    """Running sums between two log points; their means are what gets logged."""

    def __init__(self):
        self.loss = self.data_time = self.step_time = 0.0
        self.steps = 0

    def add(self, loss: float, data_time: float, step_time: float) -> None:
        self.loss += loss
        self.data_time += data_time
        self.step_time += step_time
        self.steps += 1

    def metrics(self, global_batch: int) -> dict[str, float]:
        n = max(self.steps, 1)
        return {
            "train/loss": self.loss / n,
            "train/data_time": self.data_time / n,
            "train/step_time": self.step_time / n,
            "train/data_wait_fraction": self.data_time / max(self.step_time, 1e-9),
            "train/samples_per_s": global_batch * n / max(self.step_time, 1e-9),
        }


class _Rank0Reporter:
    """MLflow metrics (and system metrics), a log line and the progress bar, from rank 0 only."""

    def __init__(self, loop_config: dict, cfg: AlignConfig, rank: int):
        self.client = self.monitor = None
        self.progress = loop_config.get("progress") if rank == 0 else None  # a WorkerProgress
        self._loss = self._step_time = None
        self.run_id = loop_config.get("run_id") if rank == 0 else None
        self.validation_pairs = loop_config.get("validation") if rank == 0 and cfg.train.val_every > 0 else None
        self.total = cfg.train.steps
        self.enabled = rank == 0
        if self.run_id:
            import mlflow

            self.client = mlflow.MlflowClient(tracking_uri=loop_config["tracking_uri"])
            if cfg.train.log_system_metrics:
                from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

                self.monitor = SystemMetricsMonitor(
                    self.run_id, sampling_interval=10, resume_logging=True, tracking_uri=loop_config["tracking_uri"]
                )
                self.monitor.start()

    def log_params(self, cfg: AlignConfig, world: int) -> None:
        """The model and training settings as flat MLflow params (once, at a fresh start: MLflow
        refuses to change a param's value, and a resumed run may have been given more steps)."""
        if self.client is None:
            return
        from mlflow.entities import Param

        flat = _flatten({"model": cfg.model.model_dump(), "train": cfg.train.model_dump(), "seed": cfg.seed})
        flat |= {"train.world_size": world, "train.local_batch_size": cfg.train.global_batch_size // world}
        params = [Param(key, str(value)[:500]) for key, value in sorted(flat.items())]
        for start in range(0, len(params), 100):  # MLflow's limit per batch
            self.client.log_batch(self.run_id, params=params[start : start + 100])

    def log(self, metrics: dict[str, float], step: int) -> None:
        if self.client is not None:
            from mlflow.entities import Metric

            now = int(time.time() * 1000)
            self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])

    def step(self, step: int, loss: float, step_time: float, global_batch: int) -> None:
        """Every step: the bar's position, with a smoothed loss and samples/s (sent at most twice a second)."""
        if self.progress is None:
            return
        self._loss = loss if self._loss is None else (1 - _SMOOTHING) * self._loss + _SMOOTHING * loss
        self._step_time = step_time if self._step_time is None else (1 - _SMOOTHING) * self._step_time + _SMOOTHING * step_time
        rate = global_batch / max(self._step_time, 1e-9)
        self.progress.update(step, final=step >= self.total, loss=round(self._loss, 3), **{"samples/s": round(rate)})

    def report(self, metrics: dict[str, float], step: int) -> None:
        if not self.enabled:
            return
        self.log(metrics, step)
        print(
            f"[align.train] step {step}/{self.total}  loss {metrics['train/loss']:.4f}  "
            f"T {metrics['train/temperature']:.4f}  lr {metrics['train/lr']:.2e}  "
            f"{metrics['train/samples_per_s']:.1f} samples/s  data wait {100 * metrics['train/data_wait_fraction']:.0f}%",
            file=_CONSOLE,
            flush=True,
        )

    def validate(self, model, tokenizer, pairs: dict, step: int) -> None:
        if not self.enabled:
            return
        metrics = validation_metrics(model, tokenizer, pairs)
        self.log(metrics, step)
        print(
            f"[align.train] step {step}/{self.total}  val text->image R@1 {metrics['val/text_to_image/R_at_1']:.3f}  "
            f"mean recall {metrics['val/mean_recall']:.3f}",
            file=_CONSOLE,
            flush=True,
        )

    def close(self) -> None:
        if self.monitor is not None:
            self.monitor.finish()


def _flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat |= _flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def train_loop_per_worker(loop_config: dict) -> None:
    import ray.train
    import ray.train.torch

    cfg = AlignConfig.model_validate(loop_config["config"])
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    if cfg.train.global_batch_size % world:
        raise ValueError(f"global_batch_size {cfg.train.global_batch_size} is not divisible by {world} workers")
    local_batch = cfg.train.global_batch_size // world
    torch.set_num_threads(cfg.train.torch_threads_per_worker or max(1, int(cfg.train.cpus_per_worker)))
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:  # a resumed run keeps the vocabulary its weights were trained with
        with checkpoint.as_directory() as directory:
            tokenizer = load_tokenizer(os.path.join(directory, TOKENIZER_DIR))
    else:
        tokenizer = _materialise_tokenizer(loop_config["tokenizer_files"])
    model_cfg = cfg.model.model_copy(deep=True)
    model_cfg.text.vocab_size = len(tokenizer)
    # Pretrained weights are only read on a fresh start: a checkpoint overwrites them anyway.
    model = AlignModel(model_cfg, load_pretrained=checkpoint is None)
    if model_cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    mean, std = model.image_tower.mean, model.image_tower.std
    device = ray.train.torch.get_device()
    prepare_cuda(device, cfg.train.accelerator)
    model = ray.train.torch.prepare_model(sync_batchnorm(model, cfg.train.sync_batchnorm, device, world))
    optimizer = build_optimizer(cfg.train.optimizer, model, cfg.train.lr, cfg.train.weight_decay)
    scheduler = build_scheduler(optimizer, cfg.train.warmup_steps, cfg.train.steps)

    position = Position()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            position = restore_checkpoint(directory, model, optimizer, scheduler)
        if rank == 0:
            print(f"[align.train] resuming from step {position.step} (epoch {position.epoch})", file=_CONSOLE, flush=True)
    if position.step >= cfg.train.steps:
        return  # resumed after the last step: nothing left to do

    # Where this attempt's workers run and the step it started at, kept in every checkpoint's metrics
    # (and the latest on the MLflow run): a run that lost a node shows where each part of it trained.
    attempt = {"attempt_start_step": position.step, "worker_nodes": ",".join(worker_nodes(world))}
    loss_fn = ContrastiveLoss(cfg.model.label_smoothing, rank=rank, world_size=world)
    build_batch = BatchBuilder(model_cfg, tokenizer, pin_memory=device.type == "cuda")
    normalise = functools.partial(normalize, mean=mean, std=std, channels_last=model_cfg.channels_last)
    reporter = _Rank0Reporter(loop_config, cfg, rank)
    if reporter.client is not None:
        reporter.client.set_tag(reporter.run_id, "align.train.worker_nodes", attempt["worker_nodes"])
    if position.step == 0:
        reporter.log_params(cfg, world)
    model.train()
    try:
        _train(cfg, model, loss_fn, optimizer, scheduler, build_batch, normalise, tokenizer, reporter, position, local_batch, rank, world, device, attempt)
    finally:
        reporter.close()


def _train(cfg, model, loss_fn, optimizer, scheduler, build_batch, normalise, tokenizer, reporter, position, local_batch, rank, world, device, attempt):
    import ray.train

    step = position.step
    window = _Window()
    run_name = ray.train.get_context().get_experiment_name()  # RunConfig.name: the run's checkpoint folder
    fetch_start = time.perf_counter()
    batches = iterate_batches(ray.train.get_dataset_shard("train"), cfg, local_batch, rank, world, position)
    # Each batch's augmentation seed is fixed by the step it feeds, so images built ahead are the same.
    seeded = ((raw, epoch, index, step_seed(cfg.seed, rank, at)) for at, (epoch, index, raw) in enumerate(batches, start=step))
    # Decoded, augmented and tokenized ahead in helper threads; each batch's copy to the device is
    # issued before the previous step's loss syncs; uint8 images are normalised on the device.
    built = prefetch(seeded, lambda item: build_batch(item[0], item[3]), cfg.train.decode_threads)
    for (_, epoch, index, seed), batch in to_device_ahead(built, device):
        inputs = batch | {"images": normalise(batch["images"])}
        torch.manual_seed(seed)  # dropout masks of this step, whatever ran before it
        compute_start = time.perf_counter()
        loss, temperature = train_step(model, loss_fn, optimizer, scheduler, inputs, cfg.train.precision, step)
        step += 1
        done = time.perf_counter()
        loss_value, data_time, step_time = loss.item(), compute_start - fetch_start, done - fetch_start
        window.add(loss_value, data_time, step_time)
        fetch_start = done
        record_step_metrics(run_name, rank, step, loss_value, temperature, data_time, step_time,
                            cfg.train.global_batch_size)
        reporter.step(step, loss_value, step_time, cfg.train.global_batch_size)

        last = step >= cfg.train.steps
        checkpoint_now = step % cfg.train.checkpoint_every == 0 or last
        if step % cfg.train.log_every == 0 or checkpoint_now:
            metrics = window.metrics(cfg.train.global_batch_size) | {
                "train/temperature": float(temperature),
                "train/lr": scheduler.get_last_lr()[0],
                "train/epoch": epoch,
            }
            window = _Window()
            reporter.report(metrics, step)
            if checkpoint_now:
                # Only checkpointed reports persist in Ray Train V2; the rest went to MLflow above.
                following = Position(step, epoch, index + 1)
                _report_with_checkpoint(metrics | {"step": step} | attempt, model, tokenizer, optimizer, scheduler, following, rank)
        pairs = reporter.validation_pairs
        if pairs and (step % cfg.train.val_every == 0 or last):
            reporter.validate(model, tokenizer, pairs, step)
        if last:
            break


def _report_with_checkpoint(metrics, model, tokenizer, optimizer, scheduler, position: Position, rank: int) -> None:
    import ray.train

    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = None
        if rank == 0:  # DDP keeps replicas identical; one copy is enough
            save_checkpoint(Path(tmp), model, tokenizer, optimizer, scheduler, position)
            checkpoint = ray.train.Checkpoint.from_directory(tmp)
        ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=f"checkpoint_{position.step:08d}")
