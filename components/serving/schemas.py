"""The HTTP contract of the serving API, as pydantic models.

FastAPI turns any violation into a 422 that names the field, so bad input never reaches the model and
never becomes a 500. Limits (k, characters per text, items per call, prompts per classify call) come
from ``ServeConfig``, so the request models are built per app by ``request_models``: no input can make
a request do more than those limits allow. Unknown fields are refused: ``top_k`` instead of ``k``
would otherwise silently fall back to the default.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictFloat,
    StrictInt,
    StrictStr,
    create_model,
    field_validator,
    model_validator,
)

from components.config import ServeConfig

DEFAULT_K = 5
DEFAULT_TEXT_WEIGHT = 2.0  # ALIGN §7: image + 2·text retrieves "the same thing, but <text>"
DEFAULT_TEMPLATES = ("a photo of a {}.", "a picture of a {}.", "an image showing a {}.")
TEMPLATE_SLOT = "{}"
MAX_MODIFIERS = 8


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _encodable(value: str) -> str:
    # JSON may carry lone surrogates ("\ud800"); they cannot be UTF-8 encoded, so a tokenizer or the
    # response encoder would fail on them later.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text (it contains a lone surrogate)") from None
    return value


def _non_blank(value: str) -> str:
    value = _encodable(value).strip()
    if not value:
        raise ValueError("must contain at least one non-whitespace character")
    return value


def _strip_texts(cls, value):
    """Texts (one, or a list) must keep a non-whitespace character; they are passed on stripped."""
    if isinstance(value, list):
        return [_non_blank(v) if isinstance(v, str) else v for v in value]
    return _non_blank(value) if isinstance(value, str) else value


def check_template(template: str) -> str:
    """A prompt template has exactly one ``{}`` slot; nothing else in it is special."""
    if template.count(TEMPLATE_SLOT) != 1:
        raise ValueError(f"template {template[:100]!r} needs exactly one '{{}}' slot for the label, "
                         f"found {template.count(TEMPLATE_SLOT)}")
    return _encodable(template)


def fill_template(template: str, label: str) -> str:
    """The prompt for ``label``: plain replacement of the one ``{}``, never ``str.format``.

    ``format`` would run user-supplied field references and format specs (``{0:>5000000}`` builds a
    5 MB prompt, ``{1}`` raises), so other braces are kept as written.
    """
    return template.replace(TEMPLATE_SLOT, label, 1)


def _check_templates(cls, value):
    return [check_template(t) for t in value] if isinstance(value, list) else value


@dataclass(frozen=True)
class RequestModels:
    embed: type[BaseModel]
    search: type[BaseModel]
    classify: type[BaseModel]
    modifier: type[BaseModel]


def request_models(cfg: ServeConfig) -> RequestModels:
    """Request bodies with this deployment's limits baked into their validation (and OpenAPI docs)."""
    for name, least in (("max_k", 1), ("max_text_chars", 1), ("max_items_per_request", 1), ("max_labels", 2),
                        ("max_prompts_per_request", 2)):
        if getattr(cfg, name) < least:
            raise ValueError(f"serve.{name} must be >= {least}, got {getattr(cfg, name)}")
    # Every text, label and template: bounded tokenizer work per item.
    text = Annotated[StrictStr, Field(min_length=1, max_length=cfg.max_text_chars)]
    validators = {
        "_texts": field_validator("text", "texts", "labels", check_fields=False)(_strip_texts),
        "_templates": field_validator("templates", check_fields=False)(_check_templates),
    }
    modifier = create_model(
        "Modifier",
        __base__=_Strict,
        __validators__=validators,
        text=(text, ...),
        weight=(StrictFloat | StrictInt, Field(default=DEFAULT_TEXT_WEIGHT, ge=-10, le=10,
                                              description="positive adds the text, negative subtracts it")),
    )
    embed = create_model(
        "EmbedRequest",
        __base__=_Strict,
        __validators__=validators,
        texts=(list[text] | None, Field(default=None, min_length=1, max_length=cfg.max_items_per_request)),
        images=(list[StrictStr] | None, Field(default=None, min_length=1, max_length=cfg.max_items_per_request,
                                              description="base64-encoded image files")),
    )
    search = create_model(
        "SearchRequest",
        __base__=_Strict,
        __validators__=validators,
        text=(text | None, None),
        image=(StrictStr | None, Field(default=None, description="base64-encoded query image")),
        modifiers=(list[modifier], Field(default_factory=list, max_length=MAX_MODIFIERS,
                                         description="texts added to or subtracted from the query embedding")),
        k=(StrictInt, Field(default=min(DEFAULT_K, cfg.max_k), ge=1, le=cfg.max_k)),
    )

    def _prompts_within_limit(self):
        prompts = len(self.labels) * len(self.templates or DEFAULT_TEMPLATES)
        if prompts > cfg.max_prompts_per_request:
            raise ValueError(f"{len(self.labels)} labels x {len(self.templates or DEFAULT_TEMPLATES)} templates "
                             f"= {prompts} prompts; the limit is {cfg.max_prompts_per_request}")
        return self

    classify = create_model(
        "ClassifyRequest",
        __base__=_Strict,
        __validators__=validators | {"_prompts": model_validator(mode="after")(_prompts_within_limit)},
        images=(list[StrictStr], Field(min_length=1, max_length=cfg.max_items_per_request,
                                       description="base64-encoded image files")),
        labels=(list[text], Field(min_length=2, max_length=cfg.max_labels)),
        templates=(list[text] | None, Field(
            default=None, min_length=1, max_length=cfg.max_items_per_request,
            description="prompt templates, each with exactly one '{}' slot, filled by plain replacement "
                        "(no str.format fields or specs)")),
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
