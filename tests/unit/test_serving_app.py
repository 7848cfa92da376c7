"""The serving API without Ray: every endpoint, every bad-input case, swaps that never tear an answer."""

import asyncio
import base64
import io
import socket

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from components.config import ServeConfig
from components.model.query import compose_query, unit
from components.serving.app import ServingDeployment
from components.serving.deploy import _require_loopback, endpoint_url, wait_until_ready
from components.serving.http import http_api
from components.serving.searcher import SearchQuery, load_serving_model, resolve_callable
from tests.serving_fakes import CAPTIONS, FakeEncoder, fake_embed, make_registry, set_alias

LOADERS = {
    "downloader": "tests.serving_fakes:download_model",
    "encoder_loader": "tests.serving_fakes:load_encoder",
    "index_locator": "tests.serving_fakes:index_location",
    "champion_resolver": "tests.serving_fakes:champion_version",
}
MAX_K = 50
# batch_size=1: @serve.batch needs a Serve replica context; the integration test covers batching.
CFG = {"max_k": MAX_K, "batch_size": 1, "follow_champion_s": 0, "max_body_bytes": 200_000,
       "max_image_bytes": 100_000, "max_image_pixels": 1_000_000}


def _png(red: int = 0, size: tuple[int, int] = (8, 8)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (red, 10, 10)).save(buffer, format="PNG")
    return buffer.getvalue()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture
def registry(tmp_path):
    root = make_registry(tmp_path, {"1": {}, "2": {"load_delay_s": 0.3}, "3": {}})
    (root / "versions" / "3" / "index" / "embeddings.npy").unlink()  # version 3 is broken: no index
    return root


@pytest.fixture
def replica(registry):
    return ServingDeployment(CFG, tracking_uri=str(registry), model_name="align", loaders=LOADERS)


@pytest.fixture
def http(replica):
    with TestClient(http_api(replica)) as client:
        yield client


def test_health_readiness_model_info_and_metrics(http):
    assert http.get("/healthz").json() == {"status": "ok", "model_name": "align", "model_version": "1"}
    assert http.get("/readyz").status_code == 200
    info = http.get("/v1/model").json()
    assert info | {"index_version": "x"} == {
        "model_name": "align", "model_version": "1", "index_version": "x", "index_kind": "Flat",
        "items": len(CAPTIONS), "dim": 16, "pinned": False, "last_swap_error": "",
    }
    http.post("/v1/search", json={"text": "a cat", "k": 0})
    metrics = http.get("/metrics").text
    assert 'align_serve_requests_total{endpoint="/v1/search",status="422"} 1.0' in metrics
    assert "align_serve_model_version 1.0" in metrics
    assert "/openapi.json" and "/v1/classify" in http.get("/openapi.json").json()["paths"]


def test_text_search_returns_the_matching_item_first(http):
    body = http.post("/v1/search", json={"text": f"  {CAPTIONS[7]} ", "k": 4}).json()
    assert body["model_version"] == "1" and body["query"] == "text" and body["index_version"] == "v1-artifact"
    hits = body["results"]
    assert [h["rank"] for h in hits] == [1, 2, 3, 4]
    assert hits[0]["id"] == "item-7" and hits[0]["caption"] == CAPTIONS[7] and hits[0]["score"] > 0.99
    assert hits[0]["image_url"] == "v1/images/item-7"
    assert all(a["score"] >= b["score"] for a, b in zip(hits, hits[1:]))
    assert len(http.post("/v1/search", json={"text": "a red moon"}).json()["results"]) == 5  # default k
    assert len(http.post("/v1/search", json={"text": "a red moon", "k": MAX_K}).json()["results"]) == len(CAPTIONS)


