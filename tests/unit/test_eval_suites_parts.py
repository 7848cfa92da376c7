"""Unit tests for the evaluation-suite parts: prompts, k-NN, packaged sets (safe pickle reading), tables."""

from __future__ import annotations

import gzip
import json
import os
import pickle
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from components.evaluation.knn import knn_metrics, split_gallery_query
from components.evaluation.packaged import (
    ANIMAL_MNIST_CLASSES,
    PackagedDatasetMissing,
    load_animal_mnist,
    read_pickled_ndarray,
)
from components.evaluation.prompts import (
    TEMPLATE_SETS,
    imagenet_class_names,
    read_class_names,
    resolve_class_names,
    resolve_templates,
)
from components.evaluation.tables import read_labelled_table

# --- prompts --------------------------------------------------------------------------------------------


def test_template_sets_have_exactly_one_slot():
    assert {"default", "single", "imagenet", "silhouette"} <= set(TEMPLATE_SETS)
    assert len(TEMPLATE_SETS["imagenet"]) >= 18
    for name, templates in TEMPLATE_SETS.items():
        assert len(set(templates)) == len(templates), name
        for template in templates:
            assert template.count("{}") == 1, (name, template)
            assert "\x00" in template.format("\x00")


def test_resolve_templates():
    assert resolve_templates("single") == ["a photo of a {}."]
    explicit = ("a {} here.", "the {}.")
    assert resolve_templates(explicit) == list(explicit)
    resolved = resolve_templates("default")
    resolved.append("mutated {}")
    assert "mutated {}" not in TEMPLATE_SETS["default"]
    with pytest.raises(ValueError, match="imagenet"):
        resolve_templates("nope")


def test_imagenet_class_names():
    names = imagenet_class_names()
    assert len(names) == 1000
    assert names[0] == "tench" and names[1] == "goldfish" and names[-1] == "toilet tissue"
    assert all(name and "," not in name for name in names)
    names.append("x")
    assert len(imagenet_class_names()) == 1000  # the cached list is not shared with callers


def test_read_class_names_text_and_json(tmp_path):
    text = tmp_path / "names.txt"
    text.write_text("cat\n\n  dog  \nbird\n", encoding="utf-8")
    assert read_class_names(text) == ["cat", "dog", "bird"]
    js = tmp_path / "names.json"
    js.write_text(json.dumps({"classes": ["a", "b"]}), encoding="utf-8")
    assert read_class_names(js) == ["a", "b"]


@pytest.mark.parametrize(
    ("name", "content", "match"),
    [
        ("empty.txt", "\n \n", "no class names"),
        ("bad.json", "{not json", "not valid JSON"),
        ("list.json", '["a"]', "classes"),
        ("blank.json", '{"classes": ["a", ""]}', r"classes\[1\]"),
        ("none.json", '{"classes": []}', "no class names"),
    ],
)
def test_read_class_names_refuses_malformed(tmp_path, name, content, match):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=match) as info:
        read_class_names(path)
    assert name in str(info.value)


def test_resolve_class_names(tmp_path):
    assert resolve_class_names("", ["x", "y"]) == ["x", "y"]
    assert len(resolve_class_names("imagenet", [])) == 1000
    path = tmp_path / "c.txt"
    path.write_text("one\ntwo\n", encoding="utf-8")
    assert resolve_class_names(str(path), ["x"]) == ["one", "two"]
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        resolve_class_names(str(tmp_path / "missing.txt"), [])


# --- k-NN -----------------------------------------------------------------------------------------------


def _unit(*angles_deg: float) -> np.ndarray:
    radians = np.deg2rad(np.asarray(angles_deg, dtype=np.float64))
    return np.stack([np.cos(radians), np.sin(radians)], axis=1).astype(np.float32)


