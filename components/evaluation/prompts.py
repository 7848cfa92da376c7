"""Prompt templates and class-name lists for zero-shot classification.

Prompt ensembling averages one class embedding over several phrasings, so templates are kept as named
sets that a suite config can refer to by name. ImageNet class names come from the lists timm ships, so
no download (and no hand-typed list of 1000 names) is needed.
"""

from __future__ import annotations

import functools
import importlib.util
import json
from collections.abc import Sequence
from pathlib import Path

TEMPLATE_SETS: dict[str, tuple[str, ...]] = {
    "default": ("a photo of a {}.", "a picture of a {}.", "a drawing of a {}.", "an image showing a {}."),
    "single": ("a photo of a {}.",),
    # Varied quality, size, framing and rendering style, so no single phrasing dominates the class vector.
    "imagenet": (
        "a photo of a {}.",
        "a blurry photo of a {}.",
        "a grainy, low-resolution photo of a {}.",
        "a sharp, high-quality photo of a {}.",
        "a photo of a small {}.",
        "a photo of a large {}.",
        "a close-up photo of a {}.",
        "a cropped photo of a {}.",
        "a dark photo of a {}.",
        "a brightly lit photo of a {}.",
        "a photo of the {}.",
        "a pencil sketch of a {}.",
        "an oil painting of a {}.",
        "a cartoon of a {}.",
        "a plastic toy {}.",
        "an origami {}.",
        "an embroidered {}.",
        "a sculpture of a {}.",
        "a video game rendering of a {}.",
        "a tattoo of a {}.",
        "a black and white photo of a {}.",
    ),
    # For binary shape images (e.g. Animal-MNIST): no colour, texture or photographic cues to name.
    "silhouette": (
        "a silhouette of a {}.",
        "a black and white shape of a {}.",
        "a white silhouette of a {} on a black background.",
        "the outline of a {}.",
        "a simple shape of a {}.",
        "a low-resolution silhouette of a {}.",
    ),
}


def resolve_templates(spec: str | Sequence[str]) -> list[str]:
    """A named set from ``TEMPLATE_SETS``, or an explicit sequence of templates, as a fresh list."""
    if isinstance(spec, str):
        if spec not in TEMPLATE_SETS:
            raise ValueError(f"unknown prompt template set {spec!r}; known sets: {', '.join(sorted(TEMPLATE_SETS))}")
        return list(TEMPLATE_SETS[spec])
    return list(spec)


def _timm_info_dir() -> Path:
    """timm's ``data/_info`` folder, found without importing timm (which would import torch: seconds)."""
    spec = importlib.util.find_spec("timm")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("ImageNet class names are read from timm's package data, but timm is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "_info"


@functools.cache
def _imagenet_class_names() -> tuple[str, ...]:
    info = _timm_info_dir()
    synsets_file, lemmas_file = info / "imagenet_synsets.txt", info / "imagenet_synset_to_lemma.txt"
    synsets = [line.strip() for line in synsets_file.read_text(encoding="utf-8").splitlines() if line.strip()]
    if len(synsets) != 1000:
        raise ValueError(f"{synsets_file}: expected 1000 ImageNet-1k synsets, found {len(synsets)}")
    lemmas: dict[str, str] = {}
    for line in lemmas_file.read_text(encoding="utf-8").splitlines():
        synset, sep, names = line.partition("\t")
        if sep:
            lemmas[synset.strip()] = names.split(",")[0].strip()
    missing = [s for s in synsets if not lemmas.get(s)]
    if missing:
        raise ValueError(f"{lemmas_file}: no lemma for {len(missing)} ImageNet synsets, e.g. {missing[0]}")
    return tuple(lemmas[s] for s in synsets)


def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet-1k class names (first WordNet lemma) in the standard class-index order."""
    return list(_imagenet_class_names())


def read_class_names(path: str | Path) -> list[str]:
    """Class names from a text file (one per line, blank lines ignored) or JSON ``{"classes": [...]}``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"class-name file not found: {path}")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path} is not valid JSON: {exc}") from exc
        classes = data.get("classes") if isinstance(data, dict) else None
        if not isinstance(classes, list):
            raise ValueError(f'{path}: expected a JSON object {{"classes": [...]}}')
        for index, name in enumerate(classes):
            if not isinstance(name, str) or not name.strip():
                raise ValueError(f"{path}: classes[{index}] must be a non-empty string, got {name!r}")
        names = [name.strip() for name in classes]
    else:
        names = [line.strip() for line in text.splitlines() if line.strip()]
    if not names:
        raise ValueError(f"{path} lists no class names")
    return names


def resolve_class_names(spec: str, default: list[str]) -> list[str]:
    """``""``: ``default``; ``"imagenet"``: the ImageNet-1k names; anything else: a class-name file."""
    if not spec:
        return list(default)
    if spec == "imagenet":
        return imagenet_class_names()
    return read_class_names(spec)
