"""Evaluation suites as configured: loading, content hashes, results, plots and clear failures."""

from __future__ import annotations

import json

import jsonschema
import numpy as np
import pytest
from PIL import Image

from components.config import AlignConfig, EvalConfig, GateConfig, SuiteConfig
from components.evaluation.suite import CorpusSets, SuiteError, evaluate_suites, load_suite, suite_hashes

COLOURS = {"red": (220, 20, 20), "green": (20, 200, 20), "blue": (20, 20, 220)}

# CLIP_benchmark's result file: one object per (dataset, model, task), metrics a flat name -> number map.
RECORD_SCHEMA = {
    "type": "object",
    "required": ["dataset", "model", "pretrained", "task", "metrics", "language"],
    "additionalProperties": False,
    "properties": {
        "dataset": {"type": "string", "minLength": 1},
        "model": {"type": "string", "minLength": 1},
        "pretrained": {"type": "string"},
        "task": {"enum": ["zeroshot_retrieval", "zeroshot_classification", "knn_classification"]},
        "metrics": {"type": "object", "minProperties": 1, "additionalProperties": {"type": "number"}},
        "language": {"type": "string"},
    },
}


class ColourEncoder:
    """Images → their normalised mean RGB; texts → the one-hot of the colour word they contain."""

    def encode_images(self, images):
        means = np.stack([np.asarray(im, dtype=np.float32).reshape(-1, 3).mean(0) for im in images])
        return means / np.linalg.norm(means, axis=1, keepdims=True)

    def encode_texts(self, texts):
        return np.stack([np.eye(3, dtype=np.float32)[[w in t for w in COLOURS].index(True)] for t in texts])


def _png(path, rgb, size=12):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), rgb).save(path)


@pytest.fixture
def corpus(tmp_path):
    images = []
    for i, (name, rgb) in enumerate(list(COLOURS.items()) * 2):
        if i < len(COLOURS):  # one image per colour: the encoder cannot tell two reds apart
            _png(tmp_path / "ret" / f"{name}{i}.png", rgb)
            images.append({"filename": f"{name}{i}.png", "split": "test",
                           "sentences": [{"raw": f"a {name} tile"}, {"raw": f"{name} again"}]})
        for j in range(3):
            _png(tmp_path / "cls" / name / f"{i}-{j}.png", tuple(max(0, c - 10 * j) for c in rgb))
    (tmp_path / "ret" / "dataset.json").write_text(json.dumps({"dataset": "tiles", "images": images}))
    return CorpusSets(str(tmp_path / "ret" / "dataset.json"), str(tmp_path / "cls"))


def test_default_suites_score_retrieval_classification_and_knn(corpus, tmp_path):
    report = evaluate_suites(ColourEncoder(), EvalConfig(batch_size=4), corpus, "colour", "test", tmp_path / "plots")
    assert [r.name for r in report.results] == ["retrieval", "classification", "knn"]
    assert report.metrics["retrieval/image_to_text/R_at_1"] == 1.0
    assert report.metrics["classification/acc1"] == 1.0
    assert report.metrics["knn/k1/acc1"] == 1.0
    retrieval, classification, knn = report.results
    assert retrieval.record["metrics"]["image_retrieval_recall@5"] == retrieval.metrics["text_to_image/R@5"]
    assert classification.details["per_class_accuracy"] == {"red": 1.0, "green": 1.0, "blue": 1.0}
    assert np.trace(np.asarray(classification.details["confusion_matrix"])) == 18
    assert knn.details["gallery"] + knn.details["queries"] == 18
    for result in report.results:
        jsonschema.validate(result.record, RECORD_SCHEMA)
        json.dumps(result.details)  # the details file must serialise
        assert result.plots and all(p.suffix == ".png" and p.is_file() for p in result.plots)
    assert {p.name for p in retrieval.plots} == {"recall_at_k.png", "top_images.png"}


def test_content_hash_follows_data_and_protocol_only(corpus, tmp_path):
    cfg = EvalConfig()
    first = suite_hashes(cfg, corpus)
    assert first == suite_hashes(cfg, corpus)  # stable
    assert len(set(first.values())) == 3  # each suite's protocol differs
    renamed_plots = EvalConfig(suites=[s.model_copy(update={"plot_queries": 1}) for s in cfg.suites])
    assert suite_hashes(renamed_plots, corpus) == first  # presentation is not content
    other_templates = EvalConfig(suites=[s.model_copy(update={"templates": "single"}) for s in cfg.suites])
    changed = suite_hashes(other_templates, corpus)
    assert changed["classification"] != first["classification"] and changed["retrieval"] == first["retrieval"]
    _png(tmp_path / "cls" / "red" / "0-0.png", (221, 20, 20))  # one pixel value in one image
    assert suite_hashes(cfg, corpus)["classification"] != first["classification"]


