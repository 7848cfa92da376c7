"""The Ray Serve deployment that answers text-to-image search over HTTP.

Each replica holds one ``Searcher`` (encoder + corpus index of one registered version). Concurrent
queries are batched inside the replica with ``@serve.batch``: Serve costs ~7 ms per request on these
machines, so throughput comes from encoding many texts per forward pass, not from more replicas.

Model swaps, two paths, neither drops a request:
- ``deploy()`` / ``serve.run`` always restarts replicas (Serve 2.60 gives every imperative deploy a
  fresh code version). ``max_surge_percent=100`` starts the new replicas, loaded with the new
  version, before the old ones stop; old replicas drain their in-flight requests first.
- A declarative config (``import_path: components.serving.app:app_builder``, e.g. a KubeRay
  RayService) that changes only ``user_config.model_version`` makes Serve call ``reconfigure`` on
  the running replicas: the new version loads off the event loop while the old one keeps serving,
  then one reference is swapped.

Nothing here touches Ray at import time; ``ray.serve`` is imported inside functions.
"""

# No `from __future__ import annotations`: FastAPI must see the per-app request model object.
import asyncio
from typing import Any, NamedTuple

from components.config import RegistryConfig, ServeConfig
from components.serving.schemas import HealthResponse, SearchResponse, search_request_model
from components.serving.searcher import (
    DEFAULT_DOWNLOADER,
    DEFAULT_ENCODER_LOADER,
    Loader,
    Searcher,
    load_searcher,
)

DEPLOYMENT_NAME = "TextToImageSearch"
# Small enough to share a laptop-sized cluster with a training run (config has no field for it yet).
REPLICA_NUM_CPUS = 0.5
# Batch at most this many queries per forward pass, waiting at most this long to fill a batch
# (less than Serve's own per-request overhead, so an idle service adds little latency).
MAX_BATCH_SIZE = 16
BATCH_WAIT_TIMEOUT_S = 0.005
# Must be >= MAX_BATCH_SIZE, or a replica is never offered enough requests to fill a batch.
MAX_ONGOING_REQUESTS = 2 * MAX_BATCH_SIZE
# A replica whose constructor keeps failing (bad artifact, missing version) fails the deploy fast.
MAX_CONSTRUCTOR_RETRIES = 3
USER_CONFIG_KEYS = frozenset({"model_version"})


class _Query(NamedTuple):
    text: str
    k: int


class SearchDeployment:
    """Replica body: load a version at start, answer batched searches, swap versions in place."""

    def __init__(
        self,
        tracking_uri: str,
        model_name: str,
        max_k: int,
        model_version: str | None = None,
        downloader: Loader = DEFAULT_DOWNLOADER,
        encoder_loader: Loader = DEFAULT_ENCODER_LOADER,
        max_batch_size: int = MAX_BATCH_SIZE,
        batch_wait_timeout_s: float = BATCH_WAIT_TIMEOUT_S,
    ) -> None:
        self.max_k = max_k
        self._load_args = dict(
            tracking_uri=tracking_uri, model_name=model_name, downloader=downloader, encoder_loader=encoder_loader
        )
        # Blocking is fine here: the replica takes no traffic until its constructor returns.
        self._searcher: Searcher = load_searcher(model_version=model_version, **self._load_args)
        self._swap_lock = asyncio.Lock()
        self._search_batch = self._answer_one
        if max_batch_size > 1:  # 1 turns batching off (it also needs a Serve replica context)
            from ray import serve

            self._search_batch = serve.batch(
                max_batch_size=max_batch_size, batch_wait_timeout_s=batch_wait_timeout_s
            )(self._answer_batch)

    @property
    def model_version(self) -> str:
        return self._searcher.model_version

    async def reconfigure(self, user_config: dict[str, Any] | None) -> None:
        """Serve calls this after ``__init__`` and whenever only ``user_config`` changes.

        ``{"model_version": "7"}`` pins that version; ``None`` keeps whatever is loaded (the
        champion resolved at start). Loading runs in a worker thread so requests keep flowing on
        the old searcher until the single reference swap.
        """
        config = dict(user_config or {})
        unknown = set(config) - USER_CONFIG_KEYS
        if unknown:
            raise ValueError(f"unknown user_config keys {sorted(unknown)}; allowed: {sorted(USER_CONFIG_KEYS)}")
        wanted = config.get("model_version")
        if wanted is None:
            return
        async with self._swap_lock:
            if str(wanted) == self._searcher.model_version:
                return
            self._searcher = await asyncio.to_thread(load_searcher, model_version=str(wanted), **self._load_args)

    def health(self) -> dict[str, str]:
        searcher = self._searcher
        return {"status": "ok", "model_name": searcher.model_name, "model_version": searcher.model_version}

    async def search(self, text: str, k: int) -> dict[str, Any]:
        return await self._search_batch(_Query(text, k))

    async def _answer_one(self, query: _Query) -> dict[str, Any]:
        return (await self._answer_batch([query]))[0]

    async def _answer_batch(self, queries: list[_Query]) -> list[dict[str, Any]]:
        # One snapshot per batch: every answer, and the version it reports, comes from one model.
        searcher = self._searcher
        hits = await asyncio.to_thread(searcher.search, [q.text for q in queries], [q.k for q in queries])
        return [
            {"results": h, "model_name": searcher.model_name, "model_version": searcher.model_version} for h in hits
        ]

    def __serve_build_asgi_app__(self) -> Any:
        """Serve calls this on the replica after the constructor (late-bound ``@serve.ingress()``)."""
        return http_api(self)