def test_image_search_and_image_plus_text_arithmetic(http):
    image = http.post("/v1/search", json={"image": _b64(_png(red=11)), "k": 3}).json()
    assert image["query"] == "image" and image["results"][0]["id"] == "item-11"
    # ALIGN's arithmetic: unit(image) + 2·unit("...") - 2·unit("..."), renormalised.
    modifiers = [{"text": CAPTIONS[4]}, {"text": CAPTIONS[11], "weight": -2.0}]
    body = http.post("/v1/search", json={"image": _b64(_png(red=11)), "modifiers": modifiers, "k": 3}).json()
    assert body["query"] == "image+text"
    salt = "v1"
    expected = compose_query(fake_embed([CAPTIONS[11]], salt)[0],
                             [(fake_embed([CAPTIONS[4]], salt)[0], 2.0), (fake_embed([CAPTIONS[11]], salt)[0], -2.0)])
    scores = unit(fake_embed(CAPTIONS, salt)) @ expected
    assert [h["id"] for h in body["results"]] == [f"item-{i}" for i in np.argsort(-scores)[:3]]
    assert body["results"][0]["id"] == "item-4"  # subtracting the image's own caption leaves the added one


def test_modifiers_that_cancel_the_query_are_refused(http):
    body = {"text": CAPTIONS[1], "modifiers": [{"text": CAPTIONS[1], "weight": -1.0}]}
    response = http.post("/v1/search", json=body)
    assert response.status_code == 422 and "cancel" in response.json()["detail"]


def test_a_batch_of_mixed_searches_answers_each_as_alone_and_isolates_a_bad_one(replica):
    model = replica.model
    image = Image.open(io.BytesIO(_png(red=11))).convert("RGB")
    queries = [
        SearchQuery((CAPTIONS[7],), (), None, 3),
        SearchQuery((), (), image, 2),
        SearchQuery((CAPTIONS[1], CAPTIONS[1]), (-1.0,), None, 3),  # cancels out
        SearchQuery((CAPTIONS[4], CAPTIONS[11]), (2.0, -2.0), image, 4),
    ]
    batched = model.run_queries(queries)
    assert isinstance(batched[2], ValueError) and "cancel" in str(batched[2])
    for position in (0, 1, 3):
        assert batched[position] == model.run_queries([queries[position]])[0]
    assert [len(batched[p]) for p in (0, 1, 3)] == [3, 2, 4]
    assert batched[0][0]["id"] == "item-7" and batched[1][0]["id"] == "item-11" and batched[3][0]["id"] == "item-4"
    with pytest.raises(ValueError, match="weights"):
        SearchQuery(("a", "b"), (), None, 3)
    with pytest.raises(ValueError, match="text or an image"):
        SearchQuery((), (), None, 3)


def test_embed_texts_and_images_as_json_and_multipart(http):
    body = http.post("/v1/embed", json={"texts": [CAPTIONS[0], "x"], "images": [_b64(_png(red=2))]}).json()
    assert body["dim"] == 16 and len(body["text_embeddings"]) == 2 and len(body["image_embeddings"]) == 1
    assert np.allclose(body["text_embeddings"][0], fake_embed([CAPTIONS[0]], "v1")[0], atol=1e-6)
    upload = http.post("/v1/embed/upload", data={"texts": ["a", "b"]}, files=[("images", ("q.png", _png(red=2), "image/png"))])
    assert upload.status_code == 200, upload.text
    assert np.allclose(upload.json()["image_embeddings"][0], body["image_embeddings"][0])
    assert http.post("/v1/embed", json={}).status_code == 422


def test_classify_gives_probabilities_over_the_labels(http):
    response = http.post("/v1/classify", json={"images": [_b64(_png(red=3))], "labels": [CAPTIONS[3], CAPTIONS[9]],
                                               "templates": ["{}"]})
    assert response.status_code == 200, response.text
    (prediction,) = response.json()["predictions"]
    assert prediction["label"] == CAPTIONS[3]
    assert sum(s["probability"] for s in prediction["scores"]) == pytest.approx(1.0)
    assert prediction["scores"][0]["probability"] > 0.99
    bad = http.post("/v1/classify", json={"images": [_b64(_png())], "labels": ["a", "a"]})
    assert bad.status_code == 422 and "distinct" in bad.text
    no_slot = http.post("/v1/classify", json={"images": [_b64(_png())], "labels": ["a", "b"], "templates": ["x"]})
    assert no_slot.status_code == 422 and "slot" in no_slot.text


