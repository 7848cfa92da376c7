"""The evaluate stage: score a model artifact and log metrics + CLIP_benchmark JSON to its run."""

from __future__ import annotations

from components.config import AlignConfig
from components.evaluation.suite import EvalReport, evaluate_suites


def evaluate_stage(
    cfg: AlignConfig, artifact_dir: str, run_id: str, retrieval_json: str, classification_dir: str
) -> EvalReport:
    import mlflow

    from components.model.artifact import load_encoder

    encoder = load_encoder(artifact_dir, batch_size=cfg.eval.batch_size)
    model_name = f"align-{cfg.model.image_tower}-bert{cfg.model.text.num_layers}x{cfg.model.text.hidden_size}"
    report = evaluate_suites(encoder, cfg.eval, retrieval_json, classification_dir, model_name, pretrained=run_id)
    client = mlflow.MlflowClient(tracking_uri=cfg.storage.tracking_uri)
    for name, value in report.metrics.items():
        client.log_metric(run_id, name, value)
    client.log_dict(run_id, {"results": report.records}, "eval/results.json")
    return report
