"""Zero-shot evaluation of a dual encoder: retrieval Recall@K, prompt-ensembled classification, kNN.

Suites (``suite.py``) are read, fingerprinted by content and scored through the ``DualEncoder``
protocol only, with numpy, Pillow and matplotlib (plots); ``stage.py`` alone talks to MLflow, and
orchestration is left to ``flows/``. The set readers (``data.eval_sets``) and Recall@K
(``metrics.retrieval``) sit below, because ingest and training's validation use them too.
"""

from components.evaluation.batching import encode_images, encode_texts
from components.evaluation.classification import classification_metrics, zero_shot_classifier
from components.evaluation.encoder import DualEncoder
from components.evaluation.knn import knn_metrics
from components.evaluation.runner import (
    TASK_CLASSIFICATION,
    TASK_KNN,
    TASK_RETRIEVAL,
    benchmark_record,
    evaluate_classification,
    evaluate_retrieval,
)
from components.evaluation.suite import CorpusSets, EvalReport, SuiteError, evaluate_suites, load_suite

__all__ = [
    "TASK_CLASSIFICATION",
    "TASK_KNN",
    "TASK_RETRIEVAL",
    "CorpusSets",
    "DualEncoder",
    "EvalReport",
    "SuiteError",
    "benchmark_record",
    "classification_metrics",
    "encode_images",
    "encode_texts",
    "evaluate_classification",
    "evaluate_retrieval",
    "evaluate_suites",
    "knn_metrics",
    "load_suite",
    "zero_shot_classifier",
]
