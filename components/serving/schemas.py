"""The HTTP contract of the search service, as pydantic models.

FastAPI turns any violation into a 422 that names the field, so bad input never reaches the model
and never becomes a 500. ``max_k`` comes from config, hence the request model is built per app.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, create_model, field_validator

MAX_TEXT_CHARS = 1000  # the text tower truncates at 64 tokens anyway; this only bounds the payload
DEFAULT_K = 5


class _SearchRequestBase(BaseModel):
    # Unknown keys are usually typos ("top_k"); refusing them beats silently using the default k.
    model_config = ConfigDict(extra="forbid")

    text: StrictStr = Field(min_length=1, max_length=MAX_TEXT_CHARS, description="free-text query")

    @field_validator("text")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        value = value.strip()
        if not value:
            raise ValueError("text must contain at least one non-whitespace character")
        return value


def search_request_model(max_k: int) -> type[_SearchRequestBase]:
    """``{"text": str, "k": int}`` with ``1 <= k <= max_k``."""
    if max_k < 1:
        raise ValueError(f"max_k must be >= 1, got {max_k}")
    return create_model(
        "SearchRequest",
        __base__=_SearchRequestBase,
        k=(StrictInt, Field(default=min(DEFAULT_K, max_k), ge=1, le=max_k, description="results wanted")),
    )


class SearchHit(BaseModel):
    id: str
    score: float
    caption: str
    uri: str
    rank: int  # 1 = best


class SearchResponse(BaseModel):
    results: list[SearchHit]
    model_name: str
    model_version: str


class HealthResponse(BaseModel):
    status: Literal["ok"] = "ok"
    model_name: str
    model_version: str
