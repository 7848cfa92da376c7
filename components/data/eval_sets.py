"""Readers for the evaluation sets: Karpathy-split retrieval JSON and ImageFolder classification sets.

They live in data/ because three stages read them: ingest (the evaluation images' hashes keep their
near-duplicates out of training), training's validation and evaluation. Readers only index files; images
are decoded lazily, one batch at a time, so a 25k-caption suite does not sit in memory as pixels.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".ppm", ".pgm", ".tif", ".tiff", ".webp")


class ImageDecodeError(ValueError):
    """An evaluation image exists but cannot be decoded; the message names the file."""


def open_image(path: str | Path) -> Image.Image:
    """Decode one image fully and convert it to RGB.

    Decoding eagerly here (rather than Pillow's lazy open) makes a broken file fail at this call, with
    its name, instead of somewhere inside the encoder.
    """
    try:
        with Image.open(path) as image:
            image.load()
            return image.convert("RGB")
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"evaluation image {path} does not exist") from exc
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageDecodeError(f"cannot decode evaluation image {path}: {exc}") from exc


# An evaluation image: a file, encoded bytes (a table cell), or decoded uint8 pixels (a packaged set).
ImageItem = Path | bytes | np.ndarray


def decode_item(item: ImageItem, where: str) -> Image.Image:
    """Any ``ImageItem`` as an RGB image; ``where`` names it in errors (file, or table + row)."""
    if isinstance(item, Path):
        return open_image(item)
    if isinstance(item, np.ndarray):
        return Image.fromarray(np.ascontiguousarray(item, dtype=np.uint8)).convert("RGB")
    try:
        with Image.open(io.BytesIO(item)) as image:
            image.load()
            return image.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageDecodeError(f"cannot decode evaluation image {where}: {exc}") from exc


@dataclass(frozen=True)
class RetrievalSet:
    """An image/caption retrieval suite; captions are flat, linked to images by index."""

    name: str
    image_paths: list[Path]
    captions: list[str]
    caption_to_image: np.ndarray  # (num_captions,) int64: the image each caption describes
    image_to_captions: list[list[int]]  # per image, indices into ``captions``

    def __len__(self) -> int:
        return len(self.image_paths)

    def load_image(self, index: int) -> Image.Image:
        return open_image(self.image_paths[index])


@dataclass(frozen=True)
class ClassificationSet:
    """A labelled image set; ``class_names`` are what prompts are filled with."""

    name: str
    images: list[ImageItem]
    labels: np.ndarray  # (num_images,) int64 indices into ``class_names``
    class_names: list[str]  # display names, in the sorted order of ``class_folders``
    class_folders: list[str]
    keys: list[str]  # a stable id per image (its file, or source + row), for splits and messages

    def __len__(self) -> int:
        return len(self.images)

    def load_image(self, index: int) -> Image.Image:
        return decode_item(self.images[index], self.keys[index])


def safe_relative(root: Path, *parts: str) -> Path:
    """Join ``parts`` under ``root``, refusing anything that would land outside it.

    The check is lexical (no symlink resolution) so that a dataset folder may legitimately symlink its
    image directory elsewhere, while a JSON entry such as ``../../etc/passwd`` is still refused.
    """
    joined = PurePosixPath(*(p.replace("\\", "/") for p in parts if p))
    normal = os.path.normpath(str(joined))
    if joined.is_absolute() or os.path.isabs(normal) or normal == ".." or normal.startswith("../"):
        raise ValueError(f"image path {str(joined)!r} escapes the dataset folder {root}")
    if normal in ("", "."):
        raise ValueError(f"empty image path under {root}")
    return root / normal


def load_karpathy(
    json_path: str | Path, split: str | None = "test", image_root: str | Path | None = None
) -> RetrievalSet:
    """Read a Flickr30K/MSCOCO Karpathy-split JSON, keeping one split (``None``: every image).

    Image paths are ``[filepath/]filename`` under ``image_root``, which defaults to the JSON's folder.
    """
    json_path = Path(json_path)
    root = Path(image_root) if image_root is not None else json_path.parent
    if not json_path.is_file():
        raise FileNotFoundError(f"retrieval suite file {json_path} does not exist")
    try:
        data = json.loads(json_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{json_path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise ValueError(f"{json_path} is not a Karpathy-split file: expected a mapping with an 'images' list")

    image_paths: list[Path] = []
    captions: list[str] = []
    caption_to_image: list[int] = []
    image_to_captions: list[list[int]] = []
    for position, entry in enumerate(data["images"]):
        where = f"{json_path} images[{position}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("filename"), str) or not entry["filename"]:
            raise ValueError(f"{where}: needs a non-empty string 'filename'")
        if split is not None and entry.get("split") != split:
            continue
        sentences = entry.get("sentences")
        if not isinstance(sentences, list) or not sentences:
            raise ValueError(f"{where} ({entry['filename']}): needs a non-empty 'sentences' list")
        image_index = len(image_paths)
        image_paths.append(safe_relative(root, str(entry.get("filepath") or ""), entry["filename"]))
        indices = []
        for sentence in sentences:
            raw = sentence.get("raw") if isinstance(sentence, dict) else None
            if not isinstance(raw, str):
                raise ValueError(f"{where} ({entry['filename']}): every sentence needs a string 'raw'")
            indices.append(len(captions))
            captions.append(raw)
            caption_to_image.append(image_index)
        image_to_captions.append(indices)

    if not image_paths:
        raise ValueError(f"{json_path} has no images in split {split!r}")
    return RetrievalSet(
        name=str(data.get("dataset") or json_path.stem),
        image_paths=image_paths,
        captions=captions,
        caption_to_image=np.asarray(caption_to_image, dtype=np.int64),
        image_to_captions=image_to_captions,
    )


def _read_display_names(path: Path, folders: list[str]) -> list[str]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from exc
    names = data.get("classes") if isinstance(data, dict) else None
    if not isinstance(names, list) or not all(isinstance(n, str) and n.strip() for n in names):
        raise ValueError(f'{path} must look like {{"classes": ["name", ...]}} with non-empty strings')
    if len(names) != len(folders):
        raise ValueError(
            f"{path} lists {len(names)} class names but {path.parent} has {len(folders)} class folders; "
            "names must follow the sorted folder order one to one"
        )
    return list(names)


def load_image_folder(root: str | Path) -> ClassificationSet:
    """Read a torchvision ImageFolder layout ``root/<class>/<image>``; classes sorted by folder name.

    An optional ``root/classes.json`` (``{"classes": [...]}``) gives human-readable names for prompts,
    in the same sorted order, because folder names are often ids (``n01440764``) that make poor prompts.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"classification set {root} is not a folder")
    folders = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise ValueError(f"{root} has no class folders (expected root/<class>/<image>)")

    image_paths: list[Path] = []
    labels: list[int] = []
    for label, folder in enumerate(folders):
        files = sorted(
            p
            for p in (root / folder).iterdir()
            if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS
        )
        if not files:
            raise ValueError(f"class folder {root / folder} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
        image_paths.extend(files)
        labels.extend([label] * len(files))

    names_file = root / "classes.json"
    class_names = _read_display_names(names_file, folders) if names_file.is_file() else list(folders)
    return ClassificationSet(
        name=root.name,
        images=list(image_paths),
        labels=np.asarray(labels, dtype=np.int64),
        class_names=class_names,
        class_folders=folders,
        keys=[path.relative_to(root).as_posix() for path in image_paths],  # stable wherever the set lives
    )