def test_images_of_an_index_without_stored_images_are_404(http):
    response = http.get("/v1/images/item-1")
    assert response.status_code == 404 and "item-1" in response.json()["detail"]


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"text": "", "k": 5}, "text"),
        ({"text": " \t\n", "k": 5}, "text"),
        ({"text": "x" * 1001}, "text"),
        ({"text": 5}, "text"),
        ({"text": "a cat", "k": 0}, "k"),
        ({"text": "a cat", "k": MAX_K + 1}, "k"),
        ({"text": "a cat", "k": "5"}, "k"),
        ({"text": "a cat", "k": 2.5}, "k"),
        ({"text": "a cat", "top_k": 3}, "top_k"),
        ({"text": "a cat", "modifiers": [{"text": "x", "wieght": 1}]}, "wieght"),
        ({"text": "a cat", "modifiers": [{"text": "x", "weight": 99}]}, "weight"),
    ],
)
def test_bad_search_input_is_422_naming_the_field(http, payload, field):
    response = http.post("/v1/search", json=payload)
    assert response.status_code == 422
    assert field in [d["loc"][-1] for d in response.json()["detail"]]


def test_a_search_needs_a_text_or_an_image(http):
    response = http.post("/v1/search", json={"k": 5})
    assert response.status_code == 422 and "text and/or an image" in response.json()["detail"]


@pytest.mark.parametrize("content", [b"{not json", b"[1, 2]", b"text=a", b'{"text": "a \\ud800 cat"}'])
def test_malformed_body_is_422(http, content):
    assert http.post("/v1/search", content=content, headers={"content-type": "application/json"}).status_code == 422


def test_bad_images_are_refused_with_a_reason(http):
    cases = {
        "not base64": ("!!!not-base64", 422, "not valid base64"),
        "not an image": (_b64(b"hello, I am text"), 422, "not a decodable image"),
        "truncated png": (_b64(_png()[:40]), 422, "not a decodable image"),
        "too many pixels": (_b64(_png(size=(2000, 1000))), 413, "2000x1000"),
        "too many bytes": (_b64(np.random.default_rng(0).bytes(120_000)), 413, "limit"),
    }
    for name, (value, status, reason) in cases.items():
        response = http.post("/v1/search", json={"image": value})
        assert response.status_code == status, (name, response.text)
        assert reason in response.json()["detail"] and "image[0]" in response.json()["detail"], name
    data_url = "data:image/png;base64," + _b64(_png(red=5))
    assert http.post("/v1/search", json={"image": data_url}).json()["results"][0]["id"] == "item-5"


def test_oversized_bodies_are_413_with_or_without_content_length(http):
    big = b'{"text": "' + b"x" * 250_000 + b'"}'
    response = http.post("/v1/search", content=big, headers={"content-type": "application/json"})
    assert response.status_code == 413 and "200000-byte limit" in response.json()["detail"]

    def chunks():
        for _ in range(30):
            yield b"x" * 10_000

    chunked = http.post("/v1/embed/upload", content=chunks(), headers={"content-type": "multipart/form-data; boundary=b"})
    assert chunked.status_code == 413


def test_api_key_guards_v1_but_not_probes(registry, monkeypatch):
    monkeypatch.setenv("ALIGN_TEST_KEY", "s3cret")
    replica = ServingDeployment(CFG | {"api_key_env": "ALIGN_TEST_KEY"}, str(registry), "align", loaders=LOADERS)
    with TestClient(http_api(replica)) as client:
        assert client.post("/v1/search", json={"text": "a"}).status_code == 401
        assert client.post("/v1/search", json={"text": "a"}, headers={"X-API-Key": "wrong"}).status_code == 401
        assert client.post("/v1/search", json={"text": "a"}, headers={"X-API-Key": "s3cret"}).status_code == 200
        assert client.get("/healthz").status_code == 200 and client.get("/metrics").status_code == 200
    monkeypatch.delenv("ALIGN_TEST_KEY")
    with pytest.raises(RuntimeError, match="ALIGN_TEST_KEY"):
        http_api(replica)


