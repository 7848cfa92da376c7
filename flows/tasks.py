"""Prefect tasks, one per lifecycle stage; each is a thin call into ``components``.

Heavy stages run Ray Data / Ray Train *inside* ordinary tasks (DESIGN.md §5), connected to the
configured Ray cluster. Task results are not cached by Prefect: the data stage caches by content
itself, and training must rerun when asked to.
"""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NONE

from components.config import AlignConfig


@task(name="ingest-and-filter", cache_policy=NONE)
def ingest_task(cfg: AlignConfig):
    from components.data.ingest import ingest, prepare_corpus
    from components.runtime.ray_cluster import connect

    connect(cfg)
    corpus = prepare_corpus(cfg)
    return corpus, ingest(cfg, corpus)


@task(name="start-mlflow-run", cache_policy=NONE)
def start_run_task(cfg: AlignConfig, dataset) -> str:
    from components.registry.store import git_commit
    from components.runtime.tracking import log_dataset, prepare_tracking, start_lifecycle_run

    prepare_tracking(cfg.storage)
    tags = {
        "align.config_hash": cfg.config_hash(),
        "align.git_commit": git_commit(),
        "align.dataset_content_hash": dataset.manifest["content_hash"],
        "align.recipe": cfg.name,
    }
    run_id = start_lifecycle_run(cfg, tags, run_name=f"{cfg.name}-seed{cfg.seed}")
    log_dataset(cfg.storage.tracking_uri, run_id, dataset.dataset_uri, dataset.manifest, dataset.report)
    return run_id


@task(name="train", cache_policy=NONE)
def train_task(cfg: AlignConfig, kept_uri: str, run_id: str, validation_json: str = ""):
    from components.runtime.ray_cluster import connect
    from components.train.stage import train_stage

    connect(cfg)
    return train_stage(cfg, kept_uri, run_id, validation_json)


@task(name="evaluate", cache_policy=NONE)
def evaluate_task(cfg: AlignConfig, artifact_dir: str, run_id: str, corpus):
    from components.evaluation.stage import evaluate_stage

    return evaluate_stage(cfg, artifact_dir, run_id, corpus.retrieval_json, corpus.classification_dir)


@task(name="register", cache_policy=NONE)
def register_task(cfg: AlignConfig, run_id: str, artifact_dir: str, corpus, manifest: dict) -> str:
    from components.registry.stage import register_stage

    return register_stage(cfg, run_id, artifact_dir, corpus.retrieval_json, manifest)


@task(name="gate-and-promote", cache_policy=NONE)
def promote_task(cfg: AlignConfig, version: str, metrics: dict):
    from components.registry.stage import promote_stage

    return promote_stage(cfg, version, metrics)


@task(name="deploy", cache_policy=NONE)
def deploy_task(cfg: AlignConfig, model_version: str | None = None) -> str:
    """Serve the champion; pinned to ``model_version`` when given, so readiness means *that* version."""
    from components.runtime.ray_cluster import connect
    from components.serving.deploy import deploy

    connect(cfg)
    return deploy(cfg.serve, cfg.registry, cfg.storage.tracking_uri, model_version=model_version)
