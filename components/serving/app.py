"""The Ray Serve deployment: cross-modal search, embeddings and zero-shot classification over HTTP.

Each replica holds one ``ServingModel`` (encoder + the index built by the same version). Encoder calls
from concurrent requests are batched with ``@serve.batch`` (Serve costs ~7 ms per request here, so
throughput comes from encoding many inputs per forward pass); a batch is grouped by model snapshot so
a swap in the middle never mixes versions.

Model swaps, none drops a request:
- **Following the champion** (default): every ``serve.follow_champion_s`` a replica asks the registry
  where ``champion`` points; when it moved (promotion or rollback) the new version and its index load
  in a worker thread, must answer a probe query, and only then replace the old one. A version that
  fails to load or to answer keeps the old one serving; the error shows in ``GET /v1/model``.
- ``deploy()`` / ``serve.run`` restarts replicas with ``max_surge_percent=100``: new replicas load
  before old ones stop, and old ones drain their in-flight requests.
- A declarative config (``import_path: components.serving.app:app_builder``, e.g. a KubeRay RayService)
  that changes only ``user_config.model_version`` pins that version in place through ``reconfigure``.

Nothing here touches Ray at import time; ``ray.serve`` is imported inside functions.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from components.config import RegistryConfig, ServeConfig
from components.serving.images import decode_base64, open_image
from components.serving.metrics import ServingMetrics
from components.serving.schemas import DEFAULT_TEMPLATES, fill_template
from components.serving.searcher import (
    DEFAULT_CHAMPION_RESOLVER,
    DEFAULT_DOWNLOADER,
    DEFAULT_ENCODER_LOADER,
    DEFAULT_INDEX_LOCATOR,
    Loader,
    SearchQuery,
    ServingModel,
    load_serving_model,
    resolve_callable,
)

log = logging.getLogger(__name__)

DEPLOYMENT_NAME = "AlignSearch"
MAX_CONSTRUCTOR_RETRIES = 3  # a replica whose constructor keeps failing fails the deploy fast
USER_CONFIG_KEYS = frozenset({"model_version"})
IMAGE_TEXT_WEIGHT = 2.0  # ALIGN §7: a query text added to an image query counts twice


def limit_threads(cpus: float) -> int:
    """Give torch and faiss ``floor(cpus)`` threads (at least one) in this replica process.

    Ray sets ``OMP_NUM_THREADS`` for its workers, but a library that started its OpenMP pool earlier keeps
    its own count, and idle OpenMP workers spin between queries: a single 100k IVF search took 3.1 ms
    of CPU with 2 threads against 0.5 ms with 1, for the same latency.
    """
    import math

    import torch

    threads = max(1, math.floor(cpus))
    torch.set_num_threads(threads)
    try:
        import faiss

        faiss.omp_set_num_threads(threads)
    except ImportError:  # an index-less test double
        pass
    return threads


def _in_serve_replica() -> bool:
    try:
        from ray import serve

        serve.get_replica_context()
    except Exception:  # noqa: BLE001 -- Serve raises when called outside a replica
        return False
    return True


def _group_by_model(items: list[tuple[ServingModel, Any]]) -> dict[int, list[int]]:
    groups: dict[int, list[int]] = {}
    for position, (model, _) in enumerate(items):
        groups.setdefault(id(model), []).append(position)
    return groups


class ServingDeployment:
    """Replica body: load a version, answer batched requests, follow or pin the champion."""

    def __init__(
        self,
        serve_cfg: dict,
        tracking_uri: str,
        model_name: str,
        model_version: str | None = None,
        loaders: dict[str, Loader] | None = None,
    ) -> None:
        self.cfg = ServeConfig.model_validate(serve_cfg)
        if _in_serve_replica():  # never change the threads of a process that merely builds the class
            limit_threads(self.cfg.replica_cpus)
        self.metrics = ServingMetrics()
        loaders = {"downloader": DEFAULT_DOWNLOADER, "encoder_loader": DEFAULT_ENCODER_LOADER,
                   "index_locator": DEFAULT_INDEX_LOCATOR, "champion_resolver": DEFAULT_CHAMPION_RESOLVER} | dict(loaders or {})
        self._resolve_champion = resolve_callable(loaders.pop("champion_resolver"))
        self._load_args = dict(tracking_uri=tracking_uri, model_name=model_name, **loaders)
        self._pinned = model_version
        # Blocking is fine here: the replica takes no traffic until its constructor returns.
        self._model: ServingModel = load_serving_model(model_version=model_version, **self._load_args)
        self.metrics.serving_version(self._model.model_version)
        self._swap_lock = asyncio.Lock()
        self.last_swap_error = ""
        self._embed_texts_batch, self._embed_images_batch = self._embed_texts_now, self._embed_images_now
        self._search_batch = self._search_one
        if self.cfg.batch_size > 1:  # 1 turns batching off (batching also needs a Serve replica context)
            from ray import serve

            batch = serve.batch(max_batch_size=self.cfg.batch_size, batch_wait_timeout_s=self.cfg.batch_wait_s)
            self._embed_texts_batch, self._embed_images_batch = batch(self._embed_texts_now), batch(self._embed_images_now)
            self._search_batch = batch(self._search_now)
        self._follower: asyncio.Task | None = None

    # --- model lifecycle ---------------------------------------------------------------------------

    @property
    def model(self) -> ServingModel:
        return self._model

    async def reconfigure(self, user_config: dict[str, Any] | None) -> None:
        """Serve calls this after ``__init__`` and whenever only ``user_config`` changes.

        ``{"model_version": "7"}`` pins that version; ``None`` follows the champion. Loading runs in a
        worker thread so requests keep flowing on the old model until the single reference swap.
        """
        config = dict(user_config or {})
        unknown = set(config) - USER_CONFIG_KEYS
        if unknown:
            raise ValueError(f"unknown user_config keys {sorted(unknown)}; allowed: {sorted(USER_CONFIG_KEYS)}")
        wanted = config.get("model_version")
        self._pinned = str(wanted) if wanted is not None else None
        if wanted is not None and str(wanted) != self._model.model_version:
            await self.swap_to(str(wanted), raise_errors=True)
        self._start_following()

    def _start_following(self) -> None:
        if self._pinned is None and self.cfg.follow_champion_s > 0 and self._follower is None:
            try:
                self._follower = asyncio.get_running_loop().create_task(self._follow_champion())
            except RuntimeError:  # no running loop (unit tests call methods directly)
                self._follower = None

    async def _follow_champion(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.follow_champion_s)
            self.metrics.refresh()  # keeps Ray's version gauge alive (dropped when unset for ~20 s)
            if self._pinned is not None:
                continue
            try:
                await self.check_champion()
            except Exception as exc:  # noqa: BLE001 -- the follower must outlive registry hiccups
                log.warning("champion check failed: %s", exc)

    async def check_champion(self) -> bool:
        """Swap to the champion if it moved; True when a swap happened."""
        champion = await asyncio.to_thread(self._resolve_champion, self._load_args["tracking_uri"], self._load_args["model_name"])
        if champion is None or str(champion) == self._model.model_version:
            return False
        return await self.swap_to(str(champion))

    async def swap_to(self, version: str, raise_errors: bool = False) -> bool:
        """Load ``version`` (with its index) off the event loop; keep the old model if anything fails."""
        async with self._swap_lock:
            if version == self._model.model_version:
                return False
            try:
                model = await asyncio.to_thread(load_serving_model, model_version=version, **self._load_args)
            except Exception as exc:
                self.last_swap_error = f"version {version} did not load: {type(exc).__name__}: {exc}"[:2000]
                self.metrics.swap("failed")
                log.error("keeping version %s: %s", self._model.model_version, self.last_swap_error)
                if raise_errors:
                    raise
                return False
            self._model, self.last_swap_error = model, ""
            self.metrics.swap("ok")
            self.metrics.serving_version(version)
            return True

    def check_health(self) -> None:
        """Serve's periodic replica health check: a model must be loaded and consistent."""
        self.metrics.refresh()  # every health_check_period_s, pinned or following: Ray's version gauge stays
        model = self._model
        if model is None or len(model.index) == 0:
            raise RuntimeError("no model loaded")

    # --- batched encoders ------------------------------------------------------------------------------

    async def _per_model(self, items: list[tuple[ServingModel, Any]], label: str, work: str) -> list[Any]:
        """Run ``ServingModel.<work>`` once per model snapshot in the batch, in a worker thread (a swap
        mid-batch makes two groups, so no answer mixes versions); answers come back in item order."""
        out: list[Any] = [None] * len(items)
        for positions in _group_by_model(items).values():
            model = items[positions[0]][0]
            self.metrics.batch(label, len(positions))
            answers = await asyncio.to_thread(getattr(model, work), [items[p][1] for p in positions])
            for p, answer in zip(positions, answers, strict=True):
                out[p] = answer
        return out

    async def _search_now(self, items: list[tuple[ServingModel, SearchQuery]]) -> list[Any]:
        """A batch of searches: per model snapshot one call encodes every text and image and searches the
        index once for all of them (one thread hop, BLAS-sized index scans)."""
        return await self._per_model(items, "search", "run_queries")

    async def _search_one(self, item: tuple[ServingModel, SearchQuery]) -> Any:
        """The unbatched stand-in for ``_search_batch`` (``serve.batch_size`` 1, or no Serve replica)."""
        return (await self._search_now([item]))[0]

    # Three queues for @serve.batch: searches, and texts and images embedded for /v1/embed and /v1/classify.
    async def _embed_texts_now(self, items: list[tuple[ServingModel, str]]) -> list[Any]:
        return await self._per_model(items, "text", "embed_texts")

    async def _embed_images_now(self, items: list[tuple[ServingModel, Any]]) -> list[Any]:
        return await self._per_model(items, "image", "embed_images")

    async def _embed(self, model: ServingModel, inputs: list[Any], modality: str) -> list[Any]:
        batched, direct = (
            (self._embed_texts_batch, self._embed_texts_now) if modality == "text"
            else (self._embed_images_batch, self._embed_images_now)
        )
        if batched == direct:
            return await direct([(model, x) for x in inputs])
        return list(await asyncio.gather(*(batched((model, x)) for x in inputs)))

    async def _texts(self, model: ServingModel, texts: list[str]) -> list[Any]:
        return await self._embed(model, texts, "text")

    async def _images(self, model: ServingModel, images: list[Any]) -> list[Any]:
        return await self._embed(model, images, "image")

    # --- request handlers (called by components.serving.http) ------------------------------------------

    def decode_base64_images(self, values: list[str], field: str) -> list[Any]:
        return [
            open_image(decode_base64(value, f"{field}[{i}]", self.cfg.max_image_bytes), f"{field}[{i}]",
                       self.cfg.max_image_bytes, self.cfg.max_image_pixels)
            for i, value in enumerate(values)
        ]

    def decode_raw_images(self, values: list[bytes], field: str) -> list[Any]:
        return [open_image(data, f"{field}[{i}]", self.cfg.max_image_bytes, self.cfg.max_image_pixels)
                for i, data in enumerate(values)]

    def _versioned(self, model: ServingModel) -> dict[str, str]:
        return {"model_name": model.model_name, "model_version": model.model_version, "index_version": model.index_version}

    async def embed(self, texts: list[str], images: list[Any]) -> dict[str, Any]:
        model = self._model  # one snapshot per request
        text_emb = await self._texts(model, texts) if texts else []
        image_emb = await self._images(model, images) if images else []
        return self._versioned(model) | {
            "dim": model.index.dim,
            "text_embeddings": [[float(x) for x in v] for v in text_emb],
            "image_embeddings": [[float(x) for x in v] for v in image_emb],
        }

    async def search(self, text: str | None, image: Any, modifiers: list[tuple[str, float]], k: int) -> dict[str, Any]:
        """Text→image, image→image, or ALIGN's image + w·text arithmetic (text adds with weight 2)."""
        model = self._model  # one snapshot per request
        texts = ([text] if text is not None else []) + [m for m, _ in modifiers]
        weights = ([IMAGE_TEXT_WEIGHT] if image is not None and text is not None else []) + [w for _, w in modifiers]
        query = SearchQuery(tuple(texts), tuple(weights), image, k)
        answer = await self._search_batch((model, query))
        if isinstance(answer, ValueError):  # the modifiers cancel the query out
            from fastapi import HTTPException

            raise HTTPException(422, str(answer))
        kind = ("image+text" if texts else "image") if image is not None else "text"
        return self._versioned(model) | {"results": answer, "query": kind}

    async def classify(self, images: list[Any], labels: list[str], templates: list[str] | None) -> dict[str, Any]:
        import numpy as np

        model = self._model
        templates = list(templates or DEFAULT_TEMPLATES)
        prompts = [fill_template(template, label) for label in labels for template in templates]
        prompt_emb = np.asarray(await self._texts(model, prompts)).reshape(len(labels), len(templates), -1)
        from components.model.query import unit

        class_emb = unit(unit(prompt_emb).mean(axis=1))  # prompt ensembling, as in evaluation
        image_emb = np.asarray(await self._images(model, images))
        probabilities = model.classify(image_emb, class_emb)
        predictions = []
        for row in probabilities:
            order = np.argsort(-row, kind="stable")
            predictions.append({"label": labels[order[0]],
                                "scores": [{"label": labels[j], "probability": float(row[j])} for j in order]})
        return self._versioned(model) | {"predictions": predictions}

    def image_bytes(self, item_id: str) -> bytes | None:
        images = self._model.images
        return images.get(item_id) if images is not None else None

    def health(self) -> dict[str, str]:
        model = self._model
        return {"status": "ok", "model_name": model.model_name, "model_version": model.model_version}

    async def ready(self) -> dict[str, str]:
        model = self._model
        vectors = await self._texts(model, ["a photo"])
        await asyncio.to_thread(model.search, vectors[0][None, :], [1])
        return self.health()

    def info(self) -> dict[str, Any]:
        model = self._model
        return self._versioned(model) | {"index_kind": model.index_kind, "items": len(model.index),
                                         "dim": model.index.dim, "pinned": self._pinned is not None,
                                         "last_swap_error": self.last_swap_error}

    def __serve_build_asgi_app__(self) -> Any:
        """Serve calls this on the replica after the constructor (late-bound ``@serve.ingress()``)."""
        from components.serving.http import http_api

        return http_api(self)


