"""Approximate nearest-neighbour (ANN) search for large serving corpora, and the data to judge it on.

Why an ANN index at all: exact (flat) inner-product search costs O(n·d) per query. On 2 cores at
256-d that is ~6 ms per query at 100k vectors but ~80 ms at 1M (ARCHITECTURE.md, measured facts), too slow for
interactive search. Small corpora stay exact (``choose_index_spec``); above a configurable size the
serving index switches to an ANN index, whose recall against exact search is *measured*
(``recall_at_k``) rather than assumed, because an ANN index's recall depends on the data.

Why synthetic data needs care: uniformly random unit vectors are the worst case for any ANN index
(every point is almost equidistant from every other, so no structure guides the search) and say
nothing about real use. ``realistic_embeddings`` draws vectors shaped like model embeddings
instead, and ``perturbed_copies`` grows a small set of real model embeddings into a large corpus.

faiss is imported inside functions so importing this module stays cheap and free of side effects.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np

# The ANN default, chosen with bench/ann_index.py at 1M x 256 on 2 cores: 1024 inverted lists whose
# vectors are held as 4-bit fast-scan PQ codes (128 sub-quantisers, 64 B a vector, scanned in SIMD
# registers) and re-ranked exactly against the full float vectors ("RFlat"). Measured there (see
# bench/results/ann_index.json): recall@10 ~0.985 at ~1.6 ms p50 / ~2.5 ms p99 per single query,
# built in ~30 s (nprobe 64: 0.97 at 1.2 ms; 96 leaves a margin for data harder than the bench's).
# The alternatives measured on the same data:
# - "HNSW32": 200 s to build; recall@10 0.89 / 0.93 / 0.96 at efSearch 128 / 256 / 512, the last at
#   3.8 ms p50 and 4.9 ms p99: it meets both targets only just, at 2.4x the latency;
# - "IVF4096,Flat": minutes to train and fill (k-means over 4096 lists), and 0.96 recall needs
#   nprobe 128 at ~6.6 ms: a flat scan reads 1 KiB per candidate where the PQ codes read 64 B.
# For corpora far beyond 1M, raise the list count towards 4·sqrt(n) to keep lists short.
DEFAULT_ANN_SPEC = "IVF1024,PQ128x4fs,RFlat"
DEFAULT_NPROBE = 96  # IVF lists scanned per query (of 1024: ~9% of the corpus)
DEFAULT_REFINE_K_FACTOR = 32  # re-rank k x 32 PQ candidates exactly (320 for top-10)
DEFAULT_EF_SEARCH = 128  # HNSW candidate-list size per query, for HNSW specs
# Exact search costs ~4 ms a query at 50k x 160 on one core, and more with every row; above this the
# default ANN index is built (at 100k x 160 it answers in ~0.3 ms with recall@10 ~0.98). IndexConfig's
# default is the same number.
DEFAULT_EXACT_MAX = 50_000

# faiss's k-means warns below 39 points per centroid and subsamples above 256. Its cost grows with
# rows x lists; for the default at 1M, 256 per list trained in 72 s against 18 s at 64 per list, with
# no recall gain (0.980 vs 0.985 at nprobe 96), so training samples 64 per list.
_TRAIN_ROWS_PER_LIST = 64
_MIN_TRAIN_ROWS_PER_LIST = 39
# Enough rows for quantisers that are not IVF lists (PQ's 256 centroids per sub-space x 256 points).
_MIN_TRAIN_ROWS = 65_536
# Unit-length check: float32 round-off on a normalised vector stays far below this.
_NORM_TOLERANCE = 1e-3
# Queries per exact-search block: with faiss's own tiling of the database this bounds memory to a few
# tens of MiB however large the corpus.
_QUERY_BLOCK = 1024


def _faiss() -> Any:
    import faiss

    return faiss


def _faiss_reason(error: RuntimeError) -> str:
    """faiss's message without its C++ location prefix ("Error in <signature> at file.cpp:12: ")."""
    return re.sub(r"^Error in .*? at \S+:\d+: ", "", str(error).strip(), flags=re.DOTALL)


