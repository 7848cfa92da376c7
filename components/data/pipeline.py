"""The ingest + filter stage: raw pairs in, training shards + rejects + report + manifest out.

Two passes over the data with Ray Data (paper §3; ARCHITECTURE.md):
  1. read every source, decode each record once, apply the per-record rules, hash, resize kept
     images for training (``decode_pass``); materialised;
  2. dataset-wide rules: group-bys over pass 1 and joins back onto the surviving rows (``stats``).
Invariant, checked on what landed in storage before anything is declared done: rows in = rows kept +
rows rejected. Inputs are never modified; outputs go to a fresh folder.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from components.config import FilterConfig, SourceConfig
from components.data import schema
from components.data.decode_pass import DecodeWithNsfw, decode_batch
from components.data.nsfw import ensure_available as ensure_nsfw_available
from components.data.sources import expected_rows, read_sources
from components.data.stats import BroadcastStats, DatasetVerdicts, dataset_verdicts
from components.runtime import progress
from components.runtime.progress import WorkerProgress
from components.storage import exists, join_uri, write_json

log = logging.getLogger(__name__)


class InvariantError(RuntimeError):
    """Rows were lost or invented between input and output."""


@dataclass
class FilterResult:
    output_uri: str
    report: dict
    manifest: dict


def _decode(raw, cfg: FilterConfig, eval_hashes: np.ndarray, cpus: int, reporter: WorkerProgress):
    if cfg.enabled(schema.RULE_NSFW):
        ensure_nsfw_available()
        from ray.data import ActorPoolStrategy

        return raw.map_batches(
            DecodeWithNsfw,
            fn_constructor_kwargs={"cfg": cfg, "eval_hashes": eval_hashes, "progress": reporter},
            batch_size=cfg.batch_size,
            compute=ActorPoolStrategy(min_size=1, max_size=cpus),
        )
    kwargs = {"cfg": cfg, "eval_hashes": eval_hashes, "progress": reporter}
    return raw.map_batches(decode_batch, fn_kwargs=kwargs, batch_size=cfg.batch_size)


class _PhaseTimer:
    """Wall time per phase, logged as it ends and kept for report.json (where the time went)."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, phase: str):
        start = time.perf_counter()
        yield
        self.seconds[phase] = round(time.perf_counter() - start, 2)
        log.info("%s took %.1f s", phase, self.seconds[phase])


def _apply_broadcast(batch: dict, stats: BroadcastStats, cfg: FilterConfig) -> dict:
    """Dataset-wide verdicts onto a block; works on a projection without the ``image`` column too."""
    rule, detail = list(batch["reject_rule"]), list(batch["reject_detail"])
    image = list(batch["image"]) if "image" in batch else None
    for i, (sha, norm, text) in enumerate(zip(batch["image_sha256"], batch["text_norm"], batch["text"], strict=True)):
        verdict = stats.verdict(str(sha), str(norm), str(text), cfg)
        if verdict:
            rule[i], detail[i] = verdict[0], verdict[1]
            if image is not None:
                image[i] = b""
    updated = {"reject_rule": rule, "reject_detail": detail} | ({"image": image} if image is not None else {})
    return {**batch, **updated}


def _apply_verdicts(batch: pa.Table) -> pa.Table:
    flagged = pc.fill_null(pc.not_equal(pc.fill_null(batch["verdict_rule"], ""), ""), False)
    rule = pc.if_else(flagged, batch["verdict_rule"], batch["reject_rule"])
    detail = pc.if_else(flagged, batch["verdict_detail"], batch["reject_detail"])
    image = pc.if_else(flagged, pa.scalar(b"", pa.binary()), batch["image"].cast(pa.binary()))
    table = batch.drop_columns(["verdict_rule", "verdict_detail", "reject_rule", "reject_detail", "image"])
    return table.append_column("reject_rule", rule).append_column("reject_detail", detail).append_column("image", image)


# The image column holds JPEG bytes, which no general-purpose codec shrinks: compressing them only
# costs time (measured: snappy makes the kept write ~3x slower). The other columns are compressed.
KEPT_COMPRESSION = {column: "none" if column == "image" else "snappy" for column in schema.PAIR_COLUMNS}

_MODULUS = 1 << 256


