"""Training samples/s on 2 CPU cores: the platform's Ray Train path against two baselines in the same run.

Setting (the one in ARCHITECTURE.md, measured facts; identical model config on every side, built from configs/embedded.yaml with
overrides): timm ``efficientnet_b0`` at 128 px + a 4-layer BERT (hidden 256, 4 heads, intermediate
1024, random init), global batch 64, 16-token texts, label smoothing 0.1, learnable temperature, the
recipe's optimizer (AdamW), fp32. Warm-up steps are excluded from every timing.

- **bare**: a plain single-process PyTorch loop (2 threads) over synthetic tensors, ``AlignModel`` +
  ``ContrastiveLoss``; measured with the default memory format and with ``channels_last``; the
  *faster* of the two is the baseline (strict against ourselves).
- **open_clip**: open_clip's training step (``open_clip.loss.ClipLoss``, normalised features, a learnable
  log ``logit_scale`` exp()'d and clamped to ln 100) driving the same towers, default memory format,
  same optimizer, single process, 2 threads.
- **candidate**: ``components.train.trainer.run_training`` through Ray Train on a local Ray instance
  with 2 CPUs, on a generated Parquet dataset of real JPEG bytes (random noise, 146 px short side,
  5-10-word captions), decoded and augmented inside the loop. Two layouts: 1 worker x 2 CPUs and
  2 workers x 1 CPU (the embedded default); the better one counts. Its number is the loop's own
  ``train/samples_per_s`` over the last logging window (the first window is the warm-up); that window's
  step time runs from one step's end to the next, so it includes data fetch, JPEG decode, augmentation,
  tokenisation, compute and DDP's all-reduce; only the final checkpoint write falls outside it.

Targets: candidate / bare >= 0.9 and candidate / open_clip >= 1.3. Writes
bench/results/train_throughput.json, with the 1-min load average at each phase and a
``likely_disturbed`` flag: on a shared 2-core machine other work skews one side more than another.
About 5 minutes on an idle 2-core machine (``--skip-candidate``: about 2).

    .venv/bin/python bench/train_throughput.py [--steps 15] [--batch 64] [--skip-candidate]
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import random
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from components.config import AlignConfig, TrainConfig, load_config
from components.model.align import AlignModel
from components.model.loss import ContrastiveLoss
from components.model.preprocess import output_size
from components.train.schedule import build_optimizer

TARGET_VS_BARE = 0.9
TARGET_VS_OPEN_CLIP = 1.3
THREADS = 2
SHORT_SIDE = 146
# Made-up words of 2-4 syllables: WordPiece splits them, so nearly every caption reaches the 16-token
# cap and every batch is padded to 16, the same text work as the baselines' 16-token inputs.
SYLLABLES = [c + v for c in "bklmnrst" for v in "aeiou"]


def bench_config(batch: int, tokens: int, extra: list[str] | None = None) -> AlignConfig:
    """The issue's fixed setting as overrides of the embedded recipe, so every side shares one model config."""
    overrides = [
        "model.image_tower=efficientnet_b0",
        f"model.train_preprocess=resize_short({SHORT_SIDE})|random_crop(128)|flip_lr",
        f"model.eval_preprocess=resize_short({SHORT_SIDE})|center_crop(128)",
        "model.channels_last=true",  # the recipe's setting; the bare loop is measured both ways
        "model.text.hidden_size=256",
        "model.text.num_layers=4",
        "model.text.num_heads=4",
        "model.text.intermediate_size=1024",
        f"model.text.max_length={tokens}",
        "model.label_smoothing=0.1",
        "model.learn_temperature=true",
        f"train.global_batch_size={batch}",
        "train.cache_shard=true",
    ]
    if "precision" in TrainConfig.model_fields:
        overrides.append("train.precision=fp32")
    if "val_every" in TrainConfig.model_fields:
        overrides.append("train.val_every=0")  # no held-out retrieval inside the timed window
    return load_config(None, overrides=overrides + list(extra or []))


def _load() -> float:
    return round(os.getloadavg()[0], 2)


def _timed(step: Callable[[], None], batch: int, steps: int, warmup: int) -> float:
    for _ in range(warmup):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return batch * steps / (time.perf_counter() - start)


def _inputs(cfg: AlignConfig, vocab: int, tokens: int, channels_last: bool):
    generator = torch.Generator().manual_seed(0)
    batch, size = cfg.train.global_batch_size, output_size(cfg.model.train_preprocess)
    images = torch.randn(batch, 3, size, size, generator=generator)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    ids = torch.randint(5, vocab, (batch, tokens), generator=generator)
    return images, ids, torch.ones_like(ids)


