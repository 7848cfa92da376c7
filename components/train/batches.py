"""Turn a batch of stored pairs (JPEG bytes + text) into model inputs, inside each train worker.

Decoding and augmentation run in the worker that consumes the batch, so the data path scales with the
number of workers and its cost shows up in the logged ``data_time``.
"""

from __future__ import annotations

import io
import random

import torch
from PIL import Image

from components.config import ModelConfig
from components.model.artifact import tokenize
from components.model.preprocess import build_pipeline, to_batch


class BatchBuilder:
    def __init__(self, cfg: ModelConfig, tokenizer, mean, std, seed: int):
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.mean, self.std = mean, std
        self.augment = build_pipeline(cfg.train_preprocess, rng=random.Random(seed))

    def __call__(self, batch: dict) -> dict[str, torch.Tensor]:
        images = [self.augment(Image.open(io.BytesIO(data))) for data in batch["image"]]
        tokens = tokenize(self.tokenizer, [str(t) for t in batch["text"]], self.cfg)
        return {
            "images": to_batch(images, self.mean, self.std, self.cfg.channels_last),
            "input_ids": tokens["input_ids"],
            "attention_mask": tokens["attention_mask"],
        }
