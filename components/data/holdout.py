"""A retrieval evaluation split carved out of a captioned source, for corpora that ship without one.

Real corpora installable offline (openclipart) come with no Flickr30K-style test set. We render a
deterministic sample of one SVG source into a Karpathy-format split (images + one caption each).
Those same files are still read by the data stage, where the paper's near-duplicate-of-eval rule
removes them from training — the holdout never leaks, and the rejects table shows it did its job.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from pathlib import Path

from PIL import Image

from components.config import HoldoutConfig, SourceConfig
from components.data.rules import words
from components.data.sources import svg
from components.data.sources.common import filesystem, list_files

log = logging.getLogger(__name__)
DATASET_FILE = "dataset.json"


def _order(path: str, seed: int) -> str:
    return hashlib.sha256(f"{seed}\x00{path}".encode()).hexdigest()


def build_holdout(source: SourceConfig, holdout: HoldoutConfig, out_dir: Path) -> Path:
    """Write ``out_dir/images/*.jpg`` and ``out_dir/dataset.json`` (split "test"); return the JSON path.

    Files are taken in a seeded hash order; a file qualifies if it renders, has a caption of 3-20
    words, and its caption is not already in the split (duplicate captions make retrieval ambiguous).
    """
    if source.format != "svg":
        raise ValueError(f"eval_holdout needs an svg source (one captioned image per file); {source.name!r} is {source.format}")
    target = out_dir / DATASET_FILE
    if target.is_file():
        return target
    _, root = filesystem(source.path)
    paths = sorted(list_files(source.path, {".svg"}, source.max_files), key=lambda p: _order(p, holdout.seed))
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    images, seen = [], set()
    for path in paths:
        if len(images) == holdout.images:
            break
        record = svg.read_svg(path, source, root)[0]
        text = record["caption_raw"].decode("utf-8")
        if record["reject_rule"] or not 3 <= len(words(text)) <= 20 or text.lower() in seen:
            continue
        seen.add(text.lower())
        name = f"{len(images):05d}.jpg"
        Image.open(io.BytesIO(record["image"])).convert("RGB").save(out_dir / "images" / name, quality=95)
        images.append({"filename": name, "filepath": "images", "split": "test", "sentences": [{"raw": text}], "source": path})
    if len(images) < holdout.images:
        log.warning("holdout: only %d of %d requested images qualified in %s", len(images), holdout.images, source.path)
    target.write_text(json.dumps({"dataset": f"{source.name}-holdout", "images": images}, indent=1))
    return target
