"""Can each GPU recipe's input pipeline keep its card busy? CPU supply against GPU demand, before any GPU run.

Why: a worker whose CPUs decode fewer images per second than its accelerator trains on leaves the card
idle however fast the model code is, and that shows only as data-wait time in a paid GPU run. Both
sides can be estimated here, on a CPU box:

- *supply*: images/s of the training worker's own input pipeline per CPU thread. ``BatchBuilder`` (the
  loop's code: JPEG decode, ``model.train_preprocess``, uint8 NHWC stacking, tokenisation) builds the
  recipe's per-worker batches inline, in one thread, from a few hundred photo-like JPEGs stored as the
  data stage stores them (``filter.resize_short_side``, ``filter.jpeg_quality``; grainy 640x480 scenes,
  ~3.4 bits/pixel at 346 px, like web photos rather than flat drawings) with alt-text-like captions
  tokenized by a small WordPiece vocab trained on them. That per-thread rate (images per CPU second,
  best of 3 interleaved passes: on a shared box other programs stretch wall-clock time far more than
  a core's CPU time per image) is this run's baseline; the same batches through ``prefetch`` with 2
  threads show how wall-clock throughput scales on this box. One worker supplies per-thread rate x
  ``train.decode_threads`` (at most one per ``cpus_per_worker``; 0: decoding runs inline in the step's
  thread, x1 and in series with the step, whatever ``cpus_per_worker`` is).
- *demand*: images/s one card consumes at ``--mfu`` (default 40 %) of its dense bf16 peak,
  = mfu x ``card(train.accelerator).bf16_tflops`` / model FLOPs per image of one full training step
  (forward + loss + backward, no recomputation) at the recipe's train resolution and full
  ``text.max_length``, counted by bench/gpu_train_throughput.py's ``count_flops`` (groups-correct for
  depthwise convs). It is counted at batch 1 on the CPU: the ``meta`` device cannot run that count
  (bf16 autocast has no meta device type, and the BERT tower's mask check calls ``.item()``). The
  largest model, EfficientNet-L2 + BERT-large at 289 px, takes 1.5-2.5 min and ~10 GB of memory for it.
  Real captions are padded to the longest in the batch, shorter than ``max_length``: text FLOPs are an
  upper bound, so demand is if anything understated.

Ratio = supply / demand; STARVED when below 1, and the CPUs (decode threads) per GPU that the measured
per-thread rate would need, the highest MFU the supply can feed (mfu x ratio) and the largest share
of time the card can be busy (with decode_threads=0 decode and step times add up, so even a ratio
above 1 leaves the card idle while each batch decodes). A recipe without ``train.accelerator`` is sized
for an H100-80GB (said so).

    .venv/bin/python bench/input_pipeline.py [--recipes embedded-1gpu ...] [--images 384] [--rounds 3] [--mfu 0.4]
    .venv/bin/python bench/input_pipeline.py --smoke   # tiny towers, small images: checks the logic

Writes bench/results/input_pipeline.json (``--smoke``: input_pipeline-smoke.json).
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import math
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from components.accelerators import card
from components.config import PROJECT_ROOT, AlignConfig, load_config
from components.data.decode import encode_jpeg, resize_short_side
from components.data.scenes import describe, sample_scene
from components.model.preprocess import output_size
from components.model.tokenizer import train_wordpiece
from components.train.batches import BatchBuilder, prefetch
from components.train.checkpointing import step_seed

RESULTS = Path(__file__).parent / "results"
DEFAULT_ACCELERATOR = "H100-80GB"  # for recipes that do not name their card (train.accelerator)
TOKENIZER_VOCAB = 2000  # a few hundred captions cannot fill the recipes' 100k vocab; the rate barely depends on it
# --smoke: the towers of tests/train_fixtures.py's TINY_MODEL_OVERRIDES (tinynet_e, a 1-layer BERT) and
# every recipe's stored side and crop divided by SMOKE_DIVISOR, so the recipes still differ in resolution.
SMOKE_TOWERS = [
    "model.image_tower=tinynet_e",
    "model.text.hidden_size=32",
    "model.text.num_layers=1",
    "model.text.num_heads=2",
    "model.text.intermediate_size=64",
    "model.text.max_length=16",
    "model.text.tokenizer_vocab_size=300",
    "model.gradient_checkpointing=false",
]
SMOKE_DIVISOR = 4


def _sibling(name: str):
    """Another bench script as a module (bench/ is not a package); the one already loaded if there is one."""
    module_name = f"bench_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


def gpu_recipes(names: list[str] | None = None) -> list[Path]:
    """Every configs/*.yaml with ``train.use_gpu: true`` (or the named ones: a name or a path)."""
    if names:
        paths = [Path(n) if Path(n).suffix else PROJECT_ROOT / "configs" / f"{n}.yaml" for n in names]
        return paths
    return [p for p in sorted((PROJECT_ROOT / "configs").glob("*.yaml")) if load_config(p).train.use_gpu]


def smoke_overrides(cfg: AlignConfig) -> list[str]:
    """Tiny towers; the recipe's stored side and crop scaled down by ``SMOKE_DIVISOR``."""
    stored = max(8, cfg.filter.resize_short_side // SMOKE_DIVISOR)
    crop = min(stored, max(8, output_size(cfg.model.train_preprocess) // SMOKE_DIVISOR))
    return [
        *SMOKE_TOWERS,
        f"filter.resize_short_side={stored}",
        f"model.train_preprocess=resize_short({stored})|random_crop({crop})|flip_lr",
        f"model.eval_preprocess=resize_short({stored})|center_crop({crop})",
    ]


def stored_photos(count: int, short_side: int, quality: int) -> list[bytes]:
    """Photo-like JPEGs as the data stage stores kept images: resized to ``short_side``, re-encoded."""
    photo = _sibling("ingest_throughput")._photo  # 640x480, shapes and grain: web-photo-like entropy
    rng = random.Random(0)
    return [encode_jpeg(resize_short_side(photo(rng), short_side), quality) for _ in range(count)]


def captions(count: int) -> list[str]:
    rng = np.random.default_rng(0)
    return [describe(sample_scene(rng), rng) for _ in range(count)]


def local_batch(cfg: AlignConfig) -> int:
    return max(1, cfg.train.global_batch_size // max(1, cfg.train.num_workers))


def worker_threads(cfg: AlignConfig) -> tuple[int, bool, str]:
    """Threads one worker decodes in, whether they run beside the step (True) or in series with it, and why.

    ``decode_threads`` helpers, at most one per CPU the worker holds; with 0 the step's own thread
    decodes each batch after the previous step has finished (``train_step`` waits for its loss).
    """
    if cfg.train.decode_threads > 0:
        cpus = max(1, math.floor(cfg.train.cpus_per_worker))
        return min(cfg.train.decode_threads, cpus), True, f"train.decode_threads, at most cpus_per_worker ({cpus})"
    return 1, False, "inline: train.decode_threads=0"


def accelerator(cfg: AlignConfig) -> tuple[str, str]:
    name = getattr(cfg.train, "accelerator", "") or ""
    return (name, "train.accelerator") if name else (DEFAULT_ACCELERATOR, "fallback: train.accelerator unset")


def _batches(jpegs: list[bytes], texts: list[str], batch: int, count: int) -> list[tuple[dict, int]]:
    """``count`` batches of ``batch`` rows cycling through the pool, each with its step seed."""
    out = []
    for b in range(count):
        rows = [(b * batch + j) % len(jpegs) for j in range(batch)]
        batch_rows = {"image": [jpegs[r] for r in rows], "text": [texts[r % len(texts)] for r in rows]}
        out.append((batch_rows, step_seed(0, 0, b)))
    return out


def _rate(builder: BatchBuilder, batches: list[tuple[dict, int]], threads: int) -> tuple[float, float, dict]:
    """Images per wall-clock second and per CPU second of this process, through ``prefetch`` (0 threads:
    each batch built inline, as the worker then does), and the last batch built."""
    images = sum(len(batch["image"]) for batch, _ in batches)
    wall, cpu = time.perf_counter(), time.process_time()
    for _, built in prefetch(iter(batches), lambda item: builder(*item), threads):
        pass
    return images / (time.perf_counter() - wall), images / (time.process_time() - cpu), built


def measure_supply(builder: BatchBuilder, batches: list[tuple[dict, int]], threads: list[int], rounds: int) -> dict:
    """Images/s of ``builder`` inline (the per-thread baseline) and through ``prefetch`` at each thread count.

    Each is the best of ``rounds`` interleaved passes. The per-thread rate counts CPU seconds (the
    process's, one thread working): other programs on a shared box stretch wall-clock time, far less
    the CPU time a core spends on an image. The wall-clock rates are kept beside it, and the scaling
    with threads compares wall-clock rates (what a worker's step waits on).
    """
    builder(*batches[0])  # warm-up: the thread's tokenizer copy, the allocator, first touch of the pool
    names = ["inline", *(f"threads_{n}" for n in threads)]
    wall: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(rounds):
        for name, n in zip(names, [0, *threads]):
            wall_rate, cpu_rate, built = _rate(builder, batches, n)
            wall[name].append(wall_rate)
            cpu[name].append(cpu_rate)
    start = time.process_time()
    for batch, _ in batches:
        builder.texts(batch)
    texts_only = sum(len(batch["text"]) for batch, _ in batches) / (time.process_time() - start)
    return {
        "per_cpu_second": {name: max(values) for name, values in cpu.items()},
        "per_wall_second": {name: max(values) for name, values in wall.items()},
        "rounds": {"per_cpu_second": cpu, "per_wall_second": wall},
        "texts_only": texts_only,
        "shapes": {key: list(value.shape) for key, value in built.items()},
    }


def flops_per_image(cfg: AlignConfig) -> dict:
    """Model FLOPs of one training step per image at the recipe's resolution (counted at batch 1 on CPU)."""
    model_cfg = cfg.model.model_copy(deep=True)
    model_cfg.channels_last = True
    model_cfg.text.vocab_size = model_cfg.text.tokenizer_vocab_size  # the size the trained WordPiece will have
    # Batch 1, except where the last feature map is 1x1 (tiny smoke crops): train-mode batch norm needs 2 values.
    batch = 1 if output_size(model_cfg.train_preprocess) >= 64 else 2
    counted = _sibling("gpu_train_throughput").count_flops(model_cfg, batch, torch.device("cpu"))
    return {"step": counted["step"] / batch, "forward": counted["forward"] / batch, "counted_at_batch": batch}


def assess(
    per_thread: float, threads: int, flops: float, peak_tflops: float, mfu: float, overlapped: bool = True
) -> dict:
    """Supply, demand, their ratio, the verdict and the CPUs per GPU the per-thread rate needs.

    Also the highest MFU this supply can feed (``mfu x ratio``), and the most of the time the card can
    be busy: ``min(1, ratio)`` when decoding overlaps the step, ``ratio / (1 + ratio)`` when it runs in
    series with it (decode and step times add up).
    """
    supply = per_thread * threads
    demand = mfu * peak_tflops * 1e12 / flops
    ratio = supply / demand
    return {
        "supply_images_per_s": supply,
        "demand_images_per_s": demand,
        "ratio": ratio,
        "verdict": "STARVED" if ratio < 1 else "OK",
        "cpus_per_gpu_needed": math.ceil(demand / per_thread),
        "max_mfu_fed": mfu * ratio,
        "gpu_busy_at_most": min(1.0, ratio) if overlapped else ratio / (1 + ratio),
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", nargs="+", default=None, help="names or paths (default: every use_gpu recipe)")
    parser.add_argument("--images", type=int, default=None, help="distinct stored JPEGs (default 384; smoke 12)")
    parser.add_argument("--timed-images", type=int, default=None,
                        help="images built per timed pass, in whole batches, at least 2 (default 1024; smoke 8)")
    parser.add_argument("--max-batch", type=int, default=None, help="cap on the recipe's per-worker batch (smoke 4)")
    parser.add_argument("--threads", type=int, nargs="*", default=[2], help="prefetch threads to compare with inline")
    parser.add_argument("--rounds", type=int, default=None, help="timed passes per rate, the best kept (default 3)")
    parser.add_argument("--mfu", type=float, default=0.4, help="model FLOPs utilisation the card is assumed to reach")
    parser.add_argument("--smoke", action="store_true", help="tiny towers and images: tests the script's logic")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    defaults = {"images": 12, "timed_images": 8, "max_batch": 4, "rounds": 1} if args.smoke else {
        "images": 384, "timed_images": 1024, "rounds": 3}
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.out = args.out or str(RESULTS / ("input_pipeline-smoke.json" if args.smoke else "input_pipeline.json"))
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    # One thread means one: the Rust tokenizer would otherwise batch-encode on every core.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    started = time.perf_counter()
    load_before = os.getloadavg()

    recipes = []
    for path in gpu_recipes(args.recipes):
        cfg = load_config(path)
        if args.smoke:
            cfg = load_config(path, overrides=smoke_overrides(cfg))
        recipes.append((path, cfg))
    texts = captions(max(args.images, 64))
    tokenizer = train_wordpiece(texts, TOKENIZER_VOCAB, 64)
    pools: dict[tuple[int, int], list[bytes]] = {}

    rows = []
    for path, cfg in recipes:  # supply first, all recipes, before the FLOP counts take memory
        key = (cfg.filter.resize_short_side, cfg.filter.jpeg_quality)
        if key not in pools:
            pools[key] = stored_photos(args.images, *key)
        jpegs = pools[key]
        batch = min(local_batch(cfg), args.max_batch or local_batch(cfg))
        count = max(2, math.ceil(args.timed_images / batch))
        batches = _batches(jpegs, texts, batch, count)
        supply = measure_supply(BatchBuilder(cfg.model, tokenizer), batches, args.threads, args.rounds)
        stored_w, stored_h = Image.open(io.BytesIO(jpegs[0])).size
        threads, overlapped, threads_from = worker_threads(cfg)
        name, name_from = accelerator(cfg)
        rows.append({
            "recipe": cfg.name,
            "config": str(path.relative_to(PROJECT_ROOT) if path.is_relative_to(PROJECT_ROOT) else path),
            "accelerator": name,
            "accelerator_from": name_from,
            "bf16_tflops": card(name).bf16_tflops,
            "mfu": args.mfu,
            "image_tower": cfg.model.image_tower,
            "train_preprocess": cfg.model.train_preprocess,
            "image_size": output_size(cfg.model.train_preprocess),
            "stored_size": [stored_w, stored_h],
            "jpeg_quality": cfg.filter.jpeg_quality,
            "mean_jpeg_bytes": round(sum(map(len, jpegs)) / len(jpegs)),
            "text_max_length": cfg.model.text.max_length,
            "recipe_local_batch": local_batch(cfg),
            "measured_batch": batch,
            "timed_images": batch * count,
            "output_shapes": supply["shapes"],
            "per_thread_images_per_s": supply["per_cpu_second"]["inline"],
            "inline_wall_images_per_s": supply["per_wall_second"]["inline"],
            "texts_only_images_per_s": supply["texts_only"],
            "prefetch_wall_images_per_s": {str(n): supply["per_wall_second"][f"threads_{n}"] for n in args.threads},
            "prefetch_scaling": {
                str(n): supply["per_wall_second"][f"threads_{n}"] / supply["per_wall_second"]["inline"]
                for n in args.threads
            },
            "prefetch_images_per_cpu_s": {str(n): supply["per_cpu_second"][f"threads_{n}"] for n in args.threads},
            "rounds": supply["rounds"],
            "worker_threads": threads,
            "worker_threads_from": threads_from,
            "decode_overlaps_step": overlapped,
            "cpus_per_worker": cfg.train.cpus_per_worker,
            "_cfg": cfg,
        })
        print(f"{cfg.name}: {supply['per_cpu_second']['inline']:.0f} images per CPU second, "
              f"{supply['per_wall_second']['inline']:.0f} per wall second", file=sys.stderr, flush=True)

    counted: dict[str, dict] = {}  # recipes with the same model section share one count (smoke: all)
    for row in rows:
        cfg = row.pop("_cfg")
        t = time.perf_counter()
        key = cfg.model.model_dump_json()
        flops = counted[key] = counted.get(key) or flops_per_image(cfg)
        row |= {
            "flops_per_image_step": flops["step"],
            "flops_per_image_forward": flops["forward"],
            "flops_counted_on": "cpu",
            "flops_counted_at_batch": flops["counted_at_batch"],
            "flops_count_s": round(time.perf_counter() - t, 1),
        }
        per_thread, threads = row["per_thread_images_per_s"], row["worker_threads"]
        row |= assess(per_thread, threads, flops["step"], row["bf16_tflops"], args.mfu, row["decode_overlaps_step"])
        print(f"{row['recipe']}: {flops['step'] / 1e9:.2f} GFLOP per image per step", file=sys.stderr, flush=True)

    result = {
        "setting": {
            "recipes": [r["config"] for r in rows],
            "images": args.images,
            "timed_images": args.timed_images,
            "max_batch": args.max_batch,
            "rounds": args.rounds,
            "threads": args.threads,
            "mfu": args.mfu,
            "tokenizer_vocab": TOKENIZER_VOCAB,
            "cpus": os.cpu_count(),
            "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in os.getloadavg()],
            "torch": torch.__version__,
            "smoke": args.smoke,
            "seconds": round(time.perf_counter() - started, 1),
        },
        "baseline": "per-thread rate: images per CPU second, the recipe's batches built inline by BatchBuilder, "
                    "best of the rounds, in this run",
        "recipes": rows,
    }
    print_table(rows, args.threads)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    return result


def print_table(rows: list[dict], threads: list[int]) -> None:
    scale = " ".join(f"x{n}thr" for n in threads)
    print(f"{'recipe':<20} {'card':<10} {'px':>3} {'GFLOP/img':>9} {'demand/s':>8} {'1thr/s':>6} {scale:>5} "
          f"{'threads':>7} {'supply/s':>8} {'ratio':>5}  {'verdict':<7} {'CPUs/GPU':>8} {'MFU fed':>7} {'busy<=':>6}")
    for r in rows:
        scaling = " ".join(f"{r['prefetch_scaling'][str(n)]:5.2f}" for n in threads)
        card_name = r["accelerator"] + ("*" if r["accelerator_from"].startswith("fallback") else "")
        threads_text = f"{r['worker_threads']}{'' if r['decode_overlaps_step'] else ' ser'}"
        mfu_fed = f"{r['max_mfu_fed']:.1%}" if r["max_mfu_fed"] <= 1 else ">100%"
        print(f"{r['recipe']:<20} {card_name:<10} {r['image_size']:>3} {r['flops_per_image_step'] / 1e9:>9.2f} "
              f"{r['demand_images_per_s']:>8.0f} {r['per_thread_images_per_s']:>6.0f} {scaling:>5} "
              f"{threads_text:>7} {r['supply_images_per_s']:>8.0f} {r['ratio']:>5.2f}  {r['verdict']:<7} "
              f"{r['cpus_per_gpu_needed']:>8} {mfu_fed:>7} {r['gpu_busy_at_most']:>6.0%}")
    if not rows:
        print("no GPU recipes")
        return
    if any(r["accelerator_from"].startswith("fallback") for r in rows):
        print(f"* train.accelerator unset: sized for {DEFAULT_ACCELERATOR}")
    print(f"demand: {rows[0]['mfu']:.0%} MFU of the card's bf16 peak / step FLOPs per image; supply: per-thread "
          "rate x worker threads ('ser': decode_threads=0, decoding in series with the step); MFU fed: the "
          "highest MFU this supply keeps up with; busy<=: the card's busy time at most")


if __name__ == "__main__":
    main()
