"""components.serving.ann: index choice, recall against exact search, persistence, synthetic data, bench smoke."""

from __future__ import annotations

import importlib.util
import json
import sys

import faiss
import numpy as np
import pytest

from components.config import PROJECT_ROOT
from components.serving import ann


def _unit_rows(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def clustered():
    """4000 corpus rows + 100 held-out queries from the realistic generator (one draw, split)."""
    data = ann.realistic_embeddings(4100, 32, seed=3)
    return data[:4000], data[4000:]


def test_spec_choice_switches_to_ann_above_exact_max():
    assert ann.choose_index_spec(100_000, 256, exact_max=100_000, ann_spec="HNSW32") == "Flat"
    assert ann.choose_index_spec(100_001, 256, exact_max=100_000, ann_spec="HNSW32") == "HNSW32"
    assert ann.choose_index_spec(0, 256, exact_max=0, ann_spec="HNSW32") == "Flat"
    assert ann.choose_index_spec(1, 8, exact_max=0, ann_spec="HNSW32") == "HNSW32"
    defaults = {"exact_max": ann.DEFAULT_EXACT_MAX, "ann_spec": ann.DEFAULT_ANN_SPEC}
    assert ann.choose_index_spec(ann.DEFAULT_EXACT_MAX, 256, **defaults) == "Flat"
    assert ann.choose_index_spec(1_000_000, 256, **defaults) == ann.DEFAULT_ANN_SPEC


def test_spec_choice_stays_exact_when_ivf_lists_would_starve():
    # IVF4096 needs ~39 x 4096 = 159,744 training vectors; fewer would place poor centroids.
    assert ann.choose_index_spec(150_000, 256, exact_max=100_000, ann_spec="IVF4096,Flat") == "Flat"
    assert ann.choose_index_spec(160_000, 256, exact_max=100_000, ann_spec="IVF4096,Flat") == "IVF4096,Flat"


def test_spec_choice_rejects_bad_input_early():
    with pytest.raises(ValueError, match="not a faiss index factory string"):
        ann.choose_index_spec(10, 256, exact_max=100, ann_spec="HNSW-thirty-two")
    with pytest.raises(ValueError, match="exact_max must be >= 0"):
        ann.choose_index_spec(10, 256, exact_max=-1, ann_spec="HNSW32")
    with pytest.raises(TypeError, match="num_vectors must be an int"):
        ann.choose_index_spec(10.0, 256, exact_max=100, ann_spec="HNSW32")


def test_flat_index_has_recall_one_and_a_starved_ivf_less(clustered):
    corpus, queries = clustered
    flat = ann.build_faiss_index(corpus, "Flat")
    assert isinstance(flat, faiss.IndexFlatIP)
    assert ann.recall_at_k(flat, corpus, queries, k=10) == 1.0
    bad = ann.build_faiss_index(corpus, "IVF64,Flat", nprobe=1)  # 1 list of 64 scanned per query
    good = ann.build_faiss_index(corpus, "IVF64,Flat", nprobe=64)  # every list: exhaustive
    bad_recall = ann.recall_at_k(bad, corpus, queries, k=10)
    assert 0.0 < bad_recall < 0.9
    assert ann.recall_at_k(good, corpus, queries, k=10) == pytest.approx(1.0)


def test_recall_on_a_hand_case():
    # Corpus on the unit circle at angles 0..5 (radians/10): the query at angle 0 has exact top-2 {0, 1}.
    angles = np.arange(6) / 10
    corpus = np.stack([np.cos(angles), np.sin(angles)], axis=1).astype(np.float32)
    query = corpus[:1].copy()

    class Answers:  # a stand-in "index" that returns fixed ids
        d, ntotal = 2, 6

        def __init__(self, ids):
            self.ids = np.array([ids], np.int64)

        def search(self, queries, k):
            return np.zeros_like(self.ids, np.float32), self.ids

    assert ann.recall_at_k(Answers([1, 0]), corpus, query, k=2) == 1.0
    assert ann.recall_at_k(Answers([0, 5]), corpus, query, k=2) == 0.5
    assert ann.recall_at_k(Answers([-1, -1]), corpus, query, k=2) == 0.0  # faiss's padding matches nothing
    with pytest.raises(ValueError, match="holds 6 vectors but embeddings has 5 rows"):
        ann.recall_at_k(Answers([0, 1]), corpus[:5], query, k=2)


def test_build_sets_search_params_and_rejects_foreign_ones(clustered):
    corpus, _ = clustered
    ivf = ann.build_faiss_index(corpus, "IVF32,Flat")
    assert faiss.extract_index_ivf(ivf).nprobe == ann.DEFAULT_NPROBE
    hnsw = ann.build_faiss_index(corpus[:500], "HNSW8", ef_search=40)
    assert faiss.downcast_index(hnsw).hnsw.efSearch == 40
    refine = ann.build_faiss_index(corpus, "IVF16,PQ8x4fs,RFlat")  # the default's shape, scaled down
    assert faiss.downcast_index(refine).k_factor == ann.DEFAULT_REFINE_K_FACTOR
    assert faiss.extract_index_ivf(refine).nprobe == ann.DEFAULT_NPROBE
    with pytest.raises(ValueError, match="has no search parameter 'ef_search'"):
        ann.build_faiss_index(corpus, "IVF32,Flat", ef_search=40)
    with pytest.raises(ValueError, match="L2-normalised"):
        ann.build_faiss_index(corpus * 2, "Flat")
    with pytest.raises(ValueError, match="only 20 vectors to train"):
        ann.build_faiss_index(corpus[:20], "IVF32,Flat")


def test_save_load_roundtrip_answers_identically(clustered, tmp_path):
    corpus, queries = clustered
    index = ann.build_faiss_index(corpus, "IVF32,Flat", nprobe=5)
    path = tmp_path / "corpus.faiss"
    ann.save_index(index, path)
    loaded = ann.load_index(path)
    assert faiss.extract_index_ivf(loaded).nprobe == 5  # search params travel with the file
    assert [p.name for p in tmp_path.iterdir()] == ["corpus.faiss"]  # no partial file left behind
    for a, b in zip(index.search(queries, 10), loaded.search(queries, 10)):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(FileNotFoundError, match="no faiss index file"):
        ann.load_index(tmp_path / "missing.faiss")
    (tmp_path / "junk.faiss").write_bytes(b"not an index")
    with pytest.raises(ValueError, match="not a readable faiss index"):
        ann.load_index(tmp_path / "junk.faiss")


def test_realistic_embeddings_are_unit_clustered_and_reproducible():
    data = ann.realistic_embeddings(5000, 64, seed=1)
    assert data.dtype == np.float32 and data.shape == (5000, 64)
    np.testing.assert_allclose(np.linalg.norm(data, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(data, ann.realistic_embeddings(5000, 64, seed=1))
    assert not np.array_equal(data, ann.realistic_embeddings(5000, 64, seed=2))

    corpus, queries = data[:4800], data[4800:]
    top1 = ann.exact_search(corpus, queries, 1)[0][:, 0].mean()
    random_rows = _unit_rows(np.random.default_rng(0), 5000, 64)
    random_top1 = ann.exact_search(random_rows[:4800], random_rows[4800:], 1)[0][:, 0].mean()
    # Uniform unit vectors at 64-d: nearest neighbour among 4800 at cosine ~0.4; clustered data well above.
    assert top1 > random_top1 + 0.2
    assert 0.55 < top1 < 0.95  # neighbours, not near-duplicates


def test_perturbed_copies_keep_the_expected_similarity():
    base = _unit_rows(np.random.default_rng(0), 50, 256)
    copies = ann.perturbed_copies(base, 2000, noise=0.6, seed=0)
    np.testing.assert_allclose(np.linalg.norm(copies, axis=1), 1.0, atol=1e-5)
    best = (copies @ base.T).max(axis=1)  # each copy's source is its most similar base row
    assert best.mean() == pytest.approx(1 / np.sqrt(1 + 0.36), abs=0.02)
    with pytest.raises(ValueError, match="noise must be"):
        ann.perturbed_copies(base, 10, noise=-1.0)


def test_bench_smoke_runs_and_writes_json(tmp_path):
    path = PROJECT_ROOT / "bench" / "ann_index.py"
    spec = importlib.util.spec_from_file_location("bench_ann_index", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)

    out = tmp_path / "ann.json"
    threads_before = faiss.omp_get_max_threads()
    result = module.main(["--smoke", "--out", str(out)])
    assert faiss.omp_get_max_threads() == threads_before  # the bench restores faiss's thread count
    assert json.loads(out.read_text()) == result
    assert result["setting"]["smoke"] is True and result["setting"]["n"] == 3000
    assert 0.0 < result["recall_at_10"] <= 1.0
    assert set(result["ann_latency"]) == set(result["exact_latency"]) == {"threads_1", "threads_2"}
    assert result["ann_latency"]["threads_1"]["p50_ms"] > 0
    assert [row["nprobe"] for row in result["sweep"]] == [2, 4]
    assert result["setting"]["params"] == {"nprobe": 4, "refine_k_factor": ann.DEFAULT_REFINE_K_FACTOR}
    assert 0.5 < result["data"]["mean_top1_cosine"] < 1.0
    assert set(result["targets_met"]) == {"recall_at_10", "p50_ms"}


def test_the_default_ann_recipe_fits_any_even_dimension():
    from components.serving.ann import choose_index_spec, default_ann_spec

    assert default_ann_spec(256) == "IVF1024,PQ128x4fs,RFlat"
    for dim in (160, 384, 640, 1376):  # tinynet_e, MiniLM, B7, L2 embedding sizes
        spec = default_ann_spec(dim)
        assert choose_index_spec(200_000, dim, 100_000, spec) == spec  # validated by faiss at that dim
    assert default_ann_spec(161) == "IVF1024,Flat"


def test_config_default_matches_the_ann_module_default():
    from components.config import IndexConfig

    assert IndexConfig().exact_max == ann.DEFAULT_EXACT_MAX
