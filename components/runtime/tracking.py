"""MLflow set-up for the embedded default: SQLite backend, artifacts under the state folder.

MLflow >= 3.13 refuses the file store, so the default is ``sqlite:////abs/path/mlflow.db``. With a
SQLite backend MLflow would put artifacts in ``./mlruns`` of whatever directory you ran from, so the
experiment is created with an explicit artifact location instead.

What is logged never holds a credential: ``config.json``, the params and the dataset records go through
:func:`components.secrets.redact` (a store URI's password reads ``***``).
"""

from __future__ import annotations

from pathlib import Path

from components.config import StorageConfig
from components.secrets import redact, redact_text, redact_uri


def prepare_tracking(storage: StorageConfig) -> None:
    import mlflow

    if storage.tracking_uri.startswith("sqlite:///"):
        Path(storage.tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    if storage.artifact_uri and "://" not in storage.artifact_uri:
        Path(storage.artifact_uri).mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(storage.tracking_uri)
    mlflow.set_registry_uri(storage.tracking_uri)


def ensure_experiment(storage: StorageConfig, name: str) -> str:
    """Experiment id for ``name``, created with artifacts under ``storage.artifact_uri``.

    Against a tracking server (``http(s)://``) with no ``artifact_uri``, the server picks the location:
    ``mlflow-artifacts:/``, proxied to its ``--artifacts-destination`` (see infra/mlflow/README.md).
    """
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=storage.tracking_uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    if not storage.artifact_uri and storage.tracking_uri.startswith(("http://", "https://")):
        return client.create_experiment(name)
    location = storage.artifact_uri.rstrip("/") + f"/{name}"
    if "://" not in location:
        location = Path(location).resolve().as_uri()
    return client.create_experiment(name, artifact_location=location)


def _flatten(prefix: str, value, out: dict[str, str]) -> None:
    if isinstance(value, dict):
        for key, child in value.items():
            _flatten(f"{prefix}.{key}" if prefix else str(key), child, out)
    else:
        out[prefix] = redact_text(str(value))[:500]  # MLflow caps parameter values; redacted before the cut


def start_lifecycle_run(cfg, tags: dict[str, str], run_name: str | None = None) -> str:
    """Open the MLflow run that every stage of one lifecycle logs into; returns its id."""
    import mlflow

    experiment_id = ensure_experiment(cfg.storage, cfg.registry.experiment)
    client = mlflow.MlflowClient(tracking_uri=cfg.storage.tracking_uri)
    run = client.create_run(experiment_id, run_name=run_name, tags=tags)
    params: dict[str, str] = {}
    _flatten("", cfg.model_dump(exclude={"storage", "ray", "serve"}), params)
    from mlflow.entities import Param

    items = [Param(k, v) for k, v in sorted(params.items())]
    for start in range(0, len(items), 100):  # log_batch takes at most 100 params per call
        client.log_batch(run.info.run_id, params=items[start : start + 100])
    client.log_dict(run.info.run_id, redact(cfg.model_dump()), "config.json")
    return run.info.run_id


def set_run_status(tracking_uri: str, run_id: str, status: str) -> None:
    """RUNNING (again, on a resume), or ended FINISHED / FAILED with the work the run stands for."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    if status == "RUNNING":
        client.update_run(run_id, status="RUNNING")
    else:
        client.set_terminated(run_id, status=status)


def log_dataset(tracking_uri: str, run_id: str, dataset_uri: str, manifest: dict, report: dict) -> None:
    """Link the run to the exact filtered dataset it trained on (``mlflow.log_input``)."""
    import warnings

    import mlflow
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # MLflow warns that several source types match
        source = resolve_dataset_source(redact_uri(manifest["kept_uri"]))
    dataset = MetaDataset(source=source, name=dataset_uri.rstrip("/").rsplit("/", 1)[-1], digest=manifest["content_hash"][:36])
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    # Through the client, not `with mlflow.start_run(...)`, whose exit would end the run before it trains.
    client.log_inputs(run_id, [DatasetInput(dataset._to_mlflow_entity(), [InputTag(MLFLOW_DATASET_CONTEXT, "training")])])
    client.log_dict(run_id, redact(report), "dataset/report.json")
    client.log_dict(run_id, redact(manifest), "dataset/manifest.json")


def latest_run_id(storage: StorageConfig, experiment: str, metric: str | None = None) -> str:
    """The newest run of ``experiment`` (optionally only runs that logged ``metric``)."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=storage.tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise LookupError(f"no MLflow experiment {experiment!r} yet: run `align train` (or `align run`) first")
    for run in client.search_runs([found.experiment_id], order_by=["attributes.start_time DESC"], max_results=50):
        if metric is None or metric in run.data.metrics:
            return run.info.run_id
    raise LookupError(f"no run in {experiment!r} has {metric!r}; run the earlier stages first")


def run_metrics(storage: StorageConfig, run_id: str) -> dict[str, float]:
    import mlflow

    return dict(mlflow.MlflowClient(tracking_uri=storage.tracking_uri).get_run(run_id).data.metrics)


def run_dict(storage: StorageConfig, run_id: str, artifact_file: str) -> dict:
    import mlflow

    mlflow.set_tracking_uri(storage.tracking_uri)
    return mlflow.artifacts.load_dict(f"runs:/{run_id}/{artifact_file}")
