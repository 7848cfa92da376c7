"""The search page, driven end to end in headless Chromium (Debian's package, via ``tests.browser``).

The page talks to a **stand-in** of the search API, not to the Ray Serve app: a small FastAPI app
on 127.0.0.1 that implements the same HTTP contract (``v1/model``, ``v1/search``, ``v1/images/{id}``)
over 20 generated coloured-shape PNGs with a trivial, deterministic scorer, and mounts the real page
through ``components.serving.static_files.page_routes``. So these tests pin the page and its routes,
in seconds, without Ray or a model. To run the same browser checks against the real service, give
the tests a ``site`` fixture whose ``url`` is the Serve app's and whose corpus holds the same kind of
captioned items; only the ``received`` request log is stand-in-only.

Stand-in scoring (why results are predictable): text and modifiers score by word overlap with the
caption ("red circle" matches "a red circle" fully, "a red square" half); a modifier adds its
overlap times weight/2; an uploaded image scores by how close its shape colour is to the item's.
"""

# No `from __future__ import annotations`: FastAPI must resolve the stand-in's request models, which
# are defined inside stand_in_app.
import base64
import io
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from playwright.sync_api import expect

from components.config import ServeConfig
from components.runtime.ray_cluster import free_port
from components.serving.static_files import CONTENT_SECURITY_POLICY, page_routes
from tests.browser import headless_page, wait_until_images_load

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

MODEL_NAME = "align"
COLOURS = {
    "red": (220, 38, 38),
    "green": (34, 154, 72),
    "blue": (37, 99, 235),
    "yellow": (234, 179, 8),
    "purple": (147, 51, 234),
}
SHAPES = ("circle", "square", "triangle", "star")
SIZE = 128
LIMITS = ServeConfig()  # the real service's default request limits (max_k, max_text_chars)
STOPWORDS = frozenset({"a", "an", "the", "of"})


# ---- the stand-in API ---------------------------------------------------------------------------


def shape_png(colour: tuple[int, int, int], shape: str) -> bytes:
    """A flat-colour shape on white: no anti-aliasing, so every non-white pixel is exactly ``colour``."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (SIZE, SIZE), "white")
    draw = ImageDraw.Draw(image)
    lo, hi, mid = 20, SIZE - 20, SIZE // 2
    if shape == "circle":
        draw.ellipse((lo, lo, hi, hi), fill=colour)
    elif shape == "square":
        draw.rectangle((lo + 6, lo + 6, hi - 6, hi - 6), fill=colour)
    elif shape == "triangle":
        draw.polygon([(mid, lo), (hi, hi - 6), (lo, hi - 6)], fill=colour)
    else:  # a five-pointed star
        import math

        points = []
        for i in range(10):
            radius = (hi - lo) / 2 if i % 2 == 0 else (hi - lo) / 5
            angle = -math.pi / 2 + i * math.pi / 5
            points.append((mid + radius * math.cos(angle), mid + radius * math.sin(angle)))
        draw.polygon(points, fill=colour)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def shape_colour(png: bytes) -> tuple[float, float, float]:
    """Mean colour of the non-white pixels: the stand-in's whole "image encoder"."""
    import numpy as np
    from PIL import Image

    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.float64).reshape(-1, 3)
    ink = pixels[pixels.sum(axis=1) < 3 * 245]
    return tuple((ink if len(ink) else pixels).mean(axis=0))


@dataclass(frozen=True)
class Item:
    id: str
    caption: str
    png: bytes
    colour: tuple[float, float, float]


def make_corpus() -> list[Item]:
    items = []
    for colour_name, rgb in COLOURS.items():
        for shape in SHAPES:
            png = shape_png(rgb, shape)
            items.append(Item(f"{colour_name}-{shape}", f"a {colour_name} {shape}", png, shape_colour(png)))
    return items


def words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+", text.lower())) - STOPWORDS


def overlap(query: str, caption: str) -> float:
    wanted = words(query)
    return len(wanted & words(caption)) / len(wanted) if wanted else 0.0


def score(item: Item, text: str | None, colour: tuple[float, ...] | None, modifiers: list[Any]) -> float:
    total = overlap(text, item.caption) if text else 0.0
    if colour is not None:
        distance = sum((a - b) ** 2 for a, b in zip(colour, item.colour)) ** 0.5
        total += 1.0 - distance / (3 * 255**2) ** 0.5
    for modifier in modifiers:
        total += modifier.weight / 2 * overlap(modifier.text, item.caption)
    return total


@dataclass
class StandInState:
    """What a test may change or inspect: the version the API reports and every search body received."""

    model_version: str = "3"
    received: list[dict[str, Any]] = field(default_factory=list)


