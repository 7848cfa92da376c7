"""The HTTP contract of the serving API, as pydantic models.

FastAPI turns any violation into a 422 that names the field, so bad input never reaches the model and
never becomes a 500. Limits (k, text length, items per call) come from ``ServeConfig``, so the request
models are built per app by ``request_models``. Unknown fields are refused: ``top_k`` instead of ``k``
would otherwise silently fall back to the default.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, StrictStr, create_model, field_validator

from components.config import ServeConfig

DEFAULT_K = 5
DEFAULT_TEXT_WEIGHT = 2.0  # ALIGN §7: image + 2·text retrieves "the same thing, but <text>"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _non_blank(value: str) -> str:
    value = value.strip()
    if not value:
        raise ValueError("must contain at least one non-whitespace character")
    return value


def _strip_texts(cls, value):
    """Texts (one, or a list) must keep a non-whitespace character; they are passed on stripped."""
    if isinstance(value, list):
        return [_non_blank(v) for v in value]
    return _non_blank(value) if isinstance(value, str) else value


@dataclass(frozen=True)
class RequestModels:
    embed: type[BaseModel]
    search: type[BaseModel]
    classify: type[BaseModel]
    modifier: type[BaseModel]


def request_models(cfg: ServeConfig) -> RequestModels:
    """Request bodies with this deployment's limits baked into their validation (and OpenAPI docs)."""
    if cfg.max_k < 1:
        raise ValueError(f"serve.max_k must be >= 1, got {cfg.max_k}")
    text = (StrictStr, Field(min_length=1, max_length=cfg.max_text_chars))
    validators = {"_texts": field_validator("text", "texts", "labels", check_fields=False)(_strip_texts)}
    modifier = create_model(
        "Modifier",
        __base__=_Strict,
        __validators__=validators,
        text=text,
        weight=(StrictFloat | StrictInt, Field(default=DEFAULT_TEXT_WEIGHT, ge=-10, le=10,
                                              description="positive adds the text, negative subtracts it")),
    )
    items = Field(default=None, min_length=1, max_length=cfg.max_items_per_request)
    embed = create_model(
        "EmbedRequest",
        __base__=_Strict,
        __validators__=validators,
        texts=(list[StrictStr] | None, items),
        images=(list[StrictStr] | None, Field(default=None, min_length=1, max_length=cfg.max_items_per_request,
                                              description="base64-encoded image files")),
    )
    search = create_model(
        "SearchRequest",
        __base__=_Strict,
        __validators__=validators,
        text=(StrictStr | None, Field(default=None, min_length=1, max_length=cfg.max_text_chars)),
        image=(StrictStr | None, Field(default=None, description="base64-encoded query image")),
        modifiers=(list[modifier], Field(default_factory=list, max_length=8,
                                         description="texts added to or subtracted from the query embedding")),
        k=(StrictInt, Field(default=min(DEFAULT_K, cfg.max_k), ge=1, le=cfg.max_k)),
    )
    classify = create_model(
        "ClassifyRequest",
        __base__=_Strict,
        __validators__=validators,
        images=(list[StrictStr], Field(min_length=1, max_length=cfg.max_items_per_request)),
        labels=(list[StrictStr], Field(min_length=2, max_length=cfg.max_labels)),
        templates=(list[StrictStr] | None, Field(default=None, min_length=1, max_length=32,
                                                 description="prompt templates with one '{}' slot")),
    )
    for model in (embed, search, classify, modifier):
        model.model_rebuild()
    return RequestModels(embed=embed, search=search, classify=classify, modifier=modifier)


class SearchHit(BaseModel):
    id: str
    score: float
    caption: str
    image_url: str
    rank: int  # 1 = best


class _Versioned(BaseModel):
    model_config = ConfigDict(protected_namespaces=())
    model_name: str
    model_version: str
    index_version: str


class SearchResponse(_Versioned):
    results: list[SearchHit]
    query: Literal["text", "image", "image+text"]


class EmbedResponse(_Versioned):
    dim: int
    text_embeddings: list[list[float]]
    image_embeddings: list[list[float]]


class LabelScore(BaseModel):
    label: str
    probability: float


class Prediction(BaseModel):
    label: str
    scores: list[LabelScore]  # best first


class ClassifyResponse(_Versioned):
    predictions: list[Prediction]


class ModelInfo(_Versioned):
    index_kind: str
    items: int
    dim: int
    pinned: bool
    last_swap_error: str


class HealthResponse(BaseModel):
    model_config = ConfigDict(protected_namespaces=())
    status: Literal["ok"] = "ok"
    model_name: str
    model_version: str
