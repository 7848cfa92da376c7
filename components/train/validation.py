"""Retrieval on held-out pairs while training runs, so learning (or its absence) is visible per step.

The driver reads up to ``train.val_images`` images of the evaluation split and ships them, as JPEG
bytes with their captions, inside the loop config: rank 0 needs no access to the driver's disk, so
this works on any node of a cluster. Metrics go to MLflow as ``val/...`` at their step.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from components.metrics.names import mlflow_metric_name
from components.metrics.retrieval import retrieval_metrics


def load_validation_pairs(retrieval_json: str, split: str, max_images: int) -> dict | None:
    """The first ``max_images`` images of ``split`` with all their captions, as plain data; None if off."""
    if not retrieval_json or max_images <= 0:
        return None
    from components.data.eval_sets import load_karpathy

    rset = load_karpathy(retrieval_json, split=split)
    count = min(max_images, len(rset.image_paths))
    images, captions, caption_to_image = [], [], []
    for index in range(count):
        buffer = io.BytesIO()
        rset.load_image(index).convert("RGB").save(buffer, format="JPEG", quality=95)
        images.append(buffer.getvalue())
        for caption in rset.image_to_captions[index]:
            captions.append(rset.captions[caption])
            caption_to_image.append(index)
    return {"images": images, "captions": captions, "caption_to_image": caption_to_image}


def validation_metrics(model, tokenizer, pairs: dict, ks=(1, 5, 10)) -> dict[str, float]:
    """Recall@K both ways on the shipped pairs, on the device the model trains on.

    The model being trained is never moved (an encoder's default device, the CPU, would strand a GPU
    model there and crash the next step), and its mode is restored to what the loop had set.
    """
    from components.model.artifact import AlignEncoder, unwrap

    core = unwrap(model)
    was_training = core.training
    try:
        encoder = AlignEncoder(core, tokenizer, device=None)
        images = [Image.open(io.BytesIO(data)) for data in pairs["images"]]
        metrics = retrieval_metrics(
            encoder.encode_images(images), encoder.encode_texts(pairs["captions"]), np.asarray(pairs["caption_to_image"]), ks=ks
        )
    finally:
        core.train(was_training)
    return {mlflow_metric_name("val", name): value for name, value in metrics.items()}
