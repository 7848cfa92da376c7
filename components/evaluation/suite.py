"""Evaluate a model artifact on the configured suites; results as CLIP_benchmark records + flat metrics.

Flat metric names are what MLflow and the gate see: ``retrieval/text_to_image/R_at_1`` ("@" is not a
legal character in MLflow metric names).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from components.config import EvalConfig
from components.evaluation.datasets import load_image_folder, load_karpathy
from components.evaluation.runner import (
    TASK_CLASSIFICATION,
    TASK_RETRIEVAL,
    benchmark_record,
    evaluate_classification,
    evaluate_retrieval,
)


def mlflow_metric_name(*parts: str) -> str:
    return "/".join(parts).replace("@", "_at_")


@dataclass
class EvalReport:
    metrics: dict[str, float] = field(default_factory=dict)  # flat, MLflow-safe names
    records: list[dict] = field(default_factory=list)  # CLIP_benchmark-shaped, one per suite


def evaluate_suites(
    encoder, cfg: EvalConfig, retrieval_json: str, classification_dir: str, model_name: str, pretrained: str
) -> EvalReport:
    report = EvalReport()
    rset = load_karpathy(retrieval_json, split=cfg.retrieval_split)
    retrieval = evaluate_retrieval(encoder, rset, batch_size=cfg.batch_size, ks=cfg.ks)
    report.records.append(benchmark_record(rset.name, model_name, pretrained, TASK_RETRIEVAL, retrieval))
    report.metrics |= {mlflow_metric_name("retrieval", k): v for k, v in retrieval.items()}
    if classification_dir:
        cset = load_image_folder(classification_dir)
        classification = evaluate_classification(encoder, cset, cfg.prompt_templates, batch_size=cfg.batch_size)
        report.records.append(benchmark_record(cset.name, model_name, pretrained, TASK_CLASSIFICATION, classification))
        report.metrics |= {mlflow_metric_name("classification", k): v for k, v in classification.items()}
    return report
