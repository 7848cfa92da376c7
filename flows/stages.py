"""One small Prefect flow per CLI stage verb, so a single stage is tracked like the full lifecycle."""

from __future__ import annotations

from prefect import flow

from components.config import AlignConfig
from flows.tasks import (
    deploy_task,
    evaluate_model_task,
    evaluate_task,
    index_task,
    ingest_task,
    promote_task,
    register_task,
    rollback_task,
    start_run_task,
    train_task,
)


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
def evaluate_flow(config: dict, run_id: str | None = None, model_uri: str = "", suites: list[str] | None = None) -> dict:
    """Evaluate a trained run's artifact, or any registered version (``models:/<name>@<alias>``)."""
    from components.data.ingest import prepare_corpus
    from components.train.stage import model_dir_for_run

    cfg = AlignConfig.model_validate(config)
    corpus = prepare_corpus(cfg)
    if model_uri:
        name, version, report, eval_run = evaluate_model_task(cfg, model_uri, corpus, suites)
        return {"model": f"{name}/{version}", "run_id": eval_run, "metrics": report.metrics, "results": report.records,
                "suite_hashes": report.hashes}
    report = evaluate_task(cfg, model_dir_for_run(cfg, run_id), run_id, corpus, suites)
    return {"run_id": run_id, "metrics": report.metrics, "results": report.records, "suite_hashes": report.hashes}


@flow(name="align-promote")
def promote_flow(
    config: dict, run_id: str | None = None, version: str | None = None, force_reason: str = "", serve: bool = True
) -> dict:
    """Gate a registered ``version`` (or register ``run_id``'s model first); serve the new champion."""
    from components.data.ingest import prepare_corpus
    from components.runtime.tracking import run_dict
    from components.train.stage import model_dir_for_run

    cfg = AlignConfig.model_validate(config)
    corpus = prepare_corpus(cfg)
    if version is None:
        manifest = run_dict(cfg.storage, run_id, "dataset/manifest.json")
        version = register_task(cfg, run_id, model_dir_for_run(cfg, run_id), corpus, manifest)
    kept_uri = ingest_task(cfg)[1].kept_uri if cfg.index.source == "dataset" else ""  # cached by content
    decision = promote_task(cfg, version, corpus, None, force_reason, kept_uri)
    url = deploy_task(cfg, version) if decision.passed and serve else ""
    return {"model_version": version, "gate": decision.to_dict(), "serving_url": url}


@flow(name="align-rollback")
def rollback_flow(config: dict, reason: str = "", serve: bool = True) -> dict:
    """Move ``champion`` back to the previous champion and let serving follow it."""
    cfg = AlignConfig.model_validate(config)
    kept_uri = ingest_task(cfg)[1].kept_uri if cfg.index.source == "dataset" else ""  # cached by content
    event = rollback_task(cfg, reason, kept_uri)
    url = deploy_task(cfg, event["version"]) if serve else ""
    return {"champion": event, "serving_url": url}


@flow(name="align-index")
def index_flow(config: dict, version: str | None = None) -> dict:
    """Embed the filtered dataset with a version (default: the champion) into its search index."""
    from dataclasses import asdict

    from components.registry.store import champion_version

    cfg = AlignConfig.model_validate(config)
    version = version or champion_version(cfg.storage.tracking_uri, cfg.registry.model_name)
    if version is None:
        raise LookupError(f"{cfg.registry.model_name} has no champion yet; pass --version")
    _, dataset = ingest_task(cfg)
    return asdict(index_task(cfg, str(version), dataset.kept_uri))


@flow(name="align-serve")
def serve_flow(config: dict) -> dict:
    return {"serving_url": deploy_task(AlignConfig.model_validate(config))}
