"""VectorIndex: exact top-k against numpy, k capping, input validation, artifact loading."""

import json

import numpy as np
import pytest

from components.serving.index import Item, VectorIndex


def _unit_rows(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _items(n: int) -> list[Item]:
    return [Item(id=f"id-{i}", caption=f"caption {i}", uri=f"mem://{i}") for i in range(n)]


@pytest.fixture
def corpus():
    rng = np.random.default_rng(0)
    return _unit_rows(rng, 200, 32), _unit_rows(rng, 7, 32)


def test_search_matches_numpy_exactly(corpus):
    embeddings, queries = corpus
    index = VectorIndex(embeddings, _items(200))
    scores, rows = index.search(queries, k=10)

    sims = queries @ embeddings.T
    expected_rows = np.argsort(-sims, axis=1, kind="stable")[:, :10]
    assert scores.shape == rows.shape == (7, 10)
    assert scores.dtype == np.float32 and rows.dtype == np.int64
    np.testing.assert_array_equal(rows, expected_rows)
    np.testing.assert_allclose(scores, np.take_along_axis(sims, expected_rows, axis=1), rtol=1e-5, atol=1e-5)
    assert (np.diff(scores, axis=1) <= 1e-7).all()  # best first


def test_k_is_capped_at_corpus_size(corpus):
    embeddings, queries = corpus
    index = VectorIndex(embeddings[:5], _items(5))
    scores, rows = index.search(queries, k=50)
    assert rows.shape == (7, 5)
    assert sorted(rows[0].tolist()) == [0, 1, 2, 3, 4]


def test_empty_query_batch(corpus):
    embeddings, _ = corpus
    scores, rows = VectorIndex(embeddings, _items(200)).search(np.zeros((0, 32), np.float32), k=3)
    assert scores.shape == rows.shape == (0, 3)


@pytest.mark.parametrize(
    ("queries", "k", "error", "match"),
    [
        (np.zeros(32, np.float32), 3, ValueError, "2-D"),
        (np.zeros((2, 31), np.float32), 3, ValueError, "dimension 31"),
        (np.zeros((2, 32), np.float64), 3, TypeError, "float32"),
        (np.full((1, 32), np.nan, np.float32), 3, ValueError, "NaN"),
        ([[0.0] * 32], 3, TypeError, "numpy array"),
        (np.zeros((1, 32), np.float32), 0, ValueError, "k must be >= 1"),
        (np.zeros((1, 32), np.float32), 2.5, TypeError, "k must be an int"),
        (np.zeros((1, 32), np.float32), True, TypeError, "k must be an int"),
    ],
)
def test_bad_queries_are_rejected(corpus, queries, k, error, match):
    embeddings, _ = corpus
    index = VectorIndex(embeddings, _items(200))
    with pytest.raises(error, match=match):
        index.search(queries, k)


def test_bad_embeddings_are_rejected(corpus):
    embeddings, _ = corpus
    with pytest.raises(ValueError, match="one to one"):
        VectorIndex(embeddings, _items(199))
    with pytest.raises(ValueError, match="L2-normalised"):
        VectorIndex(embeddings * 2, _items(200))
    with pytest.raises(ValueError, match="non-empty"):
        VectorIndex(np.zeros((0, 32), np.float32), [])
    with pytest.raises(TypeError, match="float32"):
        VectorIndex(embeddings.astype(np.float16), _items(200))


def test_from_artifact_round_trip(tmp_path, corpus):
    embeddings, queries = corpus
    (tmp_path / "index").mkdir()
    np.save(tmp_path / "index" / "embeddings.npy", embeddings, allow_pickle=False)
    items = [{"id": f"id-{i}", "caption": f"c{i}", "uri": f"mem://{i}"} for i in range(200)]
    (tmp_path / "index" / "items.json").write_text(json.dumps(items))

    index = VectorIndex.from_artifact(tmp_path)
    assert len(index) == 200 and index.dim == 32
    _, rows = index.search(queries[:1], k=1)
    assert index.item(int(rows[0, 0])).id == f"id-{int(np.argmax(embeddings @ queries[0]))}"


def test_from_artifact_reports_missing_and_malformed_files(tmp_path, corpus):
    with pytest.raises(FileNotFoundError, match="index/embeddings.npy"):
        VectorIndex.from_artifact(tmp_path)
    (tmp_path / "index").mkdir()
    np.save(tmp_path / "index" / "embeddings.npy", corpus[0][:2], allow_pickle=False)
    (tmp_path / "index" / "items.json").write_text(json.dumps([{"id": "a", "caption": "c"}, {}]))
    with pytest.raises(ValueError, match="entry 0"):
        VectorIndex.from_artifact(tmp_path)


def test_approximate_index_seam(corpus):
    embeddings, queries = corpus
    index = VectorIndex(embeddings, _items(200), spec="HNSW16")
    _, rows = index.search(queries, k=1)
    assert rows.shape == (7, 1) and (rows >= 0).all()
