"""Zero-shot retrieval scoring at MSCOCO 5k-test scale: blocked ranking against a plain full-matrix loop.

Setting: 5,000 image and 25,000 caption embeddings (5 captions per image, as in MSCOCO's Karpathy 5k
test split), 640-d like ALIGN-B7, L2-normalised, drawn as noisy copies of per-image centres so the
ranks are not all ties. Embedding time is the encoder's and is not measured here; this is the
ranking that turns embeddings into Recall@1/5/10 both ways.

- **baseline**: the straightforward implementation: the full (25k × 5k) float32 score matrix at once,
  a full ``argsort`` of every row, then the position of the first ground-truth item.
- **candidate**: ``components.metrics.retrieval.retrieval_metrics``: scores in ~64 MiB blocks, and
  per query only a count of negatives scoring at least its best positive (no sort).

Both must give identical metrics (checked). Prints seconds, the ratio, and the largest score block
each holds; writes bench/results/retrieval_eval.json.

    .venv/bin/python bench/retrieval_eval.py [--images 5000] [--captions-per-image 5] [--dim 640]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from components.metrics.retrieval import retrieval_metrics

RESULTS = Path(__file__).resolve().parent / "results" / "retrieval_eval.json"
KS = (1, 5, 10)


def embeddings(images: int, per_image: int, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((images, dim)).astype(np.float32)
    image_emb = centres + 0.8 * rng.standard_normal((images, dim)).astype(np.float32)
    caption_to_image = np.repeat(np.arange(images), per_image)
    text_emb = centres[caption_to_image] + 0.8 * rng.standard_normal((len(caption_to_image), dim)).astype(np.float32)
    for array in (image_emb, text_emb):
        array /= np.linalg.norm(array, axis=1, keepdims=True)
    return image_emb, text_emb, caption_to_image


def _first_hit_ranks(order: np.ndarray, positive: np.ndarray) -> np.ndarray:
    hits = np.take_along_axis(positive, order, axis=1)
    return np.where(hits.any(axis=1), hits.argmax(axis=1), order.shape[1])


def baseline(image_emb: np.ndarray, text_emb: np.ndarray, caption_to_image: np.ndarray) -> dict[str, float]:
    """Full score matrix, full sort per query. Ties are broken by index here, so the candidate (which
    counts ties against the query) is compared on tie-free random data."""
    scores = text_emb @ image_emb.T  # (captions, images)
    t2i_positive = caption_to_image[:, None] == np.arange(image_emb.shape[0])[None, :]
    t2i = _first_hit_ranks(np.argsort(-scores, axis=1), t2i_positive)
    i2t = _first_hit_ranks(np.argsort(-scores.T, axis=1), t2i_positive.T)
    metrics = {}
    for direction, ranks in (("image_to_text", i2t), ("text_to_image", t2i)):
        for k in KS:
            metrics[f"{direction}/R@{k}"] = float(np.mean(ranks < k))
    metrics["mean_recall"] = float(np.mean(list(metrics.values())))
    return metrics


def _timed(fn, *args) -> tuple[float, dict]:
    started = time.perf_counter()
    result = fn(*args)
    return time.perf_counter() - started, result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--captions-per-image", type=int, default=5)
    parser.add_argument("--dim", type=int, default=640)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    image_emb, text_emb, caption_to_image = embeddings(args.images, args.captions_per_image, args.dim)
    base_s, expected = _timed(baseline, image_emb, text_emb, caption_to_image)
    cand_s, got = _timed(lambda: retrieval_metrics(image_emb, text_emb, caption_to_image, ks=KS))
    mismatched = {k: (expected[k], got[k]) for k in expected if abs(expected[k] - got[k]) > 1e-9}
    if mismatched:
        raise SystemExit(f"the blocked metrics differ from the baseline's: {mismatched}")
    full_mib = text_emb.shape[0] * image_emb.shape[0] * 4 / 2**20
    result = {
        "images": args.images,
        "captions": int(text_emb.shape[0]),
        "dim": args.dim,
        "baseline_s": round(base_s, 3),
        "candidate_s": round(cand_s, 3),
        "speedup": round(base_s / cand_s, 2),
        "baseline_score_matrix_mib": round(full_mib, 1),
        "candidate_score_block_mib": round(min(full_mib, 64.0), 1),
        "metrics": got,
    }
    print(
        f"{result['captions']} captions x {args.images} images, {args.dim}-d: baseline {base_s:.2f} s "
        f"(one {full_mib:.0f} MiB score matrix + full sorts), blocked {cand_s:.2f} s "
        f"(<= 64 MiB blocks, no sort): {result['speedup']:.2f}x; metrics identical"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