def stand_in_app(items: list[Item], state: StandInState) -> Any:
    """A FastAPI app with the search service's HTTP contract and the real search page."""
    from fastapi import FastAPI, HTTPException, Request
    from fastapi.responses import Response
    from pydantic import BaseModel, ConfigDict, Field, model_validator

    class Modifier(BaseModel):
        model_config = ConfigDict(extra="forbid")
        text: str = Field(min_length=1, max_length=LIMITS.max_text_chars)
        weight: float

    class SearchBody(BaseModel):
        model_config = ConfigDict(extra="forbid")
        text: str | None = Field(default=None, min_length=1, max_length=LIMITS.max_text_chars)
        image: str | None = Field(default=None, min_length=1)
        modifiers: list[Modifier] = Field(default_factory=list, max_length=8)
        k: int = Field(default=5, ge=1, le=LIMITS.max_k)

        @model_validator(mode="after")
        def _has_query(self) -> "SearchBody":
            if not self.text and not self.image:
                raise ValueError("a search needs text or an image")
            return self

    by_id = {item.id: item for item in items}
    api = FastAPI(title="search API stand-in")

    def versions() -> dict[str, str]:
        return {"model_name": MODEL_NAME, "model_version": state.model_version, "index_version": state.model_version}

    @api.get("/v1/model")
    def model() -> dict[str, Any]:
        return {**versions(), "items": len(items), "dim": 3}

    @api.post("/v1/search")
    async def search(body: SearchBody, request: Request) -> dict[str, Any]:
        state.received.append(await request.json())
        colour = None
        if body.image:
            try:
                colour = shape_colour(base64.b64decode(body.image, validate=True))
            except Exception as exc:  # the real service answers 422 for an undecodable image too
                raise HTTPException(status_code=422, detail=f"image: not a decodable picture ({exc})") from None
        scored = sorted(
            ((score(item, body.text, colour, body.modifiers), i, item) for i, item in enumerate(items)),
            key=lambda entry: (-entry[0], entry[1]),
        )[: body.k]
        results = [
            {"id": item.id, "score": s, "caption": item.caption, "image_url": f"v1/images/{item.id}", "rank": rank}
            for rank, (s, _, item) in enumerate(scored, start=1)
        ]
        query = "image+text" if body.image and (body.text or body.modifiers) else "image" if body.image else "text"
        return {"results": results, "query": query, **versions()}

    @api.get("/v1/images/{item_id}")
    def image(item_id: str) -> Response:
        if item_id not in by_id:
            raise HTTPException(status_code=404, detail=f"no item {item_id!r}")
        return Response(content=by_id[item_id].png, media_type="image/png")

    page_routes(api)
    return api


