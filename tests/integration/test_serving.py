"""The search service on a local Ray: deploy, search over HTTP, reject bad input, swap models live.

Uses the fake registry/encoder from ``tests.serving_fakes``; replicas import it by module path, so
pytest must run from the project root (as ``python -m pytest``).
"""

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import httpx
import pytest

from components.config import RegistryConfig, ServeConfig
from components.serving import client
from components.serving.deploy import deploy, endpoint_url, replica_count, shutdown_app
from tests.serving_fakes import CAPTIONS, make_registry, set_alias
from components.runtime.ray_cluster import free_port

pytestmark = pytest.mark.integration

LOADERS = {
    "downloader": "tests.serving_fakes:download_model",
    "encoder_loader": "tests.serving_fakes:load_encoder",
    "index_locator": "tests.serving_fakes:index_location",
    "champion_resolver": "tests.serving_fakes:champion_version",
}
MAX_K = 25
# Version 2 takes this long to load. With max_surge_percent=0 requests stall for the load plus a
# replica start (~5 s measured); with surge the old replica answers meanwhile (~1 s worst case).
V2_LOAD_S = 3.0


@pytest.fixture(scope="module")
def served(ray_session, tmp_path_factory):
    from ray import serve

    versions = {"1": {}, "2": {"load_delay_s": V2_LOAD_S}, "3": {"load_delay_s": V2_LOAD_S}}
    root = make_registry(tmp_path_factory.mktemp("registry"), versions)
    cfg = ServeConfig(host="127.0.0.1", port=free_port(), app_name="align-test", max_k=MAX_K, ready_timeout_s=60,
                      follow_champion_s=0.5)
    registry_cfg = RegistryConfig(model_name="align")
    url = deploy(cfg, registry_cfg, str(root), loaders=LOADERS)  # unpinned: replicas follow @champion
    yield SimpleNamespace(url=url, cfg=cfg, registry_cfg=registry_cfg, root=root)
    shutdown_app(cfg)
    serve.shutdown()


def test_healthz_reports_the_champion(served):
    assert served.url == endpoint_url(served.cfg)
    assert client.health(served.url) == {"status": "ok", "model_name": "align", "model_version": "1"}


def test_search_returns_the_matching_item_first(served):
    body = client.search(served.url, CAPTIONS[7], k=3)
    assert body["model_name"] == "align" and body["model_version"] == "1"
    hits = body["results"]
    assert [h["rank"] for h in hits] == [1, 2, 3]
    assert hits[0]["id"] == "item-7" and hits[0]["caption"] == CAPTIONS[7] and hits[0]["score"] > 0.99
    assert all(a["score"] >= b["score"] for a, b in zip(hits, hits[1:]))


def test_concurrent_queries_each_get_their_own_answer(served):
    """Requests that share a @serve.batch call still get their own text and k."""
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda i: client.search(served.url, CAPTIONS[i], k=1 + i % MAX_K), range(16)))
    for i, body in enumerate(answers):
        assert len(body["results"]) == min(1 + i % MAX_K, len(CAPTIONS))
        assert body["results"][0]["id"] == f"item-{i}"


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"text": "", "k": 5}, "text"),
        ({"text": "   ", "k": 5}, "text"),
        ({"text": "a cat", "k": 0}, "k"),
        ({"text": "a cat", "k": MAX_K + 1}, "k"),
        ({"text": ["a cat"], "k": 5}, "text"),
        ({"text": "x" * 1001}, "text"),
    ],
)
def test_bad_input_is_422(served, payload, field):
    response = httpx.post(f"{served.url}/v1/search", json=payload, timeout=10)
    assert response.status_code == 422, response.text
    assert field in [d["loc"][-1] for d in response.json()["detail"]]


def test_client_reports_rejections_clearly(served):
    with pytest.raises(client.SearchError, match="k: Input should be greater than or equal to 1") as info:
        client.search(served.url, "a cat", k=0)
    assert info.value.status == 422


def _load(url: str, seconds: float, during) -> tuple[list[str], list, list[float], float]:
    """Four clients query for ``seconds`` while ``during()`` runs; every answer must be right."""
    stop, lock = threading.Event(), threading.Lock()
    answers, failures, latencies = [], [], []

    def query_loop(i: int) -> None:
        deadline = time.monotonic() + seconds
        with httpx.Client(timeout=10, trust_env=False) as http:
            while not stop.is_set() and time.monotonic() < deadline:
                try:
                    sent = time.monotonic()
                    r = http.post(f"{url}/v1/search", json={"text": CAPTIONS[i], "k": 2})
                    with lock:
                        latencies.append(time.monotonic() - sent)
                    body = r.json() if r.status_code == 200 else None
                    top = body["results"][0] if body else None
                    ok = top is not None and top["id"] == f"item-{i}" and top["score"] > 0.99
                    with lock:
                        (answers if ok else failures).append(body["model_version"] if ok else (r.status_code, r.text))
                except httpx.HTTPError as exc:
                    with lock:
                        failures.append(repr(exc))
                time.sleep(0.02)

    with ThreadPoolExecutor(4) as pool:
        loops = [pool.submit(query_loop, i) for i in (2, 6, 11, 17)]
        time.sleep(0.5)
        started = time.monotonic()
        during()
        took = time.monotonic() - started
        time.sleep(0.5)
        stop.set()
        for loop in loops:
            loop.result()
    return answers, failures, latencies, took


def test_moving_the_champion_alias_swaps_serving_in_place_under_load(served):
    """A promotion only moves the alias; replicas follow it without a redeploy and drop nothing."""
    from components.serving.deploy import wait_until_ready

    def promote():
        set_alias(served.root, "champion", "2")
        wait_until_ready(served.url, timeout_s=30, expected_version="2", replicas=replica_count(served.cfg))

    answers, failures, latencies, took = _load(served.url, 20, promote)
    assert failures == []
    assert {"1", "2"} <= set(answers), f"{len(answers)} answers in {took:.1f}s"
    # The new version loads in a worker thread while the old one keeps answering.
    assert max(latencies) < V2_LOAD_S, f"a request waited {max(latencies):.1f}s during the swap"
    assert httpx.get(f"{served.url}/v1/model", timeout=10).json()["model_version"] == "2"


def test_hot_swap_drops_no_requests(served):
    """Redeploy pinned to version 3 while clients keep querying: no errors, no torn answers."""
    answers, failures, latencies, swap_s = _load(
        served.url, 20, lambda: deploy(served.cfg, served.registry_cfg, str(served.root), model_version="3", loaders=LOADERS)
    )
    assert failures == []
    assert len(answers) >= 50, f"only {len(answers)} requests in {swap_s:.1f}s"
    assert {"2", "3"} <= set(answers)
    # No stall while version 3 loads: the old replica kept answering until the new one was ready.
    assert max(latencies) < V2_LOAD_S, f"a request waited {max(latencies):.1f}s during the swap"
    assert client.health(served.url)["model_version"] == "3"
    assert client.search(served.url, CAPTIONS[3], k=1)["model_version"] == "3"