def test_a_suite_copied_elsewhere_keeps_its_hash_and_knn_split(corpus, tmp_path):
    import shutil

    shutil.copytree(tmp_path / "cls", tmp_path / "elsewhere" / "cls")
    shutil.copytree(tmp_path / "ret", tmp_path / "elsewhere" / "ret")
    moved = CorpusSets(str(tmp_path / "elsewhere" / "ret" / "dataset.json"), str(tmp_path / "elsewhere" / "cls"))
    assert suite_hashes(EvalConfig(), moved) == suite_hashes(EvalConfig(), corpus)


def test_a_missing_suite_file_is_named(corpus, tmp_path):
    missing = SuiteConfig(name="flickr", task="zeroshot_retrieval", path=str(tmp_path / "nope.json"))
    with pytest.raises(SuiteError, match=r"suite 'flickr'.*nope\.json does not exist"):
        load_suite(missing, corpus)
    with pytest.raises(SuiteError, match=r"suite 'animals'.*no_such_dir"):
        load_suite(SuiteConfig(name="animals", task="zeroshot_classification", path=str(tmp_path / "no_such_dir")), corpus)
    with pytest.raises(SuiteError, match="no path given"):
        load_suite(SuiteConfig(name="knn", task="knn_classification"), CorpusSets("x.json", ""))


def test_a_corrupt_suite_file_is_named(corpus, tmp_path):
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(SuiteError, match=r"suite 'flickr'.*broken\.json is not valid JSON"):
        load_suite(SuiteConfig(name="flickr", task="zeroshot_retrieval", path=str(broken)), corpus)
    (tmp_path / "cls" / "green" / "0-1.png").write_bytes(b"\x89PNG truncated")
    suite = SuiteConfig(name="colours", task="zeroshot_classification")
    with pytest.raises(SuiteError, match=r"suite 'colours'.*cannot decode evaluation image .*0-1\.png"):
        evaluate_suites(ColourEncoder(), EvalConfig(suites=[suite]), corpus, "colour", "test")
    (tmp_path / "ret" / "red0.png").unlink()
    with pytest.raises(SuiteError, match=r"suite 'retrieval'.*red0\.png does not exist"):
        load_suite(SuiteConfig(name="retrieval", task="zeroshot_retrieval"), corpus)


def test_a_labelled_table_is_a_classification_suite(corpus, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    images, labels = [], []
    for name, rgb in COLOURS.items():
        for shade in (0, 15):
            path = tmp_path / "t" / f"{name}{shade}.png"
            _png(path, tuple(max(0, c - shade) for c in rgb))
            images.append(path.read_bytes())
            labels.append(name)
    pq.write_table(pa.table({"image": images, "label": labels}), tmp_path / "t" / "labelled.parquet")
    suite = SuiteConfig(name="table", task="zeroshot_classification", path=str(tmp_path / "t" / "labelled.parquet"))
    report = evaluate_suites(ColourEncoder(), EvalConfig(suites=[suite]), corpus, "colour", "test")
    assert report.metrics["table/acc1"] == 1.0 and report.results[0].record["dataset"] == "labelled"


def test_suites_are_selected_by_name_and_gate_metrics_must_name_a_suite(corpus):
    report = evaluate_suites(ColourEncoder(), EvalConfig(plots=False), corpus, "colour", "test", names=["knn"])
    assert [r.name for r in report.results] == ["knn"] and not report.results[0].plots
    with pytest.raises(SuiteError, match=r"unknown suite\(s\) \['imagenet'\]"):
        evaluate_suites(ColourEncoder(), EvalConfig(), corpus, "colour", "test", names=["imagenet"])
    with pytest.raises(ValueError, match="gate metric 'retreival/mean_recall'"):
        AlignConfig(gate=GateConfig(min_metrics={}, max_regression={"retreival/mean_recall": 0.0}))
    with pytest.raises(ValueError, match="unique"):
        EvalConfig(suites=[SuiteConfig(name="a", task="knn_classification")] * 2)


def test_the_packaged_animal_mnist_suite_loads_hashes_and_scores(corpus):
    suite = SuiteConfig(name="animals", task="zeroshot_classification", path="animal_mnist", templates="silhouette",
                        max_images=60)
    loaded = load_suite(suite, corpus)
    assert loaded.data.class_names[:3] == ["bear", "bird", "cat"] and len(loaded.data) == 60
    assert loaded.content_hash == load_suite(suite, corpus).content_hash

    class PixelEncoder:  # images: their downscaled pixels; texts: a seeded random direction each
        def encode_images(self, images):
            rows = np.stack([np.asarray(im.convert("L").resize((4, 4)), dtype=np.float32).ravel() + 1 for im in images])
            return rows / np.linalg.norm(rows, axis=1, keepdims=True)

        def encode_texts(self, texts):
            rows = np.stack([np.random.default_rng(sum(map(ord, t))).standard_normal(16) for t in texts])
            return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)

    report = evaluate_suites(PixelEncoder(), EvalConfig(suites=[suite], plots=False), corpus, "pixels", "test")
    assert 0.0 <= report.metrics["animals/acc1"] <= 1.0 and report.results[0].details["images"] == 60
    assert report.results[0].record["dataset"] == "animal_mnist"
