"""The experiment's parent MLflow run: its trials' runs hang under it (``mlflow.parentRunId``)."""

from __future__ import annotations

from components.config import AlignConfig
from components.experiments.spec import ExperimentSpec, expand
from components.secrets import redact

PARENT_TAG = "mlflow.parentRunId"  # MLflow's own nesting tag: the UI folds children under the parent
EXPERIMENT_TAG = "align.experiment"


def start_parent_run(cfg: AlignConfig, spec: ExperimentSpec) -> str:
    """Open the parent run (in the trials' MLflow experiment) with the spec and its expanded trials."""
    import mlflow

    from components.runtime.tracking import ensure_experiment, prepare_tracking

    prepare_tracking(cfg.storage)
    client = mlflow.MlflowClient(tracking_uri=cfg.storage.tracking_uri)
    experiment_id = ensure_experiment(cfg.storage, cfg.registry.experiment)
    run = client.create_run(experiment_id, run_name=spec.name,
                            tags={EXPERIMENT_TAG: spec.name, "align.kind": "experiment",
                                  "mlflow.note.content": spec.description})
    trials = expand(spec)
    client.log_dict(run.info.run_id, redact(spec.model_dump()), "experiment/spec.json")
    client.log_dict(run.info.run_id, redact({t.name: t.overrides for t in trials}), "experiment/trials.json")
    client.log_param(run.info.run_id, "trials", len(trials))
    client.log_param(run.info.run_id, "recipe", spec.recipe)
    return run.info.run_id


def child_tags(parent_run_id: str, experiment: str, trial: str) -> dict[str, str]:
    return {PARENT_TAG: parent_run_id, EXPERIMENT_TAG: experiment, "align.trial": trial}


def log_metrics(tracking_uri: str, run_id: str, metrics: dict[str, float]) -> None:
    """Log a trial's extra numbers (e.g. the arithmetic probe) to its run in one call."""
    import time

    import mlflow
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    mlflow.MlflowClient(tracking_uri=tracking_uri).log_batch(run_id, metrics=[Metric(k, v, now, 0) for k, v in metrics.items()])

