"""One small Prefect flow per CLI stage verb, so a single stage is tracked like the full lifecycle."""

from __future__ import annotations

from prefect import flow

from components.config import AlignConfig
from flows.tasks import deploy_task, evaluate_task, ingest_task, promote_task, register_task, start_run_task, train_task


@flow(name="align-ingest")
def ingest_flow(config: dict) -> dict:
    _, dataset = ingest_task(AlignConfig.model_validate(config))
    return {"dataset_uri": dataset.dataset_uri, "report": dataset.report, "cached": dataset.cached}


@flow(name="align-train")
def train_flow(config: dict, run_id: str | None = None) -> dict:
    """Train in a new MLflow run, or resume ``run_id``'s training from its last checkpoint."""
    cfg = AlignConfig.model_validate(config)
    corpus, dataset = ingest_task(cfg)
    run_id = run_id or start_run_task(cfg, dataset)
    trained = train_task(cfg, dataset.kept_uri, run_id, corpus.retrieval_json)
    return {"run_id": run_id, "artifact_dir": trained.artifact_dir, "checkpoint": trained.checkpoint_path}


@flow(name="align-evaluate")
def evaluate_flow(config: dict, run_id: str) -> dict:
    from components.data.ingest import prepare_corpus
    from components.train.stage import model_dir_for_run

    cfg = AlignConfig.model_validate(config)
    report = evaluate_task(cfg, model_dir_for_run(cfg, run_id), run_id, prepare_corpus(cfg))
    return {"run_id": run_id, "metrics": report.metrics}


@flow(name="align-promote")
def promote_flow(config: dict, run_id: str) -> dict:
    from components.data.ingest import prepare_corpus
    from components.runtime.tracking import run_dict, run_metrics
    from components.train.stage import model_dir_for_run

    cfg = AlignConfig.model_validate(config)
    manifest = run_dict(cfg.storage, run_id, "dataset/manifest.json")
    version = register_task(cfg, run_id, model_dir_for_run(cfg, run_id), prepare_corpus(cfg), manifest)
    decision = promote_task(cfg, version, run_metrics(cfg.storage, run_id))
    return {"model_version": version, "gate": decision.to_dict()}


@flow(name="align-serve")
def serve_flow(config: dict) -> dict:
    return {"serving_url": deploy_task(AlignConfig.model_validate(config))}
