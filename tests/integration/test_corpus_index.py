"""The corpus index job on Ray Data: embed with a registered version, quarantine bad rows, load, search."""

from __future__ import annotations

import io
from pathlib import Path

import mlflow
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from components.config import AlignConfig, IndexConfig, RegistryConfig, StorageConfig
from tests.train_fixtures import COLOURS, tiny_config

pytestmark = pytest.mark.integration


def _dataset(path) -> str:
    keys, texts, images = [], [], []
    for i in range(40):
        name, rgb = list(COLOURS.items())[i % len(COLOURS)]
        buffer = io.BytesIO()
        Image.new("RGB", (40, 40), rgb).save(buffer, format="JPEG")
        keys.append(f"tiles:{i:03d}")
        texts.append(f"a plain {name} square number {i}")
        images.append(buffer.getvalue())
    images[7] = b"not an image at all"  # must be quarantined with its reason, not dropped
    path.mkdir(parents=True)
    pq.write_table(pa.table({"key": keys, "text": texts, "image": images}), path / "part-0.parquet")
    return str(path)


@pytest.fixture(scope="module")
def registered(ray_session, tmp_path_factory):
    from components.model.align import AlignModel
    from components.model.artifact import save_artifact
    from components.model.tokenizer import train_wordpiece
    from components.registry.store import register_model
    from components.runtime.tracking import ensure_experiment, prepare_tracking

    root = tmp_path_factory.mktemp("corpus-index")
    base = tiny_config(root, steps=1)
    cfg = AlignConfig(
        storage=StorageConfig(**(base.storage.model_dump() | {"indexes_uri": str(root / "indexes")})),
        model=base.model,
        registry=RegistryConfig(model_name="align-index", experiment="index"),
    )
    prepare_tracking(cfg.storage)
    experiment = ensure_experiment(cfg.storage, cfg.registry.experiment)
    run_id = mlflow.MlflowClient(cfg.storage.tracking_uri).create_run(experiment).info.run_id
    tokenizer = train_wordpiece([f"a plain {c} square" for c in COLOURS] * 5, 200, 16)
    cfg.model.text.vocab_size = len(tokenizer)
    model = AlignModel(cfg.model, load_pretrained=False)
    save_artifact(model, tokenizer, root / "artifact")
    version = register_model(
        cfg.storage.tracking_uri, run_id, cfg.registry.model_name, str(root / "artifact"), model.embed_dim, {}
    )
    return cfg, str(version.version), _dataset(root / "kept"), root


def test_the_index_job_embeds_quarantines_and_records_the_version(registered):
    from components.serving.corpus_index import index_stage, load_corpus_index

    cfg, version, kept, _ = registered
    manifest = index_stage(cfg, version, kept)
    assert (manifest.items, manifest.rejected, manifest.model_version, manifest.spec) == (39, 1, version, "Flat")
    client = mlflow.MlflowClient(cfg.storage.tracking_uri)
    uri = client.get_model_version(cfg.registry.model_name, version).tags["align.index_uri"]
    index, images, loaded = load_corpus_index(uri, version)
    assert len(index) == 39 and loaded == manifest
    assert "tiles:007" not in images and Image.open(io.BytesIO(images.get("tiles:012"))).size == (40, 40)
    rejected = pq.read_table(f"{uri}/items").to_pydict()
    (reason,) = [e for k, e in zip(rejected["id"], rejected["error"], strict=True) if k == "tiles:007"]
    assert reason.startswith("image_undecodable")
    # A vector of item 12 finds item 12 first: rows, ids and embeddings line up.
    row = [index.item(i).id for i in range(len(index))].index("tiles:012")
    vector = np.asarray(pq.read_table(f"{uri}/items", filters=[("id", "=", "tiles:012")])["embedding"][0].as_py(), np.float32)
    scores, rows = index.search(vector[None, :], 1)
    assert rows[0, 0] == row or scores[0, 0] > 0.999  # identical-colour squares may tie
    with pytest.raises(ValueError, match="built by model version"):
        load_corpus_index(uri, "99")
    assert index_stage(cfg, version, kept) == manifest  # built once per version and corpus


def test_an_ann_index_above_the_size_threshold_reports_its_recall(registered):
    from components.serving.corpus_index import index_stage

    cfg, version, kept, root = registered
    ann = cfg.model_copy(update={"index": IndexConfig(exact_max=10, ann_spec="HNSW8", recall_queries=20),
                                 "storage": cfg.storage.model_copy(update={"indexes_uri": str(root / "ann")})})
    manifest = index_stage(ann, version, kept)
    assert manifest.spec == "HNSW8" and 0.0 <= manifest.recall_at_10 <= 1.0
    run = mlflow.MlflowClient(cfg.storage.tracking_uri).get_run(
        mlflow.MlflowClient(cfg.storage.tracking_uri).get_model_version(cfg.registry.model_name, version).run_id
    )
    assert run.data.metrics["index/recall_at_10"] == pytest.approx(manifest.recall_at_10)


def test_a_rebuild_after_a_crashed_attempt_indexes_only_its_own_rows(registered):
    """A crashed attempt's item files, left without a manifest, must not join the next build."""
    from components.serving.corpus_index import ITEMS_DIR, index_stage, index_uri

    cfg, version, kept, root = registered
    crashed = cfg.model_copy(update={"storage": cfg.storage.model_copy(update={"indexes_uri": str(root / "crashed")})})
    uri = index_uri(crashed.storage.indexes_uri, cfg.registry.model_name, version, kept)
    leftovers = root / "crashed-items"
    leftovers.mkdir()
    pq.write_table(pq.read_table(kept).slice(0, 4).rename_columns(["id", "caption", "image"]), leftovers / "x.parquet")
    (Path(uri) / ITEMS_DIR).mkdir(parents=True)
    (leftovers / "x.parquet").rename(Path(uri) / ITEMS_DIR / "attempt-1-part-0.parquet")
    manifest = index_stage(crashed, version, kept)
    ids = pq.read_table(f"{uri}/items", columns=["id"]).column("id").to_pylist()
    assert manifest.items + manifest.rejected == len(ids) == 40 and len(set(ids)) == 40