def test_templates_are_filled_by_plain_replacement_never_str_format(replica, http, monkeypatch):
    """Was: ``{{}}{1}`` a 500 (IndexError), ``{{}}{0:>5000000}`` a 5 MB prompt; braces are now literal."""
    prompts = []
    encode = replica._texts

    async def recording(model, texts):
        prompts.extend(texts)
        return await encode(model, texts)

    monkeypatch.setattr(replica, "_texts", recording)
    image = _b64(_png())
    for template in ("{{}}{1}", "{{}}{0:>5000000}", "{}{x}", "{}}", "{!r}{}"):
        prompts.clear()
        response = http.post("/v1/classify", json={"images": [image], "labels": ["cat", "dog"], "templates": [template]})
        assert response.status_code == 200, (template, response.text)
        assert prompts == [template.replace("{}", "cat"), template.replace("{}", "dog")]
    prompts.clear()
    assert http.post("/v1/classify", json={"images": [image], "labels": ["a {} b", "c"]}).status_code == 200
    assert prompts[0] == "a photo of a a {} b."  # a label is never a template
    for template, found in (("{0}", 0), ("{}{}", 2), ("no slot", 0)):
        response = http.post("/v1/classify", json={"images": [image], "labels": ["a", "b"], "templates": [template]})
        assert response.status_code == 422 and f"exactly one '{{}}' slot for the label, found {found}" in response.text


def test_per_text_item_and_prompt_limits_are_422_naming_the_limit(http):
    image, over = _b64(_png()), "x" * 1001  # serve.max_text_chars defaults to 1000
    cases = [
        ("/v1/embed", {"texts": ["ok", over]}, "at most 1000 characters"),
        ("/v1/embed", {"texts": ["a"] * 33}, "at most 32 items"),
        ("/v1/search", {"text": "a", "modifiers": [{"text": over}]}, "at most 1000 characters"),
        ("/v1/classify", {"images": [image], "labels": ["a", over]}, "at most 1000 characters"),
        ("/v1/classify", {"images": [image], "labels": ["a", "b"], "templates": ["{}" + over]}, "at most 1000 characters"),
        ("/v1/classify", {"images": [image], "labels": ["a", "b"], "templates": ["{}"] * 33}, "at most 32 items"),
        ("/v1/classify", {"images": [image], "labels": [f"l{i}" for i in range(100)], "templates": ["{}", "a {}"] * 2},
         "100 labels x 4 templates = 400 prompts"),  # passes: the limit is 400
        ("/v1/classify", {"images": [image], "labels": [f"l{i}" for i in range(100)], "templates": ["{}", "a {}", "b {}", "c {}", "d {}"]},
         "100 labels x 5 templates = 500 prompts; the limit is 400"),
    ]
    for route, body, message in cases:
        response = http.post(route, json=body)
        if "= 400 prompts" in message:
            assert response.status_code == 200, response.text
            continue
        assert response.status_code == 422 and message in response.text, (route, response.text[:300])
    upload = http.post("/v1/embed/upload", data={"texts": ["a", over]})
    assert upload.status_code == 422 and "at most 1000 characters" in upload.text
    files_as_texts = http.post("/v1/embed/upload", files=[("texts", ("t.txt", b"hi", "text/plain"))])
    assert files_as_texts.status_code == 422 and "not file parts" in files_as_texts.text


@pytest.fixture
def keyed(registry, monkeypatch):
    """An app requiring ``X-API-Key: s3cret``; the platform's clients reach it through a TestClient."""
    from components.serving import client as client_module

    monkeypatch.setenv("ALIGN_TEST_KEY", "s3cret")
    replica = ServingDeployment(CFG | {"api_key_env": "ALIGN_TEST_KEY"}, str(registry), "align", loaders=LOADERS)
    api = http_api(replica)
    seen = []

    def to_app(url, timeout_s):
        test_client = TestClient(api)
        test_client.event_hooks["request"].append(lambda request: seen.append(request.headers.get("x-api-key")))
        return test_client

    monkeypatch.setattr(client_module, "_client", to_app)
    return seen


