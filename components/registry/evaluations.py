"""Evaluation results attached to registered model versions, keyed by suite content hash.

A version carries one tag per suite, ``align.eval.<suite>`` = ``{"hash", "run_id", "metrics"}``, so the
gate can tell whether a champion's stored numbers were measured on the suite as it is *now*; if not,
the champion is evaluated again and the tag replaced. The full results (CLIP_benchmark JSON, per-class
accuracy, plots) live in the run named by ``run_id``.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from components.config import AlignConfig
from components.evaluation.suite import CorpusSets, EvalReport

EVAL_TAG_PREFIX = "align.eval."


def record_version_evaluation(tracking_uri: str, model_name: str, version: str, report: EvalReport, run_id: str) -> None:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    for result in report.results:
        value = {"hash": result.content_hash, "run_id": run_id, "metrics": result.flat_metrics()}
        client.set_model_version_tag(model_name, str(version), EVAL_TAG_PREFIX + result.name, json.dumps(value))


def stored_metrics(version, hashes: dict[str, str]) -> tuple[dict[str, float], list[str]]:
    """Metrics a version has for suites at exactly these hashes, and the suites it lacks (or has stale)."""
    metrics: dict[str, float] = {}
    stale: list[str] = []
    for suite, content_hash in sorted(hashes.items()):
        raw = version.tags.get(EVAL_TAG_PREFIX + suite)
        try:
            stored = json.loads(raw) if raw else None
        except json.JSONDecodeError:
            stored = None
        if not isinstance(stored, dict) or stored.get("hash") != content_hash:
            stale.append(suite)
        else:
            metrics |= {k: float(v) for k, v in stored.get("metrics", {}).items()}
    return metrics, stale


def evaluate_version(
    cfg: AlignConfig, model_name: str, version: str, corpus: CorpusSets, suites: list[str] | None = None
) -> tuple[EvalReport, str]:
    """Evaluate a registered version in a run of its own; record the results on the version.

    Returns the report and the evaluation run's id. The run is tagged with the version it scored, so
    the MLflow UI lists every evaluation of a model.
    """
    import mlflow

    from components.evaluation.stage import evaluate_artifact
    from components.registry.store import download_model
    from components.runtime.tracking import ensure_experiment

    tracking = cfg.storage.tracking_uri
    client = mlflow.MlflowClient(tracking_uri=tracking)
    experiment_id = ensure_experiment(cfg.storage, cfg.registry.experiment)
    tags = {"align.model_name": model_name, "align.model_version": str(version), "align.kind": "evaluation"}
    run = client.create_run(experiment_id, run_name=f"evaluate-{model_name}-v{version}", tags=tags)
    run_id = run.info.run_id
    try:
        with tempfile.TemporaryDirectory(prefix="align-eval-model-") as tmp:
            _, artifact_dir = download_model(tracking, f"models:/{model_name}/{version}", dst=tmp)
            report = evaluate_artifact(cfg, Path(artifact_dir), run_id, corpus, suites, pretrained=f"{model_name}/v{version}")
    except BaseException:
        client.set_terminated(run_id, status="FAILED")
        raise
    client.set_terminated(run_id)
    record_version_evaluation(tracking, model_name, str(version), report, run_id)
    return report, run_id


def version_metrics_on(
    cfg: AlignConfig, model_name: str, version: str, corpus: CorpusSets, hashes: dict[str, str]
) -> tuple[dict[str, float], list[str]]:
    """The version's metrics on these suite hashes, evaluating it on the suites it lacks.

    Returns the metrics and the suites that had to be (re-)evaluated.
    """
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=cfg.storage.tracking_uri)
    metrics, stale = stored_metrics(client.get_model_version(model_name, str(version)), hashes)
    if stale:
        report, _ = evaluate_version(cfg, model_name, version, corpus, stale)
        changed = {name for name, h in report.hashes.items() if h != hashes[name]}
        if changed:
            raise RuntimeError(f"suite(s) {sorted(changed)} changed on disk while the gate was reading them")
        metrics |= report.metrics
    return metrics, stale
