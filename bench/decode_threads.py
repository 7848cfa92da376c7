"""Training-input throughput with ``train.decode_threads``, against inline decoding in the same run.

What it stands for: one Ray Train worker feeding an accelerator. Each batch is decoded and augmented
by the worker's ``BatchBuilder.images`` (the training loop's own code) and then "trained on" by a
consumer that sleeps ``--step-ms`` (a GPU step leaves the CPU free; 0 measures decoding alone).
Baseline: ``decode_threads=0``, every batch built inline before its step. Candidates: the same
batches through ``prefetch`` with N helper threads. Prints images/s and the ratio to the baseline,
and writes bench/results/decode_threads.json. The images are the embedded corpus' drawn scenes
stored as the data stage stores them (shorter side 110, JPEG q90), cropped to 96 px.

    .venv/bin/python bench/decode_threads.py [--images 2048] [--batch 256] [--step-ms 0] [--threads 1 2 4]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import time
from pathlib import Path

import numpy as np

from components.config import ModelConfig
from components.data.scenes import draw_scene, sample_scene
from components.train.batches import BatchBuilder, prefetch
from components.train.checkpointing import step_seed

RESULTS = Path(__file__).parent / "results"
PREPROCESS = "resize_short(110)|random_crop(96)|flip_lr"  # configs/embedded-1gpu.yaml


def _stored_jpegs(count: int) -> list[bytes]:
    rng = np.random.default_rng(0)
    out = []
    for _ in range(count):
        buffer = io.BytesIO()
        draw_scene(sample_scene(rng), 110).save(buffer, "JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


def _images_per_s(builder: BatchBuilder, batches: list[dict], threads: int, step_s: float, rounds: int) -> float:
    items = [(batch, step_seed(0, 0, i)) for i, batch in enumerate(batches)] * rounds
    start = time.perf_counter()
    for _, images in prefetch(iter(items), lambda item: builder.images(*item), threads):
        images.sum()  # touch the tensor, as moving it to a device would
        if step_s:
            time.sleep(step_s)
    return sum(len(batch["image"]) for batch, _ in items) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--step-ms", type=float, default=0.0, help="simulated accelerator step per batch (sleeps)")
    parser.add_argument("--threads", type=int, nargs="+", default=sorted({1, 2, os.cpu_count() or 1}))
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    jpegs = _stored_jpegs(args.images)
    batches = [{"image": jpegs[i : i + args.batch]} for i in range(0, len(jpegs) - args.batch + 1, args.batch)]
    cfg = ModelConfig(train_preprocess=PREPROCESS, channels_last=True)
    builder = BatchBuilder(cfg, tokenizer=None)
    step_s = args.step_ms / 1000
    _images_per_s(builder, batches, 0, 0.0, 1)  # warm-up: imports, allocator, page cache

    baseline = _images_per_s(builder, batches, 0, step_s, args.rounds)
    print(f"inline (decode_threads=0): {baseline:8.0f} images/s   (step {args.step_ms:.0f} ms per batch of {args.batch})")
    results = {"inline": baseline}
    for threads in args.threads:
        rate = _images_per_s(builder, batches, threads, step_s, args.rounds)
        results[f"threads_{threads}"] = rate
        print(f"decode_threads={threads:<3d}:      {rate:8.0f} images/s   x{rate / baseline:.2f} vs inline")
    RESULTS.mkdir(exist_ok=True)
    record = {"setting": vars(args) | {"cpus": os.cpu_count(), "preprocess": PREPROCESS}, "images_per_s": results}
    (RESULTS / "decode_threads.json").write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