def _check_matrix(name: str, array: Any, dim: int | None = None) -> np.ndarray:
    if not isinstance(array, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, got {type(array).__name__}")
    if array.ndim != 2:
        raise ValueError(f"{name} must be 2-D (n, d), got shape {array.shape}")
    if array.dtype != np.float32:
        raise TypeError(f"{name} must be float32, got {array.dtype}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"{name} must be non-empty, got shape {array.shape}")
    if dim is not None and array.shape[1] != dim:
        raise ValueError(f"{name} has dimension {array.shape[1]}, expected {dim}")
    return np.ascontiguousarray(array)


def _check_unit_rows(name: str, array: np.ndarray) -> None:
    norms = np.sqrt(np.einsum("ij,ij->i", array, array))  # no (n, d) temporary: 1 GiB at 1M x 256
    bad = np.flatnonzero(~(np.abs(norms - 1.0) <= _NORM_TOLERANCE))  # NaN counts as bad
    if bad.size:
        raise ValueError(
            f"{name} rows must be finite and L2-normalised (inner product = cosine); {bad.size} are not "
            f"(row {bad[0]} has norm {norms[bad[0]]:.4f})"
        )


def _check_positive_int(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _empty_index(spec: str, dim: int) -> Any:
    """An empty inner-product index from a factory string, with a readable error for a bad string."""
    faiss = _faiss()
    try:
        return faiss.index_factory(dim, spec, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as error:
        raise ValueError(
            f"{spec!r} is not a faiss index factory string usable at dimension {dim}: {_faiss_reason(error)}"
        ) from None


def _ivf_lists(index: Any) -> int | None:
    """Number of inverted lists of an index (None when it is not IVF)."""
    ivf = _faiss().try_extract_index_ivf(index)
    return None if ivf is None else int(ivf.nlist)


def default_ann_spec(dim: int) -> str:
    """``DEFAULT_ANN_SPEC``'s recipe at any dimension: PQ sub-quantisers must divide the dimension, so
    the codes keep its 2 dimensions per sub-quantiser (128 at 256-d, 80 at 160-d, 320 at 640-d)."""
    dim = _check_positive_int("dim", dim)
    if dim % 2:
        return "IVF1024,Flat"
    return f"IVF1024,PQ{dim // 2}x4fs,RFlat"


def choose_index_spec(num_vectors: int, dim: int, exact_max: int, ann_spec: str) -> str:
    """``"Flat"`` (exact) for corpora of at most ``exact_max`` vectors, else ``ann_spec``.

    Exact search is always right, so the ANN index is used only where exact search is too slow.
    One exception keeps that promise: an IVF spec needs ~39 training vectors per list (faiss's own
    floor) to place its centroids; a corpus above ``exact_max`` but below that floor gets ``"Flat"``,
    because a starved IVF index loses recall while exact search at that size is still cheap.
    ``ann_spec`` is validated here (a faiss factory string, inner-product metric) so a typo in the
    config fails when the index is chosen, not after minutes of building.
    """
    num_vectors = _check_positive_int("num_vectors", num_vectors, minimum=0)
    dim = _check_positive_int("dim", dim)
    exact_max = _check_positive_int("exact_max", exact_max, minimum=0)
    if not isinstance(ann_spec, str) or not ann_spec.strip():
        raise ValueError(f"ann_spec must be a non-empty faiss factory string, got {ann_spec!r}")
    lists = _ivf_lists(_empty_index(ann_spec, dim))
    if num_vectors <= exact_max:
        return "Flat"
    if lists is not None and num_vectors < _MIN_TRAIN_ROWS_PER_LIST * lists:
        return "Flat"
    return ann_spec


def _training_sample(embeddings: np.ndarray, lists: int | None, seed: int) -> np.ndarray:
    """A bounded random sample to train on: k-means time grows with rows x lists, not with quality."""
    n = embeddings.shape[0]
    limit = max(_MIN_TRAIN_ROWS, _TRAIN_ROWS_PER_LIST * (lists or 0))
    if n <= limit:
        return embeddings
    rows = np.sort(np.random.default_rng(seed).choice(n, size=limit, replace=False))
    return embeddings[rows]


# Our argument name -> faiss's ParameterSpace name.
_SEARCH_PARAMS = {"nprobe": "nprobe", "ef_search": "efSearch", "refine_k_factor": "k_factor_rf"}


def _set_search_param(index: Any, name: str, value: int, spec: str) -> None:
    faiss = _faiss()
    try:
        faiss.ParameterSpace().set_index_parameter(index, _SEARCH_PARAMS[name], value)
    except RuntimeError:
        raise ValueError(f"index {spec!r} has no search parameter {name!r}") from None


def _has_search_param(index: Any, name: str) -> bool:
    faiss = _faiss()
    if name == "nprobe":
        return faiss.try_extract_index_ivf(index) is not None
    if name == "refine_k_factor":
        return isinstance(faiss.downcast_index(index), faiss.IndexRefine)
    return hasattr(faiss.downcast_index(index), "hnsw")


def build_faiss_index(
    embeddings: np.ndarray,
    spec: str,
    *,
    ef_search: int | None = None,
    nprobe: int | None = None,
    refine_k_factor: int | None = None,
    seed: int = 0,
) -> Any:
    """A filled inner-product faiss index over unit-length ``embeddings``; ids are row numbers.

    ``spec`` is ``"Flat"`` (exact) or a faiss factory string (``DEFAULT_ANN_SPEC``, ``"HNSW32"``, ...).
    Indexes that need training (IVF centroids, PQ codebooks) are trained on at most
    ``max(65536, 64 x lists)`` rows sampled with ``seed``: faiss subsamples anyway, and a bounded
    sample keeps IVF training at 1M vectors to seconds instead of minutes.

    Search-time parameters are set here so a built index is ready to serve: ``nprobe`` for IVF
    indexes (faiss's own default of 1 list loses most of the recall), ``ef_search`` for HNSW and
    ``refine_k_factor`` for re-ranking (``RFlat``/``Refine``) indexes, whose faiss default of 1 would
    re-rank only the PQ top-k and so keep PQ's errors. When ``None``, ``DEFAULT_NPROBE`` /
    ``DEFAULT_EF_SEARCH`` / ``DEFAULT_REFINE_K_FACTOR`` apply to indexes that have the parameter.
    Passing a parameter the index does not have is an error rather than silently ignored.
    Builds with several faiss threads are not bit-reproducible for HNSW (insertion order races).
    """
    faiss = _faiss()
    embeddings = _check_matrix("embeddings", embeddings)
    _check_unit_rows("embeddings", embeddings)
    dim = embeddings.shape[1]
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"spec must be 'Flat' or a faiss factory string, got {spec!r}")
    if spec == "Flat":
        index = faiss.IndexFlatIP(dim)
    else:
        index = _empty_index(spec, dim)
        lists = _ivf_lists(index)
        if not index.is_trained:
            if lists is not None and embeddings.shape[0] < lists:
                raise ValueError(
                    f"{spec!r} has {lists} lists but only {embeddings.shape[0]} vectors to train them on; "
                    "use a smaller spec or 'Flat' (see choose_index_spec)"
                )
            index.train(_training_sample(embeddings, lists, seed))
    index.add(embeddings)

    for name, value, default in (
        ("nprobe", nprobe, DEFAULT_NPROBE),
        ("ef_search", ef_search, DEFAULT_EF_SEARCH),
        ("refine_k_factor", refine_k_factor, DEFAULT_REFINE_K_FACTOR),
    ):
        if value is not None:
            _set_search_param(index, name, _check_positive_int(name, value), spec)
        elif _has_search_param(index, name):
            _set_search_param(index, name, default, spec)
    return index


def exact_search(embeddings: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` inner-product ``(scores, ids)`` of each query, without copying the corpus.

    Queries go in blocks and faiss tiles the corpus, so memory stays bounded (no full queries x corpus
    score matrix, which would be 4 GiB for 1000 queries over 1M vectors).
    """
    faiss = _faiss()
    embeddings = _check_matrix("embeddings", embeddings)
    queries = _check_matrix("queries", queries, dim=embeddings.shape[1])
    k = min(_check_positive_int("k", k), embeddings.shape[0])
    scores = np.empty((queries.shape[0], k), np.float32)
    ids = np.empty((queries.shape[0], k), np.int64)
    for start in range(0, queries.shape[0], _QUERY_BLOCK):
        block = slice(start, start + _QUERY_BLOCK)
        scores[block], ids[block] = faiss.knn(queries[block], embeddings, k, metric=faiss.METRIC_INNER_PRODUCT)
    return scores, ids


def recall_at_k(index: Any, embeddings: np.ndarray, queries: np.ndarray, k: int = 10) -> float:
    """Mean over queries of the fraction of the exact top-``k`` ids that ``index``'s top-``k`` finds.

    ``index`` must hold exactly ``embeddings``, in order (ids are row numbers), as
    ``build_faiss_index`` makes it. The reference is exact inner-product search over ``embeddings``;
    ``k`` is capped at the corpus size. Ties at the k-th score can make even an exact index score
    slightly below 1.0 on degenerate data; real-valued embeddings practically never tie.
    """
    embeddings = _check_matrix("embeddings", embeddings)
    queries = _check_matrix("queries", queries, dim=embeddings.shape[1])
    if index.d != embeddings.shape[1]:
        raise ValueError(f"index has dimension {index.d}, embeddings {embeddings.shape[1]}")
    if index.ntotal != embeddings.shape[0]:
        raise ValueError(f"index holds {index.ntotal} vectors but embeddings has {embeddings.shape[0]} rows")
    k = min(_check_positive_int("k", k), embeddings.shape[0])
    _, exact_ids = exact_search(embeddings, queries, k)
    found = np.empty_like(exact_ids)
    for start in range(0, queries.shape[0], _QUERY_BLOCK):
        block = slice(start, start + _QUERY_BLOCK)
        found[block] = index.search(queries[block], k)[1]
    return overlap_recall(exact_ids, found)


def overlap_recall(exact_ids: np.ndarray, found_ids: np.ndarray) -> float:
    """Mean fraction of each row of ``exact_ids`` (the true top-k) that appears in ``found_ids``'s row.

    Split out of ``recall_at_k`` so a benchmark can compute the exact answer once and score several
    settings against it. Exact ids are distinct and never -1, so a padded (-1) slot matches nothing.
    """
    if exact_ids.ndim != 2 or found_ids.ndim != 2 or exact_ids.shape[0] != found_ids.shape[0]:
        raise ValueError(f"need two (queries, k) id arrays, got shapes {exact_ids.shape} and {found_ids.shape}")
    if exact_ids.size == 0:
        raise ValueError("no exact ids to compare against")
    hits = 0
    for start in range(0, exact_ids.shape[0], _QUERY_BLOCK):  # bounds the (rows, k, k) comparison
        block = slice(start, start + _QUERY_BLOCK)
        hits += int((exact_ids[block][:, :, None] == found_ids[block][:, None, :]).any(axis=2).sum())
    return hits / exact_ids.size


def save_index(index: Any, path: str | Path) -> None:
    """Write ``index`` in faiss's own binary format (``faiss.write_index``; no pickle).

    The file is written next to ``path`` and renamed into place, so a reader never sees half a file.
    Search parameters stored with the index (``nprobe``, ``efSearch``, refine ``k_factor``) travel with it.
    """
    faiss = _faiss()
    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"cannot save the index to {path}: folder {path.parent} does not exist")
    partial = path.with_name(f".{path.name}.partial-{os.getpid()}")
    try:
        faiss.write_index(index, str(partial))
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def load_index(path: str | Path) -> Any:
    """Read an index written by ``save_index`` (``faiss.read_index``: a binary format, no pickle).

    No code runs on load, but faiss's reader is not hardened against crafted files: load only
    indexes this platform wrote (e.g. from a model artifact).
    """
    faiss = _faiss()
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no faiss index file at {path}")
    try:
        return faiss.read_index(str(path))
    except RuntimeError as error:
        raise ValueError(f"{path} is not a readable faiss index: {_faiss_reason(error)}") from None


# --- Synthetic embeddings -------------------------------------------------------------------------
# Calibrated against a real model (see realistic_embeddings); change them only with that comparison.
_CLUSTER_EXPONENT = 0.9  # clusters = n ** 0.9: small groups of related items (~3 at 24k, ~4 at 1M)
_SPECTRUM_DECAY = 0.5  # centres' per-axis std ∝ (axis + 1) ** -0.5: a power-law PCA spectrum
_MEAN_WEIGHT = 0.5  # shared direction ("cone"): random pairs have cosine ~0.1, not 0
_CLUSTER_RANK = 4  # rank of each cluster's own anisotropic spread
_LOW_RANK_ENERGY = 0.2  # squared norm of the low-rank spread, relative to the unit centre
_NOISE_ENERGY = 0.4  # squared norm of the isotropic noise, relative to the unit centre
_SIZE_SIGMA = 1.0  # log-normal cluster weights: a few large clusters, a long tail of small ones
_SPREAD_SIGMA = 0.3  # log-normal per-cluster spread: some tight clusters, some diffuse
_CLUSTER_BLOCK = 4096  # clusters generated together: bounds the per-cluster factors to ~16 MiB


def _normalise_rows(array: np.ndarray) -> np.ndarray:
    array /= np.sqrt(np.einsum("ij,ij->i", array, array))[:, None]
    return array


def realistic_embeddings(n: int, dim: int, seed: int = 0, clusters: int | None = None) -> np.ndarray:
    """``(n, dim)`` float32 unit vectors distributed like model embeddings, not uniformly.

    A mixture of anisotropic Gaussian clusters, projected onto the sphere:

    - **centres** share one mean direction (embeddings of one model occupy a cone: random pairs have
      cosine ~0.1 here) and spread around it with a power-law spectrum in a random basis (per-axis
      std ∝ (axis + 1) ** -0.5), so, as in real embeddings, a few directions carry most of the variance
      and nearby centres overlap;
    - **cluster sizes** are log-normal (a few large groups, a long tail), and ``clusters`` defaults to
      ``round(n ** 0.9)``: many small groups of related items, ~4 per cluster at 1M;
    - **members** add a rank-4 spread along the cluster's own random directions plus isotropic noise,
      both scaled per cluster (log-normal), so some clusters are tight and some diffuse.

    Why these numbers: they were fitted so that approximate search is as hard as on real embeddings.
    The reference was all-MiniLM-L6-v2 (384-d) on 24k docstring sentences of installed packages, the
    only real corpus at hand offline; at the same size and dimension, this generator matches it on
    mean top-1 / top-10 / top-100 neighbour cosine (0.67 / 0.46 / 0.36 vs real 0.72 / 0.56 / 0.43),
    random-pair cosine (0.12 vs 0.09), PCA participation ratio (85 vs 90) and, most important for a
    benchmark, ANN recall@10: IVF619 at nprobe 1 / 4 / 16 = 0.52 / 0.73 / 0.91 (real 0.49 / 0.73 /
    0.87) and HNSW32 at efSearch 16 / 64 = 0.92 / 0.98 (real 0.94 / 0.99). Fewer (~sqrt(n)), larger,
    well separated clusters looked plausible but made IVF far too easy (0.99 at nprobe 8 of 1024).
    At 1M x 256 a held-out query's nearest neighbour has cosine ~0.69 on average (p10 0.52, p90 0.83).

    Deterministic for a given ``(n, dim, seed, clusters)``. Draw queries from the same distribution by
    generating ``n + q`` rows and holding ``q`` random rows out of the index.
    """
    n = _check_positive_int("n", n)
    dim = _check_positive_int("dim", dim, minimum=2)
    k = max(1, round(n**_CLUSTER_EXPONENT)) if clusters is None else _check_positive_int("clusters", clusters)
    rng = np.random.default_rng(seed)

    spectrum = ((1.0 + np.arange(dim)) ** -_SPECTRUM_DECAY).astype(np.float32)
    basis = np.linalg.qr(rng.standard_normal((dim, dim)))[0].astype(np.float32)
    mean = rng.standard_normal(dim).astype(np.float32)
    mean *= _MEAN_WEIGHT / np.linalg.norm(mean)
    centres = _normalise_rows((rng.standard_normal((k, dim), dtype=np.float32) * spectrum) @ basis.T)
    centres = _normalise_rows(centres + mean)

    weights = rng.lognormal(0.0, _SIZE_SIGMA, k)
    labels = rng.choice(k, size=n, p=weights / weights.sum())
    order = np.argsort(labels, kind="stable")
    starts = np.searchsorted(labels[order], np.arange(k + 1))
    rank_scale = ((1.0 + np.arange(_CLUSTER_RANK)) ** -0.5).astype(np.float32)
    rank_scale *= np.sqrt(_LOW_RANK_ENERGY / (rank_scale**2).sum())

    out = np.empty((n, dim), np.float32)
    for first in range(0, k, _CLUSTER_BLOCK):
        last = min(first + _CLUSTER_BLOCK, k)
        rows = order[starts[first] : starts[last]]
        if rows.size == 0:
            continue
        local = labels[rows] - first
        spread = rng.lognormal(0.0, _SPREAD_SIGMA, last - first).astype(np.float32)
        # Each cluster's rank-r directions: random unit-norm rows, scaled by a decaying spectrum.
        factors = rng.standard_normal((last - first, _CLUSTER_RANK, dim), dtype=np.float32) / np.sqrt(dim)
        factors *= (rank_scale[None, :, None] * spread[:, None, None])
        latent = rng.standard_normal((rows.size, _CLUSTER_RANK), dtype=np.float32)
        block = centres[first + local]
        for r in range(_CLUSTER_RANK):  # one rank at a time: never a (rows, rank, dim) temporary
            block += latent[:, r : r + 1] * factors[local, r]
        noise = rng.standard_normal((rows.size, dim), dtype=np.float32)
        block += noise * (spread[local, None] * np.float32(np.sqrt(_NOISE_ENERGY / dim)))
        out[rows] = _normalise_rows(block)
    return out


def perturbed_copies(base: np.ndarray, n: int, noise: float, seed: int = 0) -> np.ndarray:
    """``n`` unit vectors, each a random row of ``base`` plus isotropic Gaussian noise, renormalised.

    Grows a small set of real model embeddings (e.g. the eval corpus's) into a benchmark-sized corpus
    that keeps their layout. ``noise`` is the expected norm of the added noise relative to the unit
    row: a copy's cosine to its source is about ``1 / sqrt(1 + noise²)`` and two copies of one source
    about ``1 / (1 + noise²)`` (noise 0.6: ~0.86 and ~0.74). Too little noise makes near-duplicates,
    which any index finds trivially; too much drowns the real structure in isotropic noise.

    Keep the copies per row few: grown to 1M from 24k real rows (~42 copies each), every query's
    top-10 were copies of its own source, and the default ANN index scored recall@10 1.0 even at a
    third of its default ``nprobe`` — a near-duplicate benchmark that says little about real use.
    """
    base = _check_matrix("base", base)
    _check_unit_rows("base", base)
    n = _check_positive_int("n", n)
    if isinstance(noise, bool) or not isinstance(noise, (int, float)) or not np.isfinite(noise) or noise < 0:
        raise ValueError(f"noise must be a finite number >= 0, got {noise!r}")
    rng = np.random.default_rng(seed)
    dim = base.shape[1]
    sources = rng.integers(0, base.shape[0], size=n)
    out = np.empty((n, dim), np.float32)
    scale = np.float32(noise / np.sqrt(dim))
    for start in range(0, n, 65_536):
        block = slice(start, start + 65_536)
        rows = base[sources[block]] + scale * rng.standard_normal((len(sources[block]), dim), dtype=np.float32)
        out[block] = _normalise_rows(rows)
    return out