def _model(cfg: AlignConfig, vocab: int, channels_last: bool) -> AlignModel:
    torch.manual_seed(cfg.seed)
    model_cfg = cfg.model.model_copy(deep=True)
    model_cfg.channels_last = channels_last
    model_cfg.text.vocab_size = vocab
    model = AlignModel(model_cfg)
    return model.to(memory_format=torch.channels_last) if channels_last else model


def bare_loop(cfg: AlignConfig, steps: int, warmup: int, channels_last: bool, vocab: int, tokens: int,
              threads: int = THREADS) -> float:
    """Samples/s of the plainest loop over the same model and loss: no data, no Ray, no DDP."""
    torch.set_num_threads(threads)
    model = _model(cfg, vocab, channels_last).train()
    images, ids, mask = _inputs(cfg, vocab, tokens, channels_last)
    loss_fn = ContrastiveLoss(cfg.model.label_smoothing)
    optimizer = build_optimizer(cfg.train.optimizer, model, cfg.train.lr, cfg.train.weight_decay)

    def step() -> None:
        loss = loss_fn(*model(images, ids, mask))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return _timed(step, cfg.train.global_batch_size, steps, warmup)


class OpenClipStyle(nn.Module):
    """The same towers behind open_clip's CLIP interface: features + a learnable log logit scale."""

    def __init__(self, align: AlignModel, init_temperature: float):
        super().__init__()
        self.visual = align.image_tower
        self.text = align.text_tower
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / init_temperature)))

    def forward(self, images, input_ids, attention_mask) -> dict[str, torch.Tensor]:
        return {
            "image_features": F.normalize(self.visual(images), dim=-1),
            "text_features": F.normalize(self.text(input_ids, attention_mask), dim=-1),
            "logit_scale": self.logit_scale.exp(),
        }


def open_clip_loop(cfg: AlignConfig, steps: int, warmup: int, vocab: int, tokens: int, threads: int = THREADS) -> float:
    """Samples/s of open_clip_train's step (train_one_epoch, fp32, accum_freq 1) on the same towers."""
    from open_clip.loss import ClipLoss

    torch.set_num_threads(threads)
    model = OpenClipStyle(_model(cfg, vocab, channels_last=False), cfg.model.init_temperature).train()
    images, ids, mask = _inputs(cfg, vocab, tokens, channels_last=False)
    loss_fn = ClipLoss()
    optimizer = build_optimizer(cfg.train.optimizer, model, cfg.train.lr, cfg.train.weight_decay)

    def step() -> None:
        optimizer.zero_grad()
        loss = loss_fn(**model(images, ids, mask))
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))

    return _timed(step, cfg.train.global_batch_size, steps, warmup)


