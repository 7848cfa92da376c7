"""The FastAPI app in front of a serving replica: routes, limits, optional API key, metrics.

Routes are versioned (``/v1/...``); health, readiness and metrics stay unversioned and open so that
probes need no key. Every refusal is a 4xx with ``{"detail": ...}`` naming the problem.
"""

# No `from __future__ import annotations`: FastAPI must see the per-app request model objects.
import hmac
import time
from typing import Any

from components.serving.client import API_KEY_HEADER, api_key_from_env
from components.serving.images import ImageRejected
from components.serving.metrics import CONTENT_TYPE
from components.serving.schemas import (
    ClassifyResponse,
    EmbedResponse,
    HealthResponse,
    ModelInfo,
    SearchResponse,
    request_models,
)


class _BodyTooLarge(Exception):
    pass


class GuardMiddleware:
    """Pure ASGI middleware: body size limit, API key, and per-endpoint status/latency metrics.

    The size limit is enforced on the bytes actually received, not only on Content-Length, so a chunked
    upload cannot slip past it.
    """

    def __init__(self, app, max_body_bytes: int, api_key: str, metrics) -> None:
        self.app, self.max_body_bytes, self.api_key, self.metrics = app, max_body_bytes, api_key, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        endpoint = path if not path.startswith("/v1/images/") else "/v1/images/{id}"
        started, status = time.perf_counter(), {"code": 500}

        async def send_tracking(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        headers = dict(scope.get("headers") or [])
        try:
            if self.api_key and not _is_open(path):
                supplied = headers.get(API_KEY_HEADER.encode(), b"")
                if not hmac.compare_digest(supplied, self.api_key.encode()):
                    return await _json(send_tracking, 401, "missing or wrong X-API-Key header")
            declared = headers.get(b"content-length")
            if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
                return await _json(send_tracking, 413, f"request body over the {self.max_body_bytes}-byte limit")
            received = {"bytes": 0}

            async def receive_limited():
                message = await receive()
                if message["type"] == "http.request":
                    received["bytes"] += len(message.get("body", b""))
                    if received["bytes"] > self.max_body_bytes:
                        raise _BodyTooLarge
                return message

            try:
                await self.app(scope, receive_limited, send_tracking)
            except _BodyTooLarge:
                await _json(send_tracking, 413, f"request body over the {self.max_body_bytes}-byte limit")
        finally:
            if self.metrics is not None and endpoint.startswith(("/v1/", "/healthz", "/readyz")):
                self.metrics.request(endpoint, str(status["code"]), time.perf_counter() - started)


def _is_open(path: str) -> bool:
    return path in ("/", "/healthz", "/readyz", "/metrics", "/docs", "/openapi.json") or path.startswith("/static/")


async def _json(send, status: int, detail: str) -> None:
    import json

    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def http_api(service: Any) -> Any:
    """FastAPI routes over a replica (``components.serving.app.ServingDeployment`` or a test double)."""
    from fastapi import FastAPI, HTTPException, Request
    from fastapi.encoders import jsonable_encoder
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, Response
    from pydantic import ValidationError

    cfg = service.cfg
    models = request_models(cfg)
    api = FastAPI(title="ALIGN cross-modal search", version="1",
                  description="Text/image search, embeddings and zero-shot classification with an ALIGN dual encoder.")

    @api.exception_handler(RequestValidationError)
    async def rejected(_: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's default echoes the offending input, which can be un-encodable or as large as the body.
        errors = [{key: value for key, value in error.items() if key not in ("input", "ctx", "url")}
                  for error in exc.errors()]
        return JSONResponse(status_code=422, content={"detail": jsonable_encoder(errors)})

    @api.exception_handler(ImageRejected)
    async def bad_image(_: Request, exc: ImageRejected) -> JSONResponse:
        return JSONResponse(status_code=exc.status, content={"detail": str(exc)})

    @api.get("/healthz", response_model=HealthResponse)
    async def healthz() -> dict:
        return service.health()

    @api.get("/readyz", response_model=HealthResponse, responses={503: {"description": "not ready"}})
    async def readyz() -> Any:
        try:
            return await service.ready()
        except Exception as exc:  # noqa: BLE001 -- readiness reports any failure as 503
            return JSONResponse(status_code=503, content={"detail": f"not ready: {exc}"})

    @api.get("/metrics")
    async def metrics() -> Response:
        return Response(service.metrics.render(), media_type=CONTENT_TYPE)

    @api.get("/v1/model", response_model=ModelInfo)
    async def model_info() -> dict:
        return service.info()

    @api.post("/v1/embed", response_model=EmbedResponse,
              openapi_extra={"requestBody": {"content": {"multipart/form-data": {"schema": {
                  "type": "object", "properties": {"texts": {"type": "array", "items": {"type": "string"}},
                                                   "images": {"type": "array", "items": {"type": "string", "format": "binary"}}}}}}}})
    async def embed(body: models.embed) -> dict:  # type: ignore[valid-type]
        if not body.texts and not body.images:
            raise HTTPException(422, "give texts and/or images")
        return await service.embed(body.texts or [], service.decode_base64_images(body.images or [], "images"))

    @api.post("/v1/embed/upload", response_model=EmbedResponse)
    async def embed_upload(request: Request) -> dict:
        """Multipart form: repeated ``texts`` fields and ``images`` file parts."""
        form = await request.form(max_files=cfg.max_items_per_request, max_fields=cfg.max_items_per_request)
        texts, images = form.getlist("texts"), form.getlist("images")
        if any(not isinstance(t, str) for t in texts):
            raise HTTPException(422, "texts must be plain form fields, not file parts")
        if any(isinstance(f, str) for f in images):
            raise HTTPException(422, "images must be file parts, not plain form fields")
        files = [await f.read() for f in images]
        try:  # the JSON route's limits and checks, applied to the form's texts
            body = models.embed.model_validate({"texts": texts or None, "images": ["x"] * len(files) or None})
        except ValidationError as exc:
            raise RequestValidationError(exc.errors()) from None
        if not body.texts and not files:
            raise HTTPException(422, "give texts and/or images")
        return await service.embed(body.texts or [], service.decode_raw_images(files, "images"))

    @api.post("/v1/search", response_model=SearchResponse)
    async def search(body: models.search) -> dict:  # type: ignore[valid-type]
        if body.text is None and body.image is None:
            raise HTTPException(422, "give a text and/or an image to search with")
        image = service.decode_base64_images([body.image], "image")[0] if body.image is not None else None
        modifiers = [(m.text, float(m.weight)) for m in body.modifiers]
        return await service.search(body.text, image, modifiers, body.k)

    @api.post("/v1/classify", response_model=ClassifyResponse)
    async def classify(body: models.classify) -> dict:  # type: ignore[valid-type]
        if len(set(body.labels)) != len(body.labels):
            raise HTTPException(422, "labels must be distinct")
        images = service.decode_base64_images(body.images, "images")
        return await service.classify(images, body.labels, body.templates)

    @api.get("/v1/images/{item_id:path}", responses={200: {"content": {"image/jpeg": {}}}, 404: {}})
    async def image(item_id: str) -> Response:
        data = service.image_bytes(item_id)
        if data is None:
            raise HTTPException(404, f"no stored image for item {item_id!r}")
        return Response(data, media_type=_sniff(data), headers={"Cache-Control": "public, max-age=86400"})

    _mount_page(api)
    api.add_middleware(GuardMiddleware, max_body_bytes=cfg.max_body_bytes,
                       api_key=api_key_from_env(cfg.api_key_env), metrics=service.metrics)
    return api


def _mount_page(api) -> None:
    try:
        from components.serving.static_files import page_routes
    except ImportError:  # the page is optional for API-only deployments
        return
    page_routes(api)


def _sniff(data: bytes) -> str:
    if data[:3] == b"\xff\xd8\xff":
        return "image/jpeg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "image/png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return "application/octet-stream"
