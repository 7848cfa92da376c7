"""Start, update and stop the search service on an already-connected Ray cluster.

Serve's controller is a detached actor, so the service outlives the driver that deployed it as long
as the Ray cluster itself lives (a head started with ``ray start``, not one owned by the driver's
``ray.init()``). Re-running ``deploy`` after a promotion replaces the replicas without dropping
requests (see ``components.serving.app``).
"""

from __future__ import annotations

import ipaddress
import time
from typing import Any

import httpx

from components.config import RegistryConfig, ServeConfig
from components.serving.client import SearchError, auth_headers, health, model_info
from components.serving.searcher import Loader

_POLL_S = 0.5
CONFIRMATIONS_PER_REPLICA = 8


def endpoint_url(serve_cfg: ServeConfig) -> str:
    """Base URL of the app, e.g. ``http://127.0.0.1:8000`` (``/healthz`` and ``/v1/search`` below it)."""
    host = serve_cfg.host
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{serve_cfg.port}{serve_cfg.route_prefix.rstrip('/')}"


def _require_loopback(host: str) -> None:
    # The service has no authentication of its own; on a shared machine it must not be reachable
    # from the network. Cluster deployments put their own ingress in front instead.
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(f"serve.host must be a loopback address such as 127.0.0.1, got {host!r}")


def _require_ray() -> None:
    import ray

    if not ray.is_initialized():
        raise RuntimeError(
            "Ray is not initialised in this process: connect to the cluster (ray.init) before "
            "deploying, so Serve lands on that cluster rather than on a throwaway local one"
        )


def _app_status(app_name: str) -> tuple[str, str]:
    from ray import serve

    app = serve.status().applications.get(app_name)
    if app is None:
        return "NOT_STARTED", ""
    return str(getattr(app.status, "value", app.status)), app.message


def replica_count(serve_cfg: ServeConfig) -> int:
    """The most replicas the app can run: each one follows the champion on its own."""
    return serve_cfg.autoscaling.max_replicas if serve_cfg.autoscaling is not None else serve_cfg.num_replicas


def wait_until_ready(
    url: str,
    *,
    timeout_s: float,
    expected_version: str | None = None,
    app_name: str | None = None,
    replicas: int = 1,
) -> dict[str, Any]:
    """Poll ``GET {url}/healthz`` until it reports ``expected_version`` (any, if None).

    With ``app_name`` the Serve app must also be ``RUNNING`` (so a redeploy is not declared ready
    by an old replica), and a ``DEPLOY_FAILED`` app fails at once with Serve's message.

    Replicas following the champion swap each on its own, and HTTP cannot pick the replica that
    answers; with ``replicas`` > 1 the version must therefore come back ``CONFIRMATIONS_PER_REPLICA``
    times per replica in a row. Serve sends an idle app's requests to a random replica, so a replica
    still on the old version goes unseen that long with probability (1 - 1/n)^(8n) < e^-8 (3e-4).
    """
    deadline = time.monotonic() + timeout_s
    last = "no answer yet"
    needed = 1 if replicas <= 1 or expected_version is None else CONFIRMATIONS_PER_REPLICA * replicas
    confirmed = 0
    while True:
        status = "RUNNING"
        if app_name is not None:
            status, message = _app_status(app_name)
            if status == "DEPLOY_FAILED":
                raise RuntimeError(f"Serve app {app_name!r} failed to deploy: {message}")
        try:
            body = health(url, timeout_s=min(5.0, max(0.5, deadline - time.monotonic())))
            version = str(body.get("model_version"))
            if status == "RUNNING" and (expected_version is None or version == str(expected_version)):
                confirmed += 1
                if confirmed >= needed:
                    return body
                continue
            confirmed = 0
            last = f"model version {version}, app status {status}"
        except (httpx.HTTPError, SearchError) as exc:
            last = f"{type(exc).__name__}: {exc}"
        if time.monotonic() >= deadline:
            wanted = f"model version {expected_version}" if expected_version is not None else "ready"
            raise TimeoutError(f"{url}/healthz was not {wanted} within {timeout_s:.0f}s (last: {last})")
        time.sleep(_POLL_S)


