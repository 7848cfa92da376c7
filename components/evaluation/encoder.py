"""The only thing the evaluator knows about a model.

Evaluation must work for any dual encoder (a fresh checkpoint, a registry model, a pretrained baseline), so
it talks to this protocol and never to a model's towers, tokenizer or preprocessing.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np
from PIL import Image


@runtime_checkable
class DualEncoder(Protocol):
    """Maps images and texts into one embedding space.

    Both methods return ``(n, d)`` float32 arrays whose rows are L2-normalised, one row per input in
    order. Eval-time image preprocessing (resize, centre crop, normalisation) is the encoder's job: the
    evaluator hands over decoded RGB images.
    """

    def encode_images(self, images: list[Image.Image]) -> np.ndarray: ...

    def encode_texts(self, texts: list[str]) -> np.ndarray: ...
