"""Dataset-wide statistics for ALIGN's frequency rules, computed over the whole input with Ray Data.

Per-block counting would be wrong: an alt-text shared by 11 images may have them in 11 blocks. So
these are group-bys over the full (materialised) first pass. Only the offenders (and the n-gram
vocabulary) come back to the driver to be broadcast to the second pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from components.config import FilterConfig
from components.data.rules import ngrams


@dataclass
class CorpusStats:
    heavy_images: dict[str, int] = field(default_factory=dict)  # image_sha256 -> distinct alt-texts
    shared_texts: dict[str, int] = field(default_factory=dict)  # normalised text -> distinct images
    vocabulary: frozenset[str] = frozenset()  # top-N unigrams+bigrams
    distinct_ngrams: int = 0

    def summary(self) -> dict:
        return {
            "images_over_text_limit": len(self.heavy_images),
            "texts_over_image_limit": len(self.shared_texts),
            "vocabulary_size": len(self.vocabulary),
            "distinct_ngrams": self.distinct_ngrams,
        }


def _distinct_counts(dataset, group: str, other: str, threshold: int, partitions: int) -> dict[str, int]:
    """For each ``group`` value, the number of distinct ``other`` values, keeping those > threshold."""
    from ray.data.aggregate import CountDistinct
    from ray.data.expressions import col

    column = f"distinct_{other}"
    counts = (
        dataset.select_columns([group, other])
        .groupby(group, num_partitions=partitions)
        .aggregate(CountDistinct(on=other, alias_name=column))
        .filter(expr=col(column) > threshold)
    )
    return {row[group]: int(row[column]) for row in counts.take_all()}


def _explode_ngrams(batch: dict) -> dict:
    grams = [gram for text in batch["text"] for gram in ngrams(str(text))]
    return {"ngram": grams}


def compute_stats(dataset, cfg: FilterConfig, partitions: int) -> CorpusStats:
    """``dataset``: decoded rows (columns image_sha256, text, text_norm) whose text/image decoded."""
    heavy = _distinct_counts(dataset, "image_sha256", "text_norm", cfg.max_texts_per_image, partitions)
    shared = _distinct_counts(dataset, "text_norm", "image_sha256", cfg.max_images_per_text, partitions)
    grams = dataset.select_columns(["text"]).map_batches(_explode_ngrams)
    counts = grams.groupby("ngram", num_partitions=partitions).count()
    ranked = sorted(((int(r["count()"]), r["ngram"]) for r in counts.take_all()), key=lambda c: (-c[0], c[1]))
    vocabulary = frozenset(gram for _, gram in ranked[: cfg.vocab_top_n])
    return CorpusStats(heavy_images=heavy, shared_texts=shared, vocabulary=vocabulary, distinct_ngrams=len(ranked))