def test_knn_k1_is_nearest_gallery_label():
    gallery = _unit(0, 90, 180, 270)
    gallery_labels = [0, 1, 2, 3]
    query = _unit(10, 80, 170, 100)
    metrics = knn_metrics(gallery, gallery_labels, query, [0, 1, 2, 2], ks=[1])
    # predictions 0, 1, 2, 1 -> 3 of 4 right; per class: 1, 1, 0.5
    assert metrics["k1/acc1"] == pytest.approx(0.75)
    assert metrics["k1/mean_per_class_recall"] == pytest.approx((1 + 1 + 0.5) / 3)


def test_knn_weighted_vote_beats_majority():
    # One very close neighbour of label 1 outweighs two distant ones of label 0.
    gallery = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]], dtype=np.float32)
    gallery_labels = [1, 0, 0]
    query = np.array([[1.0, 0.0]], dtype=np.float32)  # sims: 1, 0, 0
    near = knn_metrics(gallery, gallery_labels, query, [1], ks=[3])
    assert near["k3/acc1"] == 1.0
    query = _unit(60)  # sims: 0.5 for label 1, 0.866 + 0.866 for label 0
    far = knn_metrics(gallery, gallery_labels, query, [0], ks=[1, 3])
    assert far["k1/acc1"] == 1.0 and far["k3/acc1"] == 1.0
    far_wrong = knn_metrics(gallery, gallery_labels, _unit(10), [1], ks=[1, 3])
    # sims: 0.985 (label 1) vs 2 * 0.174 (label 0): label 1 wins both ways
    assert far_wrong == {
        "k1/acc1": 1.0,
        "k1/mean_per_class_recall": 1.0,
        "k3/acc1": 1.0,
        "k3/mean_per_class_recall": 1.0,
    }


def test_knn_label_ties_go_to_smaller_label():
    gallery = _unit(0, 90)
    query = _unit(45)  # exactly equal similarity to both gallery rows
    gallery[1] = gallery[0][::-1]  # make the two similarities bitwise equal
    for labels in ([5, 2], [2, 5]):
        assert knn_metrics(gallery, labels, query, [2], ks=[2])["k2/acc1"] == 1.0
        assert knn_metrics(gallery, labels, query, [5], ks=[2])["k2/acc1"] == 0.0


def test_knn_k_above_gallery_uses_whole_gallery():
    gallery = _unit(0, 30, 150)
    labels = [0, 1, 1]
    query = _unit(0)
    metrics = knn_metrics(gallery, labels, query, [1], ks=[1, 2, 50])
    assert metrics["k1/acc1"] == 0.0  # nearest is label 0
    # k=2: 1.0 (label 0) vs 0.866 (label 1); k=50 adds -0.866 to label 1
    assert metrics["k2/acc1"] == 0.0 and metrics["k50/acc1"] == 0.0
    query = _unit(20)
    assert knn_metrics(gallery, labels, query, [1], ks=[2, 50])["k2/acc1"] == 1.0


def test_knn_neighbour_ties_at_kth_place_are_deterministic():
    gallery = np.tile(np.array([[1.0, 0.0]], dtype=np.float32), (6, 1))
    labels = [3, 1, 2, 2, 1, 3]
    query = np.array([[1.0, 0.0]], dtype=np.float32)
    # All six tie; the k lowest gallery indices are used: k=1 -> label 3, k=3 -> 3,1,2 tie -> label 1.
    metrics = knn_metrics(gallery, labels, query, [3], ks=[1])
    assert metrics["k1/acc1"] == 1.0
    assert knn_metrics(gallery, labels, query, [1], ks=[3])["k3/acc1"] == 1.0


