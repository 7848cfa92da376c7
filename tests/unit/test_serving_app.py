"""The search replica without Ray: HTTP contract, in-place model swap, loading errors, deploy helpers."""

import asyncio
import socket

import numpy as np
import pytest
from fastapi.testclient import TestClient

from components.config import ServeConfig
from components.serving.app import SearchDeployment, http_api
from components.serving.deploy import _require_loopback, endpoint_url, wait_until_ready
from components.serving.searcher import load_searcher, resolve_callable
from tests.serving_fakes import CAPTIONS, FakeEncoder, make_registry

LOADERS = {"downloader": "tests.serving_fakes:download_model", "encoder_loader": "tests.serving_fakes:load_encoder"}
MAX_K = 50


@pytest.fixture
def registry(tmp_path):
    return make_registry(tmp_path, {"1": {}, "2": {"load_delay_s": 0.3}})


@pytest.fixture
def replica(registry):
    # max_batch_size=1: @serve.batch needs a Serve replica context; the integration test covers it.
    return SearchDeployment(tracking_uri=str(registry), model_name="align", max_k=MAX_K, max_batch_size=1, **LOADERS)


@pytest.fixture
def http(replica):
    with TestClient(http_api(replica)) as client:
        yield client


def test_healthz(http):
    assert http.get("/healthz").json() == {"status": "ok", "model_name": "align", "model_version": "1"}


def test_search_returns_the_matching_item_first(http):
    body = http.post("/v1/search", json={"text": f"  {CAPTIONS[7]} ", "k": 4}).json()
    assert body["model_version"] == "1" and body["model_name"] == "align"
    hits = body["results"]
    assert [h["rank"] for h in hits] == [1, 2, 3, 4]
    assert hits[0]["id"] == "item-7" and hits[0]["caption"] == CAPTIONS[7] and hits[0]["score"] > 0.99
    assert hits[0]["uri"] == "mem://corpus/7.png"
    assert all(a["score"] >= b["score"] for a, b in zip(hits, hits[1:]))


def test_k_defaults_to_5_and_is_capped_at_corpus_size(http):
    assert len(http.post("/v1/search", json={"text": "a red moon"}).json()["results"]) == 5
    assert len(http.post("/v1/search", json={"text": "a red moon", "k": MAX_K}).json()["results"]) == len(CAPTIONS)


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"text": "", "k": 5}, "text"),
        ({"text": " \t\n", "k": 5}, "text"),
        ({"text": "x" * 1001}, "text"),
        ({"text": 5}, "text"),
        ({"k": 5}, "text"),
        ({"text": "a cat", "k": 0}, "k"),
        ({"text": "a cat", "k": MAX_K + 1}, "k"),
        ({"text": "a cat", "k": "5"}, "k"),
        ({"text": "a cat", "k": 2.5}, "k"),
        ({"text": "a cat", "top_k": 3}, "top_k"),
    ],
)
def test_bad_input_is_422_naming_the_field(http, payload, field):
    response = http.post("/v1/search", json=payload)
    assert response.status_code == 422
    assert field in [d["loc"][-1] for d in response.json()["detail"]]


@pytest.mark.parametrize("content", [b"{not json", b"[1, 2]", b"text=a", b'{"text": "a \\ud800 cat"}'])
def test_malformed_body_is_422(http, content):
    assert http.post("/v1/search", content=content, headers={"content-type": "application/json"}).status_code == 422


def test_reconfigure_swaps_in_place_without_torn_answers(replica):
    """Requests keep flowing while version 2 loads; each answer comes from one consistent model."""

    async def scenario():
        answers, stop = [], asyncio.Event()

        async def client(i):
            while not stop.is_set():
                answers.append((i, await replica.search(CAPTIONS[i], 3)))
                await asyncio.sleep(0.005)

        tasks = [asyncio.create_task(client(i)) for i in (1, 5, 9)]
        await asyncio.sleep(0.05)
        await replica.reconfigure({"model_version": "2"})
        await asyncio.sleep(0.05)
        stop.set()
        await asyncio.gather(*tasks)
        return answers

    answers = asyncio.run(scenario())
    assert replica.model_version == "2"
    assert {a["model_version"] for _, a in answers} == {"1", "2"}
    for i, answer in answers:
        top = answer["results"][0]
        assert top["id"] == f"item-{i}" and top["score"] > 0.99, answer


def test_reconfigure_is_a_no_op_for_the_loaded_or_unpinned_version(replica):
    searcher = replica._searcher
    asyncio.run(replica.reconfigure({"model_version": "1"}))
    asyncio.run(replica.reconfigure({"model_version": None}))
    asyncio.run(replica.reconfigure(None))
    assert replica._searcher is searcher


def test_reconfigure_rejects_unknown_keys(replica):
    with pytest.raises(ValueError, match="unknown user_config keys"):
        asyncio.run(replica.reconfigure({"model_verison": "2"}))


def test_pinned_version_and_missing_version(registry):
    assert load_searcher(str(registry), "align", "2", **LOADERS).model_version == "2"
    with pytest.raises(LookupError, match="no version 9"):
        load_searcher(str(registry), "align", "9", **LOADERS)


def test_encoder_index_dimension_mismatch_fails_at_load(registry):
    with pytest.raises(RuntimeError, match="index expects dimension 16"):
        load_searcher(
            str(registry), "align", downloader=LOADERS["downloader"], encoder_loader=lambda d: FakeEncoder("v1", 8)
        )


def test_resolve_callable():
    assert resolve_callable("numpy:zeros") is np.zeros
    for bad in ("numpy.zeros", "numpy:", "numpy:pi"):
        with pytest.raises(ValueError):
            resolve_callable(bad)


def test_endpoint_url_and_loopback_only():
    assert endpoint_url(ServeConfig(port=8123)) == "http://127.0.0.1:8123"
    assert endpoint_url(ServeConfig(host="::1", route_prefix="/align/")) == "http://[::1]:8000/align"
    _require_loopback("localhost")
    with pytest.raises(ValueError, match="loopback"):
        _require_loopback("0.0.0.0")


def test_wait_until_ready_times_out_naming_the_url():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again below: nothing listens there
    url = f"http://127.0.0.1:{port}"
    with pytest.raises(TimeoutError, match=f"{url}/healthz was not model version 3"):
        wait_until_ready(url, timeout_s=1.0, expected_version="3")


def test_app_builder_for_declarative_configs_needs_no_cluster():
    import ray
    from ray.serve import Application

    from components.serving.app import app_builder

    connected_before = ray.is_initialized()  # a session's Ray may already be up; building must not start one
    app = app_builder({"tracking_uri": "sqlite:////tmp/x.db", "serve": {"num_replicas": 2}, "model_version": "4"})
    assert isinstance(app, Application) and ray.is_initialized() == connected_before
    with pytest.raises(ValueError, match="tracking_uri"):
        app_builder({})
