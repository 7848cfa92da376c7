"""A small HTTP client for the search service (used by ``align search`` and by ``deploy``).

Free of Ray so the CLI can query a running service without importing it. With ``serve.api_key_env``
set, ``/v1/*`` calls send the key from that environment variable in the header the server checks.
"""

from __future__ import annotations

import ipaddress
import os
from typing import Any
from urllib.parse import urlsplit

import httpx

API_KEY_HEADER = "x-api-key"


class SearchError(RuntimeError):
    """The service answered with an error; ``status`` is the HTTP code (422 = rejected input)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def api_key_from_env(env_name: str) -> str:
    """The API key named by ``serve.api_key_env`` ("" when none is configured); a named but unset
    variable is an error, so neither the server nor a client runs without the key it was told to use."""
    if not env_name:
        return ""
    key = os.environ.get(env_name, "")
    if not key:
        raise RuntimeError(f"serve.api_key_env names {env_name!r}, but that environment variable is not set")
    return key


def auth_headers(api_key_env: str) -> dict[str, str]:
    key = api_key_from_env(api_key_env)
    return {API_KEY_HEADER: key} if key else {}


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


def _call(method: str, url: str, path: str, timeout_s: float, api_key_env: str, **kwargs: Any) -> dict[str, Any]:
    headers = auth_headers(api_key_env)  # before any request: a missing key is named, not a 401
    with _client(url, timeout_s) as client:
        response = client.request(method, f"{url.rstrip('/')}{path}", headers=headers, **kwargs)
    if response.status_code != 200:
        message = _error_message(response)
        if response.status_code == 401:
            message += (f" (sent the key from ${api_key_env})" if api_key_env
                        else " (the service wants an API key: set serve.api_key_env to the variable holding it)")
        raise SearchError(response.status_code, message)
    return response.json()


def search(url: str, text: str, k: int = 5, *, timeout_s: float = 30.0, api_key_env: str = "") -> dict[str, Any]:
    """Top-k corpus images for ``text``: ``{"results": [...], "model_name", "model_version"}``."""
    return _call("POST", url, "/v1/search", timeout_s, api_key_env, json={"text": text, "k": k})


def model_info(url: str, *, timeout_s: float = 5.0, api_key_env: str = "") -> dict[str, Any]:
    """``GET /v1/model``: the serving version, whether it is pinned, the last swap error."""
    return _call("GET", url, "/v1/model", timeout_s, api_key_env)


def health(url: str, *, timeout_s: float = 5.0) -> dict[str, Any]:
    """``{"status": "ok", "model_name", "model_version"}``; raises ``httpx.HTTPError`` if unreachable."""
    with _client(url, timeout_s) as client:
        response = client.get(f"{url.rstrip('/')}/healthz")
    if response.status_code != 200:
        raise SearchError(response.status_code, _error_message(response))
    return response.json()
