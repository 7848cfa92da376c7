"""One registered model version with its search index, loaded and ready to answer.

A ``ServingModel`` is immutable and pairs the encoder with the index built by the same version, so a
replica swaps models by swapping one reference: a request that already holds one finishes on it, and
no request can mix the new encoder with the old index.
"""

from __future__ import annotations

import importlib
from urllib.parse import quote
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from components.model.query import compose_query, unit
from components.serving.index import VectorIndex

# Loaders are named by import path so a deployment carries them as plain strings and the registry /
# model packages are imported only inside replicas. Tests point them at fakes.
DEFAULT_DOWNLOADER = "components.registry.store:download_model"
DEFAULT_ENCODER_LOADER = "components.model.artifact:load_encoder"
DEFAULT_INDEX_LOCATOR = "components.registry.store:index_location"
DEFAULT_CHAMPION_RESOLVER = "components.registry.store:champion_version"
DEFAULT_LOGIT_SCALE = 100.0  # CLIP's fixed scale, for encoders that do not expose a learned one

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
class SearchQuery:
    """One search request: a text, an image, or an image plus weighted texts (ALIGN's arithmetic).

    ``texts`` are encoded in order; with an image every text is a modifier weighted by ``weights``,
    without one the first text is the base and ``weights`` go with the texts after it.
    """

    texts: tuple[str, ...]
    weights: tuple[float, ...]
    image: Any = None
    k: int = 10

    def __post_init__(self) -> None:
        modifiers = len(self.texts) - (0 if self.image is not None else 1)
        if modifiers < 0:
            raise ValueError("a search query needs a text or an image")
        if len(self.weights) != modifiers:
            raise ValueError(f"{modifiers} modifier texts but {len(self.weights)} weights")


@dataclass(frozen=True)
class ServingModel:
    model_name: str
    model_version: str
    encoder: Any
    index: VectorIndex
    index_version: str
    index_kind: str = "Flat"
    images: Any = None  # CorpusImages, or None when the index stores no image bytes

    @property
    def logit_scale(self) -> float:
        return float(getattr(self.encoder, "logit_scale", DEFAULT_LOGIT_SCALE))

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        return self._checked(self.encoder.encode_texts(list(texts)), len(texts), "encode_texts")

    def embed_images(self, images: Sequence[Any]) -> np.ndarray:
        return self._checked(self.encoder.encode_images(list(images)), len(images), "encode_images")

    def _checked(self, out: Any, rows: int, what: str) -> np.ndarray:
        out = np.asarray(out, dtype=np.float32)
        if out.shape != (rows, self.index.dim):
            raise RuntimeError(f"{what} returned shape {out.shape} for {rows} inputs; the index expects dim {self.index.dim}")
        return out

    def search(self, queries: np.ndarray, ks: Sequence[int]) -> list[list[dict[str, Any]]]:
        """Top-``ks[i]`` corpus items for each (unit) query vector."""
        if len(queries) != len(ks):
            raise ValueError(f"{len(queries)} queries but {len(ks)} values of k")
        if not len(ks):
            return []
        scores, rows = self.index.search(np.ascontiguousarray(queries, dtype=np.float32), max(ks))
        out = []
        for q, k in enumerate(ks):
            hits = []
            for score, row in zip(scores[q, :k], rows[q, :k], strict=True):
                if row < 0:  # an approximate index ran out of candidates
                    break
                item = self.index.item(int(row))
                hits.append({"id": item.id, "score": float(score), "caption": item.caption,
                             "image_url": f"v1/images/{quote(item.id, safe='')}", "rank": len(hits) + 1})
            out.append(hits)
        return out

    def run_queries(self, queries: Sequence[SearchQuery]) -> list[list[dict[str, Any]] | ValueError]:
        """Answer many queries with one text-encoder call, one image-encoder call and one index search.

        Per-query failures (modifiers that cancel the query out) come back as ``ValueError`` in that
        query's slot, so one bad query never fails the others batched with it.
        """
        texts = [text for query in queries for text in query.texts]
        images = [query.image for query in queries if query.image is not None]
        text_vectors = self.embed_texts(texts) if texts else np.zeros((0, self.index.dim), np.float32)
        image_vectors = self.embed_images(images) if images else np.zeros((0, self.index.dim), np.float32)
        out: list[Any] = [None] * len(queries)
        composed, positions, ks = [], [], []
        next_text = next_image = 0
        for position, query in enumerate(queries):
            vectors = text_vectors[next_text:next_text + len(query.texts)]
            next_text += len(query.texts)
            if query.image is not None:
                base, next_image = image_vectors[next_image], next_image + 1
            else:
                base, vectors = vectors[0], vectors[1:]
            try:
                composed.append(compose_query(base, list(zip(vectors, query.weights, strict=True))))
            except ValueError as exc:
                out[position] = exc
                continue
            positions.append(position)
            ks.append(query.k)
        if composed:
            for position, hits in zip(positions, self.search(np.stack(composed), ks), strict=True):
                out[position] = hits
        return out

    def classify(self, image_emb: np.ndarray, class_emb: np.ndarray) -> np.ndarray:
        """Softmax over the labels of the model's scaled cosine similarities, one row per image."""
        logits = self.logit_scale * (unit(image_emb) @ unit(class_emb).T)
        logits -= logits.max(axis=1, keepdims=True)
        probabilities = np.exp(logits)
        return probabilities / probabilities.sum(axis=1, keepdims=True)


def load_serving_model(
    tracking_uri: str,
    model_name: str,
    model_version: str | None = None,
    downloader: Loader = DEFAULT_DOWNLOADER,
    encoder_loader: Loader = DEFAULT_ENCODER_LOADER,
    index_locator: Loader = DEFAULT_INDEX_LOCATOR,
) -> ServingModel:
    """Download a registered version (default: the champion), load its encoder and its index.

    The index is the corpus index built by this version when the registry names one, else the
    evaluation index inside the artifact. A probe query runs before the model is handed out, so a
    broken artifact or a dimension mismatch fails while loading, never on a user request.
    """
    from components.serving.corpus_index import load_corpus_index

    version, local_dir = resolve_callable(downloader)(tracking_uri, model_uri(model_name, model_version))
    version = str(version)
    if model_version and version != str(model_version):
        raise RuntimeError(f"asked for {model_name} version {model_version}, the registry returned {version}")
    encoder = resolve_callable(encoder_loader)(str(local_dir))
    location = resolve_callable(index_locator)(tracking_uri, model_name, version)
    if location:
        index, images, manifest = load_corpus_index(location, version)
        model = ServingModel(model_name, version, encoder, index, manifest.index_version, manifest.spec, images)
    else:
        model = ServingModel(model_name, version, encoder, VectorIndex.from_artifact(local_dir), f"v{version}-artifact")
    model.search(model.embed_texts(["a photo"]), [1])
    return model
