"""A bounded load test of the search service on 127.0.0.1, with a promotion in the middle of it.

A fixed list of requests (text and image searches, embeddings, zero-shot classification, and invalid
requests that must be refused with a 4xx) is sent at a fixed concurrency; the run ends when the list is
done or a wall-clock limit passes, whichever comes first (the limit failing the test). While it runs the
``champion`` alias moves from version 1 to version 2 and the replica follows it in place.

Every answer is checked against the fake registry of ``tests.serving_fakes``: each version embeds with
its own salt, so a search only finds its item with score ~1 when encoder and index come from the same
version, and an embedding can be recomputed here for the version that the response names.
"""

import base64
import io
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import httpx
import numpy as np
import pytest
from PIL import Image

from components.config import RegistryConfig, ServeConfig
from components.runtime.ray_cluster import free_port
from components.serving.deploy import deploy, replica_count, shutdown_app, wait_until_ready
from tests.serving_fakes import CAPTIONS, fake_embed, make_registry, set_alias

pytestmark = [pytest.mark.integration, pytest.mark.slow]

LOADERS = {
    "downloader": "tests.serving_fakes:download_model",
    "encoder_loader": "tests.serving_fakes:load_encoder",
    "index_locator": "tests.serving_fakes:index_location",
    "champion_resolver": "tests.serving_fakes:champion_version",
}
REQUESTS = 600
CONCURRENCY = 8
WALL_LIMIT_S = 60.0  # the run stops by itself at this limit even if requests remain (and then fails)
PROMOTE_AFTER = 120  # completed requests before the alias moves: the rest must see both versions
FOLLOW_S = 0.5
V2_LOAD_S = 1.0
MAX_K = 25
N = len(CAPTIONS)


