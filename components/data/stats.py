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
class BroadcastStats:
    """Statistics small enough to ship to every task (a broadcast join): no shuffle of the rows needed."""

    heavy_images: dict[str, int]  # image_sha256 -> distinct alt-texts, only those over the limit
    shared_texts: dict[str, int]  # normalised text -> distinct images, only those over the limit
    vocabulary: frozenset[str] | None  # top-N n-grams; None when every n-gram is in the top N

    def verdict(self, sha: str, text_norm: str, text: str, cfg: FilterConfig) -> tuple[str, str] | None:
        if sha in self.heavy_images:
            return rules.image_many_texts_verdict(self.heavy_images[sha], cfg)
        if text_norm in self.shared_texts:
            return rules.text_many_images_verdict(self.shared_texts[text_norm], cfg)
        if self.vocabulary is not None:
            rare = sorted(set(rules.ngrams(text)) - self.vocabulary)
            if rare:
                return rules.rare_token_verdict(rare[0], cfg)
        return None


@dataclass
class DatasetVerdicts:
    summary: dict
    broadcast: BroadcastStats | None = None  # set when every statistics table fits the broadcast limit
    joined: object | None = None  # else: Ray dataset (key, verdict_rule, verdict_detail) of flagged rows


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


def _rare_grams(counts, alive, cfg: FilterConfig, partitions: int):
    """(key, rare_ngram) for alive rows with an n-gram outside the corpus' top-N, all distributed."""
    from ray.data.aggregate import Min

    # Ties at rank N break alphabetically, so the vocabulary (and the outcome) is deterministic.
    top = counts.sort(["occurrences", "ngram"], descending=[True, False]).limit(cfg.vocab_top_n).select_columns(["ngram"])
    row_grams = alive.select_columns(["key", "text"]).map_batches(
        _explode_ngrams, batch_format="pyarrow", fn_kwargs={"with_key": True}
    )
    rare = row_grams.join(top, "left_anti", num_partitions=partitions, on=("ngram",))
    return rare.groupby("key", num_partitions=partitions).aggregate(Min(on="ngram", alias_name="rare_ngram")).materialize()


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
    Small statistics tables (up to ``cfg.broadcast_max_rows``) are broadcast to the tasks, as query
    engines do; larger ones, as at web scale, meet the rows through hash joins.
    """
    from ray.data.aggregate import Count
    from ray.data.expressions import col

    corpus = decoded.filter(expr=col("decoded")).select_columns(["key", "text", "text_norm", "image_sha256"])
    heavy = shared = counts = None
    if cfg.enabled(schema.RULE_IMAGE_MANY_TEXTS):
        heavy = _over_threshold(corpus, "image_sha256", "text_norm", "distinct_texts", cfg.max_texts_per_image, partitions)
    if cfg.enabled(schema.RULE_TEXT_MANY_IMAGES):
        shared = _over_threshold(corpus, "text_norm", "image_sha256", "distinct_images", cfg.max_images_per_text, partitions)
    if cfg.enabled(schema.RULE_TEXT_RARE_TOKEN):
        grams = corpus.select_columns(["key", "text"]).map_batches(
            _explode_ngrams, batch_format="pyarrow", fn_kwargs={"with_key": False}
        )
        # "Most frequent" counts occurrences (document frequency would also be defensible).
        counts = grams.groupby("ngram", num_partitions=partitions).aggregate(Count(alias_name="occurrences")).materialize()
    sizes = {name: table.count() if table is not None else 0 for name, table in (("heavy", heavy), ("shared", shared), ("ngrams", counts))}
    distinct = sizes["ngrams"]
    summary = {
        "images_over_text_limit": sizes["heavy"],
        "texts_over_image_limit": sizes["shared"],
        "distinct_ngrams": distinct,
        "vocabulary_size": min(distinct, cfg.vocab_top_n) if counts is not None else 0,
    }
    if max(sizes.values()) <= cfg.broadcast_max_rows:
        summary["strategy"] = "broadcast"
        vocabulary = None
        if counts is not None and distinct > cfg.vocab_top_n:
            # Ties at rank N break alphabetically, so the vocabulary (and the outcome) is deterministic.
            ranked = sorted((-int(r["occurrences"]), r["ngram"]) for r in counts.take_all())
            vocabulary = frozenset(gram for _, gram in ranked[: cfg.vocab_top_n])
        return DatasetVerdicts(summary, broadcast=BroadcastStats(
            heavy_images=_as_dict(heavy, "image_sha256", "distinct_texts"),
            shared_texts=_as_dict(shared, "text_norm", "distinct_images"),
            vocabulary=vocabulary,
        ))
    summary["strategy"] = "hash_join"
    slim, flagged = alive.select_columns(["key", "image_sha256", "text_norm"]), False
    if sizes["heavy"]:
        slim, flagged = slim.join(heavy, "left_outer", num_partitions=partitions, on=("image_sha256",)), True
    if sizes["shared"]:
        slim, flagged = slim.join(shared, "left_outer", num_partitions=partitions, on=("text_norm",)), True
    if counts is not None and distinct > cfg.vocab_top_n:
        rare = _rare_grams(counts, alive, cfg, partitions)
        if rare.count():
            slim, flagged = slim.join(rare, "left_outer", num_partitions=partitions, on=("key",)), True
    if not flagged:
        return DatasetVerdicts(summary)
    verdicts = slim.map_batches(_phrase, batch_format="pyarrow", fn_kwargs={"cfg": cfg}).materialize()
    return DatasetVerdicts(summary, joined=verdicts if verdicts.count() else None)


def _as_dict(table, key: str, value: str) -> dict:
    return {} if table is None else {row[key]: int(row[value]) for row in table.take_all()}
