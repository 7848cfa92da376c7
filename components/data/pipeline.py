"""The ingest + filter stage: raw pairs in, training shards + rejects + report + manifest out.

Two passes over the data with Ray Data (DESIGN.md §2, §4):
  1. read every source, decode each record once, apply the per-record rules, hash, resize kept
     images for training (``decode_pass``); materialised;
  2. dataset-wide rules: group-bys over pass 1 and joins back onto the surviving rows (``stats``).
Invariant, checked on what landed in storage before anything is declared done: rows in = rows kept +
rows rejected. Inputs are never modified; outputs go to a fresh folder.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from components.config import FilterConfig, SourceConfig
from components.data import schema
from components.data.decode_pass import DecodeWithNsfw, decode_batch
from components.data.nsfw import ensure_available as ensure_nsfw_available
from components.data.sources import read_sources
from components.data.stats import dataset_verdicts
from components.storage import exists, join_uri, write_json

log = logging.getLogger(__name__)


class InvariantError(RuntimeError):
    """Rows were lost or invented between input and output."""


@dataclass
class FilterResult:
    output_uri: str
    report: dict
    manifest: dict


def _decode(raw, cfg: FilterConfig, eval_hashes: np.ndarray, cpus: int):
    if cfg.enabled(schema.RULE_NSFW):
        ensure_nsfw_available()
        from ray.data import ActorPoolStrategy

        return raw.map_batches(
            DecodeWithNsfw,
            fn_constructor_kwargs={"cfg": cfg, "eval_hashes": eval_hashes},
            batch_size=cfg.batch_size,
            compute=ActorPoolStrategy(min_size=1, max_size=cpus),
        )
    return raw.map_batches(decode_batch, fn_kwargs={"cfg": cfg, "eval_hashes": eval_hashes}, batch_size=cfg.batch_size)


def _apply_verdicts(batch: pa.Table) -> pa.Table:
    flagged = pc.fill_null(pc.not_equal(pc.fill_null(batch["verdict_rule"], ""), ""), False)
    rule = pc.if_else(flagged, batch["verdict_rule"], batch["reject_rule"])
    detail = pc.if_else(flagged, batch["verdict_detail"], batch["reject_detail"])
    image = pc.if_else(flagged, pa.scalar(b"", pa.binary()), batch["image"].cast(pa.binary()))
    table = batch.drop_columns(["verdict_rule", "verdict_detail", "reject_rule", "reject_detail", "image"])
    return table.append_column("reject_rule", rule).append_column("reject_detail", detail).append_column("image", image)


def _digest_sum(batch: dict) -> dict:
    total = 0
    for key, sha, text, rule in zip(batch["key"], batch["image_sha256"], batch["text"], batch["reject_rule"], strict=True):
        if not rule:
            total += int.from_bytes(hashlib.sha256(f"{key}\x00{sha}\x00{text}".encode()).digest(), "big")
    return {"partial": [str(total % _MODULUS)]}


_MODULUS = 1 << 256


def _content_hash(dataset) -> str:
    """Order-independent digest of what was kept: the sum (mod 2^256) of per-row SHA-256 digests.

    Sums are computed per block in Ray tasks, so the driver only adds up one number per block.
    """
    partials = dataset.select_columns(["key", "image_sha256", "text", "reject_rule"]).map_batches(
        _digest_sum, batch_format="numpy"
    )
    total = sum(int(row["partial"]) for row in partials.take_all()) % _MODULUS
    return hashlib.sha256(total.to_bytes(32, "big")).hexdigest()


def _outcome_counts(dataset) -> tuple[dict[str, int], dict[str, dict]]:
    """One group-by gives rejects per rule, and rows in / kept / rejects per rule for each source."""
    by_rule = {rule: 0 for rule in schema.ALL_RULES}
    by_source: dict[str, dict] = {}
    for row in dataset.groupby(["source", "reject_rule"], num_partitions=1).count().take_all():
        count, rule = int(row["count()"]), row["reject_rule"]
        entry = by_source.setdefault(row["source"], {"rows_in": 0, "rows_kept": 0, "rejected_by_rule": {}})
        entry["rows_in"] += count
        if rule:
            by_rule[rule] += count
            entry["rejected_by_rule"][rule] = count
        else:
            entry["rows_kept"] += count
    return by_rule, by_source


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
    import ray
    from ray.data.expressions import col

    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    partitions = cfg.shuffle_partitions or cpus
    hashes = eval_hashes if eval_hashes is not None else np.zeros(0, np.uint64)
    log.info("pass 1: reading %d source(s), decoding and applying per-record rules", len(sources))
    decoded = _decode(read_sources(sources), cfg, hashes, cpus).materialize()
    rows_in = decoded.count()
    alive = decoded.filter(expr=col("reject_rule") == "")
    log.info("pass 2: dataset-wide statistics over %d rows", rows_in)
    stats = dataset_verdicts(decoded, alive, cfg, partitions)
    if stats.verdicts is not None:
        alive = alive.join(stats.verdicts, "left_outer", num_partitions=partitions, on=("key",))
        alive = alive.map_batches(_apply_verdicts, batch_format="pyarrow")
    final = alive.union(decoded.filter(expr=col("reject_rule") != "")).materialize()

    kept_uri, rejects_uri = join_uri(output_uri, schema.KEPT_DIR), join_uri(output_uri, schema.REJECTS_DIR)
    final.filter(expr=col("reject_rule") == "").select_columns(schema.PAIR_COLUMNS).write_parquet(
        kept_uri, min_rows_per_file=cfg.rows_per_shard
    )
    final.filter(expr=col("reject_rule") != "").rename_columns(
        {"reject_rule": "rule", "reject_detail": "detail"}
    ).select_columns(schema.REJECT_COLUMNS).write_parquet(rejects_uri, min_rows_per_file=cfg.rows_per_shard)
    # The invariant is checked on what actually landed in storage, not on what we meant to write.
    n_kept, n_rejected = _rows_on_disk(kept_uri), _rows_on_disk(rejects_uri)
    if rows_in != n_kept + n_rejected:
        raise InvariantError(f"rows in {rows_in} != kept {n_kept} + rejected {n_rejected} (under {output_uri})")
    by_rule, by_source = _outcome_counts(final)
    report = {
        "rows_in": rows_in,
        "rows_kept": n_kept,
        "rows_rejected": n_rejected,
        "rejected_by_rule": by_rule,
        "by_source": by_source,
        "stats": stats.summary,
        "disabled_rules": list(cfg.disabled_rules),
    }
    manifest = {
        "content_hash": _content_hash(final),
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
