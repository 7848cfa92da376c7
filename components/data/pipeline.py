"""The ingest + filter stage: raw pairs in, training shards + rejects + report + manifest out.

Two passes over the data with Ray Data (DESIGN.md §2, §4):
  1. read, decode, per-record rules (sizes, word counts, encodings) and hashes; materialised;
  2. dataset-wide rules using statistics of pass 1, then resize kept images for training.
Invariant, checked before anything is declared done: rows in = rows kept + rows rejected. Inputs are
never modified; outputs go to a fresh folder.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import partial

import numpy as np

from components.config import FilterConfig
from components.data import rules, schema
from components.data.decode import decode_caption, decode_image, dhash, encode_jpeg, resize_short_side, sha256_hex
from components.data.reader import list_sidecar_pairs, load_bytes
from components.data.stats import CorpusStats, compute_stats
from components.storage import exists, join_uri, write_json


class InvariantError(RuntimeError):
    """Rows were lost or invented between input and output."""


@dataclass
class FilterResult:
    output_uri: str
    report: dict
    manifest: dict


def _first_pass(batch: dict, cfg: FilterConfig) -> dict:
    """Decode and apply the per-record rules; earlier verdicts (missing/unreadable files) win."""
    out = {k: [] for k in ("text", "text_norm", "width", "height", "image_sha256", "dhash", "reject_rule", "reject_detail")}
    for image_bytes, caption_raw, rule, detail in zip(
        batch["image"], batch["caption_raw"], batch["reject_rule"], batch["reject_detail"], strict=True
    ):
        text, verdict = decode_caption(bytes(caption_raw))
        width = height = 0
        digest, hash64 = sha256_hex(bytes(image_bytes)), 0
        if not rule:
            image, image_verdict = decode_image(bytes(image_bytes), cfg.max_image_pixels)
            verdict = verdict or image_verdict
            if image is not None:
                width, height = image.size
                hash64 = dhash(image)
                verdict = verdict or rules.image_size_rule(width, height, cfg)
            verdict = verdict or rules.word_count_rule(text, cfg)
            if verdict:
                rule, detail = verdict
        out["text"].append(text)
        out["text_norm"].append(rules.normalise_text(text))
        out["width"].append(width)
        out["height"].append(height)
        out["image_sha256"].append(digest)
        out["dhash"].append(np.uint64(hash64))
        out["reject_rule"].append(rule)
        out["reject_detail"].append(detail)
    return {
        "key": batch["key"],
        "source": batch["source"],
        "locator": batch["locator"],
        "image": batch["image"],
        **out,
    }


# Rows that count towards corpus statistics: text and image decoded (size rules may still fail).
_DECODED_OUTCOMES = [
    "",
    schema.RULE_IMAGE_TOO_SMALL,
    schema.RULE_IMAGE_ASPECT,
    schema.RULE_TEXT_TOO_FEW_WORDS,
    schema.RULE_TEXT_TOO_MANY_WORDS,
]


def _second_pass(batch: dict, cfg: FilterConfig, stats: CorpusStats, eval_hashes: np.ndarray) -> dict:
    images, rule_col, detail_col = [], [], []
    for i, rule in enumerate(batch["reject_rule"]):
        detail = batch["reject_detail"][i]
        image = batch["image"][i]
        if not rule:
            verdict = (
                # Image rules before text rules, as in the paper's §3.
                rules.image_many_texts_rule(batch["image_sha256"][i], stats.heavy_images, cfg)
                or rules.near_duplicate_rule(int(batch["dhash"][i]), eval_hashes, cfg)
                or rules.text_many_images_rule(batch["text_norm"][i], stats.shared_texts, cfg)
                or rules.rare_token_rule(batch["text"][i], stats.vocabulary, cfg)
            )
            if verdict:
                rule, detail = verdict
            else:
                decoded, _ = decode_image(bytes(image), cfg.max_image_pixels)
                image = encode_jpeg(resize_short_side(decoded, cfg.resize_short_side), cfg.jpeg_quality)
        images.append(image)
        rule_col.append(rule)
        detail_col.append(detail)
    return {**batch, "image": images, "reject_rule": rule_col, "reject_detail": detail_col}


def _content_hash(dataset) -> str:
    """Order-independent digest of what was kept (keys, image hashes, texts)."""
    digests = sorted(
        hashlib.sha256(f"{k}\x00{h}\x00{t}".encode()).hexdigest()
        for batch in dataset.select_columns(["key", "image_sha256", "text", "reject_rule"]).iter_batches(
            batch_format="numpy"
        )
        for k, h, t, rule in zip(batch["key"], batch["image_sha256"], batch["text"], batch["reject_rule"], strict=True)
        if not rule
    )
    return hashlib.sha256("\n".join(digests).encode()).hexdigest()


def _outcome_counts(dataset) -> tuple[dict[str, int], dict[str, int], dict[str, int]]:
    """One group-by gives rejects per rule, rows per source and kept per source."""
    by_rule = {rule: 0 for rule in schema.ALL_RULES}
    in_by_source: dict[str, int] = {}
    kept_by_source: dict[str, int] = {}
    for row in dataset.groupby(["source", "reject_rule"], num_partitions=1).count().take_all():
        count, source, rule = int(row["count()"]), row["source"], row["reject_rule"]
        in_by_source[source] = in_by_source.get(source, 0) + count
        if rule:
            by_rule[rule] += count
        else:
            kept_by_source[source] = kept_by_source.get(source, 0) + count
    return by_rule, in_by_source, kept_by_source


def _rows_on_disk(uri: str) -> int:
    import pyarrow.dataset as pads

    if not exists(uri):
        return 0
    return pads.dataset(uri, format="parquet").count_rows()


def run_filter(
    corpus_uri: str,
    output_uri: str,
    cfg: FilterConfig,
    source: str = "corpus",
    eval_hashes: np.ndarray | None = None,
    config_hash: str = "",
) -> FilterResult:
    import ray.data
    from ray.data.expressions import col

    listing = list_sidecar_pairs(corpus_uri, source)
    if not listing:
        raise ValueError(f"no image/caption files found under {corpus_uri}")
    rows_in = len(listing)
    raw = ray.data.from_items(listing).map_batches(partial(load_bytes, uri=corpus_uri), batch_size=64)
    first = raw.map_batches(partial(_first_pass, cfg=cfg), batch_size=64).materialize()
    partitions = cfg.shuffle_partitions or max(1, int(ray.cluster_resources().get("CPU", 1)))
    stats = compute_stats(first.filter(expr=col("reject_rule").is_in(_DECODED_OUTCOMES)), cfg, partitions)
    hashes = eval_hashes if eval_hashes is not None else np.zeros(0, np.uint64)
    second = first.map_batches(partial(_second_pass, cfg=cfg, stats=stats, eval_hashes=hashes), batch_size=64)
    second = second.materialize()

    kept_uri, rejects_uri = join_uri(output_uri, schema.KEPT_DIR), join_uri(output_uri, schema.REJECTS_DIR)
    second.filter(expr=col("reject_rule") == "").select_columns(schema.PAIR_COLUMNS).write_parquet(
        kept_uri, min_rows_per_file=cfg.rows_per_shard
    )
    second.filter(expr=col("reject_rule") != "").rename_columns(
        {"reject_rule": "rule", "reject_detail": "detail"}
    ).select_columns(schema.REJECT_COLUMNS).write_parquet(rejects_uri, min_rows_per_file=cfg.rows_per_shard)
    # The invariant is checked on what actually landed in storage, not on what we meant to write.
    n_kept, n_rejected = _rows_on_disk(kept_uri), _rows_on_disk(rejects_uri)
    if rows_in != n_kept + n_rejected:
        raise InvariantError(f"rows in {rows_in} != kept {n_kept} + rejected {n_rejected} (under {output_uri})")
    by_rule, in_by_source, kept_by_source = _outcome_counts(second)
    report = {
        "rows_in": rows_in,
        "rows_kept": n_kept,
        "rows_rejected": n_rejected,
        "rejected_by_rule": by_rule,
        "rows_in_by_source": in_by_source,
        "kept_by_source": kept_by_source,
        "stats": stats.summary(),
    }
    manifest = {
        "content_hash": _content_hash(second),
        "config_hash": config_hash,
        "filter_config": cfg.model_dump(),
        "corpus_uri": corpus_uri,
        "rows": {"in": rows_in, "kept": n_kept, "rejected": n_rejected},
        "kept_uri": kept_uri,
        "rejects_uri": rejects_uri,
    }
    write_json(join_uri(output_uri, schema.REPORT_FILE), report)
    # The manifest is written last: its presence marks a complete output (used for caching).
    write_json(join_uri(output_uri, schema.MANIFEST_FILE), manifest)
    return FilterResult(output_uri=output_uri, report=report, manifest=manifest)
