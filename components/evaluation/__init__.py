"""Zero-shot evaluation of a dual encoder: retrieval Recall@K and prompt-ensembled classification.

A pure library (numpy, Pillow): it sees the model only through the ``DualEncoder`` protocol and leaves
tracking and orchestration to its callers.
"""

from components.evaluation.batching import encode_images, encode_texts
from components.evaluation.classification import classification_metrics, zero_shot_classifier
from components.evaluation.datasets import (
    ClassificationSet,
    ImageDecodeError,
    RetrievalSet,
    load_image_folder,
    load_karpathy,
    open_image,
)
from components.evaluation.encoder import DualEncoder
from components.evaluation.retrieval import retrieval_metrics
from components.evaluation.runner import (
    TASK_CLASSIFICATION,
    TASK_RETRIEVAL,
    benchmark_record,
    evaluate_classification,
    evaluate_retrieval,
)

__all__ = [
    "TASK_CLASSIFICATION",
    "TASK_RETRIEVAL",
    "ClassificationSet",
    "DualEncoder",
    "ImageDecodeError",
    "RetrievalSet",
    "benchmark_record",
    "classification_metrics",
    "encode_images",
    "encode_texts",
    "evaluate_classification",
    "evaluate_retrieval",
    "load_image_folder",
    "load_karpathy",
    "open_image",
    "retrieval_metrics",
    "zero_shot_classifier",
]
