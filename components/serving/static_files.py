"""The search page: one HTML file, one script, one stylesheet, served by the search app itself.

Serving the page from the same origin as the API means the page needs no CORS and can run under a
strict Content-Security-Policy (no inline code, nothing from other hosts). The files ship as package
data (``pyproject.toml`` lists ``static/*``), so an installed wheel serves them too.

Only the three known files are served: ``/static/{name}`` never touches the file system with a
client-chosen path, so there is nothing to traverse. Files are read per request (they are small) and
marked ``no-cache``, so a redeployed page is picked up without a stale script talking to a new API.
"""

# No `from __future__ import annotations`: FastAPI must resolve the handlers' `Request` annotation,
# which is imported inside page_routes (fastapi stays out of import time).
from pathlib import Path
from typing import Any

STATIC_DIR: Path = Path(__file__).resolve().with_name("static")

PAGE = "index.html"
# name -> content type; the allow-list of everything /static/ will ever answer.
STATIC_FILES: dict[str, str] = {
    PAGE: "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
# The page loads only its own script, stylesheet and images; query previews are blob: URLs.
CONTENT_SECURITY_POLICY = "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'"
_COMMON_HEADERS = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}
PAGE_HEADERS = {**_COMMON_HEADERS, "Content-Security-Policy": CONTENT_SECURITY_POLICY}


def page_routes(api: Any) -> None:
    """Add ``GET /`` (the search page) and ``GET /static/{name}`` to a FastAPI app.

    Call it once on the app that also answers ``v1/...``: the page builds API URLs relative to its
    own location, so it works under any route prefix as long as it is served from that prefix's root.
    """
    from fastapi import HTTPException, Request
    from fastapi.responses import RedirectResponse, Response

    def _file(name: str, headers: dict[str, str]) -> Response:
        path = STATIC_DIR / name
        try:
            body = path.read_bytes()
        except FileNotFoundError:  # a broken install; say so instead of a bare 500
            raise HTTPException(status_code=500, detail=f"search page file missing: {path}") from None
        return Response(content=body, media_type=STATIC_FILES[name], headers=headers)

    # Plain `def`: FastAPI runs these in its thread pool, so the file read never blocks the event loop.
    @api.get("/", include_in_schema=False)
    def search_page(request: Request) -> Response:
        # Behind a route prefix, "/search" and "/search/" can both reach this route, but only the
        # second resolves the page's relative URLs (static/app.js, v1/search) under the prefix.
        path = request.url.path
        if not path.endswith("/"):
            query = f"?{request.url.query}" if request.url.query else ""
            return RedirectResponse(url=f"{path}/{query}", status_code=307)
        return _file(PAGE, PAGE_HEADERS)

    @api.get("/static/{name}", include_in_schema=False)
    def static_file(name: str) -> Response:
        if name not in STATIC_FILES:
            raise HTTPException(status_code=404, detail=f"no static file {name!r}")
        return _file(name, PAGE_HEADERS if name == PAGE else _COMMON_HEADERS)
