"""Chunked ranking shared by retrieval and classification.

Every zero-shot metric here reduces to one question per query: how many wrong candidates score at least
as high as the best right one? Answering it per chunk of queries keeps memory at ``chunk × candidates``
instead of ``queries × candidates``. Ties count against the query, so a collapsed model (all embeddings
equal) scores 0 rather than a perfect, gate-passing 1.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# Rows per chunk are chosen so one float32 score block stays near 64 MiB.
SCORE_BLOCK_ELEMENTS = 1 << 24


def as_embeddings(name: str, array: np.ndarray) -> np.ndarray:
    """Validate an ``(n, d)`` embedding matrix and return it as float32.

    Non-finite values are refused because NaN compares false and would silently count as a hit.
    """
    array = np.asarray(array, dtype=np.float32)
    if array.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (n, d) array, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return array


def as_labels(name: str, labels: Sequence[int] | np.ndarray, length: int, num_targets: int) -> np.ndarray:
    """Validate a 1-D index array of ``length`` entries, each in ``[0, num_targets)``."""
    array = np.asarray(labels)
    if array.ndim != 1 or array.shape[0] != length:
        raise ValueError(f"{name} must be 1-D with {length} entries, got shape {array.shape}")
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{name} must hold integer indices, got dtype {array.dtype}")
    array = array.astype(np.int64, copy=False)
    if array.size and (array.min() < 0 or array.max() >= num_targets):
        raise ValueError(f"{name} holds indices outside [0, {num_targets})")
    return array


def as_ks(ks: Sequence[int]) -> tuple[int, ...]:
    """Positive, de-duplicated K values in the caller's order."""
    out: list[int] = []
    for k in ks:
        if isinstance(k, bool) or int(k) != k or k < 1:
            raise ValueError(f"K values must be positive integers, got {k!r}")
        if int(k) not in out:
            out.append(int(k))
    if not out:
        raise ValueError("at least one K value is needed")
    return tuple(out)


def best_positive_ranks(
    queries: np.ndarray,
    candidates: np.ndarray,
    query_labels: np.ndarray,
    candidate_labels: np.ndarray,
    chunk_size: int | None = None,
) -> np.ndarray:
    """Per query, the 0-based rank of its best-scoring positive among the negatives.

    A candidate is positive for a query when their labels are equal. The rank is the number of negatives
    scoring >= that positive, so "a positive is in the top K" is exactly ``rank < K``. A query with no
    positive gets ``len(candidates)``, which is a miss for every K.
    """
    if queries.shape[1] != candidates.shape[1]:
        raise ValueError(
            f"embedding sizes differ: queries are {queries.shape[1]}-d, candidates {candidates.shape[1]}-d"
        )
    num_queries, num_candidates = queries.shape[0], candidates.shape[0]
    if chunk_size is None:
        chunk_size = max(1, SCORE_BLOCK_ELEMENTS // max(1, num_candidates))
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    ranks = np.empty(num_queries, dtype=np.int64)
    candidates_t = np.ascontiguousarray(candidates.T)
    for start in range(0, num_queries, chunk_size):
        stop = min(start + chunk_size, num_queries)
        scores = queries[start:stop] @ candidates_t
        positive = query_labels[start:stop, None] == candidate_labels[None, :]
        best = np.where(positive, scores, -np.inf).max(axis=1, initial=-np.inf)
        ranks[start:stop] = ((scores >= best[:, None]) & ~positive).sum(axis=1)
    return ranks


def recall_at(ranks: np.ndarray, k: int) -> float:
    """Fraction of queries with a positive in the top ``k``."""
    return float(np.mean(ranks < k)) if ranks.size else 0.0
