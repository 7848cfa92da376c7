"""Reader for the sidecar-folder corpus format: ``<key>.<image ext>`` beside ``<key>.txt``.

Lists files through pyarrow's filesystem layer so the same code reads a local folder or ``s3://``.
An image without a caption (or a caption without an image) is not skipped: it becomes a record that
the filter rejects with its reason, so rows in = kept + rejected counts every file pair.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import PurePosixPath

import pyarrow.fs as pafs

from components.data import schema

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"}
CAPTION_EXTENSION = ".txt"


def _filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    return pafs.FileSystem.from_uri(uri)


def list_sidecar_pairs(uri: str, source: str) -> list[dict]:
    """One row per key: where its image and caption live (either may be missing)."""
    fs, root = _filesystem(uri)
    infos = fs.get_file_info(pafs.FileSelector(root, recursive=True))
    by_key: dict[str, dict[str, str]] = defaultdict(dict)
    for info in infos:
        if info.type != pafs.FileType.File:
            continue
        path = PurePosixPath(info.path)
        relative = path.relative_to(root).with_suffix("").as_posix()
        suffix = path.suffix.lower()
        if suffix in IMAGE_EXTENSIONS:
            by_key[relative]["image_path"] = info.path
        elif suffix == CAPTION_EXTENSION:
            by_key[relative]["caption_path"] = info.path
    scheme = uri.split("://", 1)[0] + "://" if "://" in uri else ""
    return [
        {
            "key": f"{source}/{key}",
            "source": source,
            "locator": scheme + paths.get("image_path", paths.get("caption_path", "")),
            "image_path": paths.get("image_path", ""),
            "caption_path": paths.get("caption_path", ""),
        }
        for key, paths in sorted(by_key.items())
    ]


def load_bytes(batch: dict, uri: str) -> dict:
    """Ray Data batch UDF: read each row's image and caption bytes; failures become verdicts."""
    fs, _ = _filesystem(uri)
    images, captions, rules, details = [], [], [], []
    for image_path, caption_path in zip(batch["image_path"], batch["caption_path"], strict=True):
        image, caption, rule, detail = b"", b"", "", ""
        if not image_path:
            rule, detail = schema.RULE_MISSING_IMAGE, f"no image file beside {caption_path}"
        elif not caption_path:
            rule, detail = schema.RULE_MISSING_CAPTION, f"no .txt caption beside {image_path}"
        else:
            try:
                with fs.open_input_stream(image_path) as stream:
                    image = stream.read()
                with fs.open_input_stream(caption_path) as stream:
                    caption = stream.read()
            except OSError as err:
                rule, detail = schema.RULE_UNREADABLE, f"{type(err).__name__}: {err}"[:300]
        images.append(image)
        captions.append(caption)
        rules.append(rule)
        details.append(detail)
    return {
        "key": batch["key"],
        "source": batch["source"],
        "locator": batch["locator"],
        "image": images,
        "caption_raw": captions,
        "reject_rule": rules,
        "reject_detail": details,
    }