def _png(red: int) -> str:
    """A small PNG whose top-left red value is ``red``: the fake encoder embeds it like CAPTIONS[red]."""
    buffer = io.BytesIO()
    Image.new("RGB", (12, 10), (red, 40, 200)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _close(vector, expected) -> bool:
    return np.allclose(np.asarray(vector, dtype=np.float32), expected, atol=1e-5)


def _expect_search(item: int, k: int, kind: str):
    def check(body: dict) -> str:
        hits = body["results"]
        if body["query"] != kind:
            return f"query kind {body['query']!r}, expected {kind!r}"
        if len(hits) != min(k, N):
            return f"{len(hits)} hits for k={k}"
        if hits[0]["id"] != f"item-{item}" or hits[0]["caption"] != CAPTIONS[item] or hits[0]["score"] < 0.99:
            return f"top hit {hits[0]} is not item-{item} with score ~1"
        if any(a["score"] < b["score"] for a, b in zip(hits, hits[1:])):
            return "hits not sorted by score"
        return ""

    return check


def _expect_embed(text: int, image: int):
    def check(body: dict) -> str:
        salt = f"v{body['model_version']}"
        if body["dim"] != 16 or len(body["text_embeddings"]) != 1 or len(body["image_embeddings"]) != 1:
            return f"unexpected shape: dim {body['dim']}"
        if not _close(body["text_embeddings"][0], fake_embed([CAPTIONS[text]], salt)[0]):
            return f"text embedding differs from version {body['model_version']}'s encoder"
        if not _close(body["image_embeddings"][0], fake_embed([CAPTIONS[image]], salt)[0]):
            return f"image embedding differs from version {body['model_version']}'s encoder"
        return ""

    return check


def _expect_classify(labels: list[str], right: str):
    def check(body: dict) -> str:
        (prediction,) = body["predictions"]
        if prediction["label"] != right or prediction["scores"][0]["label"] != right:
            return f"predicted {prediction['label']!r}, expected {right!r}"
        if sorted(s["label"] for s in prediction["scores"]) != sorted(labels):
            return "scores do not cover exactly the given labels"
        if abs(sum(s["probability"] for s in prediction["scores"]) - 1.0) > 1e-4 or prediction["scores"][0]["probability"] < 0.9:
            return f"probabilities {prediction['scores']} are not a confident distribution"
        return ""

    return check


def make_requests(count: int, seed: int = 0) -> list[SimpleNamespace]:
    """A fixed, shuffled mix: ~40% text search, 20% image search, 15% embed, 10% classify, 15% invalid."""
    rng = random.Random(seed)
    invalid = [
        ("/v1/search", {"text": "a red circle", "k": 0}, 422),
        ("/v1/search", {"text": "a red circle", "k": MAX_K + 1}, 422),
        ("/v1/search", {"text": "   ", "k": 3}, 422),
        ("/v1/search", {"k": 3}, 422),
        ("/v1/search", {"text": "a red circle", "top_k": 3}, 422),
        ("/v1/search", {"image": "not base64!!", "k": 3}, 422),
        ("/v1/search", {"image": base64.b64encode(b"plain text, no image").decode(), "k": 3}, 422),
        ("/v1/embed", {}, 422),
        ("/v1/embed", {"texts": []}, 422),
        ("/v1/classify", {"images": [_png(1)], "labels": ["cat", "cat"]}, 422),
        ("/v1/classify", {"images": [_png(1)], "labels": ["cat", "dog"], "templates": ["no slot"]}, 422),
        ("/v1/classify", {"images": [_png(1)], "labels": ["cat"]}, 422),
    ]
    requests = []
    for i in range(count):
        roll, item, other = rng.random(), rng.randrange(N), rng.randrange(N)
        if roll < 0.40:
            k = rng.randint(1, MAX_K)
            requests.append(SimpleNamespace(path="/v1/search", body={"text": CAPTIONS[item], "k": k}, status=200,
                                            check=_expect_search(item, k, "text")))
        elif roll < 0.60:
            k = rng.randint(1, 5)
            requests.append(SimpleNamespace(path="/v1/search", body={"image": _png(item), "k": k}, status=200,
                                            check=_expect_search(item, k, "image")))
        elif roll < 0.75:
            requests.append(SimpleNamespace(path="/v1/embed", body={"texts": [CAPTIONS[item]], "images": [_png(other)]},
                                            status=200, check=_expect_embed(item, other)))
        elif roll < 0.85:
            labels = [CAPTIONS[j] for j in rng.sample(range(N), 4)]
            right = CAPTIONS[item]
            labels = labels if right in labels else labels[:3] + [right]
            rng.shuffle(labels)
            requests.append(SimpleNamespace(path="/v1/classify",
                                            body={"images": [_png(item)], "labels": labels, "templates": ["{}"]},
                                            status=200, check=_expect_classify(labels, right)))
        else:
            path, body, status = invalid[i % len(invalid)]
            requests.append(SimpleNamespace(path=path, body=body, status=status, check=None))
    return requests


@pytest.fixture(scope="module")
def service(ray_session, tmp_path_factory):
    from ray import serve

    root = make_registry(tmp_path_factory.mktemp("load-registry"), {"1": {}, "2": {"load_delay_s": V2_LOAD_S}})
    # One replica: it swaps one reference, so each client's versions must be monotonic (checked below).
    # Several replicas follow the alias each on its own; tests/integration/test_serving.py runs the default two.
    cfg = ServeConfig(host="127.0.0.1", port=free_port(), app_name="align-load", max_k=MAX_K, ready_timeout_s=60,
                      follow_champion_s=FOLLOW_S, num_replicas=1)
    url = deploy(cfg, RegistryConfig(model_name="align"), str(root), loaders=LOADERS)
    yield SimpleNamespace(url=url, cfg=cfg, root=root)
    shutdown_app(cfg)
    serve.shutdown()


def run_load(url: str, requests: list, concurrency: int, wall_limit_s: float, on_progress) -> SimpleNamespace:
    """Send every request once from ``concurrency`` threads; stop early only at ``wall_limit_s``."""
    lock = threading.Lock()
    state = SimpleNamespace(next=0, done=0, statuses={}, wrong=[], transport=[], versions=[], per_worker={}, latencies=[])
    deadline = time.monotonic() + wall_limit_s

    def worker(w: int) -> None:
        seen: list[str] = []
        with httpx.Client(timeout=15, trust_env=False) as http:
            while time.monotonic() < deadline:
                with lock:
                    if state.next >= len(requests):
                        break
                    i, state.next = state.next, state.next + 1
                request = requests[i]
                started = time.monotonic()
                try:
                    response = http.post(f"{url}{request.path}", json=request.body)
                except httpx.HTTPError as exc:
                    with lock:
                        state.transport.append(f"#{i} {request.path}: {exc!r}")
                        state.done += 1
                    continue
                problem = ""
                if response.status_code != request.status:
                    problem = f"status {response.status_code}, expected {request.status}: {response.text[:300]}"
                elif request.check is not None:
                    body = response.json()
                    problem = request.check(body)
                    seen.append(body["model_version"])
                elif "detail" not in response.json():
                    problem = f"a {response.status_code} without a detail: {response.text[:300]}"
                with lock:
                    state.latencies.append(time.monotonic() - started)
                    state.statuses[response.status_code] = state.statuses.get(response.status_code, 0) + 1
                    if problem:
                        state.wrong.append(f"#{i} {request.path} {str(request.body)[:120]}: {problem}")
                    state.done += 1
                    done = state.done
                on_progress(done)
        with lock:
            state.per_worker[w] = seen

    started = time.monotonic()
    with ThreadPoolExecutor(concurrency) as pool:
        for future in [pool.submit(worker, w) for w in range(concurrency)]:
            future.result()
    state.wall_s = time.monotonic() - started
    state.versions = [v for seen in state.per_worker.values() for v in seen]
    return state


def test_bounded_load_with_a_promotion_has_no_failures(service):
    requests = make_requests(REQUESTS)
    expected_4xx = sum(r.status != 200 for r in requests)
    assert 0 < expected_4xx < REQUESTS
    promoted = threading.Event()
    promotion = {}

    def on_progress(done: int) -> None:
        if done >= PROMOTE_AFTER and not promoted.is_set():
            promoted.set()
            promotion["at_request"], promotion["at"] = done, time.monotonic()
            set_alias(service.root, "champion", "2")

    state = run_load(service.url, requests, CONCURRENCY, WALL_LIMIT_S, on_progress)
    print(f"{state.done} requests in {state.wall_s:.1f}s, statuses {state.statuses}, versions "
          f"{ {v: state.versions.count(v) for v in sorted(set(state.versions))} }, promoted after "
          f"{promotion.get('at_request')}, p50 {1e3 * float(np.median(state.latencies)):.0f} ms, "
          f"max {1e3 * max(state.latencies):.0f} ms")

    assert state.done == REQUESTS, f"stopped by the {WALL_LIMIT_S:.0f}s limit after {state.done}/{REQUESTS} requests"
    assert state.transport == [], state.transport[:5]
    assert not [code for code in state.statuses if code >= 500], state.statuses
    assert state.wrong == [], f"{len(state.wrong)} wrong answers, e.g. {state.wrong[:5]}"
    assert sum(n for code, n in state.statuses.items() if 400 <= code < 500) == expected_4xx
    assert state.statuses.get(200) == REQUESTS - expected_4xx
    # The promotion happened mid-run and the replica followed it in place, dropping nothing.
    assert promoted.is_set()
    assert {"1", "2"} <= set(state.versions), (
        f"versions seen {sorted(set(state.versions))}; promoted after {promotion.get('at_request')} of {REQUESTS} "
        f"requests, run took {state.wall_s:.1f}s"
    )
    # One replica swaps one reference: once a client has seen version 2, it never sees version 1 again.
    for w, seen in state.per_worker.items():
        if "2" in seen:
            assert "1" not in seen[seen.index("2"):], f"worker {w} went back to version 1: {seen}"
    assert max(state.latencies) < 10.0, f"a request took {max(state.latencies):.1f}s"
    body = wait_until_ready(service.url, timeout_s=10, expected_version="2", replicas=replica_count(service.cfg))
    assert body["model_version"] == "2"
    assert httpx.get(f"{service.url}/v1/model", timeout=10, trust_env=False).json()["last_swap_error"] == ""
