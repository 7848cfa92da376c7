"""The registry against a real tracking server: ``mlflow server`` on PostgreSQL, artifacts proxied to S3.

Production runs MLflow as a server (infra/mlflow/README.md); the embedded default is SQLite. Here the
test set-up starts PostgreSQL (Debian's package) and ``mlflow server --serve-artifacts
--artifacts-destination s3://…`` on 127.0.0.1, with the session's moto server as S3, and the registry
operations run as a client over HTTP only. No Ray.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest

from components.config import StorageConfig
from tests.tracking_server import start_mlflow_server, start_postgres

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MODEL_NAME = "align-tracking-server-test"
EXPERIMENT = "align-tracking-server-test"
LINEAGE = {"dataset_hash": "d" * 16, "config_hash": "c" * 16, "git_commit": "0123abc"}


@contextlib.contextmanager
def _global_mlflow_uris():
    """Put MLflow's process-wide tracking/registry URIs (and their env vars) back as they were."""
    import mlflow
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    saved = (tracking_utils._tracking_uri, registry_utils._registry_uri)
    saved_env = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    try:
        yield
    finally:
        mlflow.set_tracking_uri(saved[0])
        registry_utils._registry_uri = saved[1]
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="module")
def tracking_server(s3_server, tmp_path_factory):
    """PostgreSQL + ``mlflow server`` (artifacts -> moto bucket); yields the HTTP tracking URI and friends."""
    import boto3
    import mlflow

    bucket = f"align-mlflow-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=bucket)
    logs = tmp_path_factory.mktemp("tracking-server")
    server_env = {
        "MLFLOW_S3_ENDPOINT_URL": s3_server,
        "AWS_ENDPOINT_URL": s3_server,
        **{k: os.environ[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")},
    }
    with contextlib.ExitStack() as stack:
        postgres = stack.enter_context(start_postgres(logs))
        # The server must take its stores from its flags, not from a URI a client test left in the env.
        for key in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
            stack.enter_context(_without_env(key))
        server = stack.enter_context(
            start_mlflow_server(postgres.sqlalchemy_uri, f"s3://{bucket}/mlartifacts", server_env, log_dir=logs)
        )
        stack.enter_context(_global_mlflow_uris())
        mlflow.set_tracking_uri(server.uri)
        mlflow.set_registry_uri(server.uri)
        yield SimpleNamespace(uri=server.uri, postgres_uri=postgres.uri, bucket=bucket, s3=s3_server, log=server.log)


@contextlib.contextmanager
def _without_env(key: str):
    value = os.environ.pop(key, None)
    try:
        yield
    finally:
        if value is not None:
            os.environ[key] = value


@pytest.fixture(scope="module")
def registered(tracking_server, tmp_path_factory):
    """A tiny real ALIGN artifact, logged and registered through our registry code over HTTP."""
    import mlflow
    import torch

    from components.config import ModelConfig, TextTowerConfig
    from components.model.align import AlignModel
    from components.model.artifact import save_artifact
    from components.model.tokenizer import train_wordpiece
    from components.registry.store import register_model
    from components.runtime.tracking import ensure_experiment

    tokenizer = train_wordpiece(["a red circle", "a blue square", "two green triangles"] * 10, 60, 16)
    text = TextTowerConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, max_length=16
    )
    cfg = ModelConfig(
        image_tower="tinynet_e", train_preprocess="resize_short(40)|random_crop(32)|flip_lr",
        eval_preprocess="resize_short(40)|center_crop(32)", text=text, init_temperature=0.07,
    )
    torch.manual_seed(0)
    model = AlignModel(cfg).eval()
    artifact = save_artifact(model, tokenizer, tmp_path_factory.mktemp("artifact") / "align_model")

    storage = StorageConfig(tracking_uri=tracking_server.uri, artifact_uri="")  # the server owns artifacts
    experiment_id = ensure_experiment(storage, EXPERIMENT)
    assert ensure_experiment(storage, EXPERIMENT) == experiment_id  # idempotent
    client = mlflow.MlflowClient(tracking_uri=tracking_server.uri)
    assert client.get_experiment(experiment_id).artifact_location.startswith("mlflow-artifacts:")
    run_id = client.create_run(experiment_id, run_name="tracking-server").info.run_id
    version = register_model(tracking_server.uri, run_id, MODEL_NAME, str(artifact), model.embed_dim, LINEAGE)
    client.set_terminated(run_id)
    return SimpleNamespace(version=version, run_id=run_id, artifact=artifact, embed_dim=model.embed_dim)


def test_register_model_sets_challenger_and_lineage_tags(tracking_server, registered):
    from components.registry.store import CHALLENGER, alias_version

    version = registered.version
    assert version.name == MODEL_NAME and version.run_id == registered.run_id
    assert CHALLENGER in version.aliases
    assert {k: version.tags[k] for k in LINEAGE} == LINEAGE
    assert alias_version(tracking_server.uri, MODEL_NAME, CHALLENGER).version == version.version
    assert alias_version(tracking_server.uri, MODEL_NAME, "champion-of-nothing") is None
    assert alias_version(tracking_server.uri, "no-such-model", CHALLENGER) is None


def test_champion_moves_and_rolls_back_with_its_history(tracking_server, registered):
    from components.registry.promotion import PROMOTED_BY_GATE, champion_history, rollback, set_champion
    from components.registry.store import CHAMPION, alias_version, register_model

    uri, first = tracking_server.uri, registered.version.version
    set_champion(uri, MODEL_NAME, first, PROMOTED_BY_GATE)
    champion = alias_version(uri, MODEL_NAME, CHAMPION)
    assert champion is not None and champion.version == first
    assert set(champion.aliases) >= {CHAMPION, "challenger"}

    second = register_model(uri, registered.run_id, MODEL_NAME, str(registered.artifact), registered.embed_dim, {})
    set_champion(uri, MODEL_NAME, second.version, PROMOTED_BY_GATE)
    assert alias_version(uri, MODEL_NAME, CHAMPION).version == second.version
    event = rollback(uri, MODEL_NAME, reason="latency regression")
    assert event["version"] == first and event["previous"] == second.version
    assert alias_version(uri, MODEL_NAME, CHAMPION).version == first
    assert [e["how"] for e in champion_history(uri, MODEL_NAME)][-3:] == ["gate", "gate", "rollback"]
    assert "latency regression" in alias_version(uri, MODEL_NAME, "challenger").tags["align.rolled_back"]


def test_download_model_fetches_our_weights_from_s3(tracking_server, registered, tmp_path):
    import boto3

    from components.model.artifact import CONFIG_FILE, WEIGHTS_FILE
    from components.registry.promotion import PROMOTED_BY_GATE, set_champion
    from components.registry.store import download_model

    set_champion(tracking_server.uri, MODEL_NAME, registered.version.version, PROMOTED_BY_GATE)
    version, folder = download_model(tracking_server.uri, f"models:/{MODEL_NAME}@champion", str(tmp_path))
    assert version == registered.version.version
    folder = Path(folder)
    assert (folder / WEIGHTS_FILE).read_bytes() == (registered.artifact / WEIGHTS_FILE).read_bytes()
    assert (folder / CONFIG_FILE).exists() and (folder / "tokenizer").is_dir()

    # The bytes went through the server into the bucket, not onto a local disk.
    s3 = boto3.client("s3", endpoint_url=tracking_server.s3)
    keys = [
        obj["Key"]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=tracking_server.bucket, Prefix="mlartifacts/")
        for obj in page.get("Contents", [])
    ]
    assert any(key.endswith(f"/{WEIGHTS_FILE}") for key in keys), keys
    assert any(key.endswith("/MLmodel") for key in keys), keys


def test_pyfunc_loads_champion_and_registry_lives_in_postgres(tracking_server, registered):
    import mlflow
    import numpy as np
    import pandas as pd
    import psycopg2

    from components.registry.promotion import PROMOTED_BY_GATE, set_champion

    set_champion(tracking_server.uri, MODEL_NAME, registered.version.version, PROMOTED_BY_GATE)
    model = mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}@champion")
    embeddings = np.asarray(model.predict(pd.DataFrame({"text": ["a red circle", "a blue square"]})))
    assert embeddings.shape == (2, registered.embed_dim)
    assert np.allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-4)

    with contextlib.closing(psycopg2.connect(tracking_server.postgres_uri)) as conn, conn.cursor() as cursor:
        cursor.execute("SELECT version, run_id FROM model_versions WHERE name = %s ORDER BY version", (MODEL_NAME,))
        assert cursor.fetchall()[0] == (int(registered.version.version), registered.run_id)
        cursor.execute("SELECT alias FROM registered_model_aliases WHERE name = %s ORDER BY alias", (MODEL_NAME,))
        assert [row[0] for row in cursor.fetchall()] == ["challenger", "champion"]