def test_knn_chunking_does_not_change_results():
    rng = np.random.default_rng(0)
    gallery = rng.normal(size=(200, 8)).astype(np.float32)
    gallery /= np.linalg.norm(gallery, axis=1, keepdims=True)
    query = rng.normal(size=(57, 8)).astype(np.float32)
    query /= np.linalg.norm(query, axis=1, keepdims=True)
    g_labels, q_labels = rng.integers(0, 7, 200), rng.integers(0, 7, 57)
    whole = knn_metrics(gallery, g_labels, query, q_labels, ks=(1, 5, 20))
    assert knn_metrics(gallery, g_labels, query, q_labels, ks=(1, 5, 20), chunk_size=4) == whole
    # Brute-force reference for k=5.
    scores = query @ gallery.T
    expected = []
    for row in scores:
        top = np.argsort(-row, kind="stable")[:5]
        votes = np.zeros(7)
        np.add.at(votes, g_labels[top], row[top].astype(np.float64))
        expected.append(int(np.argmax(votes)))
    assert whole["k5/acc1"] == pytest.approx(float(np.mean(np.asarray(expected) == q_labels)))


def test_knn_refuses_bad_inputs():
    good = _unit(0, 90)
    with pytest.raises(ValueError, match="embedding sizes differ"):
        knn_metrics(good, [0, 1], np.ones((1, 3), np.float32), [0])
    with pytest.raises(ValueError, match="at least one"):
        knn_metrics(good, [0, 1], np.empty((0, 2), np.float32), [])
    with pytest.raises(ValueError, match="query_labels"):
        knn_metrics(good, [0, 1], good, [0])
    with pytest.raises(ValueError, match="gallery_labels"):
        knn_metrics(good, [0, -1], good, [0, 1])
    with pytest.raises(ValueError, match="NaN"):
        knn_metrics(np.array([[np.nan, 0.0]]), [0], good, [0, 1])
    with pytest.raises(ValueError, match="K values"):
        knn_metrics(good, [0, 1], good, [0, 1], ks=[0])
    with pytest.raises(ValueError, match="chunk_size"):
        knn_metrics(good, [0, 1], good, [0, 1], chunk_size=0)


def test_split_is_stratified_deterministic_and_order_independent():
    labels = np.array([0] * 10 + [1] * 5 + [2] * 2 + [3])
    keys = [f"img_{i:03d}.png" for i in range(len(labels))]
    gallery, query = split_gallery_query(labels, keys, 0.5)
    assert sorted(np.concatenate([gallery, query]).tolist()) == list(range(len(labels)))
    assert [int((labels[query] == c).sum()) for c in range(4)] == [5, 3, 1, 0]  # 2.5 rounds half up
    assert [int((labels[gallery] == c).sum()) for c in range(4)] == [5, 2, 1, 1]
    again = split_gallery_query(labels, keys, 0.5)
    assert np.array_equal(again[0], gallery) and np.array_equal(again[1], query)

    perm = np.random.default_rng(1).permutation(len(labels))
    _, query_p = split_gallery_query(labels[perm], [keys[i] for i in perm], 0.5)
    assert sorted(keys[perm[i]] for i in query_p) == sorted(keys[i] for i in query)

    _, tiny = split_gallery_query(labels, keys, 0.01)  # rounds to 0 but each class of >= 2 gives one
    assert [int((labels[tiny] == c).sum()) for c in range(4)] == [1, 1, 1, 0]
    big_gallery, _ = split_gallery_query(labels, keys, 0.99)
    assert [int((labels[big_gallery] == c).sum()) for c in range(4)] == [1, 1, 1, 1]


def test_split_refuses_bad_inputs():
    with pytest.raises(ValueError, match="query_fraction"):
        split_gallery_query(np.array([0, 0]), ["a", "b"], 1.0)
    with pytest.raises(ValueError, match="query_fraction"):
        split_gallery_query(np.array([0, 0]), ["a", "b"], 0.0)
    with pytest.raises(ValueError, match="entries"):
        split_gallery_query(np.array([0, 0]), ["a"])
    with pytest.raises(ValueError, match="duplicates"):
        split_gallery_query(np.array([0, 1]), ["a", "a"])
    with pytest.raises(ValueError, match="string"):
        split_gallery_query(np.array([0, 1]), ["a", 3])


# --- packaged sets and the safe pickle reader -----------------------------------------------------------


