"""Feed an encoder in fixed-size batches and check what comes back.

Encoders are third-party code behind a protocol; a wrong row count or a NaN must fail here, with the
method's name, not turn into a plausible-looking metric later.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image

from components.evaluation.encoder import DualEncoder
from components.metrics.ranking import as_embeddings


def _check_batch_size(batch_size: int) -> None:
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")


def _checked(output: np.ndarray, expected_rows: int, what: str) -> np.ndarray:
    emb = as_embeddings(f"{what} output", output)
    if emb.shape[0] != expected_rows:
        raise ValueError(f"{what} returned {emb.shape[0]} rows for {expected_rows} inputs")
    return emb


def encode_images(
    encoder: DualEncoder, load_image: Callable[[int], Image.Image], count: int, batch_size: int
) -> np.ndarray:
    """Embed ``count`` lazily loaded images, decoding only one batch at a time."""
    _check_batch_size(batch_size)
    chunks = []
    for start in range(0, count, batch_size):
        images = [load_image(i) for i in range(start, min(start + batch_size, count))]
        try:
            chunks.append(_checked(encoder.encode_images(images), len(images), "encode_images"))
        finally:
            for image in images:
                image.close()
    return np.concatenate(chunks) if chunks else np.zeros((0, 0), dtype=np.float32)


def encode_texts(encoder: DualEncoder, texts: Sequence[str], batch_size: int) -> np.ndarray:
    """Embed texts in batches so long caption lists do not hit the encoder at once."""
    _check_batch_size(batch_size)
    texts = list(texts)
    chunks = []
    for start in range(0, len(texts), batch_size):
        batch = texts[start : start + batch_size]
        chunks.append(_checked(encoder.encode_texts(batch), len(batch), "encode_texts"))
    return np.concatenate(chunks) if chunks else np.zeros((0, 0), dtype=np.float32)