@contextmanager
def serve_in_thread(app: Any) -> Iterator[str]:
    """Run ``app`` with uvicorn on a free 127.0.0.1 port in a daemon thread; stop it on exit."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, name="search-page-stand-in", daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError("the stand-in search API did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@dataclass
class Site:
    url: str
    items: dict[str, Item]
    state: StandInState


@pytest.fixture(scope="module")
def stand_in() -> Iterator[Site]:
    items = make_corpus()
    state = StandInState()
    with serve_in_thread(stand_in_app(items, state)) as url:
        yield Site(url=url, items={item.id: item for item in items}, state=state)


@pytest.fixture
def site(stand_in: Site) -> Site:
    """The stand-in, reset: version 3, empty request log."""
    stand_in.state.model_version = "3"
    stand_in.state.received.clear()
    return stand_in


# ---- the tests ----------------------------------------------------------------------------------


def wait_for_results(page: Any) -> Any:
    page.wait_for_selector("#results .result")
    return page.locator("#results .result")


def test_page_routes_serve_only_the_page_files_with_security_headers(site: Site) -> None:
    page = httpx.get(site.url, timeout=10)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert page.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["cache-control"] == "no-cache"
    for name, kind in (("app.js", "text/javascript"), ("style.css", "text/css")):
        response = httpx.get(f"{site.url}static/{name}", timeout=10)
        assert response.status_code == 200 and response.headers["content-type"].startswith(kind), name
        assert response.headers["cache-control"] == "no-cache"
    for name in ("missing.js", "..%2Fstatic_files.py", "%2E%2E%2F__init__.py"):
        assert httpx.get(f"{site.url}static/{name}", timeout=10).status_code == 404, name


def test_text_query_shows_the_matching_images(site: Site) -> None:
    with headless_page(site.url) as page:
        problems: list[str] = []
        page.on("console", lambda msg: problems.append(msg.text) if msg.type == "error" else None)
        page.on("pageerror", lambda exc: problems.append(str(exc)))
        page.goto(site.url)
        expect(page.locator("#model-version")).to_contain_text("index")
        assert page.inner_text("#model-version") == "align v3 · index v3"
        assert page.input_value("#k") == "12"
        assert page.is_hidden("#error")

        page.fill("#query", "red circle")
        page.press("#query", "Enter")
        cards = wait_for_results(page)

        assert cards.count() == 12
        assert cards.first.get_attribute("data-id") == "red-circle"
        assert cards.first.locator(".result-caption").inner_text() == "a red circle"
        assert re.fullmatch(r"-?\d+\.\d{3}", cards.first.locator(".result-score").inner_text())
        assert cards.first.locator("img.result-image").get_attribute("src").endswith("v1/images/red-circle")
        wait_until_images_load(page, "#results .result img.result-image")
        # Half matches ("a red square", "a blue circle", ...) come after the full match.
        assert {cards.nth(i).get_attribute("data-id") for i in range(1, 5)} <= {
            f"red-{s}" for s in SHAPES
        } | {f"{c}-circle" for c in COLOURS}
        assert re.fullmatch(r"12 results in \d+ ms", page.inner_text("#status"))
        assert site.state.received == [{"text": "red circle", "k": 12}]
        assert problems == []  # includes CSP violations, which Chromium reports as console errors


def test_uploaded_image_plus_text_modifier(site: Site, tmp_path) -> None:
    query_png = site.items["blue-circle"].png
    path = tmp_path / "query.png"
    path.write_bytes(query_png)
    with headless_page(site.url) as page:
        page.goto(site.url)
        expect(page.locator("#model-version")).to_contain_text("v3")
        page.set_input_files("#image-input", str(path))
        page.wait_for_selector("#image-preview", state="visible")
        assert page.is_visible("#clear-image")
        assert page.evaluate("document.querySelector('#image-preview').src.startsWith('blob:')")

        page.click("#add-plus")
        assert page.locator("#modifiers .modifier").count() == 1
        assert page.inner_text("#modifiers .modifier .modifier-sign") == "+"
        page.fill("#modifiers .modifier input.modifier-text", "square")
        site.state.model_version = "4"  # a model swap between page load and search
        page.click("#search")
        cards = wait_for_results(page)

        body = site.state.received[-1]
        assert base64.b64decode(body["image"]) == query_png
        assert body["modifiers"] == [{"text": "square", "weight": 2.0}]
        assert "text" not in body and body["k"] == 12
        # blue circle's colour, plus "square": the blue square wins over both the circle and red squares.
        assert cards.first.get_attribute("data-id") == "blue-square"
        # The version shown follows each search response, not just the one fetched at load.
        assert page.inner_text("#model-version") == "align v4 · index v4"

        page.click("#clear-image")
        assert page.is_hidden("#image-preview") and page.is_hidden("#clear-image")


def test_dropped_image_becomes_the_query(site: Site) -> None:
    query_png = site.items["green-star"].png
    with headless_page(site.url) as page:
        page.goto(site.url)
        page.wait_for_selector("#drop-zone")
        # Build a real DataTransfer holding a PNG file and drop it, as a file manager drag would.
        page.evaluate(
            """(b64) => {
                const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
                const transfer = new DataTransfer();
                transfer.items.add(new File([bytes], "dropped.png", { type: "image/png" }));
                const zone = document.querySelector("#drop-zone");
                for (const type of ["dragenter", "dragover", "drop"]) {
                    const init = { bubbles: true, cancelable: true, dataTransfer: transfer };
                    zone.dispatchEvent(new DragEvent(type, init));
                }
            }""",
            base64.b64encode(query_png).decode(),
        )
        page.wait_for_selector("#image-preview", state="visible")
        assert page.inner_text("#image-name") == "dropped.png"
        page.click("#add-minus")
        assert page.inner_text("#modifiers .modifier-sign") == "−"
        page.fill("#modifiers input.modifier-text", "star")
        page.click("#search")
        cards = wait_for_results(page)
        assert base64.b64decode(site.state.received[-1]["image"]) == query_png
        assert site.state.received[-1]["modifiers"] == [{"text": "star", "weight": -2.0}]
        assert cards.first.get_attribute("data-id").startswith("green-")
        assert cards.first.get_attribute("data-id") != "green-star"


def test_rejected_query_shows_the_servers_message(site: Site) -> None:
    with headless_page(site.url) as page:
        page.goto(site.url)
        page.wait_for_selector("#query")

        page.press("#query", "Enter")  # nothing to search with: caught before any request
        page.wait_for_selector("#error", state="visible")
        assert "Type a query or choose an image" in page.inner_text("#error")
        assert site.state.received == []

        page.fill("#query", "x" * (LIMITS.max_text_chars + 1))
        page.press("#query", "Enter")
        expect(page.locator("#error")).to_contain_text("at most", timeout=10_000)
        message = page.inner_text("#error")
        assert message.startswith("text:") and f"at most {LIMITS.max_text_chars} characters" in message
        assert page.locator("#results .result").count() == 0
        assert page.inner_text("#status") == ""
        assert page.is_enabled("#search")  # the page recovers: another search can be made

        page.fill("#query", "yellow triangle")
        page.press("#query", "Enter")
        assert wait_for_results(page).first.get_attribute("data-id") == "yellow-triangle"
        assert page.is_hidden("#error")
