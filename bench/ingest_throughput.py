"""Ingest + filter throughput per core, against a bare single-process PIL loop over the same files.

Baseline (same run, same files): for each image, PIL decode -> resize shorter side to 256 -> JPEG
encode, in one process, with and without JPEG draft-mode decoding (the faster variant counts). It is
measured two ways, each before and after the candidate (averaged, so drift hits both sides alike):

- *alone*: one loop on an otherwise idle machine;
- *per core, all cores busy*: one loop per core at once, each over its share of the files. This is
  the per-core rate the machine offers when every core works, as it does under the pipeline (a VM's
  cores may share caches, memory bandwidth and turbo headroom, so one loop alone can run faster).

Candidate: the whole data stage (``run_filter``: read, decode, every per-record rule, hashes,
dataset-wide statistics, resize, write Parquet, check the invariant) on a local Ray instance with
``--cpus`` CPUs, after a small warm-up run that starts Ray's worker processes. Prints images/s/core
and both ratios; the target (>= 0.8) applies to the all-cores-busy one. Writes JSON under
bench/results/.

    .venv/bin/python bench/ingest_throughput.py [--images 6000] [--cpus 2] [--nsfw]
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import os
import random
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from PIL import Image, ImageDraw

from components.config import FilterConfig, SourceConfig

SHORT_SIDE = 256
WORDS = "red blue green small large round square photo of a the with on near old new bright dark".split()


def _photo(rng: random.Random) -> Image.Image:
    """A web-photo-sized JPEG source: 640x480 with shapes and grain (not flat colour, which decodes too fast)."""
    image = Image.effect_noise((640, 480), 40).convert("RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(6):
        x, y = rng.randrange(600), rng.randrange(440)
        draw.ellipse((x, y, x + rng.randrange(40, 300), y + rng.randrange(40, 300)), fill=tuple(rng.randrange(256) for _ in range(3)))
    return image


def write_corpus(folder: Path, count: int) -> list[Path]:
    rng = random.Random(0)
    folder.mkdir(parents=True)
    paths = []
    for i in range(count):
        path = folder / f"{i:06d}.jpg"
        _photo(rng).save(path, quality=90)
        (folder / f"{i:06d}.txt").write_text(" ".join(rng.choice(WORDS) for _ in range(rng.randrange(4, 12))))
        paths.append(path)
    return paths


def bare_loop(paths: list[Path], draft: bool) -> float:
    """Images per second of the plain loop, one process."""
    start = time.perf_counter()
    for path in paths:
        image = Image.open(path)
        width, height = image.size
        scale = SHORT_SIDE / min(width, height)
        if draft:
            image.draft("RGB", (round(width * scale), round(height * scale)))
        image = image.convert("RGB")
        image = image.resize((round(image.width * SHORT_SIDE / min(image.size)), round(image.height * SHORT_SIDE / min(image.size))), Image.BICUBIC)
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=90)
    return len(paths) / (time.perf_counter() - start)


def _bare_share(paths: list[Path], draft: bool) -> tuple[int, float]:
    start = time.perf_counter()
    bare_loop(paths, draft)
    return len(paths), time.perf_counter() - start


def bare_loops_all_cores(paths: list[Path], draft: bool, cores: int) -> float:
    """Images per second per core with ``cores`` bare loops running at once on disjoint shares."""
    shares = [paths[i::cores] for i in range(cores)]
    with ProcessPoolExecutor(cores, mp_context=multiprocessing.get_context("spawn")) as pool:
        list(pool.map(time.sleep, [0.1] * cores))  # start the processes before timing
        done = list(pool.map(_bare_share, shares, [draft] * cores))
    return sum(count for count, _ in done) / max(seconds for _, seconds in done) / cores


def baselines(paths: list[Path], cores: int) -> dict[str, float]:
    """The faster of plain and draft decoding, alone and with every core busy."""
    return {
        "alone": max(bare_loop(paths, draft=False), bare_loop(paths, draft=True)),
        "all_cores_busy": max(bare_loops_all_cores(paths, False, cores), bare_loops_all_cores(paths, True, cores)),
    }


def pipeline_rate(folder: Path, out: Path, cpus: int, nsfw: bool) -> tuple[float, dict]:
    import ray

    from components.data.pipeline import run_filter

    ray.init(address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    try:
        cfg = FilterConfig(
            resize_short_side=SHORT_SIDE,
            vocab_top_n=10**9,
            disabled_rules=[] if nsfw else ["nsfw"],
            rows_per_shard=2000,
        )
        source = SourceConfig(name="bench", format="sidecar", path=str(folder))
        # Warm-up on 64 pairs: starts Ray's worker processes, a one-off cost of the cluster, not of an ingest.
        run_filter([source.model_copy(update={"max_files": 64})], str(out) + "-warmup", cfg)
        start = time.perf_counter()
        result = run_filter([source], str(out), cfg)
        elapsed = time.perf_counter() - start
    finally:
        ray.shutdown()
    print(f"phases (s): {result.report['seconds']}", flush=True)
    return result.report["rows_in"] / elapsed, result.report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=6000)
    parser.add_argument("--cpus", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--nsfw", action="store_true", help="include open_nsfw scoring (not in the baseline)")
    parser.add_argument("--corpus", default=None, help="keep the generated corpus here and reuse it on the next run")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="align-bench-") as tmp:
        folder = Path(args.corpus) if args.corpus else Path(tmp) / "corpus"
        paths = sorted(folder.glob("*.jpg"))
        if len(paths) != args.images:
            print(f"writing {args.images} 640x480 JPEG pairs ...", flush=True)
            shutil.rmtree(folder, ignore_errors=True)
            paths = write_corpus(folder, args.images)
        before = baselines(paths, args.cpus)
        rate, report = pipeline_rate(folder, Path(tmp) / "out", args.cpus, args.nsfw)
        after = baselines(paths, args.cpus)
    bare = {kind: (before[kind] + after[kind]) / 2 for kind in before}
    per_core = rate / args.cpus
    result = {
        "images": args.images,
        "cpus": args.cpus,
        "nsfw": args.nsfw,
        "bare_loop_images_per_s_alone": round(bare["alone"], 1),
        "bare_loop_images_per_s_per_core_all_cores_busy": round(bare["all_cores_busy"], 1),
        "pipeline_images_per_s": round(rate, 1),
        "pipeline_images_per_s_per_core": round(per_core, 1),
        "ratio_per_core_vs_bare_loop_all_cores_busy": round(per_core / bare["all_cores_busy"], 3),
        "ratio_per_core_vs_bare_loop_alone": round(per_core / bare["alone"], 3),
        "target": 0.8,
        "pipeline_phase_seconds": report["seconds"],
        "rows_kept": report["rows_kept"],
        "rows_rejected": report["rows_rejected"],
    }
    print(json.dumps(result, indent=2))
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "ingest_throughput.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
