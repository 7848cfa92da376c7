"""k-nearest-neighbour classification from frozen image embeddings.

The ALIGN paper's ablations report "KNN R@1" on ImageNet: each query image takes the label of its
nearest gallery images, so it scores the image tower alone, with no text prompts involved. Scores are
computed per chunk of queries, as in ``ranking``, so memory stays near one 64 MiB block.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

import numpy as np

from components.metrics.ranking import SCORE_BLOCK_ELEMENTS, as_embeddings, as_ks, as_labels

_ANY_LABEL = np.iinfo(np.int64).max


def _top_neighbours(scores: np.ndarray, k: int) -> np.ndarray:
    """Per row, the ``k`` column indices ordered by score descending, then by column index.

    ``argpartition`` alone picks arbitrarily among scores tied at the k-th place; rows where that matters
    are redone so the lowest gallery indices win, which keeps results independent of numpy's internals.
    """
    num_rows, num_cols = scores.shape
    if k >= num_cols:
        top = np.broadcast_to(np.arange(num_cols), (num_rows, num_cols)).copy()
    else:
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        threshold = np.take_along_axis(scores, top, axis=1).min(axis=1)
        above = (scores > threshold[:, None]).sum(axis=1)
        tied = (scores == threshold[:, None]).sum(axis=1)
        for row in np.flatnonzero(above + tied > k):
            strict = np.flatnonzero(scores[row] > threshold[row])
            ties = np.flatnonzero(scores[row] == threshold[row])[: k - strict.size]
            top[row] = np.concatenate([strict, ties])
    top_scores = np.take_along_axis(scores, top, axis=1)
    order = np.lexsort((top, -top_scores))
    return np.take_along_axis(top, order, axis=1)


def knn_metrics(
    gallery_emb: np.ndarray,
    gallery_labels: Sequence[int] | np.ndarray,
    query_emb: np.ndarray,
    query_labels: Sequence[int] | np.ndarray,
    ks: Sequence[int] = (1, 10),
    chunk_size: int | None = None,
) -> dict[str, float]:
    """Accuracy (``k{K}/acc1``) and mean per-class recall (``k{K}/mean_per_class_recall``) of k-NN votes.

    Rows are expected L2-normalised, so the dot product is the cosine similarity. A query's prediction
    is the label with the largest summed similarity over its ``k`` nearest gallery rows (ties between
    labels go to the smaller label id); a ``k`` above the gallery size uses the whole gallery. Mean
    per-class recall averages over the labels present among the queries.
    """
    gallery_emb = as_embeddings("gallery_emb", gallery_emb)
    query_emb = as_embeddings("query_emb", query_emb)
    if gallery_emb.shape[0] == 0 or query_emb.shape[0] == 0:
        raise ValueError("k-NN needs at least one gallery and one query embedding")
    if gallery_emb.shape[1] != query_emb.shape[1]:
        raise ValueError(f"embedding sizes differ: gallery is {gallery_emb.shape[1]}-d, queries {query_emb.shape[1]}-d")
    gallery_labels = as_labels("gallery_labels", gallery_labels, gallery_emb.shape[0], _ANY_LABEL)
    query_labels = as_labels("query_labels", query_labels, query_emb.shape[0], _ANY_LABEL)
    ks = as_ks(ks)

    # Dense ids in label order, so "smallest dense id" is "smallest label" when votes tie.
    classes, gallery_ids = np.unique(gallery_labels, return_inverse=True)
    num_gallery, num_classes = gallery_emb.shape[0], classes.size
    if chunk_size is None:
        chunk_size = max(1, SCORE_BLOCK_ELEMENTS // max(num_gallery, num_classes))
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    k_max = min(max(ks), num_gallery)

    predictions = {k: np.empty(query_emb.shape[0], dtype=np.int64) for k in ks}
    gallery_t = np.ascontiguousarray(gallery_emb.T)
    for start in range(0, query_emb.shape[0], chunk_size):
        stop = min(start + chunk_size, query_emb.shape[0])
        scores = query_emb[start:stop] @ gallery_t
        top = _top_neighbours(scores, k_max)
        top_scores = np.take_along_axis(scores, top, axis=1).astype(np.float64)
        top_ids = gallery_ids[top]
        rows = np.arange(stop - start)[:, None] * num_classes
        for k in ks:
            used = min(k, num_gallery)
            votes = np.bincount(
                (rows + top_ids[:, :used]).ravel(),
                weights=top_scores[:, :used].ravel(),
                minlength=(stop - start) * num_classes,
            ).reshape(stop - start, num_classes)
            predictions[k][start:stop] = classes[votes.argmax(axis=1)]

    present = np.unique(query_labels)
    metrics: dict[str, float] = {}
    for k in ks:
        correct = predictions[k] == query_labels
        metrics[f"k{k}/acc1"] = float(correct.mean())
        metrics[f"k{k}/mean_per_class_recall"] = float(np.mean([correct[query_labels == c].mean() for c in present]))
    return metrics


def split_gallery_query(
    labels: np.ndarray, keys: Sequence[str], query_fraction: float = 0.5
) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic, stratified ``(gallery_indices, query_indices)``, both sorted ascending.

    Within each class, items are ordered by the sha256 of their key (e.g. a file name) and the first
    ``round(query_fraction * n)`` become queries, so the split depends on the keys only, not on the input
    order or on a random seed. A class with two or more items keeps at least one on each side; a class
    with one item stays in the gallery, where it can still be a (wrong) neighbour for other queries.
    """
    if not 0.0 < float(query_fraction) < 1.0:
        raise ValueError(f"query_fraction must be in (0, 1), got {query_fraction}")
    keys = list(keys)
    labels = as_labels("labels", labels, len(keys), _ANY_LABEL)
    seen: set[str] = set()
    for index, key in enumerate(keys):
        if not isinstance(key, str):
            raise ValueError(f"keys[{index}] must be a string, got {type(key).__name__}")
        if key in seen:
            # Equal keys hash equally, so their order (and the split) would depend on the input order.
            raise ValueError(f"keys[{index}] duplicates the key {key!r}; split keys must be unique")
        seen.add(key)

    digests = [hashlib.sha256(key.encode("utf-8")).digest() for key in keys]
    query: list[int] = []
    for label in np.unique(labels):
        members = sorted(np.flatnonzero(labels == label).tolist(), key=lambda i: (digests[i], keys[i]))
        n = len(members)
        take = 0 if n < 2 else min(max(math.floor(query_fraction * n + 0.5), 1), n - 1)
        query.extend(members[:take])
    query_idx = np.sort(np.asarray(query, dtype=np.int64))
    gallery_mask = np.ones(len(keys), dtype=bool)
    gallery_mask[query_idx] = False
    return np.flatnonzero(gallery_mask).astype(np.int64), query_idx