def test_the_search_client_and_cli_send_the_api_key(keyed, tmp_path, monkeypatch, capsys):
    from align_cli.main import main
    from components.serving.client import SearchError, search

    url = "http://127.0.0.1:8000"
    assert search(url, CAPTIONS[7], k=2, api_key_env="ALIGN_TEST_KEY")["results"][0]["id"] == "item-7"
    assert keyed == ["s3cret"]
    with pytest.raises(SearchError, match="set serve.api_key_env") as refused:
        search(url, CAPTIONS[7])  # a client that knows of no key gets the server's 401, with the fix named
    assert refused.value.status == 401

    monkeypatch.setenv("ALIGN_HOME", str(tmp_path))
    config = tmp_path / "align.yaml"
    config.write_text("serve:\n  api_key_env: ALIGN_TEST_KEY\n")
    assert main(["search", CAPTIONS[3], "-k", "1", "--url", url, "--config", str(config)]) == 0
    assert '"item-3"' in capsys.readouterr().out and keyed[-1] == "s3cret"
    monkeypatch.delenv("ALIGN_TEST_KEY")
    calls = len(keyed)
    assert main(["search", CAPTIONS[3], "--url", url, "--config", str(config)]) == 1
    err = capsys.readouterr().err
    assert "'ALIGN_TEST_KEY', but that environment variable is not set" in err and "Traceback" not in err
    assert len(keyed) == calls  # refused before any request


def test_the_deploy_probe_sends_the_api_key_and_never_redeploys_for_want_of_it(keyed, monkeypatch):
    from components.serving import deploy as deploy_module

    redeploys = []
    monkeypatch.setattr(deploy_module, "_require_ray", lambda: None)
    monkeypatch.setattr(deploy_module, "_app_status", lambda name: ("RUNNING", ""))
    monkeypatch.setattr(deploy_module, "deploy", lambda *args, **kwargs: redeploys.append(args) or "redeployed")
    cfg = ServeConfig(api_key_env="ALIGN_TEST_KEY", num_replicas=1)
    assert deploy_module.ensure_serving(cfg, None, "unused", "1") == endpoint_url(cfg)
    assert redeploys == [] and keyed[0] == "s3cret"  # /v1/model answered: the following app is kept

    monkeypatch.setenv("ALIGN_TEST_KEY", "wrong")
    with pytest.raises(PermissionError, match="refused the API key.*401.*ALIGN_TEST_KEY"):
        deploy_module.ensure_serving(cfg, None, "unused", "1")
    monkeypatch.delenv("ALIGN_TEST_KEY")
    with pytest.raises(RuntimeError, match="'ALIGN_TEST_KEY', but that environment variable is not set"):
        deploy_module.ensure_serving(cfg, None, "unused", "1")
    assert redeploys == []


def test_pinned_swaps_happen_in_place_without_torn_answers(replica):
    """Requests keep flowing while version 2 loads; each answer comes from one consistent model."""

    async def scenario():
        answers, stop = [], asyncio.Event()

        async def client(i):
            while not stop.is_set():
                answers.append((i, await replica.search(CAPTIONS[i], None, [], 3)))
                await asyncio.sleep(0.005)

        tasks = [asyncio.create_task(client(i)) for i in (1, 5, 9)]
        await asyncio.sleep(0.05)
        await replica.reconfigure({"model_version": "2"})
        await asyncio.sleep(0.05)
        stop.set()
        await asyncio.gather(*tasks)
        return answers

    answers = asyncio.run(scenario())
    assert replica.model.model_version == "2" and replica.info()["pinned"]
    assert {a["model_version"] for _, a in answers} == {"1", "2"}
    for i, answer in answers:
        top = answer["results"][0]
        assert top["id"] == f"item-{i}" and top["score"] > 0.99, answer


