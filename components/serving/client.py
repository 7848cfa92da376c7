"""A small HTTP client for the search service (used by ``align search`` and by ``deploy``).

Free of Ray so the CLI can query a running service without importing it.
"""

from __future__ import annotations

import ipaddress
from typing import Any
from urllib.parse import urlsplit

import httpx


class SearchError(RuntimeError):
    """The service answered with an error; ``status`` is the HTTP code (422 = rejected input)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _client(url: str, timeout_s: float) -> httpx.Client:
    # A corporate HTTP(S)_PROXY in the environment must not capture calls to a local service.
    return httpx.Client(timeout=timeout_s, trust_env=not _is_loopback(url))


def _error_message(response: httpx.Response) -> str:
    try:
        detail = response.json().get("detail", response.text)
    except ValueError:
        detail = response.text
    if isinstance(detail, list):  # FastAPI validation errors: [{"loc": [...], "msg": ...}, ...]
        detail = "; ".join(
            f"{'.'.join(str(p) for p in d.get('loc', [])[1:]) or 'body'}: {d.get('msg')}" for d in detail
        )
    return f"{response.request.method} {response.request.url} -> {response.status_code}: {detail}"


def search(url: str, text: str, k: int = 5, *, timeout_s: float = 30.0) -> dict[str, Any]:
    """Top-k corpus images for ``text``: ``{"results": [...], "model_name", "model_version"}``."""
    with _client(url, timeout_s) as client:
        response = client.post(f"{url.rstrip('/')}/v1/search", json={"text": text, "k": k})
    if response.status_code != 200:
        raise SearchError(response.status_code, _error_message(response))
    return response.json()


def health(url: str, *, timeout_s: float = 5.0) -> dict[str, Any]:
    """``{"status": "ok", "model_name", "model_version"}``; raises ``httpx.HTTPError`` if unreachable."""
    with _client(url, timeout_s) as client:
        response = client.get(f"{url.rstrip('/')}/healthz")
    if response.status_code != 200:
        raise SearchError(response.status_code, _error_message(response))
    return response.json()