def deploy(
    serve_cfg: ServeConfig,
    registry_cfg: RegistryConfig,
    tracking_uri: str,
    *,
    model_version: str | None = None,
    expect_version: str | None = None,
    loaders: dict[str, Loader] | None = None,
) -> str:
    """Deploy (or redeploy) the app and return its URL once it serves the expected version.

    Without ``model_version`` the replicas follow ``champion`` (and any version counts as ready unless
    ``expect_version`` is given); with it they are pinned to that version.
    """
    from ray import serve

    from components.serving.app import build_app

    _require_loopback(serve_cfg.host)
    _require_ray()
    # A no-op (with a warning from Serve) if Serve already runs on this cluster: its HTTP options
    # are fixed at first start.
    serve.start(http_options={"host": serve_cfg.host, "port": serve_cfg.port})
    app = build_app(serve_cfg, registry_cfg, tracking_uri, model_version=model_version, loaders=loaders)
    # serve.run() would block, without a timeout, until the app is RUNNING; run_many lets the
    # wait below be bounded and report a failed deploy with Serve's own message.
    serve.run_many(
        [serve.RunTarget(target=app, name=serve_cfg.app_name, route_prefix=serve_cfg.route_prefix)],
        wait_for_applications_running=False,
    )
    url = endpoint_url(serve_cfg)
    try:
        wait_until_ready(
            url, timeout_s=serve_cfg.ready_timeout_s, expected_version=model_version or expect_version,
            app_name=serve_cfg.app_name, replicas=replica_count(serve_cfg),
        )
    except TimeoutError as exc:
        raise TimeoutError(
            f"{exc}. If Serve was already running on this cluster, it kept the HTTP host/port of its "
            "first start; shut it down (serve.shutdown) to change them."
        ) from None
    return url


def ensure_serving(
    serve_cfg: ServeConfig,
    registry_cfg: RegistryConfig,
    tracking_uri: str,
    expect_version: str,
    *,
    loaders: dict[str, Loader] | None = None,
) -> str:
    """Make serving answer with ``expect_version`` (the champion), restarting nothing that runs.

    A running app that follows the champion picks the new version up by itself (within
    ``serve.follow_champion_s``), in place; only a missing, failed or pinned app is (re)deployed. The
    ``/v1/model`` probe sends the API key (``serve.api_key_env``): a missing key or one the running app
    refuses is an error here, not a reason to redeploy on every run.
    """
    _require_ray()
    auth_headers(serve_cfg.api_key_env)  # raises, naming the variable, when the key is not in the environment
    status, _ = _app_status(serve_cfg.app_name)
    url = endpoint_url(serve_cfg)
    if status == "RUNNING" and serve_cfg.follow_champion_s > 0:
        try:
            if not model_info(url, api_key_env=serve_cfg.api_key_env).get("pinned", True):
                wait_until_ready(url, timeout_s=serve_cfg.ready_timeout_s, expected_version=expect_version,
                                 replicas=replica_count(serve_cfg))
                return url
        except SearchError as exc:
            if exc.status == 401 and serve_cfg.api_key_env:
                raise PermissionError(f"the running app {serve_cfg.app_name!r} refused the API key: {exc}") from None
            # otherwise not answering like a following app (or deployed with a key this config dropped): redeploy
        except (httpx.HTTPError, ValueError):
            pass  # not answering like a following app: redeploy below
    return deploy(serve_cfg, registry_cfg, tracking_uri, expect_version=expect_version, loaders=loaders)


def shutdown_app(serve_cfg: ServeConfig) -> bool:
    """Delete the app (Serve itself keeps running); False if there was nothing to delete."""
    from ray import serve
    from ray.serve.exceptions import RayServeException

    _require_ray()
    try:
        if serve_cfg.app_name not in serve.status().applications:
            return False
        serve.delete(serve_cfg.app_name)
    except RayServeException:  # Serve is not running on this cluster
        return False
    return True