def _summarise_block(batch: dict) -> dict:
    """Per block: row counts per (source, rule) and the sum of kept rows' digests (see ``_summarise``)."""
    counts: dict[str, int] = {}
    total = 0
    for key, source, sha, text, rule in zip(
        batch["key"], batch["source"], batch["image_sha256"], batch["text"], batch["reject_rule"], strict=True
    ):
        counts[f"{source}\x00{rule}"] = counts.get(f"{source}\x00{rule}", 0) + 1
        if not rule:
            total += int.from_bytes(hashlib.sha256(f"{key}\x00{sha}\x00{text}".encode()).digest(), "big")
    return {"counts": [json.dumps(counts)], "digest_sum": [str(total % _MODULUS)]}


# What the summary reads: no image bytes, so recomputing the verdicts for it moves no pixels.
_SUMMARY_COLUMNS = ["key", "source", "image_sha256", "text", "text_norm", "reject_rule", "reject_detail"]


def _summarise(dataset) -> tuple[dict[str, int], dict[str, dict], str]:
    """Rejects per rule, per-source counts and the content hash, in one pass with no shuffle.

    The content hash is order-independent: SHA-256 of the sum (mod 2^256) of per-row digests of
    (key, image hash, text) over kept rows. Blocks send back one small row each.
    """
    by_rule = {rule: 0 for rule in schema.ALL_RULES}
    by_source: dict[str, dict] = {}
    total = 0
    partials = dataset.select_columns(_SUMMARY_COLUMNS).map_batches(_summarise_block, batch_format="numpy")
    for row in partials.take_all():
        total += int(row["digest_sum"])
        for pair, count in json.loads(row["counts"]).items():
            source, rule = pair.split("\x00")
            entry = by_source.setdefault(source, {"rows_in": 0, "rows_kept": 0, "rejected_by_rule": {}})
            entry["rows_in"] += count
            if rule:
                by_rule[rule] += count
                entry["rejected_by_rule"][rule] = entry["rejected_by_rule"].get(rule, 0) + count
            else:
                entry["rows_kept"] += count
    return by_rule, by_source, hashlib.sha256((total % _MODULUS).to_bytes(32, "big")).hexdigest()


def _rows_on_disk(uri: str) -> int:
    import pyarrow.dataset as pads

    if not exists(uri):
        return 0
    return pads.dataset(uri, format="parquet").count_rows()


def run_filter(
    sources: list[SourceConfig],
    output_uri: str,
    cfg: FilterConfig,
    eval_hashes: np.ndarray | None = None,
    config_hash: str = "",
) -> FilterResult:
    with _data_context(cfg.show_progress):
        return _run_filter(sources, output_uri, cfg, eval_hashes, config_hash)


@contextmanager
def _data_context(show_progress: bool):
    """Ray Data settings for this stage only, restored afterwards (the driver may train next).

    Progress is shown here even though the lifecycle quiets Ray Data elsewhere: an ingest can run
    for hours, and its rows/s is what an operator watches. Under the CLI it lands in the run's log
    (the console draws its own bar from ``decode_batch``'s counts).

    Operator resource reservation keeps half the CPUs for operators other than the running one; in
    this stage almost all work is one fused read+decode operator, and on a small cluster the
    reservation halves its parallelism (measured: 1 task at a time on 2 CPUs).
    """
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ray_data_log = logging.getLogger("ray.data")
    saved = (ctx.op_resource_reservation_enabled, ctx.enable_progress_bars, ray_data_log.level)
    ctx.op_resource_reservation_enabled = False
    if show_progress:  # per-operator rows done and rates: a bar on a terminal, periodic log lines otherwise
        ctx.enable_progress_bars = True
        ray_data_log.setLevel(logging.INFO)
    try:
        yield
    finally:
        ctx.op_resource_reservation_enabled, ctx.enable_progress_bars = saved[:2]
        ray_data_log.setLevel(saved[2])


