"""ALIGN's filter rules as pure functions (paper §3). Inequalities are strict, as in the paper.

Each returns ``None`` when the record passes, else ``(rule, detail)``. Dataset-wide rules take the
statistics computed by ``components.data.stats`` in the first pass.
"""

from __future__ import annotations

import re
import numpy as np

from components.config import FilterConfig
from components.data import schema

Verdict = tuple[str, str] | None
_WORD = re.compile(r"\w+", re.UNICODE)


def normalise_text(text: str) -> str:
    """Key under which alt-texts count as 'the same' across images: case- and whitespace-folded."""
    return " ".join(text.lower().split())


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def ngrams(text: str) -> list[str]:
    """Unigrams and bigrams, the vocabulary unit of the paper's rare-token rule."""
    tokens = words(text)
    return tokens + [f"{a} {b}" for a, b in zip(tokens, tokens[1:])]


def short_side_rule(width: int, height: int, cfg: FilterConfig) -> Verdict:
    short = min(width, height)
    if not short > cfg.min_short_side:
        return schema.RULE_IMAGE_TOO_SMALL, f"shorter side {short} px is not > {cfg.min_short_side}"
    return None


def aspect_rule(width: int, height: int, cfg: FilterConfig) -> Verdict:
    aspect = max(width, height) / max(1, min(width, height))
    if not aspect < cfg.max_aspect_ratio:
        return schema.RULE_IMAGE_ASPECT, f"aspect ratio {aspect:.3f} is not < {cfg.max_aspect_ratio}"
    return None


def nsfw_rule(score: float, cfg: FilterConfig) -> Verdict:
    if score >= cfg.nsfw_threshold:
        return schema.RULE_NSFW, f"open_nsfw score {score:.3f} >= {cfg.nsfw_threshold}"
    return None


def word_count_rule(text: str, cfg: FilterConfig) -> Verdict:
    count = len(text.split())
    if count < cfg.min_words:
        return schema.RULE_TEXT_TOO_FEW_WORDS, f"{count} unigrams < {cfg.min_words}"
    if count > cfg.max_words:
        return schema.RULE_TEXT_TOO_MANY_WORDS, f"{count} unigrams > {cfg.max_words}"
    return None


def near_duplicate_rule(dhash: int, eval_hashes: np.ndarray, cfg: FilterConfig) -> Verdict:
    if eval_hashes.size == 0:
        return None
    distances = np.bitwise_count(eval_hashes ^ np.uint64(dhash))
    nearest = int(distances.argmin())
    if distances[nearest] <= cfg.near_duplicate_max_distance:
        return schema.RULE_NEAR_DUPLICATE_EVAL, (
            f"dHash distance {int(distances[nearest])} <= {cfg.near_duplicate_max_distance} to eval image #{nearest}"
        )
    return None


# Dataset-wide rules: the statistics come from group-bys over the whole input (components.data.stats);
# these only phrase the verdict for a row the statistics flagged.


def image_many_texts_verdict(distinct_texts: int, cfg: FilterConfig) -> tuple[str, str]:
    return schema.RULE_IMAGE_MANY_TEXTS, f"image carries {distinct_texts} distinct alt-texts > {cfg.max_texts_per_image}"


def text_many_images_verdict(distinct_images: int, cfg: FilterConfig) -> tuple[str, str]:
    return schema.RULE_TEXT_MANY_IMAGES, f"alt-text shared by {distinct_images} images > {cfg.max_images_per_text}"


def rare_token_verdict(gram: str, cfg: FilterConfig) -> tuple[str, str]:
    return schema.RULE_TEXT_RARE_TOKEN, f"{gram!r} is outside the top {cfg.vocab_top_n} unigrams+bigrams"
