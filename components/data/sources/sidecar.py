"""Image folders with caption sidecars: ``<name>.<image ext>`` beside ``<name>.txt``.

An image without a caption (or a caption without an image) is not skipped: it becomes a record the
filter rejects with its reason, so rows in = kept + rejected counts every file pair. Links are never
followed out of the folder: a linked image or caption leading out rejects its pair, and a directory
link is one refused record, never walked (see ``common.list_source``).
"""

from __future__ import annotations

import math
import posixpath
from collections import defaultdict
from functools import partial

from components.config import FilterConfig, SourceConfig
from components.data import schema
from components.data.sources.common import (
    confinement_root,
    error_verdict,
    filesystem,
    list_source,
    raw_record,
    read_confined,
    refused_records,
    relative_id,
    scheme_prefix,
    with_refused,
)

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"}
CAPTION_EXTENSION = ".txt"
ROWS_PER_BLOCK = 256


def _listing(source: SourceConfig) -> tuple[list[dict], list[dict]]:
    """(one row per name: where its image and caption live, either may be missing; refused records)."""
    _, root = filesystem(source.path)
    listing = list_source(source.path, IMAGE_EXTENSIONS | {CAPTION_EXTENSION})
    by_name: dict[str, dict[str, str]] = defaultdict(dict)
    for path in listing.files:
        kind = "caption_path" if path.lower().endswith(CAPTION_EXTENSION) else "image_path"
        by_name[relative_id(path, root)][kind] = path
    names = sorted(by_name)
    if source.max_files > 0:
        names = names[: source.max_files]
    prefix = scheme_prefix(source.path)
    pairs = [
        {
            "key": f"{source.name}/{name}",
            "locator": prefix + by_name[name].get("image_path", by_name[name].get("caption_path", "")),
            "image_path": by_name[name].get("image_path", ""),
            "caption_path": by_name[name].get("caption_path", ""),
        }
        for name in names
    ]
    return pairs, refused_records(source.name, source.path, listing)


def list_pairs(source: SourceConfig) -> list[dict]:
    """One row per name: where its image and caption live (either may be missing)."""
    return _listing(source)[0]


def expected_rows(source: SourceConfig) -> int:
    """One record per listed name and per refused entry (see ``read``)."""
    pairs, refused = _listing(source)
    return len(pairs) + len(refused)


def _load(fs, root: str, image_path: str, caption_path: str) -> tuple[bytes, bytes, tuple[str, str] | None]:
    if not image_path:
        return b"", b"", (schema.RULE_MISSING_IMAGE, f"no image file beside {posixpath.basename(caption_path)}")
    if not caption_path:
        beside = posixpath.basename(image_path)
        return b"", b"", (schema.RULE_MISSING_CAPTION, f"no {CAPTION_EXTENSION} caption beside {beside}")
    image, verdict = read_confined(fs, root, image_path)
    if verdict is not None:
        return b"", b"", verdict
    caption, verdict = read_confined(fs, root, caption_path)
    return (b"", b"", verdict) if verdict is not None else (image, caption, None)


def load_pair(batch: dict, uri: str, source: str, root: str = "") -> dict:
    """Ray Data batch UDF: read each row's image and caption bytes; failures become verdicts, one pair each."""
    fs, _ = filesystem(uri)
    root = root or confinement_root(uri)
    records = []
    for key, locator, image_path, caption_path in zip(
        batch["key"], batch["locator"], batch["image_path"], batch["caption_path"], strict=True
    ):
        try:
            image, caption, verdict = _load(fs, root, image_path, caption_path)
        except Exception as err:  # noqa: BLE001 - one pair's problem; see common.error_verdict
            image, caption, verdict = b"", b"", error_verdict(err, str(locator))
        records.append(raw_record(key, source, locator, image, caption, verdict))
    return {column: [r[column] for r in records] for column in schema.RAW_COLUMNS}


def read(source: SourceConfig, cfg: FilterConfig | None = None, batch_size: int = 64):
    import ray.data

    listing, refused = _listing(source)
    if not listing and not refused:
        raise ValueError(f"no image/caption files found under {source.path}")
    if not listing:
        return ray.data.from_items(refused)
    # Blocks of a few hundred pairs: enough tasks to spread, few enough that scheduling stays cheap.
    blocks = max(1, math.ceil(len(listing) / ROWS_PER_BLOCK))
    root = confinement_root(source.path, source.root)
    pairs = ray.data.from_items(listing, override_num_blocks=blocks).map_batches(
        partial(load_pair, uri=source.path, source=source.name, root=root), batch_size=batch_size
    )
    return with_refused(pairs, refused)