def _with_verdicts(decoded, stats: DatasetVerdicts, cfg: FilterConfig, partitions: int):
    """Pass 1's rows with the dataset-wide verdicts applied: the output, before it is split and written.

    Nothing here is materialised on the broadcast path: recomputing it from the materialised pass 1
    is cheaper than a copy of it, and each write below reads it once.
    """
    from ray.data.expressions import col

    alive = decoded.filter(expr=col("reject_rule") == "")
    if stats.broadcast is not None:
        alive = alive.map_batches(_apply_broadcast, fn_kwargs={"stats": stats.broadcast, "cfg": cfg}, batch_format="numpy")
    elif stats.joined is not None:
        alive = alive.join(stats.joined, "left_outer", num_partitions=partitions, on=("key",))
        alive = alive.map_batches(_apply_verdicts, batch_format="pyarrow").materialize()
    return alive.union(decoded.filter(expr=col("reject_rule") != ""))


def _run_filter(
    sources: list[SourceConfig],
    output_uri: str,
    cfg: FilterConfig,
    eval_hashes: np.ndarray | None,
    config_hash: str,
) -> FilterResult:
    import ray
    from ray.data.expressions import col

    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    partitions = cfg.shuffle_partitions or cpus
    hashes = eval_hashes if eval_hashes is not None else np.zeros(0, np.uint64)
    kept_uri, rejects_uri = join_uri(output_uri, schema.KEPT_DIR), join_uri(output_uri, schema.REJECTS_DIR)
    if exists(kept_uri) or exists(rejects_uri):
        raise FileExistsError(f"{output_uri} already holds a filter output; write to a fresh folder")
    timings = _PhaseTimer()
    total = expected_rows(sources) if progress.live() else None  # a second listing, only for a bar's ETA
    with timings("decode"), progress.worker_task("decode", total=total, unit="pairs") as reporter:
        log.info("pass 1: reading %d source(s), decoding and applying per-record rules", len(sources))
        decoded = _decode(read_sources(sources, cfg), cfg, hashes, cpus, reporter).materialize()
        rows_in = decoded.count()
    with timings("statistics"):
        log.info("pass 2: dataset-wide statistics over %d rows", rows_in)
        stats = dataset_verdicts(decoded, decoded.filter(expr=col("reject_rule") == ""), cfg, partitions)
    final = _with_verdicts(decoded, stats, cfg, partitions)
    # The broadcast verdicts are cheap to recompute, so the summary takes them on a projection
    # without images; the join's result is materialised already and is reused as it is.
    summary_input = _with_verdicts(decoded.select_columns(_SUMMARY_COLUMNS), stats, cfg, partitions) if stats.broadcast else final
    with timings("write"):
        final.filter(expr=col("reject_rule") == "").select_columns(schema.PAIR_COLUMNS).write_parquet(
            kept_uri, min_rows_per_file=cfg.rows_per_shard, compression=KEPT_COMPRESSION
        )
        final.filter(expr=col("reject_rule") != "").rename_columns(
            {"reject_rule": "rule", "reject_detail": "detail"}
        ).select_columns(schema.REJECT_COLUMNS).write_parquet(rejects_uri, min_rows_per_file=cfg.rows_per_shard)
    with timings("verify"):
        # The invariant is checked on what actually landed in storage, not on what we meant to write.
        n_kept, n_rejected = _rows_on_disk(kept_uri), _rows_on_disk(rejects_uri)
        if rows_in != n_kept + n_rejected:
            raise InvariantError(f"rows in {rows_in} != kept {n_kept} + rejected {n_rejected} (under {output_uri})")
        by_rule, by_source, content_hash = _summarise(summary_input)
    report = {
        "rows_in": rows_in,
        "rows_kept": n_kept,
        "rows_rejected": n_rejected,
        "rejected_by_rule": by_rule,
        "by_source": by_source,
        "stats": stats.summary,
        "disabled_rules": list(cfg.disabled_rules),
        "seconds": timings.seconds,
    }
    manifest = {
        "content_hash": content_hash,
        "config_hash": config_hash,
        "filter_config": cfg.model_dump(),
        "sources": [s.model_dump() for s in sources],
        "rows": {"in": rows_in, "kept": n_kept, "rejected": n_rejected},
        "kept_uri": kept_uri,
        "rejects_uri": rejects_uri,
    }
    write_json(join_uri(output_uri, schema.REPORT_FILE), report)
    # The manifest is written last: its presence marks a complete output (used for caching).
    write_json(join_uri(output_uri, schema.MANIFEST_FILE), manifest)
    log.info("kept %d of %d rows (%d rejected) -> %s", n_kept, rows_in, n_rejected, output_uri)
    return FilterResult(output_uri=output_uri, report=report, manifest=manifest)
