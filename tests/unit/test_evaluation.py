"""Unit tests for components.evaluation: metrics against hand-computed values, readers on tiny files."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from PIL import Image

from components.data.eval_sets import ImageDecodeError, load_image_folder, load_karpathy, open_image
from components.evaluation import (
    TASK_CLASSIFICATION,
    TASK_RETRIEVAL,
    DualEncoder,
    benchmark_record,
    classification_metrics,
    evaluate_classification,
    evaluate_retrieval,
    zero_shot_classifier,
)
from components.metrics.retrieval import retrieval_metrics

# --- retrieval ------------------------------------------------------------------------------------------

# Rows are images, columns captions; every value distinct so the expected ranks are unambiguous.
SIM = np.array(
    [
        [0.90, 0.95, 0.11, 0.21, 0.31, 0.41, 0.51, 0.61],
        [0.92, 0.12, 0.22, 0.80, 0.32, 0.42, 0.52, 0.62],
        [0.93, 0.83, 0.73, 0.63, 0.05, 0.15, 0.53, 0.43],
        [0.54, 0.64, 0.74, 0.84, 0.94, 0.34, 0.01, 0.99],
    ],
    dtype=np.float32,
)
CAPTION_TO_IMAGE = np.array([0, 0, 1, 1, 2, 2, 3, 3])


def _hand_case():
    # One-hot images make image_emb @ text_emb.T equal SIM exactly.
    return np.eye(4, dtype=np.float32), SIM.T.copy()


def test_retrieval_hand_built_case():
    image_emb, text_emb = _hand_case()
    metrics = retrieval_metrics(image_emb, text_emb, CAPTION_TO_IMAGE, ks=(1, 2, 5, 10))
    # image→text best-own-caption ranks: [0, 1, 6, 0]. Image 3's caption 6 is ranked last, but its
    # caption 7 is first: "any ground-truth caption" makes it a hit at R@1.
    assert metrics["image_to_text/R@1"] == pytest.approx(0.5)
    assert metrics["image_to_text/R@2"] == pytest.approx(0.75)
    assert metrics["image_to_text/R@5"] == pytest.approx(0.75)
    assert metrics["image_to_text/R@10"] == pytest.approx(1.0)
    # text→image ranks: [2, 0, 2, 1, 3, 3, 3, 0].
    assert metrics["text_to_image/R@1"] == pytest.approx(2 / 8)
    assert metrics["text_to_image/R@2"] == pytest.approx(3 / 8)
    assert metrics["text_to_image/R@5"] == pytest.approx(1.0)
    assert metrics["text_to_image/R@10"] == pytest.approx(1.0)
    assert metrics["mean_recall"] == pytest.approx(np.mean([0.5, 0.75, 0.75, 1, 0.25, 0.375, 1, 1]))


def test_retrieval_default_keys():
    image_emb, text_emb = _hand_case()
    metrics = retrieval_metrics(image_emb, text_emb, CAPTION_TO_IMAGE)
    assert list(metrics) == [
        "image_to_text/R@1",
        "image_to_text/R@5",
        "image_to_text/R@10",
        "text_to_image/R@1",
        "text_to_image/R@5",
        "text_to_image/R@10",
        "mean_recall",
    ]
    assert metrics["mean_recall"] == pytest.approx((0.5 + 0.75 + 1 + 0.25 + 1 + 1) / 6)
    assert all(isinstance(v, float) for v in metrics.values())


def _unit(rng, n, d):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_perfect_embeddings_give_recall_one():
    rng = np.random.default_rng(0)
    image_emb = _unit(rng, 20, 16)
    caption_to_image = np.repeat(np.arange(20), 3)
    metrics = retrieval_metrics(image_emb, image_emb[caption_to_image], caption_to_image)
    assert all(value == 1.0 for value in metrics.values())


def test_random_embeddings_are_near_chance():
    rng = np.random.default_rng(1)
    metrics = retrieval_metrics(_unit(rng, 1000, 32), _unit(rng, 1000, 32), np.arange(1000))
    assert metrics["image_to_text/R@1"] < 0.01
    assert metrics["text_to_image/R@1"] < 0.01
    assert metrics["text_to_image/R@10"] < 0.04


def _brute_force_ranks(sim, query_labels, candidate_labels):
    ranks = []
    for row, label in zip(sim, query_labels):
        hits = np.flatnonzero(candidate_labels[np.argsort(-row, kind="stable")] == label)
        ranks.append(hits[0] if hits.size else len(candidate_labels))
    return np.array(ranks)


def test_chunking_matches_unchunked_and_brute_force():
    rng = np.random.default_rng(2)
    image_emb, text_emb = _unit(rng, 37, 8), _unit(rng, 90, 8)
    caption_to_image = rng.integers(0, 37, size=90)  # some images get no caption: always a miss
    ks = (1, 3, 10)
    whole = retrieval_metrics(image_emb, text_emb, caption_to_image, ks=ks, chunk_size=10_000)
    for chunk_size in (1, 7, None):
        assert retrieval_metrics(image_emb, text_emb, caption_to_image, ks=ks, chunk_size=chunk_size) == whole

    sim = image_emb @ text_emb.T
    i2t = _brute_force_ranks(sim, np.arange(37), caption_to_image)
    t2i = _brute_force_ranks(sim.T, caption_to_image, np.arange(37))
    for k in ks:
        assert whole[f"image_to_text/R@{k}"] == pytest.approx(np.mean(i2t < k))
        assert whole[f"text_to_image/R@{k}"] == pytest.approx(np.mean(t2i < k))


def test_collapsed_embeddings_do_not_score_by_ties():
    # A model that maps everything to one vector must not look perfect to the promotion gate.
    same = np.ones((4, 3), dtype=np.float32) / np.sqrt(3)
    metrics = retrieval_metrics(same, np.ones((8, 3), dtype=np.float32) / np.sqrt(3), CAPTION_TO_IMAGE)
    assert metrics["image_to_text/R@1"] == 0.0
    assert metrics["text_to_image/R@1"] == 0.0


def test_retrieval_refuses_bad_inputs():
    image_emb, text_emb = _hand_case()
    with pytest.raises(ValueError, match="NaN"):
        retrieval_metrics(np.full_like(image_emb, np.nan), text_emb, CAPTION_TO_IMAGE)
    with pytest.raises(ValueError, match="caption_to_image"):
        retrieval_metrics(image_emb, text_emb, CAPTION_TO_IMAGE[:-1])
    with pytest.raises(ValueError, match="outside"):
        retrieval_metrics(image_emb, text_emb, CAPTION_TO_IMAGE + 1)
    with pytest.raises(ValueError, match="sizes differ"):
        retrieval_metrics(image_emb, text_emb[:, :3], CAPTION_TO_IMAGE)
    with pytest.raises(ValueError, match="positive"):
        retrieval_metrics(image_emb, text_emb, CAPTION_TO_IMAGE, ks=(0,))


# --- classification -------------------------------------------------------------------------------------


class HashEncoder:
    """Text → a fixed pseudo-random vector with a text-dependent norm (so normalisation matters)."""

    dim = 16

    def __init__(self):
        self.calls: list[int] = []

    def raw(self, text: str) -> np.ndarray:
        seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
        rng = np.random.default_rng(seed)
        return (rng.standard_normal(self.dim) * rng.uniform(0.5, 3.0)).astype(np.float32)

    def encode_texts(self, texts):
        self.calls.append(len(texts))
        return np.stack([self.raw(t) for t in texts])

    def encode_images(self, images):
        raise AssertionError("not used")


def test_prompt_ensembling_is_renormalised_mean_of_normalised_prompts():
    encoder = HashEncoder()
    assert isinstance(encoder, DualEncoder)
    classes, templates = ["cat", "dog", "tree"], ["a photo of a {}.", "a drawing of a {}."]
    class_emb = zero_shot_classifier(encoder, classes, templates, batch_size=4)
    assert encoder.calls == [4, 2]  # batches cross class boundaries
    assert class_emb.shape == (3, HashEncoder.dim) and class_emb.dtype == np.float32
    for row, name in zip(class_emb, classes):
        prompts = [encoder.raw(t.format(name)) for t in templates]
        mean = np.mean([p / np.linalg.norm(p) for p in prompts], axis=0)
        np.testing.assert_allclose(row, mean / np.linalg.norm(mean), rtol=1e-5, atol=1e-6)


def test_templates_without_a_slot_are_refused():
    with pytest.raises(ValueError, match="slot"):
        zero_shot_classifier(HashEncoder(), ["cat"], ["a photo"])
    with pytest.raises(ValueError, match="slot"):
        zero_shot_classifier(HashEncoder(), ["cat"], ["a photo of a {name}"])


def test_classification_metrics_constructed_case():
    class_emb = np.eye(6, dtype=np.float32)
    image_emb = np.array(
        [
            [0.9, 0.1, 0.2, 0.3, 0.4, 0.5],  # label 0, rank 0
            [0.8, 0.7, 0.1, 0.2, 0.3, 0.4],  # label 1, rank 1: top-5 only
            [0.9, 0.8, 0.1, 0.7, 0.6, 0.5],  # label 2, rank 5: misses top-5
            [0.1, 0.2, 0.9, 0.3, 0.4, 0.5],  # label 2, rank 0
            [0.1, 0.2, 0.8, 0.3, 0.4, 0.5],  # label 2, rank 0
        ],
        dtype=np.float32,
    )
    labels = [0, 1, 2, 2, 2]
    metrics = classification_metrics(image_emb, labels, class_emb)
    assert set(metrics) == {"acc1", "acc5", "mean_per_class_recall"}
    assert metrics["acc1"] == pytest.approx(3 / 5)
    assert metrics["acc5"] == pytest.approx(4 / 5)
    assert metrics["mean_per_class_recall"] == pytest.approx((1 + 0 + 2 / 3) / 3)


def test_top5_on_fewer_than_five_classes_is_capped():
    rng = np.random.default_rng(3)
    metrics = classification_metrics(_unit(rng, 10, 4), rng.integers(0, 3, 10), _unit(rng, 3, 4))
    assert metrics["acc5"] == 1.0


# --- readers --------------------------------------------------------------------------------------------


def _png(path, colour, mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, (4, 4), colour).save(path)


def _karpathy(tmp_path, images):
    path = tmp_path / "dataset_flickr_tiny.json"
    path.write_text(json.dumps({"dataset": "flickr_tiny", "images": images}))
    return path


def _entry(filename, split, captions, imgid, filepath=None):
    entry = {
        "filename": filename,
        "imgid": imgid,
        "split": split,
        "sentences": [{"raw": c, "sentid": 10 * imgid + i} for i, c in enumerate(captions)],
        "sentids": [10 * imgid + i for i in range(len(captions))],
    }
    if filepath is not None:
        entry["filepath"] = filepath
    return entry


def test_karpathy_reader(tmp_path):
    _png(tmp_path / "red.png", (255, 0, 0))
    _png(tmp_path / "val2014" / "blue.png", 128, mode="L")  # grey-scale: must come back as RGB
    _png(tmp_path / "train.png", (0, 255, 0))
    path = _karpathy(
        tmp_path,
        [
            _entry("red.png", "test", ["a red square", "something red"], 0),
            _entry("train.png", "train", ["green"], 1),
            _entry("blue.png", "test", ["a grey tile", "grey", "a tile"], 2, filepath="val2014"),
        ],
    )
    rset = load_karpathy(path)
    assert rset.name == "flickr_tiny"
    assert rset.image_paths == [tmp_path / "red.png", tmp_path / "val2014" / "blue.png"]
    assert rset.captions == ["a red square", "something red", "a grey tile", "grey", "a tile"]
    assert rset.caption_to_image.tolist() == [0, 0, 1, 1, 1]
    assert rset.image_to_captions == [[0, 1], [2, 3, 4]]
    image = rset.load_image(1)
    assert image.mode == "RGB" and image.size == (4, 4)
    assert len(load_karpathy(path, split=None)) == 3
    with pytest.raises(ValueError, match="no images in split"):
        load_karpathy(path, split="val")


@pytest.mark.parametrize(
    ("filename", "filepath"),
    [("../x.jpg", None), ("x.jpg", "../outside"), ("x.jpg", "/etc"), ("a/../../x.jpg", None)],
)
def test_karpathy_reader_refuses_traversal(tmp_path, filename, filepath):
    path = _karpathy(tmp_path, [_entry(filename, "test", ["a caption"], 0, filepath=filepath)])
    with pytest.raises(ValueError, match="escapes the dataset folder"):
        load_karpathy(path)


def test_image_folder_reader_with_display_names(tmp_path):
    _png(tmp_path / "n02" / "b.png", (0, 0, 255))
    _png(tmp_path / "n01" / "a.png", (255, 0, 0))
    _png(tmp_path / "n02" / "c.png", (0, 0, 250))
    (tmp_path / "n02" / "notes.txt").write_text("not an image")
    (tmp_path / "classes.json").write_text(json.dumps({"classes": ["red thing", "blue thing"]}))
    cset = load_image_folder(tmp_path)
    assert cset.class_folders == ["n01", "n02"]
    assert cset.class_names == ["red thing", "blue thing"]
    assert [p.name for p in cset.images] == ["a.png", "b.png", "c.png"]
    assert cset.labels.tolist() == [0, 1, 1]

    (tmp_path / "classes.json").write_text(json.dumps({"classes": ["only one"]}))
    with pytest.raises(ValueError, match="1 class names but .* 2 class folders"):
        load_image_folder(tmp_path)


def test_undecodable_image_names_the_file(tmp_path):
    _png(tmp_path / "cat" / "ok.png", (1, 2, 3))
    (tmp_path / "cat" / "broken.jpg").write_bytes(b"definitely not a jpeg")
    cset = load_image_folder(tmp_path)
    assert cset.class_names == ["cat"]
    with pytest.raises(ImageDecodeError, match="broken.jpg"):
        cset.load_image(0)
    with pytest.raises(ImageDecodeError, match="broken.jpg"):
        open_image(tmp_path / "cat" / "broken.jpg")


# --- runner ---------------------------------------------------------------------------------------------


class ColourEncoder:
    """Images → their normalised mean RGB; texts → the one-hot of the colour word they contain."""

    WORDS = ("red", "green", "blue")

    def encode_images(self, images):
        means = np.stack([np.asarray(im, dtype=np.float32).reshape(-1, 3).mean(0) for im in images])
        return means / np.linalg.norm(means, axis=1, keepdims=True)

    def encode_texts(self, texts):
        return np.stack([np.eye(3, dtype=np.float32)[[w in t for w in self.WORDS].index(True)] for t in texts])


def test_evaluate_retrieval_batches_through_the_encoder(tmp_path):
    _png(tmp_path / "r.png", (255, 0, 0))
    _png(tmp_path / "b.png", (0, 0, 255))
    _png(tmp_path / "g.png", (0, 255, 0))
    path = _karpathy(
        tmp_path,
        [
            _entry("r.png", "test", ["a red square", "red"], 0),
            _entry("b.png", "test", ["blue"], 1),
            _entry("g.png", "test", ["green", "a green one"], 2),
        ],
    )
    metrics = evaluate_retrieval(ColourEncoder(), load_karpathy(path), batch_size=2, ks=(1,))
    assert metrics == {"image_to_text/R@1": 1.0, "text_to_image/R@1": 1.0, "mean_recall": 1.0}


def test_evaluate_classification_end_to_end(tmp_path):
    for name, colour in (("blue", (0, 0, 200)), ("green", (0, 200, 0)), ("red", (200, 0, 0))):
        _png(tmp_path / name / "1.png", colour)
        _png(tmp_path / name / "2.png", colour)
    metrics = evaluate_classification(ColourEncoder(), load_image_folder(tmp_path), ["a {} thing"], batch_size=4)
    assert metrics == {"acc1": 1.0, "acc5": 1.0, "mean_per_class_recall": 1.0}


def test_benchmark_record_shape():
    metrics = {"mean_recall": np.float32(0.5)}
    record = benchmark_record("flickr30k", "align-tiny", "run-123", TASK_RETRIEVAL, metrics)
    assert record == {
        "dataset": "flickr30k",
        "model": "align-tiny",
        "pretrained": "run-123",
        "task": "zeroshot_retrieval",
        "metrics": {"mean_recall": 0.5},
        "language": "en",
    }
    assert type(record["metrics"]["mean_recall"]) is float
    json.dumps(record)
    assert benchmark_record("d", "m", "p", TASK_CLASSIFICATION, {}, language="de")["language"] == "de"
    with pytest.raises(ValueError, match="task"):
        benchmark_record("d", "m", "p", "linear_probe", {})


def test_a_misbehaving_encoder_fails_loudly(tmp_path):
    class ShortEncoder(ColourEncoder):
        def encode_texts(self, texts):
            return super().encode_texts(texts)[:-1]

    _png(tmp_path / "r.png", (255, 0, 0))
    path = _karpathy(tmp_path, [_entry("r.png", "test", ["red", "a red one"], 0)])
    with pytest.raises(ValueError, match="encode_texts returned 1 rows for 2 inputs"):
        evaluate_retrieval(ShortEncoder(), load_karpathy(path))
