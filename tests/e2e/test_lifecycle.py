"""The whole lifecycle as a Prefect flow on a tiny corpus, twice: champion, then a gated challenger."""

import os

import httpx
import mlflow
import pytest

from components.config import load_config
from components.runtime.ray_cluster import free_port
from tests.train_fixtures import TINY_LIFECYCLE as TINY

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture(scope="module")
def lifecycle_runs(ray_session, ray_home):
    os.environ["PREFECT_HOME"] = str(ray_home / "prefect")
    from flows.lifecycle import lifecycle

    port = free_port()
    common = [f"storage.home={ray_home}", f"serve.port={port}", *TINY]
    first = lifecycle(load_config(None, common).model_dump())
    second = lifecycle(load_config(None, [*common, "seed=2"]).model_dump())
    cfg = load_config(None, common)
    yield cfg, first, second
    from ray import serve

    serve.shutdown()  # the session's Ray is shared: leave no app (or fixed HTTP port) behind


def test_first_run_ingests_trains_registers_promotes_and_serves(lifecycle_runs):
    cfg, first, _ = lifecycle_runs
    report = first["data_report"]
    assert report["rows_in"] == report["rows_kept"] + report["rows_rejected"]
    assert report["rejected_by_rule"]["image_undecodable"] >= 1  # the corpus' corrupt images
    assert report["rejected_by_rule"]["caption_not_utf8"] >= 1  # and its non-UTF-8 captions
    for name in ("retrieval/text_to_image/R_at_1", "retrieval/image_to_text/R_at_10", "classification/acc1", "knn/k1/acc1"):
        assert 0.0 <= first["metrics"][name] <= 1.0
    assert first["model_version"] == "1" and first["gate"]["passed"]
    assert first["serving_url"] == f"http://127.0.0.1:{cfg.serve.port}"


def test_registry_holds_lineage_and_aliases(lifecycle_runs):
    cfg, first, second = lifecycle_runs
    client = mlflow.MlflowClient(cfg.storage.tracking_uri)
    model = client.get_registered_model(cfg.registry.model_name)
    assert str(model.aliases["challenger"]) == "2"
    version = client.get_model_version(cfg.registry.model_name, "1")
    for tag in ("align.dataset_content_hash", "align.config_hash", "align.git_commit", "align.parent_run_id"):
        assert version.tags[tag]
    assert version.tags["align.parent_run_id"] == first["run_id"] and version.tags["align.gate"] == "passed"
    # Each suite's results are on the version (with the suite's content hash) and in the run.
    import json

    stored = json.loads(version.tags["align.eval.retrieval"])
    assert stored["run_id"] == first["run_id"] and len(stored["hash"]) == 16
    assert stored["metrics"]["retrieval/mean_recall"] == pytest.approx(first["metrics"]["retrieval/mean_recall"])
    record = mlflow.artifacts.load_dict(f"runs:/{first['run_id']}/eval/classification/results.json")
    assert record["task"] == "zeroshot_classification" and set(record["metrics"]) >= {"acc1", "acc5"}
    artifacts = {a.path for a in client.list_artifacts(first["run_id"], "eval/classification")}
    assert {"eval/classification/confusion_matrix.png", "eval/classification/details.json"} <= artifacts
    run = client.get_run(first["run_id"])
    assert run.inputs.dataset_inputs, "the run links to the dataset it trained on"
    assert run.inputs.dataset_inputs[0].tags[0].value == "training"
    # Ended by training (FINISHED, after it), not when the dataset was linked to it before training.
    assert run.info.status == "FINISHED" and run.info.end_time - run.info.start_time > 5_000
    assert "train/loss" in run.data.metrics and "retrieval/mean_recall" in run.data.metrics
    assert "val/mean_recall" in run.data.metrics  # held-out retrieval logged during training
    # The model loads through MLflow's pyfunc flavour (from code, safetensors inside) and embeds text.
    import pandas as pd

    pyfunc = mlflow.pyfunc.load_model(f"models:/{cfg.registry.model_name}@challenger")
    assert pyfunc.predict(pd.DataFrame({"text": ["a red circle"]})).shape[0] == 1


def test_second_run_is_gated_against_the_first_champion(lifecycle_runs):
    cfg, first, second = lifecycle_runs
    assert second["model_version"] == "2"
    assert second["gate"]["champion_version"] == "1"
    client = mlflow.MlflowClient(cfg.storage.tracking_uri)
    champion = client.get_model_version_by_alias(cfg.registry.model_name, "champion")
    assert str(champion.version) == ("2" if second["gate"]["passed"] else "1")
    # Both were compared on the same suite contents; the outcome is recorded on the challenger.
    tags = client.get_model_version(cfg.registry.model_name, "2").tags
    assert tags["align.gate"] == ("passed" if second["gate"]["passed"] else "failed")
    assert "align.gate.delta.retrieval/mean_recall" in tags
    assert second["serving_url"] == ("" if not second["gate"]["passed"] else first["serving_url"])
    # The data stage was cached: same corpus and filter settings, same dataset.
    assert second["dataset_uri"] == first["dataset_uri"]


def test_serving_answers_after_the_flow_returned(lifecycle_runs):
    cfg, _, second = lifecycle_runs
    url = f"http://127.0.0.1:{cfg.serve.port}"
    health = httpx.get(f"{url}/healthz", timeout=30).json()
    champion = mlflow.MlflowClient(cfg.storage.tracking_uri).get_model_version_by_alias(cfg.registry.model_name, "champion")
    assert health["status"] == "ok" and health["model_version"] == str(champion.version)
    body = httpx.post(f"{url}/v1/search", json={"text": "a red circle on the left", "k": 5}, timeout=30).json()
    assert len(body["results"]) == 5 and body["model_version"] == str(champion.version)
    assert {"id", "score", "caption"} <= set(body["results"][0])
    assert httpx.post(f"{url}/v1/search", json={"text": "  ", "k": 5}, timeout=30).status_code == 422


def test_the_search_page_of_the_real_app_shows_the_champions_images(lifecycle_runs):
    """Headless Chromium on the page served by the Ray Serve app: query, grid, images from the index."""
    from playwright.sync_api import expect

    from tests.browser import headless_page, wait_until_images_load

    cfg, _, _ = lifecycle_runs
    url = f"http://127.0.0.1:{cfg.serve.port}/"
    expected = httpx.post(f"{url}v1/search", json={"text": "a red circle", "k": 6}, timeout=30).json()
    first = httpx.get(f"{url}{expected['results'][0]['image_url']}", timeout=30)
    assert first.status_code == 200 and first.headers["content-type"].startswith("image/"), first.text[:300]
    with headless_page(url) as page:
        page.goto(url)
        # Locator assertions, not wait_for_function: the page's CSP forbids the eval that needs.
        expect(page.locator("#model-version")).to_contain_text(f"v{expected['model_version']}")
        page.fill("#k", "6")
        page.fill("#query", "a red circle")
        page.press("#query", "Enter")
        cards = page.locator("#results .result")
        expect(cards).to_have_count(len(expected["results"]))
        assert cards.evaluate_all("cards => cards.map(c => c.dataset.id)") == [hit["id"] for hit in expected["results"]]
        # The images come from the champion's corpus index (GET v1/images/{id}) and really decode.
        wait_until_images_load(page, "#results img.result-image")
