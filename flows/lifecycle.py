"""The whole ALIGN lifecycle as one Prefect flow: ingest -> train -> evaluate -> register -> gate -> serve."""

from __future__ import annotations

from prefect import flow, get_run_logger

from components.config import AlignConfig
from flows.tasks import deploy_task, evaluate_task, ingest_task, promote_task, register_task, start_run_task, train_task


@flow(name="align-lifecycle")
def lifecycle(config: dict) -> dict:
    """Run every stage once for ``config`` (an AlignConfig as a dict, so deployments can pass it)."""
    cfg = AlignConfig.model_validate(config)
    logger = get_run_logger()
    corpus, dataset = ingest_task(cfg)
    logger.info(
        "dataset %s: %d in, %d kept, %d rejected%s",
        dataset.dataset_uri,
        dataset.report["rows_in"],
        dataset.report["rows_kept"],
        dataset.report["rows_rejected"],
        " (cached)" if dataset.cached else "",
    )
    run_id = start_run_task(cfg, dataset)
    trained = train_task(cfg, dataset.kept_uri, run_id, corpus.retrieval_json)
    evaluation = evaluate_task(cfg, trained.artifact_dir, run_id, corpus)
    version = register_task(cfg, run_id, trained.artifact_dir, corpus, dataset.manifest, evaluation)
    decision = promote_task(cfg, version, corpus, evaluation, kept_uri=dataset.kept_uri)
    logger.info("model version %s: gate %s %s", version, decision.outcome, decision.reasons)
    # Only a model that passed the gate is deployed; otherwise the champion keeps serving untouched.
    url = deploy_task(cfg, version) if decision.passed else ""
    return {
        "run_id": run_id,
        "dataset_uri": dataset.dataset_uri,
        "data_report": dataset.report,
        "metrics": evaluation.metrics,
        "model_name": cfg.registry.model_name,
        "model_version": version,
        "gate": decision.to_dict(),
        "serving_url": url,
    }


@flow(name="align-retrain")
def retrain(recipe: str = "configs/embedded.yaml", overrides: list[str] | None = None) -> dict:
    """Entry point for scheduled deployments (prefect.yaml): load a recipe on the worker, then run."""
    from components.config import load_config

    return lifecycle(load_config(recipe, overrides or []).model_dump())