def http_api(service: SearchDeployment) -> Any:
    """FastAPI routes over a replica; built per replica so the request model carries ``max_k``."""
    from fastapi import FastAPI, Request
    from fastapi.encoders import jsonable_encoder
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse

    request_model = search_request_model(service.max_k)
    api = FastAPI(title="ALIGN text-to-image search", version="1")

    @api.exception_handler(RequestValidationError)
    async def rejected(_: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's default 422 echoes the offending input, which can be un-encodable (a lone
        # surrogate from a JSON escape turned that 422 into a 500) or as large as the request.
        errors = [{key: value for key, value in error.items() if key != "input"} for error in exc.errors()]
        return JSONResponse(status_code=422, content={"detail": jsonable_encoder(errors)})

    @api.get("/healthz", response_model=HealthResponse)
    async def healthz() -> dict[str, str]:
        return service.health()

    @api.post("/v1/search", response_model=SearchResponse)
    async def search(body: request_model) -> dict[str, Any]:  # type: ignore[valid-type]
        return await service.search(body.text, body.k)

    return api


def build_app(
    serve_cfg: ServeConfig,
    registry_cfg: RegistryConfig,
    tracking_uri: str,
    *,
    model_version: str | None = None,
    downloader: Loader = DEFAULT_DOWNLOADER,
    encoder_loader: Loader = DEFAULT_ENCODER_LOADER,
    num_cpus: float = REPLICA_NUM_CPUS,
) -> Any:
    """A Serve ``Application`` serving ``models:/<name>@champion`` (or ``model_version`` if pinned).

    ``downloader``/``encoder_loader`` are ``"module:function"`` paths (or picklable callables)
    resolved inside the replica; tests point them at fakes.
    """
    from ray import serve

    deployment = serve.deployment(
        name=DEPLOYMENT_NAME,
        num_replicas=serve_cfg.num_replicas,
        ray_actor_options={"num_cpus": num_cpus},
        max_ongoing_requests=MAX_ONGOING_REQUESTS,
        user_config={"model_version": model_version},
        max_surge_percent=100,
        max_constructor_retry_count=MAX_CONSTRUCTOR_RETRIES,
    )(serve.ingress()(SearchDeployment))
    return deployment.bind(
        tracking_uri=tracking_uri,
        model_name=registry_cfg.model_name,
        max_k=serve_cfg.max_k,
        model_version=model_version,
        downloader=downloader,
        encoder_loader=encoder_loader,
    )


def app_builder(args: dict[str, Any]) -> Any:
    """Entry point for declarative Serve configs (``serve deploy``, KubeRay RayService).

    ``args``: ``tracking_uri`` (required), optional ``serve`` and ``registry`` sections shaped like
    the config tree, and ``model_version``. Change ``user_config.model_version`` in the config to
    swap models in place through ``reconfigure``.
    """
    if not args.get("tracking_uri"):
        raise ValueError("app_builder needs args.tracking_uri (the MLflow tracking URI)")
    return build_app(
        ServeConfig.model_validate(args.get("serve") or {}),
        RegistryConfig.model_validate(args.get("registry") or {}),
        args["tracking_uri"],
        model_version=args.get("model_version"),
    )
