"""Zero-shot image↔text retrieval Recall@K (ALIGN Table 1; Karpathy test splits)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from components.metrics.ranking import as_embeddings, as_ks, as_labels, best_positive_ranks, recall_at


def retrieval_metrics(
    image_emb: np.ndarray,
    text_emb: np.ndarray,
    caption_to_image: Sequence[int] | np.ndarray,
    ks: Sequence[int] = (1, 5, 10),
    chunk_size: int | None = None,
) -> dict[str, float]:
    """Recall@K in both directions plus their mean.

    image→text counts a hit when ANY of the image's captions is in its top K (each image has several);
    text→image when the caption's one image is. Embeddings should be L2-normalised so the dot product
    is the cosine similarity. ``chunk_size`` bounds how many queries are scored at once (default: sized
    to ~64 MiB of scores); it never changes the result.
    """
    image_emb = as_embeddings("image_emb", image_emb)
    text_emb = as_embeddings("text_emb", text_emb)
    if image_emb.shape[0] == 0 or text_emb.shape[0] == 0:
        raise ValueError("retrieval needs at least one image and one caption")
    caption_to_image = as_labels("caption_to_image", caption_to_image, text_emb.shape[0], image_emb.shape[0])
    ks = as_ks(ks)
    image_ids = np.arange(image_emb.shape[0], dtype=np.int64)

    i2t = best_positive_ranks(image_emb, text_emb, image_ids, caption_to_image, chunk_size)
    t2i = best_positive_ranks(text_emb, image_emb, caption_to_image, image_ids, chunk_size)

    metrics: dict[str, float] = {}
    for direction, ranks in (("image_to_text", i2t), ("text_to_image", t2i)):
        for k in ks:
            metrics[f"{direction}/R@{k}"] = recall_at(ranks, k)
    metrics["mean_recall"] = float(np.mean(list(metrics.values())))
    return metrics