def test_following_the_champion_swaps_and_a_broken_version_keeps_the_old_one(replica, registry):
    set_alias(registry, "champion", "2")
    assert asyncio.run(replica.check_champion()) and replica.model.model_version == "2"
    set_alias(registry, "champion", "3")  # its artifact has no index: it must not replace version 2
    assert not asyncio.run(replica.check_champion())
    assert replica.model.model_version == "2"
    assert "version 3 did not load" in replica.info()["last_swap_error"]
    set_alias(registry, "champion", "1")
    assert asyncio.run(replica.check_champion()) and replica.info()["last_swap_error"] == ""


def test_reconfigure_rejects_unknown_keys(replica):
    with pytest.raises(ValueError, match="unknown user_config keys"):
        asyncio.run(replica.reconfigure({"model_verison": "2"}))


def test_pinned_version_and_missing_version(registry):
    assert load_serving_model(str(registry), "align", "2", **{k: v for k, v in LOADERS.items() if k != "champion_resolver"}).model_version == "2"
    with pytest.raises(LookupError, match="no version 9"):
        load_serving_model(str(registry), "align", "9", downloader=LOADERS["downloader"], encoder_loader=LOADERS["encoder_loader"],
                           index_locator=LOADERS["index_locator"])


def test_encoder_index_dimension_mismatch_fails_at_load(registry):
    with pytest.raises(RuntimeError, match="index expects dim 16"):
        load_serving_model(str(registry), "align", downloader=LOADERS["downloader"],
                           encoder_loader=lambda d: FakeEncoder("v1", 8), index_locator=LOADERS["index_locator"])


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


def test_waiting_for_a_version_hears_it_often_enough_to_cover_every_replica(monkeypatch):
    from components.serving import deploy as deploy_module

    def replay(versions):
        answers, calls = iter(versions), []

        def fake_health(url, timeout_s):
            calls.append(url)
            return {"status": "ok", "model_version": next(answers)}

        monkeypatch.setattr(deploy_module, "health", fake_health)
        return calls

    monkeypatch.setattr(deploy_module, "_POLL_S", 0.0)
    # Two replicas: the second still answers version 1 after the first one swapped.
    calls = replay(["2", "1", "2", "2", "1"] + ["2"] * 40)
    assert wait_until_ready("http://x", timeout_s=5, expected_version="2", replicas=2)["model_version"] == "2"
    assert len(calls) == 5 + 2 * deploy_module.CONFIRMATIONS_PER_REPLICA
    calls = replay(["1", "2", "1"])
    assert wait_until_ready("http://x", timeout_s=5, expected_version="2", replicas=1)["model_version"] == "2"
    assert len(calls) == 2
    assert deploy_module.replica_count(ServeConfig()) == ServeConfig().num_replicas
    assert deploy_module.replica_count(ServeConfig(autoscaling={"min_replicas": 1, "max_replicas": 3})) == 3


def test_app_builder_for_declarative_configs_needs_no_cluster():
    import ray
    from ray.serve import Application

    from components.serving.app import app_builder

    connected_before = ray.is_initialized()  # a session's Ray may already be up; building must not start one
    app = app_builder({"tracking_uri": "sqlite:////tmp/x.db", "serve": {"num_replicas": 2}, "model_version": "4"})
    assert isinstance(app, Application) and ray.is_initialized() == connected_before
    with pytest.raises(ValueError, match="tracking_uri"):
        app_builder({})


# ------------------------------------------------------------------ the app's metrics through Ray, per replica


class RecordingMetric:
    """Stands in for a ray.util.metrics object; ``broken`` makes every call raise, like a failing agent."""

    def __init__(self, spec, broken=False):
        self.spec, self.broken, self.calls = spec, broken, []

    def _add(self, kind, value, tags):
        if self.broken:
            raise RuntimeError("metrics agent unavailable")
        self.calls.append((kind, value, tags))

    def inc(self, value=1.0, tags=None):
        self._add("inc", value, tags)

    def observe(self, value, tags=None):
        self._add("observe", value, tags)

    def set(self, value, tags=None):
        self._add("set", value, tags)


REPLICA_TAGS = {"application": "align", "deployment": "AlignSearch", "replica": "abc123"}


