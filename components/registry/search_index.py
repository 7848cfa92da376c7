"""The search corpus served with a model: image embeddings + item metadata, inside the artifact.

Embeddings belong to one model's weights, so the index is built at registration and travels in the
same registered version; promoting a model therefore swaps model and index together.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

INDEX_DIR = "index"
EMBEDDINGS_FILE = "embeddings.npy"
ITEMS_FILE = "items.json"


def build_search_index(encoder, retrieval_json: str, split: str, artifact_dir: str, batch_size: int = 128) -> int:
    from components.data.eval_sets import load_karpathy
    from components.evaluation.batching import encode_images

    rset = load_karpathy(retrieval_json, split=split)
    embeddings = encode_images(encoder, rset.load_image, len(rset.image_paths), batch_size).astype(np.float32)
    items = [
        {"id": Path(path).stem, "caption": rset.captions[captions[0]], "uri": Path(path).resolve().as_uri()}
        for path, captions in zip(rset.image_paths, rset.image_to_captions, strict=True)
    ]
    directory = Path(artifact_dir) / INDEX_DIR
    directory.mkdir(parents=True, exist_ok=True)
    np.save(directory / EMBEDDINGS_FILE, embeddings, allow_pickle=False)
    (directory / ITEMS_FILE).write_text(json.dumps(items))
    return len(items)