def test_load_animal_mnist():
    pixels, labels, classes, sources = load_animal_mnist()
    assert pixels.shape == (10000, 28, 28) and pixels.dtype == np.uint8
    assert labels.shape == (10000,) and labels.dtype == np.int64
    assert classes == list(ANIMAL_MNIST_CLASSES) and len(classes) == 10 and classes[0] == "bear"
    assert np.bincount(labels).tolist() == [1000] * 10
    assert all(path.is_file() for path in sources)


def test_load_animal_mnist_subsample_is_stratified_and_deterministic():
    pixels, labels, _, _ = load_animal_mnist(max_images=25)
    assert pixels.shape == (25, 28, 28)
    assert np.bincount(labels, minlength=10).tolist() == [3] * 5 + [2] * 5
    again, labels_again, _, _ = load_animal_mnist(max_images=25)
    assert np.array_equal(again, pixels) and np.array_equal(labels_again, labels)


@pytest.mark.parametrize(
    "array",
    [
        np.arange(12, dtype=np.uint8).reshape(3, 4),
        np.arange(6, dtype=">i4").reshape(2, 3),
        np.asfortranarray(np.arange(6, dtype=np.float64).reshape(2, 3)),
        np.arange(5, dtype=np.int64),
    ],
)
@pytest.mark.parametrize("compress", [False, True])
def test_read_pickled_ndarray_round_trips(tmp_path, array, compress):
    payload = pickle.dumps(array, protocol=4)
    path = tmp_path / ("a.gz" if compress else "a.pkl")
    path.write_bytes(gzip.compress(payload) if compress else payload)
    out = read_pickled_ndarray(path)
    assert np.array_equal(out, array) and out.shape == array.shape
    assert out.dtype == array.dtype.newbyteorder("=")


class _Exploit:
    def __reduce__(self):
        return (os.system, ("echo hi",))


def test_read_pickled_ndarray_refuses_other_globals(tmp_path, monkeypatch):
    payload = pickle.dumps(_Exploit(), protocol=4)  # before patching: pickle checks the global by identity
    assert b"system" in payload
    calls = []
    for module in {os, sys.modules[os.system.__module__]}:  # os.system pickles as posix.system (or nt.system)
        monkeypatch.setattr(module, "system", lambda *args: calls.append(args))
    path = tmp_path / "evil.gz"
    path.write_bytes(gzip.compress(payload))
    with pytest.raises(ValueError, match="refusing") as info:
        read_pickled_ndarray(path)
    assert "evil.gz" in str(info.value)
    assert calls == []


@pytest.mark.parametrize(
    ("payload", "match"),
    [
        (
            pickle.dumps(np.array(["a", "b"], dtype=object), protocol=4),
            "unsupported pickle opcode|refusing|only numeric",
        ),
        (pickle.dumps({"a": 1}, protocol=4), "unsupported pickle opcode"),
        (pickle.dumps(np.arange(4), protocol=4)[:-30], "malformed|truncated"),
        (b"not a pickle at all", "malformed|unsupported"),
    ],
)
def test_read_pickled_ndarray_refuses_other_content(tmp_path, payload, match):
    path = tmp_path / "x.pkl"
    path.write_bytes(payload)
    with pytest.raises(ValueError, match=match) as info:
        read_pickled_ndarray(path)
    assert "x.pkl" in str(info.value)


def test_read_pickled_ndarray_checks_payload_size(tmp_path):
    payload = bytearray(pickle.dumps(np.arange(4, dtype=np.uint8), protocol=4))
    index = payload.index(b"\x00\x01\x02\x03")
    payload[index - 1] -= 1  # SHORT_BINBYTES length 4 -> 3, dropping one payload byte
    del payload[index + 3]
    path = tmp_path / "short.pkl"
    path.write_bytes(bytes(payload))
    with pytest.raises(ValueError, match="payload holds 3 bytes") as info:
        read_pickled_ndarray(path)
    assert "short.pkl" in str(info.value)


