"""Hostile input for every route: no body, header or path makes the API answer 500 or do unbounded work.

A seeded generator (no hypothesis in the venv) builds a bounded number of bodies per route from hostile
parts: wrong types, strings just over each limit, deep nesting, odd unicode (lone surrogates included),
``str.format`` templates, empty lists, missing and unknown fields, invalid base64. Over-limit inputs
must be refused with a 4xx. Small limits keep every request cheap; the whole file runs in seconds.
"""

import base64
import io
import json
import random
import time

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from components.serving.app import ServingDeployment
from components.serving.http import http_api
from tests.serving_fakes import CAPTIONS, make_registry

LOADERS = {
    "downloader": "tests.serving_fakes:download_model",
    "encoder_loader": "tests.serving_fakes:load_encoder",
    "index_locator": "tests.serving_fakes:index_location",
    "champion_resolver": "tests.serving_fakes:champion_version",
}
TEXT, ITEMS, LABELS, PROMPTS, MAX_K = 40, 4, 5, 12, 10
CFG = {"max_k": MAX_K, "batch_size": 1, "follow_champion_s": 0, "max_body_bytes": 60_000, "max_image_bytes": 20_000,
       "max_image_pixels": 10_000, "max_text_chars": TEXT, "max_items_per_request": ITEMS, "max_labels": LABELS,
       "max_prompts_per_request": PROMPTS}
BODIES_PER_ROUTE = 150
SEED = 19


def _png(size=(8, 8), red=3) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", size, (red, 0, 0)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


PNG = _png()
FORMAT_TEMPLATES = ["{}{0:>5000000}", "{{}}{1}", "{{}}{0:>5000000}", "{}{x}", "{}}", "{", "}", "{}{}", "{0}", "{!r}",
                    "%s {}", "{}" * 3, "{:{}}", "{} {0.__class__}", "{\ud800}"]
UNICODE = ["\ud800", "a\udfff", "\x00", "\u202e{}", "e\u0301" * 5, "🐱" * 3, "\ufeff", "ß", "\u3000", "\n\t ", "İ" * 9,
           "a" * TEXT, "a" * (TEXT + 1), "{}" + "a" * (TEXT - 1)]
BASE64 = ["!!!", "====", "A", "AAA=", "data:image/png;base64,", "data:image/png;base64,@@", PNG, "data:image/png;base64," + PNG,
          base64.b64encode(b"not an image").decode(), _png(size=(200, 200)), "A" * 30_000, PNG[:40], "\ud800" + PNG]


def _nested(depth: int):
    value = "x"
    for _ in range(depth):
        value = [value]
    return value


def _string(rng: random.Random) -> str:
    return rng.choice(UNICODE + FORMAT_TEMPLATES + BASE64)


def _hostile(rng: random.Random, good):
    """A hostile value for a field whose well-formed value is ``good``."""
    kind = rng.randrange(12)
    if kind <= 2 and isinstance(good, list):  # a well-formed list with one bad item: reaches the deeper checks
        bad = list(good)
        bad[rng.randrange(len(bad))] = _string(rng) if kind < 2 else rng.choice([None, 7, [], {}, _nested(4)])
        return bad
    if kind == 3:
        return rng.choice([None, 0, -1, 1.5, True, 2**70, {}, {"a": 1}, "", " "])
    if kind == 4:
        return _string(rng)
    if kind == 5:
        return []
    if kind == 6:
        return [_string(rng) for _ in range(rng.choice([1, ITEMS, ITEMS + 1]))]
    if kind == 7:
        return _nested(rng.choice([3, 50, 900]))
    if kind == 8:
        return ["x" * rng.choice([TEXT, TEXT + 1])] * rng.choice([1, 2])
    if kind == 9:
        return [good[0]] * rng.choice([ITEMS + 1, LABELS + 1, 40]) if isinstance(good, list) else good
    if kind == 10:
        return rng.choice([0, 1, MAX_K, MAX_K + 1, -5, "5", 2.0, float("inf"), float("nan")])
    return [{"text": rng.choice(UNICODE), "weight": rng.choice([1, -2.5, 11, "1", None])}, {"nested": _nested(5)}]


