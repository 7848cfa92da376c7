"""Drive an encoder over a suite in batches and shape the result like CLIP_benchmark's JSON."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from components.data.eval_sets import ClassificationSet, RetrievalSet
from components.evaluation.batching import encode_images, encode_texts
from components.evaluation.classification import classification_metrics, zero_shot_classifier
from components.evaluation.encoder import DualEncoder
from components.metrics.retrieval import retrieval_metrics

TASK_RETRIEVAL = "zeroshot_retrieval"
TASK_CLASSIFICATION = "zeroshot_classification"
TASK_KNN = "knn_classification"  # not a CLIP_benchmark task; the ALIGN paper's ablation metric
TASKS = (TASK_RETRIEVAL, TASK_CLASSIFICATION, TASK_KNN)


def evaluate_retrieval(
    encoder: DualEncoder, rset: RetrievalSet, batch_size: int = 128, ks: Sequence[int] = (1, 5, 10)
) -> dict[str, float]:
    """Image↔text Recall@K of ``encoder`` on one retrieval suite."""
    image_emb = encode_images(encoder, rset.load_image, len(rset.image_paths), batch_size)
    text_emb = encode_texts(encoder, rset.captions, batch_size)
    return retrieval_metrics(image_emb, text_emb, rset.caption_to_image, ks=ks)


def evaluate_classification(
    encoder: DualEncoder,
    cset: ClassificationSet,
    templates: Sequence[str],
    batch_size: int = 128,
    ks: Sequence[int] = (1, 5),
) -> dict[str, float]:
    """Zero-shot top-K accuracy of ``encoder`` on one labelled set, prompts filled with display names."""
    class_emb = zero_shot_classifier(encoder, cset.class_names, templates, batch_size=batch_size)
    image_emb = encode_images(encoder, cset.load_image, len(cset), batch_size)
    return classification_metrics(image_emb, cset.labels, class_emb, ks=ks)


def benchmark_record(
    dataset: str,
    model: str,
    pretrained: str,
    task: str,
    metrics: Mapping[str, float],
    language: str = "en",
) -> dict:
    """One result in CLIP_benchmark's JSON shape, so results compare with published tables and tools."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    return {
        "dataset": str(dataset),
        "model": str(model),
        "pretrained": str(pretrained),
        "task": task,
        "metrics": {str(key): float(value) for key, value in metrics.items()},
        "language": str(language),
    }
