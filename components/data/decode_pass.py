"""Pass 1 of the filter: decode each raw record once and apply every per-record rule.

Each image is decoded once (JPEG draft mode when it will be shrunk), checked, hashed and — if it is
still in the running — resized and re-encoded for training right here, so the original bytes are
dropped early and pass 2 never decodes again. Rows that a dataset-wide rule rejects later were
resized for nothing; that is a small fraction, and cheaper than decoding everything twice.
"""

from __future__ import annotations

import functools

import numpy as np
from PIL import Image

from components.config import FilterConfig
from components.data import rules, schema
from components.data.decode import decode_caption, decode_image, dhash, encode_jpeg, resize_short_side, sha256_hex
from components.data.nsfw import NsfwScorer

# Columns pass 1 produces. ``decoded`` marks rows whose text and image both decoded: those are the
# raw corpus the dataset-wide statistics are computed over, whatever the per-record rules said.
DECODED_COLUMNS = [
    "key", "source", "locator", "image", "text", "text_norm", "width", "height",
    "image_sha256", "dhash", "decoded", "reject_rule", "reject_detail",
]


# Pillow returns each image's memory to malloc, which hands large blocks back to the kernel: every
# decode then page-faults fresh memory (measured: ~15% of decode time as system time). Keeping freed
# blocks in Pillow's own cache removes that. Set once per worker process, on first use.
PILLOW_CACHED_BLOCKS = 256


@functools.cache
def _cache_pillow_blocks() -> None:
    Image.core.set_blocks_max(max(Image.core.get_blocks_max(), PILLOW_CACHED_BLOCKS))


def decode_batch(
    batch: dict, cfg: FilterConfig, eval_hashes: np.ndarray, scorer: NsfwScorer | None = None, progress=None
) -> dict:
    """Pass 1 over one batch; ``progress`` (a ``WorkerProgress``) counts the rows done, for the console."""
    _cache_pillow_blocks()
    n = len(batch["key"])
    out = {c: [] for c in DECODED_COLUMNS}
    verdicts: list[tuple[str, str] | None] = []
    resized_images, nsfw_inputs = [], {}
    for i in range(n):
        raw_image = bytes(batch["image"][i])
        text, verdict = decode_caption(bytes(batch["caption_raw"][i]))
        if batch["reject_rule"][i]:
            verdict = (batch["reject_rule"][i], batch["reject_detail"][i])
        image, width, height, digest, hash64 = None, 0, 0, "", 0
        if not batch["reject_rule"][i]:
            image, image_verdict = decode_image(raw_image, cfg.max_image_pixels, cfg.resize_short_side)
            digest = sha256_hex(raw_image)
            if image is not None:
                width, height = image.info["original_size"]
            verdict = verdict or image_verdict
        out["decoded"].append(image is not None and verdict is None)
        if verdict is None and cfg.enabled(schema.RULE_IMAGE_TOO_SMALL):
            verdict = rules.short_side_rule(width, height, cfg)
        if verdict is None and cfg.enabled(schema.RULE_IMAGE_ASPECT):
            verdict = rules.aspect_rule(width, height, cfg)
        resized = None
        if verdict is None:
            if scorer is not None:
                nsfw_inputs[i] = image  # scored at full size: the training size may be tiny
            # The near-duplicate hash is taken on the resized image (dHash is scale-robust, and cheaper there).
            resized = resize_short_side(image, cfg.resize_short_side)
            hash64 = dhash(resized)
        verdicts.append(verdict)
        resized_images.append(resized)
        out["text"].append(text)
        out["width"].append(width)
        out["height"].append(height)
        out["image_sha256"].append(digest)
        out["dhash"].append(np.uint64(hash64))

    if nsfw_inputs:
        for i, score in zip(nsfw_inputs, scorer.scores(list(nsfw_inputs.values())), strict=True):
            verdicts[i] = rules.nsfw_rule(float(score), cfg)
    for i in range(n):
        verdict = verdicts[i]
        if verdict is None and cfg.enabled(schema.RULE_NEAR_DUPLICATE_EVAL):
            verdict = rules.near_duplicate_rule(int(out["dhash"][i]), eval_hashes, cfg)
        if verdict is None:
            verdict = rules.word_count_rule(out["text"][i], cfg)
            if verdict and not cfg.enabled(verdict[0]):  # the two bounds are switched separately
                verdict = None
        out["image"].append(encode_jpeg(resized_images[i], cfg.jpeg_quality) if verdict is None else b"")
        out["reject_rule"].append(verdict[0] if verdict else "")
        out["reject_detail"].append(verdict[1] if verdict else "")
        out["text_norm"].append(rules.normalise_text(out["text"][i]))
    for column in ("key", "source", "locator"):
        out[column] = list(batch[column])
    if progress is not None:
        progress.advance(n)
    return out


class DecodeWithNsfw:
    """Actor form of ``decode_batch`` for Ray Data: loads the NSFW model once per actor."""

    def __init__(self, cfg: FilterConfig, eval_hashes: np.ndarray, progress=None):
        self.cfg, self.eval_hashes, self.scorer, self.progress = cfg, eval_hashes, NsfwScorer(), progress

    def __call__(self, batch: dict) -> dict:
        return decode_batch(batch, self.cfg, self.eval_hashes, self.scorer, self.progress)