GOOD = {
    "/v1/search": {"text": CAPTIONS[2], "image": PNG, "modifiers": [{"text": "blue", "weight": 1.0}], "k": 3},
    "/v1/embed": {"texts": ["a cat", "a dog"], "images": [PNG]},
    "/v1/classify": {"images": [PNG], "labels": ["cat", "dog", "fox"], "templates": ["a photo of a {}.", "{}"]},
}


def _body(rng: random.Random, route: str) -> bytes:
    if rng.random() < 0.08:  # not a JSON object at all
        return rng.choice([b"", b"{", b"null", b"[]", b"\xff\xfe", b'{"text": "a" "b"}', rng.randbytes(64),
                           ("[" * 5000 + "]" * 5000).encode(), b'{"k": 1' + b"0" * 5000 + b"}"])
    good = GOOD[route]
    body = {field: value for field, value in good.items() if rng.random() > 0.15}  # some fields missing
    for field in rng.sample(sorted(good), rng.choice([1, 1, 2])):  # one or two hostile fields, the rest well-formed
        body[field] = _hostile(rng, good[field])
    if rng.random() < 0.1:
        body[rng.choice(["top_k", "extra", "__class__", "text\u0000"])] = 1
    # ensure_ascii writes lone surrogates as \ud800 escapes, which a client's own encoder would refuse.
    return json.dumps(body, ensure_ascii=True, allow_nan=True).encode()


ENCODED: list[list[str]] = []  # every batch of texts the fuzzed app sent to its encoder


@pytest.fixture(scope="module")
def http(tmp_path_factory):
    root = make_registry(tmp_path_factory.mktemp("registry"))
    replica = ServingDeployment(CFG, tracking_uri=str(root), model_name="align", loaders=LOADERS)
    encode = replica._texts

    async def recording(model, texts):
        ENCODED.append(list(texts))
        return await encode(model, texts)

    replica._texts = recording
    with TestClient(http_api(replica), raise_server_exceptions=False) as client:
        yield client


def _check(response, what) -> None:
    assert response.status_code < 500, (what, response.status_code, response.text[:300])
    if (response.status_code >= 400 and response.content  # HEAD answers carry no body
            and response.headers.get("content-type", "").startswith("application/json")):
        assert response.json().get("detail"), what


@pytest.mark.parametrize("route", sorted(GOOD))
def test_generated_json_bodies_never_get_a_500(http, route):
    rng = random.Random(f"{SEED}{route}")
    statuses, started = set(), time.perf_counter()
    for i in range(BODIES_PER_ROUTE):
        body = _body(rng, route)
        response = http.post(route, content=body, headers={"content-type": "application/json"})
        _check(response, (route, i, body[:200]))
        statuses.add(response.status_code)
    assert 200 in statuses and 422 in statuses, statuses  # both paths were exercised
    assert time.perf_counter() - started < 20
    # No input amplifies work: a prompt is at most a template plus a label, a call at most the prompt limit.
    assert all(len(text) <= 2 * TEXT for batch in ENCODED for text in batch)
    assert all(len(batch) <= max(PROMPTS, ITEMS) for batch in ENCODED)


def test_generated_multipart_uploads_never_get_a_500(http):
    rng = random.Random(SEED)
    png = base64.b64decode(PNG)
    statuses = set()
    for i in range(BODIES_PER_ROUTE):
        data = {"texts": [rng.choice(UNICODE[3:] + FORMAT_TEMPLATES[:5] + ["a cat"]) for _ in range(rng.choice([0, 1, 2, ITEMS + 1]))]}
        if rng.random() < 0.2:
            data["images"] = ["not a file"]
        files = [(rng.choice(["images", "images", "texts", "other"]),
                  ("f.png", rng.choice([png, b"", b"GIF89a", rng.randbytes(30)]), "image/png"))
                 for _ in range(rng.choice([0, 1, ITEMS + 1]))]
        if not files:
            files = None
        response = http.post("/v1/embed/upload", data=data, files=files)
        _check(response, ("/v1/embed/upload", i, data, files and [f[0] for f in files]))
        statuses.add(response.status_code)
    for content, content_type in ((b"garbage", "multipart/form-data"), (b"--b\r\nbroken", "multipart/form-data; boundary=b"),
                                  (b"texts=%ff%fe&texts=", "application/x-www-form-urlencoded"), (b'{"texts": ["a"]}', "application/json")):
        _check(http.post("/v1/embed/upload", content=content, headers={"content-type": content_type}), content)
    assert 200 in statuses and 422 in statuses, statuses


