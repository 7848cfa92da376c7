"""Image folders with caption sidecars: ``<name>.<image ext>`` beside ``<name>.txt``.

An image without a caption (or a caption without an image) is not skipped: it becomes a record the
filter rejects with its reason, so rows in = kept + rejected counts every file pair.
"""

from __future__ import annotations

import math
import posixpath
from collections import defaultdict
from functools import partial

from components.config import SourceConfig
from components.data import schema
from components.data.sources.common import filesystem, list_files, raw_record, read_bytes, relative_id, scheme_prefix

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"}
CAPTION_EXTENSION = ".txt"
ROWS_PER_BLOCK = 256


def list_pairs(source: SourceConfig) -> list[dict]:
    """One row per name: where its image and caption live (either may be missing)."""
    _, root = filesystem(source.path)
    by_name: dict[str, dict[str, str]] = defaultdict(dict)
    for path in list_files(source.path, IMAGE_EXTENSIONS | {CAPTION_EXTENSION}):
        kind = "caption_path" if path.lower().endswith(CAPTION_EXTENSION) else "image_path"
        by_name[relative_id(path, root)][kind] = path
    names = sorted(by_name)
    if source.max_files > 0:
        names = names[: source.max_files]
    prefix = scheme_prefix(source.path)
    return [
        {
            "key": f"{source.name}/{name}",
            "locator": prefix + by_name[name].get("image_path", by_name[name].get("caption_path", "")),
            "image_path": by_name[name].get("image_path", ""),
            "caption_path": by_name[name].get("caption_path", ""),
        }
        for name in names
    ]


def expected_rows(source: SourceConfig) -> int:
    """One record per listed name (see ``read``)."""
    return len(list_pairs(source))


def load_pair(batch: dict, uri: str, source: str) -> dict:
    """Ray Data batch UDF: read each row's image and caption bytes; failures become verdicts."""
    fs, _ = filesystem(uri)
    records = []
    for key, locator, image_path, caption_path in zip(
        batch["key"], batch["locator"], batch["image_path"], batch["caption_path"], strict=True
    ):
        image = caption = b""
        if not image_path:
            verdict = schema.RULE_MISSING_IMAGE, f"no image file beside {posixpath.basename(caption_path)}"
        elif not caption_path:
            verdict = schema.RULE_MISSING_CAPTION, f"no {CAPTION_EXTENSION} caption beside {posixpath.basename(image_path)}"
        else:
            image, verdict = read_bytes(fs, image_path)
            if verdict is None:
                caption, verdict = read_bytes(fs, caption_path)
        records.append(raw_record(key, source, locator, image, caption, verdict))
    return {column: [r[column] for r in records] for column in schema.RAW_COLUMNS}


def read(source: SourceConfig, batch_size: int = 64):
    import ray.data

    listing = list_pairs(source)
    if not listing:
        raise ValueError(f"no image/caption files found under {source.path}")
    # Blocks of a few hundred pairs: enough tasks to spread, few enough that scheduling stays cheap.
    blocks = max(1, math.ceil(len(listing) / ROWS_PER_BLOCK))
    return ray.data.from_items(listing, override_num_blocks=blocks).map_batches(
        partial(load_pair, uri=source.path, source=source.name), batch_size=batch_size
    )
