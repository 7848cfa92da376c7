"""Nearest-neighbour search over the corpus image embeddings shipped inside a model artifact.

The corpus index is part of the model artifact (not built at serve time) because its embeddings are
only meaningful for the image tower that produced them: swapping the model must swap the index too.
Scores are inner products of L2-normalised vectors, i.e. cosine similarities.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from components.serving.ann import build_faiss_index

EMBEDDINGS_FILE = "index/embeddings.npy"
ITEMS_FILE = "index/items.json"
# Rows must be unit length; float32 round-off on a 1k-d vector stays far below this.
_NORM_TOLERANCE = 1e-3


@dataclass(frozen=True)
class Item:
    """One corpus image, as listed in ``index/items.json``."""

    id: str
    caption: str
    uri: str


def _check_matrix(name: str, array: Any, dim: int | None = None) -> np.ndarray:
    if not isinstance(array, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, got {type(array).__name__}")
    if array.ndim != 2:
        hint = " (use x[None, :] for a single vector)" if array.ndim == 1 else ""
        raise ValueError(f"{name} must be 2-D (n, d), got shape {array.shape}{hint}")
    if array.dtype != np.float32:
        raise TypeError(f"{name} must be float32, got {array.dtype}")
    if dim is not None and array.shape[1] != dim:
        raise ValueError(f"{name} has dimension {array.shape[1]}, the index has {dim}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return np.ascontiguousarray(array)


class VectorIndex:
    """Top-k cosine search over a fixed set of unit-length embeddings, with item metadata."""

    def __init__(self, embeddings: np.ndarray, items: list[Item], spec: str = "Flat") -> None:
        embeddings = _check_matrix("embeddings", embeddings)
        n, dim = embeddings.shape
        if n == 0 or dim == 0:
            raise ValueError(f"embeddings must be non-empty, got shape {embeddings.shape}")
        if len(items) != n:
            raise ValueError(f"{len(items)} items for {n} embedding rows: they must match one to one")
        norms = np.linalg.norm(embeddings, axis=1)
        bad = np.flatnonzero(np.abs(norms - 1.0) > _NORM_TOLERANCE)
        if bad.size:
            raise ValueError(
                f"embedding rows must be L2-normalised; {bad.size} are not (row {bad[0]} has norm "
                f"{norms[bad[0]]:.4f})"
            )
        self._items = list(items)
        self._dim = dim
        self._index = build_faiss_index(embeddings, spec)  # exact by default; see serving/ann.py

    @classmethod
    def from_faiss(cls, faiss_index: Any, items: list[Item]) -> VectorIndex:
        """Wrap an index built elsewhere (the corpus index job) with its items, in faiss row order."""
        if faiss_index.ntotal != len(items):
            raise ValueError(f"{len(items)} items for a faiss index of {faiss_index.ntotal} vectors")
        self = cls.__new__(cls)
        self._items, self._dim, self._index = list(items), int(faiss_index.d), faiss_index
        return self

    @classmethod
    def from_artifact(cls, artifact_dir: str | Path, spec: str = "Flat") -> VectorIndex:
        """Load ``index/embeddings.npy`` and ``index/items.json`` from a model artifact folder."""
        root = Path(artifact_dir)
        emb_path, items_path = root / EMBEDDINGS_FILE, root / ITEMS_FILE
        for path in (emb_path, items_path):
            if not path.is_file():
                raise FileNotFoundError(f"model artifact {root} has no {path.relative_to(root)}")
        embeddings = np.load(emb_path, allow_pickle=False)
        raw = json.loads(items_path.read_text(encoding="utf-8"))
        return cls(embeddings, _parse_items(raw, items_path), spec=spec)

    def __len__(self) -> int:
        return len(self._items)

    @property
    def dim(self) -> int:
        return self._dim

    def item(self, row: int) -> Item:
        return self._items[row]

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Best ``min(k, len(self))`` rows per query: ``(scores, rows)``, both ``(m, k')``.

        ``rows`` index into the items (see ``item``); scores are float32, best first. An approximate
        index may return fewer than k' hits for a query, padded with row -1.
        """
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
            raise TypeError(f"k must be an int, got {type(k).__name__}")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        queries = _check_matrix("queries", queries, dim=self._dim)
        k = min(int(k), len(self._items))
        if queries.shape[0] == 0:
            return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
        scores, rows = self._index.search(queries, k)
        return scores.astype(np.float32, copy=False), rows.astype(np.int64, copy=False)


def _parse_items(raw: Any, path: Path) -> list[Item]:
    if not isinstance(raw, list):
        raise ValueError(f"{path} must hold a JSON list, got {type(raw).__name__}")
    items = []
    for i, entry in enumerate(raw):
        if not isinstance(entry, dict) or not all(isinstance(entry.get(f), str) for f in ("id", "caption", "uri")):
            raise ValueError(f"{path} entry {i} must be an object with string id, caption and uri")
        items.append(Item(id=entry["id"], caption=entry["caption"], uri=entry["uri"]))
    return items