def test_every_other_route_method_and_path_stays_below_500(http):
    rng = random.Random(SEED)
    paths = ["/healthz", "/readyz", "/metrics", "/v1/model", "/", "/docs", "/openapi.json", "/v1/images/item-1",
             "/v1/images/%00", "/v1/images/" + "a" * 5000, "/v1/images/../../etc/passwd", "/v1/nothing", "/static/..%2f..%2fx",
             "/v1/search", "/v1/embed", "/v1/classify", "/v1/embed/upload"]
    for path in paths:
        for method in ("GET", "POST", "PUT", "DELETE", "OPTIONS", "HEAD"):
            query = rng.choice(["", "?k=1", "?x=" + "%ff" * 20, "?" + "a=1&" * 200])
            _check(http.request(method, path + query, content=rng.choice([b"", b"{}", b"\x00"])), (method, path))
    for name in ("/healthz", "/readyz", "/v1/model"):
        assert http.get(name).status_code == 200


def _over(n):
    return "x" * (n + 1)


OVER_LIMIT = [
    ("/v1/search", {"text": _over(TEXT)}, 422),
    ("/v1/search", {"text": "a", "modifiers": [{"text": _over(TEXT)}]}, 422),
    ("/v1/search", {"text": "a", "modifiers": [{"text": "b"}] * 9}, 422),
    ("/v1/search", {"text": "a", "k": MAX_K + 1}, 422),
    ("/v1/search", {"image": _png(size=(101, 100))}, 413),  # over max_image_pixels
    ("/v1/search", {"image": base64.b64encode(random.Random(0).randbytes(20_001)).decode()}, 413),
    ("/v1/embed", {"texts": ["a", _over(TEXT)]}, 422),
    ("/v1/embed", {"texts": ["a"] * (ITEMS + 1)}, 422),
    ("/v1/embed", {"images": [PNG] * (ITEMS + 1)}, 422),
    ("/v1/classify", {"images": [PNG], "labels": ["a", _over(TEXT)]}, 422),
    ("/v1/classify", {"images": [PNG], "labels": [f"l{i}" for i in range(LABELS + 1)], "templates": ["{}"]}, 422),
    ("/v1/classify", {"images": [PNG], "labels": ["a", "b"], "templates": ["{}" + _over(TEXT - 2)]}, 422),
    ("/v1/classify", {"images": [PNG], "labels": ["a", "b"], "templates": ["{}"] * (ITEMS + 1)}, 422),
    ("/v1/classify", {"images": [PNG], "labels": ["a", "b", "c", "d", "e"]}, 422),  # 5 x 3 default templates > 12
    ("/v1/classify", {"images": [PNG], "labels": ["a", "b", "c"], "templates": ["{}", "a {}", "b {}", "c {}"]}, 200),  # 12: at the limit
    ("/v1/classify", {"images": [PNG] * (ITEMS + 1), "labels": ["a", "b"]}, 422),
    ("/v1/search", {"text": "x" * 70_000}, 413),  # over max_body_bytes
]


@pytest.mark.parametrize(("route", "body", "status"), OVER_LIMIT, ids=[f"{r}-{i}" for i, (r, _, _) in enumerate(OVER_LIMIT)])
def test_inputs_just_over_each_limit_are_refused(http, route, body, status):
    response = http.post(route, json=body)
    assert response.status_code == status, response.text[:300]
    if status != 200:
        assert response.json()["detail"]
