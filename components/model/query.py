"""ALIGN's multimodal query (paper §7): an image embedding plus or minus weighted text embeddings.

Shared by serving (``POST /v1/search`` with modifiers) and evaluation (the arithmetic probe), so the
query a user sends and the one an experiment measures are the same computation.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def unit(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    return vectors / np.maximum(np.linalg.norm(vectors, axis=-1, keepdims=True), 1e-12)


def compose_query(base: np.ndarray, modifiers: Sequence[tuple[np.ndarray, float]]) -> np.ndarray:
    """Normalise each part, ``base + Σ wᵢ·textᵢ``, renormalise (a negative weight subtracts a text)."""
    query = unit(base).copy()
    for vector, weight in modifiers:
        query += float(weight) * unit(vector)
    if not np.isfinite(query).all() or np.linalg.norm(query) < 1e-6:
        raise ValueError("the modifiers cancel the query out; use smaller weights")
    return unit(query)