def build_app(
    serve_cfg: ServeConfig,
    registry_cfg: RegistryConfig,
    tracking_uri: str,
    *,
    model_version: str | None = None,
    loaders: dict[str, Loader] | None = None,
) -> Any:
    """A Serve ``Application`` following ``models:/<name>@champion`` (or pinned to ``model_version``).

    ``loaders`` override the registry/encoder/index hooks with ``"module:function"`` paths resolved
    inside the replica; tests point them at fakes.
    """
    from ray import serve

    from components.serving.http import api_key_from_env

    api_key_from_env(serve_cfg.api_key_env)  # a missing key fails the deploy here, not in every replica
    options: dict[str, Any] = {
        "name": DEPLOYMENT_NAME,
        "ray_actor_options": {"num_cpus": serve_cfg.replica_cpus},
        "max_ongoing_requests": 4 * max(1, serve_cfg.batch_size),  # room to fill a batch
        "user_config": {"model_version": model_version},
        "max_surge_percent": 100,
        "max_constructor_retry_count": MAX_CONSTRUCTOR_RETRIES,
        "health_check_period_s": serve_cfg.health_check_period_s,
    }
    if serve_cfg.autoscaling is not None:
        options["autoscaling_config"] = serve_cfg.autoscaling.model_dump()
    else:
        options["num_replicas"] = serve_cfg.num_replicas
    deployment = serve.deployment(**options)(serve.ingress()(ServingDeployment))
    return deployment.bind(
        serve_cfg=serve_cfg.model_dump(),
        tracking_uri=tracking_uri,
        model_name=registry_cfg.model_name,
        model_version=model_version,
        loaders=dict(loaders or {}),
    )


def app_builder(args: dict[str, Any]) -> Any:
    """Entry point for declarative Serve configs (``serve deploy``, KubeRay RayService).

    ``args``: ``tracking_uri`` (required), optional ``serve`` and ``registry`` sections shaped like the
    config tree, and ``model_version`` (pin; default: follow the champion).
    """
    if not args.get("tracking_uri"):
        raise ValueError("app_builder needs args.tracking_uri (the MLflow tracking URI)")
    return build_app(
        ServeConfig.model_validate(args.get("serve") or {}),
        RegistryConfig.model_validate(args.get("registry") or {}),
        args["tracking_uri"],
        model_version=args.get("model_version"),
    )