def _as_if_in_a_serve_replica(monkeypatch, broken=False) -> dict[str, RecordingMetric]:
    """Connected to Ray, inside replica abc123, with metric objects that record calls instead of exporting."""
    from ray import serve

    from components.runtime import metrics as runtime_metrics

    created: dict[str, RecordingMetric] = {}
    context = type("Context", (), {"app_name": "align", "deployment": "AlignSearch",
                                   "replica_id": type("ID", (), {"unique_id": "abc123"})()})()
    monkeypatch.setattr(serve, "get_replica_context", lambda: context)
    monkeypatch.setattr(runtime_metrics, "_created", {})
    monkeypatch.setattr(runtime_metrics, "_warned", False)
    monkeypatch.setattr(runtime_metrics, "_ray_connected", lambda: True)
    monkeypatch.setattr(runtime_metrics, "_new_metric",
                        lambda spec: created.setdefault(spec.name, RecordingMetric(spec, broken)))
    return created


def test_a_request_records_the_ray_side_metrics_tagged_with_the_replica(registry, monkeypatch):
    from components.runtime.metrics import METRICS

    recorded = _as_if_in_a_serve_replica(monkeypatch)
    replica = ServingDeployment(CFG, tracking_uri=str(registry), model_name="align", loaders=LOADERS)
    with TestClient(http_api(replica)) as client:
        assert client.post("/v1/search", json={"text": CAPTIONS[2], "k": 3}).status_code == 200
        assert client.post("/v1/search", json={"text": "a cat", "k": 0}).status_code == 422
        assert client.get("/metrics").status_code == 200  # not an API route: not counted
    calls = {name: metric.calls for name, metric in recorded.items()}
    search = REPLICA_TAGS | {"endpoint": "/v1/search"}
    assert [(kind, value, tags) for kind, value, tags in calls["align_serve_requests"]] == [
        ("inc", 1.0, search | {"status": "200"}), ("inc", 1.0, search | {"status": "422"})]
    latencies = calls["align_serve_request_seconds"]
    assert [(kind, tags) for kind, _, tags in latencies] == [("observe", search)] * 2
    assert all(0 < seconds < 10 for _, seconds, _ in latencies)
    batch = REPLICA_TAGS | {"modality": "search"}
    assert calls["align_serve_encoder_batch_size"] == [("observe", 1, batch)]  # the 422 never reached the model
    assert calls["align_serve_encoder_batch_inputs"] == [("inc", 1.0, batch)]
    assert calls["align_serve_model_version"] == [("set", 1.0, REPLICA_TAGS)]
    specs = {spec.name: spec for spec in METRICS}
    for name, metric_calls in calls.items():
        assert all(set(tags) == set(specs[name].tag_keys) for _, _, tags in metric_calls), name

    # Swaps count by outcome, and every health check re-sets the version gauge before Ray drops it.
    set_alias(registry, "champion", "2")
    assert asyncio.run(replica.check_champion())
    replica.check_health()
    assert recorded["align_serve_model_swaps"].calls == [("inc", 1.0, REPLICA_TAGS | {"outcome": "ok"})]
    assert recorded["align_serve_model_version"].calls[1:] == [("set", 2.0, REPLICA_TAGS)] * 2


def test_recording_failures_never_fail_a_request(registry, monkeypatch, caplog):
    import logging

    from components.runtime import metrics as runtime_metrics

    _as_if_in_a_serve_replica(monkeypatch, broken=True)
    with caplog.at_level(logging.WARNING, logger=runtime_metrics.__name__):
        replica = ServingDeployment(CFG, tracking_uri=str(registry), model_name="align", loaders=LOADERS)
        with TestClient(http_api(replica)) as client:
            for _ in range(3):
                assert client.post("/v1/search", json={"text": CAPTIONS[2], "k": 3}).status_code == 200
            assert client.get("/healthz").status_code == 200
            replica.check_health()
            text = client.get("/metrics").text  # the replica's own registry still counts
    assert 'align_serve_requests_total{endpoint="/v1/search",status="200"} 3.0' in text
    assert [r.getMessage() for r in caplog.records] == [
        "metrics not recorded (metrics agent unavailable); the replica goes on without them"]
