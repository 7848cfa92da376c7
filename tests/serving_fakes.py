"""Stand-ins for the model registry and the text encoder, for serving tests.

Imported as ``tests.serving_fakes`` (a namespace package rooted at the project folder), so Ray
replicas started from a driver whose working directory is the project root can import it too.

A fake registry is a folder: ``aliases.json`` maps alias -> version and ``versions/<v>/`` holds a
model artifact laid out like the real one. The fake encoder embeds a text as a unit vector seeded by
(model salt, text); each version's index holds the embeddings of its captions under its own salt, so
querying a caption returns that item with score ~1.0 only if encoder and index come from the same
version -- a mixed pair scores near 0, which the hot-swap test uses to detect torn swaps.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from pathlib import Path

import numpy as np

DIM = 16
CAPTIONS = [f"a {c} {s} number {i}" for i, (c, s) in enumerate(
    (c, s) for c in ("red", "green", "blue", "yellow") for s in ("circle", "square", "star", "heart", "moon")
)]


def fake_embed(texts: list[str], salt: str, dim: int = DIM) -> np.ndarray:
    rows = []
    for text in texts:
        seed = int.from_bytes(hashlib.sha256(f"{salt}\0{text}".encode()).digest()[:8], "little")
        v = np.random.default_rng(seed).standard_normal(dim)
        rows.append(v / np.linalg.norm(v))
    return np.asarray(rows, dtype=np.float32).reshape(len(texts), dim)


class FakeEncoder:
    def __init__(self, salt: str, dim: int) -> None:
        self.salt, self.dim = salt, dim

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        return fake_embed(texts, self.salt, self.dim)

    def encode_images(self, images: list) -> np.ndarray:
        """An image whose top-left pixel's red value is i embeds like CAPTIONS[i] (a findable query)."""
        texts = []
        for image in images:
            red = image.convert("RGB").getpixel((0, 0))[0]
            texts.append(CAPTIONS[red] if red < len(CAPTIONS) else f"image {red}")
        return fake_embed(texts, self.salt, self.dim)


def write_artifact(
    artifact_dir: Path, salt: str, captions: list[str] = CAPTIONS, dim: int = DIM, load_delay_s: float = 0.0
) -> Path:
    (artifact_dir / "index").mkdir(parents=True, exist_ok=True)
    config = {"salt": salt, "dim": dim, "load_delay_s": load_delay_s}
    (artifact_dir / "align_config.json").write_text(json.dumps(config))
    np.save(artifact_dir / "index" / "embeddings.npy", fake_embed(captions, salt, dim), allow_pickle=False)
    items = [{"id": f"item-{i}", "caption": c, "uri": f"mem://corpus/{i}.png"} for i, c in enumerate(captions)]
    (artifact_dir / "index" / "items.json").write_text(json.dumps(items))
    return artifact_dir


def make_registry(root: Path, versions: dict[str, dict] | None = None, champion: str = "1") -> Path:
    """``versions``: version -> keyword arguments for ``write_artifact`` (default salt ``v<version>``)."""
    for version, kwargs in (versions or {"1": {}}).items():
        write_artifact(root / "versions" / version, **{"salt": f"v{version}", **kwargs})
    set_alias(root, "champion", champion)
    return root


def set_alias(root: Path, alias: str, version: str) -> None:
    path = root / "aliases.json"
    aliases = json.loads(path.read_text()) if path.exists() else {}
    aliases[alias] = version
    path.write_text(json.dumps(aliases))


def download_model(tracking_uri: str, model_uri: str, dst: str | None = None) -> tuple[str, str]:
    """Same contract as ``components.registry.store.download_model``; ``tracking_uri`` is the folder."""
    root = Path(tracking_uri)
    match = re.fullmatch(r"models:/([^/@]+)(?:@([^/]+)|/(\d+))", model_uri)
    if not match:
        raise ValueError(f"unsupported model URI {model_uri!r}")
    _, alias, version = match.groups()
    if alias:
        version = json.loads((root / "aliases.json").read_text())[alias]
    local = root / "versions" / version
    if not local.is_dir():
        raise LookupError(f"no version {version} in fake registry {root}")
    return version, str(local)


def load_encoder(artifact_dir: str) -> FakeEncoder:
    config = json.loads((Path(artifact_dir) / "align_config.json").read_text())
    time.sleep(config.get("load_delay_s", 0.0))  # a real model takes a while to load
    return FakeEncoder(config["salt"], config["dim"])


def index_location(tracking_uri: str, model_name: str, version: str) -> str:
    """The fake registry builds no corpus indexes: serving uses the index inside each artifact."""
    return ""


def champion_version(tracking_uri: str, model_name: str) -> str | None:
    return json.loads((Path(tracking_uri) / "aliases.json").read_text()).get("champion")