def write_dataset(folder: Path, rows: int, shards: int = 4, seed: int = 0) -> list[str]:
    """A kept-shards-shaped Parquet dataset (``image`` JPEG bytes, ``text``); returns the captions."""
    rng, pixels = random.Random(seed), np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    images, texts = [], []
    for i in range(rows):
        long_side = rng.randrange(SHORT_SIDE, 2 * SHORT_SIDE)
        height, width = (SHORT_SIDE, long_side) if i % 2 else (long_side, SHORT_SIDE)
        buffer = io.BytesIO()
        noise = pixels.integers(0, 256, (height, width, 3), dtype=np.uint8)
        Image.fromarray(noise).save(buffer, format="JPEG", quality=90)
        images.append(buffer.getvalue())
        words = ("".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 4))) for _ in range(rng.randint(5, 10)))
        texts.append(" ".join(words))
    import pyarrow as pa
    import pyarrow.parquet as pq

    for shard in range(shards):
        part = slice(shard * rows // shards, (shard + 1) * rows // shards)
        table = pa.table({"image": pa.array(images[part], pa.binary()), "text": pa.array(texts[part], pa.string())})
        pq.write_table(table, folder / f"part-{shard:03d}.parquet")
    return texts


def text_shape(cfg: AlignConfig, texts: list[str]) -> tuple[int, float]:
    """Vocab size of the tokenizer the trainer will fit on these captions, and the share at the token cap."""
    from components.model.tokenizer import train_wordpiece

    tokenizer = train_wordpiece(texts, cfg.model.text.tokenizer_vocab_size, cfg.model.text.max_length)
    lengths = [len(ids) for ids in tokenizer(texts, truncation=True, max_length=cfg.model.text.max_length)["input_ids"]]
    return len(tokenizer), sum(n == cfg.model.text.max_length for n in lengths) / len(lengths)


def candidate_runs(args, data: Path, tmp: Path, layouts: list[tuple[int, int]]) -> dict[str, dict]:
    """``run_training`` per layout on one local Ray instance; the last logging window's samples/s."""
    import ray
    import ray.data

    from components.train.trainer import run_training

    ray.init(address="local", num_cpus=THREADS, include_dashboard=False, log_to_driver=False)
    results = {}
    try:
        ray.data.DataContext.get_current().enable_progress_bars = False
        for workers, cpus in layouts:
            name = f"{workers}x{cpus}"
            total = 2 * args.steps  # the first window of ``steps`` steps is the warm-up
            cfg = bench_config(args.batch, args.tokens, [
                f"storage.home={tmp / 'home'}",
                f"train.num_workers={workers}",
                f"train.cpus_per_worker={cpus}",
                f"train.steps={total}",
                f"train.log_every={args.steps}",
                f"train.checkpoint_every={total}",
            ])
            start = time.perf_counter()
            result = run_training(cfg, str(data), f"bench-{name}", str(tmp / f"model-{name}"))
            metrics = result.metrics
            if int(metrics.get("step", -1)) != total:
                raise RuntimeError(f"candidate {name} stopped at step {metrics.get('step')}, expected {total}")
            results[name] = {
                "workers": workers,
                "cpus_per_worker": cpus,
                "samples_per_s": round(metrics["train/samples_per_s"], 2),
                "step_time_s": round(metrics["train/step_time"], 4),
                "data_time_s": round(metrics["train/data_time"], 4),
                "timed_steps": args.steps,
                "run_training_wall_s": round(time.perf_counter() - start, 1),  # incl. Ray Data, tokenizer, start-up
            }
            print(f"candidate {name}: {results[name]}", flush=True)
    finally:
        ray.shutdown()
    return results


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=15, help="timed steps per side (the candidate runs twice as many)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps before each baseline's timing")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--rows", type=int, default=768, help="generated JPEG/caption pairs for the candidate")
    parser.add_argument("--skip-candidate", action="store_true", help="baselines only (quick)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "train_throughput.json"))
    args = parser.parse_args(argv)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    cfg = bench_config(args.batch, args.tokens)
    loads = {"start": _load()}
    with tempfile.TemporaryDirectory(prefix="align-train-bench-") as tmp_name:
        tmp = Path(tmp_name)
        texts = write_dataset(tmp / "kept", args.rows)
        vocab, at_cap = text_shape(cfg, texts)
        print(f"vocab {vocab}, {at_cap:.0%} of captions at {args.tokens} tokens", flush=True)
        bare = {}
        for layout, channels_last in (("default", False), ("channels_last", True)):
            bare[layout] = round(bare_loop(cfg, args.steps, args.warmup, channels_last, vocab, args.tokens), 2)
            print(f"bare {layout}: {bare[layout]} samples/s", flush=True)
        open_clip = round(open_clip_loop(cfg, args.steps, args.warmup, vocab, args.tokens), 2)
        print(f"open_clip: {open_clip} samples/s", flush=True)
        loads["after_baselines"] = _load()
        candidates = {} if args.skip_candidate else candidate_runs(args, tmp / "kept", tmp, [(1, 2), (2, 1)])

    bare_best = max(bare.values())
    loads["end"] = _load()
    result = {
        "setting": {
            "image_tower": cfg.model.image_tower, "image_size": output_size(cfg.model.train_preprocess),
            "text": cfg.model.text.model_dump(include={"hidden_size", "num_layers", "num_heads", "intermediate_size"}),
            "tokens": args.tokens, "vocab": vocab, "captions_at_token_cap": round(at_cap, 3),
            "batch": args.batch, "optimizer": cfg.train.optimizer, "precision": "fp32", "threads": THREADS,
            "timed_steps": args.steps, "baseline_warmup_steps": args.warmup,
        },
        "bare_samples_per_s": bare,
        "bare_best_samples_per_s": bare_best,
        "open_clip_samples_per_s": open_clip,
        "candidate": candidates,
        "load_average_1m": loads,
        # This run keeps ~2 threads busy; a 1-min load well above the cores means other work shared them.
        "likely_disturbed": max(loads.values()) > (os.cpu_count() or THREADS) + 1.5,
        "targets": {"candidate_vs_bare": TARGET_VS_BARE, "candidate_vs_open_clip": TARGET_VS_OPEN_CLIP},
    }
    if candidates:
        best = max(candidates, key=lambda name: candidates[name]["samples_per_s"])
        rate = candidates[best]["samples_per_s"]
        result |= {
            "candidate_best_layout": best,
            "candidate_samples_per_s": rate,
            "ratio_candidate_vs_bare": round(rate / bare_best, 3),
            "ratio_candidate_vs_open_clip": round(rate / open_clip, 3),
        }
    print(json.dumps(result, indent=2))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
