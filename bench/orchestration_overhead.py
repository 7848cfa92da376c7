"""Orchestration overhead of one lifecycle: flow wall time minus the stages' own compute, as a fraction.

The lifecycle (``flows.lifecycle.lifecycle``) runs in this process on a fresh state folder, so nothing
is cached. Every component call a stage makes (corpus + ingest, MLflow run set-up, Ray Train, evaluation,
registration, gate + search index, serving) is timed where it is entered; those intervals, merged, are
the stages' compute, measured in the same run as the wall time. The rest is orchestration: Prefect's
(ephemeral) API, flow/task run bookkeeping, parameter validation, stage-cache lookups and artifacts.
Connecting to Ray and starting the local head count as compute (the stages need them with or without
Prefect).

    .venv/bin/python bench/orchestration_overhead.py [--smoke] [key=value ...]

Target: overhead <= 10% of the wall time on the embedded default. Writes
bench/results/orchestration_overhead.json (none with --smoke).
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import os
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "orchestration_overhead.json"
TARGET = 0.10
# (module, function): what the stages call to do their work.
COMPONENT_CALLS = (
    ("components.runtime.ray_cluster", "connect"),
    ("components.data.ingest", "prepare_corpus"),
    ("components.data.ingest", "ingest"),
    ("components.runtime.tracking", "prepare_tracking"),
    ("components.runtime.tracking", "start_lifecycle_run"),
    ("components.runtime.tracking", "log_dataset"),
    ("components.train.stage", "train_stage"),
    ("components.evaluation.stage", "evaluate_stage"),
    ("components.registry.stage", "register_stage"),
    ("components.registry.stage", "promote_stage"),
    ("components.serving.deploy", "deploy"),
    ("components.serving.deploy", "ensure_serving"),
)
SMOKE = [
    "corpus.num_scenes=160", "corpus.eval_scenes=24", "corpus.classify_per_class=2", "corpus.many_texts_per_image=12",
    "filter.max_texts_per_image=10", "filter.vocab_top_n=400", "filter.resize_short_side=40",
    "model.train_preprocess=resize_short(40)|random_crop(32)|flip_lr", "model.eval_preprocess=resize_short(40)|center_crop(32)",
    "model.text.hidden_size=32", "model.text.num_layers=1", "model.text.num_heads=2", "model.text.intermediate_size=64",
    "model.text.tokenizer_vocab_size=300", "train.global_batch_size=32", "train.steps=4", "train.checkpoint_every=4",
    "train.log_every=2", "train.warmup_steps=1", "eval.batch_size=64", "gate.min_metrics={}", "serve.num_replicas=1",
]


def merged_seconds(intervals: list[tuple[float, float]]) -> float:
    """Total length of the union of ``intervals`` (a stage calling another timed function counts once)."""
    total, end = 0.0, float("-inf")
    for start, stop in sorted(intervals):
        if stop <= end:
            continue
        total += stop - max(start, end)
        end = stop
    return total


def instrument(calls=COMPONENT_CALLS) -> dict[str, list[tuple[float, float]]]:
    """Wrap each component function with a timer; returns the intervals recorded per function."""
    intervals: dict[str, list[tuple[float, float]]] = {}

    def timed(name, function):
        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                intervals.setdefault(name, []).append((started, time.perf_counter()))

        return wrapper

    for module_name, attribute in calls:
        module = importlib.import_module(module_name)
        setattr(module, attribute, timed(f"{module_name.rsplit('.', 1)[-1]}.{attribute}", getattr(module, attribute)))
    return intervals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--smoke", action="store_true", help="tiny corpus and model (~2 min); no results file")
    parser.add_argument("--home", default="", help="state folder (default: a fresh temporary one)")
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()

    home = args.home or tempfile.mkdtemp(prefix="align-orchestration-")
    os.environ.setdefault("PREFECT_HOME", os.path.join(home, "prefect"))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    from components.config import load_config
    from components.runtime.ray_cluster import free_port, stop_local_head

    cfg = load_config(None, [f"storage.home={home}", f"serve.port={free_port()}", *(SMOKE if args.smoke else []),
                             *args.overrides])
    intervals = instrument()
    from flows.lifecycle import lifecycle

    started = time.perf_counter()
    try:
        result = lifecycle(cfg)
        wall = time.perf_counter() - started
    finally:
        stop_local_head(cfg.storage.home)
    spans = [span for found in intervals.values() for span in found]
    compute = merged_seconds(spans)
    overhead = wall - compute
    per_call = {name: round(sum(b - a for a, b in found), 2) for name, found in sorted(intervals.items())}
    report = {"recipe": cfg.name, "smoke": args.smoke, "wall_s": round(wall, 2), "compute_s": round(compute, 2),
              "overhead_s": round(overhead, 2), "overhead_fraction": round(overhead / wall, 4), "target": TARGET,
              "per_component_s": per_call, "model_version": result["model_version"], "gate": result["gate"]["outcome"]}
    print(f"lifecycle wall {wall:.1f} s; stages' own compute {compute:.1f} s; orchestration {overhead:.1f} s")
    for name, seconds in per_call.items():
        print(f"  {name:38s} {seconds:8.2f} s")
    verdict = "met" if overhead / wall <= TARGET else "MISSED"
    print(f"orchestration overhead: {overhead / wall:.1%} of the wall time (target <= {TARGET:.0%}) -> {verdict}")
    if not args.smoke:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2))
        print(f"wrote {args.out}")
    else:
        print(json.dumps(report))


if __name__ == "__main__":
    main()
