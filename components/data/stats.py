"""Dataset-wide statistics for ALIGN's frequency rules, as Ray Data group-bys and joins.

Per-block counting would be wrong: an alt-text shared by 11 images may have them in 11 blocks. And at
web scale neither the offender lists nor the paper's 100M-entry n-gram vocabulary fit on the driver.
So everything here stays distributed: counts are group-bys over the whole decoded corpus, the
vocabulary is a sort + limit over n-gram counts, and rows meet the statistics through hash joins.
Only small summary numbers come back to the driver.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from components.config import FilterConfig
from components.data import rules, schema

VERDICT_COLUMNS = ["key", "verdict_rule", "verdict_detail"]


@dataclass
class DatasetVerdicts:
    verdicts: object | None  # Ray dataset (key, verdict_rule, verdict_detail), or None when nothing is flagged
    summary: dict


def _over_threshold(corpus, group: str, other: str, alias: str, threshold: int, partitions: int):
    """``group`` values with more than ``threshold`` distinct ``other`` values (materialised; usually few)."""
    from ray.data.aggregate import CountDistinct
    from ray.data.expressions import col

    return (
        corpus.select_columns([group, other])
        .groupby(group, num_partitions=partitions)
        .aggregate(CountDistinct(on=other, alias_name=alias))
        .filter(expr=col(alias) > threshold)
        .materialize()
    )


def _explode_ngrams(batch: pa.Table, with_key: bool) -> pa.Table:
    keys, grams = [], []
    for key, text in zip(batch["key"].to_pylist(), batch["text"].to_pylist(), strict=True):
        row_grams = dict.fromkeys(rules.ngrams(text))  # once per row, in text order
        grams.extend(row_grams)
        keys.extend([key] * len(row_grams))
    return pa.table({"key": keys, "ngram": grams}) if with_key else pa.table({"ngram": grams})


def _rare_grams(corpus, alive, cfg: FilterConfig, partitions: int):
    """(key, rare_ngram) for alive rows with an n-gram outside the corpus' top-N; and summary numbers."""
    from ray.data.aggregate import Count, Min

    grams = corpus.select_columns(["key", "text"]).map_batches(_explode_ngrams, batch_format="pyarrow", fn_kwargs={"with_key": False})
    # Document frequency would also be defensible; the paper says "most frequent", so occurrences count.
    counts = grams.groupby("ngram", num_partitions=partitions).aggregate(Count(alias_name="occurrences")).materialize()
    distinct = counts.count()
    if distinct <= cfg.vocab_top_n:
        return None, distinct
    # Ties at rank N break alphabetically, so the vocabulary (and the outcome) is deterministic.
    top = counts.sort(["occurrences", "ngram"], descending=[True, False]).limit(cfg.vocab_top_n).select_columns(["ngram"])
    row_grams = alive.select_columns(["key", "text"]).map_batches(
        _explode_ngrams, batch_format="pyarrow", fn_kwargs={"with_key": True}
    )
    rare = row_grams.join(top, "left_anti", num_partitions=partitions, on=("ngram",))
    per_row = rare.groupby("key", num_partitions=partitions).aggregate(Min(on="ngram", alias_name="rare_ngram"))
    return per_row.materialize(), distinct


def _phrase(batch: pa.Table, cfg: FilterConfig) -> pa.Table:
    """One verdict per row, in rule order: image carrying many texts, shared text, rare token."""
    n = batch.num_rows
    heavy = batch["distinct_texts"].to_pylist() if "distinct_texts" in batch.column_names else [None] * n
    shared = batch["distinct_images"].to_pylist() if "distinct_images" in batch.column_names else [None] * n
    rare = batch["rare_ngram"].to_pylist() if "rare_ngram" in batch.column_names else [None] * n
    out_rule, out_detail = [], []
    for texts, images, gram in zip(heavy, shared, rare, strict=True):
        verdict = ("", "")
        if texts is not None:
            verdict = rules.image_many_texts_verdict(texts, cfg)
        elif images is not None:
            verdict = rules.text_many_images_verdict(images, cfg)
        elif gram is not None:
            verdict = rules.rare_token_verdict(gram, cfg)
        out_rule.append(verdict[0])
        out_detail.append(verdict[1])
    table = pa.table({"key": batch["key"], "verdict_rule": out_rule, "verdict_detail": out_detail})
    return table.filter(pc.not_equal(table["verdict_rule"], ""))


def dataset_verdicts(decoded, alive, cfg: FilterConfig, partitions: int) -> DatasetVerdicts:
    """Verdicts of the dataset-wide rules for ``alive`` rows (those that passed every per-record rule).

    Statistics are computed over ``decoded``: every row whose text and image decoded — the raw corpus,
    including rows that a per-record rule rejected — as the paper computes them on the raw data.
    """
    from ray.data.expressions import col

    corpus = decoded.filter(expr=col("decoded")).select_columns(["key", "text", "text_norm", "image_sha256"])
    summary = {"images_over_text_limit": 0, "texts_over_image_limit": 0, "distinct_ngrams": 0, "vocabulary_size": 0}
    slim = alive.select_columns(["key", "image_sha256", "text_norm"])
    flagged = False
    if cfg.enabled(schema.RULE_IMAGE_MANY_TEXTS):
        heavy = _over_threshold(corpus, "image_sha256", "text_norm", "distinct_texts", cfg.max_texts_per_image, partitions)
        summary["images_over_text_limit"] = heavy.count()
        if summary["images_over_text_limit"]:
            slim, flagged = slim.join(heavy, "left_outer", num_partitions=partitions, on=("image_sha256",)), True
    if cfg.enabled(schema.RULE_TEXT_MANY_IMAGES):
        shared = _over_threshold(corpus, "text_norm", "image_sha256", "distinct_images", cfg.max_images_per_text, partitions)
        summary["texts_over_image_limit"] = shared.count()
        if summary["texts_over_image_limit"]:
            slim, flagged = slim.join(shared, "left_outer", num_partitions=partitions, on=("text_norm",)), True
    if cfg.enabled(schema.RULE_TEXT_RARE_TOKEN):
        rare, distinct = _rare_grams(corpus, alive, cfg, partitions)
        summary["distinct_ngrams"], summary["vocabulary_size"] = distinct, min(distinct, cfg.vocab_top_n)
        if rare is not None and rare.count():
            slim, flagged = slim.join(rare, "left_outer", num_partitions=partitions, on=("key",)), True
    if not flagged:
        return DatasetVerdicts(None, summary)
    verdicts = slim.map_batches(_phrase, batch_format="pyarrow", fn_kwargs={"cfg": cfg}).materialize()
    return DatasetVerdicts(verdicts if verdicts.count() else None, summary)
