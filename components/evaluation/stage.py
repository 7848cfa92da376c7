"""The evaluate stage: score a model artifact on the configured suites and log everything to a run.

Per suite the run gets flat metrics (``<suite>/acc1``), ``eval/<suite>/results.json`` in CLIP_benchmark's
shape, ``eval/<suite>/details.json`` (content hash, per-class accuracy, confusion matrix) and the PNG
plots; a tag ``align.eval.<suite>.hash`` says which suite contents the numbers belong to.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from components.config import AlignConfig, ModelConfig
from components.evaluation.suite import CorpusSets, EvalReport, evaluate_suites


def model_display_name(model: ModelConfig) -> str:
    """The CLIP_benchmark ``model`` field: the architecture, read from the artifact's own config."""
    text = model.text.pretrained.rstrip("/").rsplit("/", 1)[-1] if model.text.pretrained else (
        f"bert{model.text.num_layers}x{model.text.hidden_size}"
    )
    return f"align-{model.image_tower}-{text}"


def log_report(tracking_uri: str, run_id: str, report: EvalReport) -> None:
    import mlflow
    from mlflow.entities import Metric

    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    now = mlflow.utils.time.get_current_time_millis()
    metrics = [Metric(name, float(value), now, 0) for name, value in sorted(report.metrics.items())]
    for start in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[start : start + 1000])
    for result in report.results:
        folder = f"eval/{result.name}"
        client.log_dict(run_id, result.record, f"{folder}/results.json")
        client.log_dict(run_id, result.details, f"{folder}/details.json")
        for plot in result.plots:
            client.log_artifact(run_id, str(plot), folder)
        client.set_tag(run_id, f"align.eval.{result.name}.hash", result.content_hash)
    client.log_dict(run_id, {"results": report.records}, "eval/results.json")


def evaluate_artifact(
    cfg: AlignConfig,
    artifact_dir: str | Path,
    run_id: str,
    corpus: CorpusSets,
    suites: list[str] | None = None,
    pretrained: str = "",
) -> EvalReport:
    """Load the artifact, score it on ``suites`` (default: all configured), log to ``run_id``."""
    from components.model.artifact import load_encoder

    encoder = load_encoder(artifact_dir, batch_size=cfg.eval.batch_size, device=cfg.eval.device)
    with tempfile.TemporaryDirectory(prefix="align-eval-plots-") as plots:
        report = evaluate_suites(
            encoder, cfg.eval, corpus, model_display_name(encoder.model.cfg), pretrained or run_id, Path(plots), suites
        )
        log_report(cfg.storage.tracking_uri, run_id, report)
    return report


def evaluate_stage(
    cfg: AlignConfig, artifact_dir: str, run_id: str, corpus: CorpusSets, suites: list[str] | None = None
) -> EvalReport:
    """Evaluate a trained artifact in its training run."""
    return evaluate_artifact(cfg, artifact_dir, run_id, corpus, suites)