def test_read_pickled_ndarray_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere"):
        read_pickled_ndarray(tmp_path / "nothere.gz")


def test_missing_package_error_says_how_to_install(monkeypatch):
    import importlib.metadata
    import importlib.util

    from components.evaluation import packaged

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)

    def not_found(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", not_found)
    with pytest.raises(PackagedDatasetMissing, match="pip install --no-deps animal-mnist==0.4"):
        packaged.load_animal_mnist()
    assert issubclass(PackagedDatasetMissing, FileNotFoundError)


# --- labelled tables ------------------------------------------------------------------------------------


def test_csv_with_string_labels(tmp_path):
    table = tmp_path / "set.csv"
    table.write_text("image,label\nimgs/a.png,dog\nimgs/b.png,cat\nc.png,dog\n", encoding="utf-8")
    images, labels, classes = read_labelled_table(table)
    assert images == [tmp_path / "imgs" / "a.png", tmp_path / "imgs" / "b.png", tmp_path / "c.png"]
    assert classes == ["cat", "dog"] and labels.tolist() == [1, 0, 1] and labels.dtype == np.int64


def test_csv_with_integer_labels_and_custom_columns(tmp_path):
    table = tmp_path / "set.csv"
    table.write_text("file,y,extra\na.png,10,x\nb.png,2,y\nc.png,0,z\n", encoding="utf-8")
    _, labels, classes = read_labelled_table(table, image_column="file", label_column="y")
    assert classes == ["0", "2", "10"] and labels.tolist() == [2, 1, 0]


def test_parquet_with_bytes_and_integer_labels(tmp_path):
    table = tmp_path / "set.parquet"
    pq.write_table(
        pa.table({"image": pa.array([b"\x89PNG1", b"\x89PNG2"], pa.binary()), "label": pa.array([1, 0], pa.int32())}),
        table,
    )
    images, labels, classes = read_labelled_table(table)
    assert images == [b"\x89PNG1", b"\x89PNG2"] and classes == ["0", "1"] and labels.tolist() == [1, 0]


def test_parquet_with_paths_and_hf_image_structs(tmp_path):
    table = tmp_path / "set.parquet"
    structs = [{"bytes": b"raw", "path": "ignored.png"}, {"bytes": None, "path": "sub/b.png"}]
    pq.write_table(pa.table({"img": structs, "cls": ["b", "a"]}), table)
    images, labels, classes = read_labelled_table(table, image_column="img", label_column="cls")
    assert images == [b"raw", tmp_path / "sub" / "b.png"] and classes == ["a", "b"] and labels.tolist() == [1, 0]


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("image,label\n", "no rows"),
        ("picture,label\na.png,x\n", "no column 'image'"),
        ("image,label\na.png,x\nb.png,\n", "row 2, column 'label'.*empty label"),
        ("image,label\na.png,x\n../secret.png,y\n", "row 2, column 'image'.*escapes"),
        ("image,label\n,x\n", "row 1, column 'image'"),
    ],
)
def test_csv_refusals_name_file_row_and_column(tmp_path, content, match):
    table = tmp_path / "bad.csv"
    table.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=match) as info:
        read_labelled_table(table)
    assert "bad.csv" in str(info.value)


def test_table_refuses_unsupported_suffix_missing_file_and_bad_label_type(tmp_path):
    with pytest.raises(ValueError, match="unsupported table type"):
        read_labelled_table(tmp_path / "set.tsv")
    with pytest.raises(FileNotFoundError, match="gone.csv"):
        read_labelled_table(tmp_path / "gone.csv")
    table = tmp_path / "floats.parquet"
    pq.write_table(pa.table({"image": ["a.png"], "label": [0.5]}), table)
    with pytest.raises(ValueError, match="floats.parquet.*integers or strings"):
        read_labelled_table(table)
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"not parquet")
    with pytest.raises(ValueError, match="broken.parquet"):
        read_labelled_table(broken)
