"""One registered model version, loaded and ready to answer text queries.

A ``Searcher`` is immutable and pairs a text encoder with the corpus index built by the same model,
so a replica can swap models by swapping one reference: a request that already holds a ``Searcher``
finishes on it, and no request can ever mix the new encoder with the old index.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from components.serving.index import VectorIndex

# Loaders are named by import path so a deployment can carry them as plain, JSON-friendly strings
# and so the registry/model packages are imported only inside replicas.
DEFAULT_DOWNLOADER = "components.registry.store:download_model"
DEFAULT_ENCODER_LOADER = "components.model.artifact:load_encoder"

Loader = str | Callable[..., Any]


def resolve_callable(spec: Loader) -> Callable[..., Any]:
    """``"package.module:attribute"`` -> the attribute; callables pass through."""
    if callable(spec):
        return spec
    module_name, sep, attr = str(spec).partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"loader {spec!r} must look like 'package.module:function'")
    target = getattr(importlib.import_module(module_name), attr, None)
    if not callable(target):
        raise ValueError(f"loader {spec!r} does not name a callable")
    return target


def model_uri(model_name: str, model_version: str | None) -> str:
    """MLflow URI of a pinned version, or of whatever ``champion`` points at when unpinned."""
    return f"models:/{model_name}/{model_version}" if model_version else f"models:/{model_name}@champion"


@dataclass(frozen=True)
class Searcher:
    model_name: str
    model_version: str
    encoder: Any
    index: VectorIndex

    def search(self, texts: Sequence[str], ks: Sequence[int]) -> list[list[dict[str, Any]]]:
        """Top-``ks[i]`` corpus items for each text, encoding all texts in one batch."""
        if len(texts) != len(ks):
            raise ValueError(f"{len(texts)} texts but {len(ks)} values of k")
        if not texts:
            return []
        queries = np.asarray(self.encoder.encode_texts(list(texts)))
        if queries.shape != (len(texts), self.index.dim):
            raise RuntimeError(
                f"encoder returned shape {queries.shape} for {len(texts)} texts; the index expects "
                f"dimension {self.index.dim}"
            )
        scores, rows = self.index.search(queries.astype(np.float32, copy=False), max(ks))
        out = []
        for q, k in enumerate(ks):
            hits = []
            for score, row in zip(scores[q, :k], rows[q, :k]):
                if row < 0:  # an approximate index ran out of candidates
                    break
                item = self.index.item(int(row))
                hits.append(
                    {
                        "id": item.id,
                        "score": float(score),
                        "caption": item.caption,
                        "uri": item.uri,
                        "rank": len(hits) + 1,
                    }
                )
            out.append(hits)
        return out


def load_searcher(
    tracking_uri: str,
    model_name: str,
    model_version: str | None = None,
    downloader: Loader = DEFAULT_DOWNLOADER,
    encoder_loader: Loader = DEFAULT_ENCODER_LOADER,
) -> Searcher:
    """Download a registered version (default: the champion), load its encoder and index.

    The encoder is run once on a probe text so that a model/index dimension mismatch or a broken
    artifact fails here, while the replica starts, instead of on the first user request.
    """
    version, local_dir = resolve_callable(downloader)(tracking_uri, model_uri(model_name, model_version))
    version = str(version)
    if model_version and version != str(model_version):
        raise RuntimeError(f"asked for {model_name} version {model_version}, the registry returned {version}")
    searcher = Searcher(
        model_name=model_name,
        model_version=version,
        encoder=resolve_callable(encoder_loader)(str(local_dir)),
        index=VectorIndex.from_artifact(local_dir),
    )
    searcher.search(["a photo"], [1])
    return searcher
