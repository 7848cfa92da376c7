"""The served search corpus: embedded by one model version with Ray Data, stored as that version's index.

Embeddings only mean something for the image tower that made them, so an index is built *by* a model
version and records it; serving loads a version's index and refuses one built by another version.

Layout under ``<storage.indexes_uri>/<model name>/v<version>-<corpus hash>/``::

    items/*.parquet     id, caption, image bytes, embedding, error ("" = indexed) -- written by Ray Data
    index.faiss         the faiss index over the indexed rows, in sorted-file + row order (faiss's own
                        binary format: no pickle)
    manifest.json       model name/version, index version, counts, index kind, ANN recall@10 vs exact

A row whose image cannot be decoded is kept in ``items/`` with its ``error`` and left out of the
index: quarantined, counted in the manifest, never silently dropped.
"""

from __future__ import annotations

import hashlib
import io
import logging
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from components.config import IndexConfig
from components.runtime import progress
from components.storage import exists, join_uri, list_names, read_bytes, read_json, remove_tree, write_bytes, write_json

log = logging.getLogger(__name__)

ITEMS_DIR = "items"
INDEX_FILE = "index.faiss"
MANIFEST_FILE = "manifest.json"
ITEM_COLUMNS = ("id", "caption", "error")


@dataclass(frozen=True)
class IndexManifest:
    model_name: str
    model_version: str
    index_version: str
    items: int  # rows in the index
    rejected: int  # rows quarantined with an error
    dim: int
    spec: str  # faiss factory string ("Flat" = exact)
    recall_at_10: float | None  # ANN against exact search on a sample; None for exact indexes
    source_uri: str
    built_at: str
    build_s: float


class _ImageEmbedder:
    """Ray Data actor: one encoder per actor, loaded once, embedding a batch of encoded images."""

    def __init__(self, tracking_uri: str, model_name: str, model_version: str, batch_size: int, device: str = "cpu",
                 progress=None):
        # Each actor fetches the model from the registry itself, so actors on other nodes need no
        # file shared with the driver. ``progress`` (a ``WorkerProgress``) counts embedded rows. ``device``
        # is what Ray granted this actor (``embedder_placement``), never a GPU it did not ask for.
        from components.model.artifact import load_encoder
        from components.registry.store import download_model

        self._tmp = tempfile.TemporaryDirectory(prefix="align-embed-")
        _, artifact_dir = download_model(tracking_uri, f"models:/{model_name}/{model_version}", dst=self._tmp.name)
        self.encoder = load_encoder(artifact_dir, batch_size=batch_size, device=device)
        self.progress = progress

    def __call__(self, batch: dict) -> pa.Table:
        from PIL import Image

        images, errors = [], []
        for data in batch["image"]:
            try:
                with Image.open(io.BytesIO(data)) as image:
                    images.append(image.convert("RGB"))
                errors.append("")
            except Exception as exc:  # noqa: BLE001 -- any decode failure quarantines the row
                images.append(None)
                errors.append(f"image_undecodable: {type(exc).__name__}: {exc}"[:500])
        dim = self.encoder.embed_dim
        embeddings = np.zeros((len(images), dim), np.float32)
        ok = [i for i, error in enumerate(errors) if not error]
        if ok:
            embeddings[ok] = self.encoder.encode_images([images[i] for i in ok])
        if self.progress is not None:
            self.progress.advance(len(images))
        return pa.table(
            {
                "id": pa.array([str(k) for k in batch["key"]]),
                "caption": pa.array([str(t) for t in batch["text"]]),
                "image": pa.array(list(batch["image"]), pa.binary()),
                "embedding": pa.FixedSizeListArray.from_arrays(pa.array(embeddings.ravel()), dim),
                "error": pa.array(errors),
            }
        )


def embedder_placement(cluster_resources: dict, concurrency: int) -> tuple[dict, int, str]:
    """Ray resources, most actors and device for the embedding actors: one GPU each when the cluster
    has GPUs, else the CPU.

    Why: an actor that asks Ray for no GPU but picks ``cuda`` itself lands on GPU 0 of its node outside
    Ray's accounting, beside whatever Ray placed there (a training worker, another embedder).
    """
    gpus = int(cluster_resources.get("GPU", 0))
    if gpus > 0:
        return {"num_cpus": 1, "num_gpus": 1}, min(max(1, concurrency), gpus), "cuda"
    return {"num_cpus": 1}, max(1, concurrency), "cpu"


def index_uri(indexes_uri: str, model_name: str, model_version: str, source_uri: str) -> str:
    digest = hashlib.sha256(source_uri.encode()).hexdigest()[:10]
    return join_uri(indexes_uri, model_name, f"v{model_version}-{digest}")


def _item_files(uri: str) -> list[str]:
    return [join_uri(uri, ITEMS_DIR, name) for name in list_names(join_uri(uri, ITEMS_DIR)) if name.endswith(".parquet")]


def _read_columns(uri: str, columns: list[str]) -> tuple[pa.Table, list[tuple[int, int]]]:
    """All item files in sorted order, plus (file number, row in file) per row: the index's row order."""
    import pyarrow.fs as pafs

    tables, where = [], []
    for number, file_uri in enumerate(_item_files(uri)):
        fs, path = pafs.FileSystem.from_uri(file_uri)
        table = pq.read_table(path, columns=columns, filesystem=fs)
        tables.append(table)
        where.extend((number, row) for row in range(table.num_rows))
    if not tables:
        raise FileNotFoundError(f"index {uri} has no {ITEMS_DIR}/*.parquet")
    return pa.concat_tables(tables), where


def build_corpus_index(
    cfg: IndexConfig, indexes_uri: str, tracking_uri: str, model_name: str, model_version: str, source_uri: str
) -> tuple[str, IndexManifest]:
    """Embed every image of the Parquet dataset at ``source_uri`` (columns key, text, image) with a
    registered version and index it; returns the index URI and its manifest (reused if built before)."""
    import ray

    started = time.monotonic()
    uri = index_uri(indexes_uri, model_name, model_version, source_uri)
    if exists(join_uri(uri, MANIFEST_FILE)):
        return uri, load_manifest(uri)  # built before by this version from this corpus
    # The manifest is written last: without it, whatever is there is an interrupted build's, and Ray
    # Data would add the new item files beside its leftovers (duplicate ids, rows of another attempt).
    if remove_tree(uri):
        log.warning("removed the leftovers of an interrupted index build at %s", uri)
    dataset = ray.data.read_parquet(source_uri, columns=["key", "text", "image"])
    total = dataset.count() if progress.live() else None  # Parquet footers: no image is read for it
    resources, actors, device = embedder_placement(ray.cluster_resources(), cfg.embed_concurrency)
    with progress.worker_task("embed", total=total, unit="images") as reporter:
        embedded = dataset.map_batches(
            _ImageEmbedder,
            fn_constructor_kwargs={"tracking_uri": tracking_uri, "model_name": model_name,
                                   "model_version": str(model_version), "batch_size": cfg.batch_size,
                                   "device": device, "progress": reporter},
            batch_size=cfg.batch_size,
            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=actors),
            **resources,
        )
        embedded.write_parquet(join_uri(uri, ITEMS_DIR), row_group_size=cfg.rows_per_group)
    return uri, index_written_items(cfg, uri, model_name, model_version, source_uri, started)


def search_index(cfg: IndexConfig, embeddings: np.ndarray) -> tuple[object, str, float | None]:
    """(faiss index, factory spec, ANN recall@10 against exact search or None) for unit-row embeddings."""
    from components.serving.ann import build_faiss_index, choose_index_spec, default_ann_spec, recall_at_k

    dim = embeddings.shape[1]
    ann_spec = default_ann_spec(dim) if cfg.ann_spec == "auto" else cfg.ann_spec
    spec = choose_index_spec(embeddings.shape[0], dim, cfg.exact_max, ann_spec)
    index = build_faiss_index(
        embeddings, spec,
        ef_search=cfg.ann_ef_search if "HNSW" in spec else None,
        nprobe=cfg.ann_nprobe if "IVF" in spec else None,
    )
    recall = None
    if spec != "Flat":
        rng = np.random.default_rng(0)
        sample = embeddings[rng.choice(len(embeddings), min(cfg.recall_queries, len(embeddings)), replace=False)]
        recall = float(recall_at_k(index, embeddings, sample, k=10))
    return index, spec, recall


def index_written_items(
    cfg: IndexConfig, uri: str, model_name: str, model_version: str, source_uri: str, started: float | None = None
) -> IndexManifest:
    """Index the embeddings already written under ``<uri>/items/`` and write ``index.faiss`` + the manifest.

    The second half of ``build_corpus_index``; a corpus embedded elsewhere (a benchmark's synthetic one)
    becomes a servable index through the same code.
    """
    from components.serving.ann import save_index

    started = time.monotonic() if started is None else started  # build_s counts from here or the caller's start
    table, _ = _read_columns(uri, ["embedding", "error"])
    ok = np.asarray([error == "" for error in table.column("error").to_pylist()])
    dim = table.schema.field("embedding").type.list_size
    flat = table.column("embedding").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    embeddings = np.ascontiguousarray(flat.reshape(-1, dim)[ok], dtype=np.float32)
    if embeddings.shape[0] == 0:
        raise ValueError(f"no image of {source_uri} could be embedded; see {join_uri(uri, ITEMS_DIR)} (column error)")
    index, spec, recall = search_index(cfg, embeddings)
    with tempfile.TemporaryDirectory(prefix="align-index-") as tmp:
        save_index(index, Path(tmp) / INDEX_FILE)
        write_bytes(join_uri(uri, INDEX_FILE), (Path(tmp) / INDEX_FILE).read_bytes())
    manifest = IndexManifest(
        model_name=model_name,
        model_version=str(model_version),
        index_version=uri.rstrip("/").rsplit("/", 1)[-1],
        items=int(ok.sum()),
        rejected=int((~ok).sum()),
        dim=int(dim),
        spec=spec,
        recall_at_10=recall,
        source_uri=source_uri,
        built_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        build_s=round(time.monotonic() - started, 2),
    )
    write_json(join_uri(uri, MANIFEST_FILE), asdict(manifest))  # written last: its presence means "complete"
    return manifest


def load_manifest(uri: str) -> IndexManifest:
    try:
        return IndexManifest(**read_json(join_uri(uri, MANIFEST_FILE)))
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"search index {uri} has no {MANIFEST_FILE} (not built, or its build did not finish)") from exc


class CorpusImages:
    """Image bytes by item id, read one Parquet row group at a time (a 100k-image corpus stays on disk)."""

    def __init__(self, uri: str, ids: list[str], where: list[tuple[int, int]]):
        self._files = _item_files(uri)
        self._where = dict(zip(ids, where, strict=True))
        self._groups: dict[tuple[int, int], list[bytes]] = {}
        self._group_rows: dict[int, list[int]] = {}
        self._open: dict[int, pq.ParquetFile] = {}

    def __contains__(self, item_id: str) -> bool:
        return item_id in self._where

    def get(self, item_id: str) -> bytes | None:
        found = self._where.get(item_id)
        if found is None:
            return None
        number, row = found
        starts = self._row_group_starts(number)
        group = int(np.searchsorted(starts, row, side="right") - 1)
        key = (number, group)
        if key not in self._groups:
            if len(self._groups) > 64:  # a small bound; groups are ~1k images
                self._groups.pop(next(iter(self._groups)))
            self._groups[key] = self._parquet(number).read_row_group(group, columns=["image"]).column(0).to_pylist()
        return self._groups[key][row - starts[group]]

    def _parquet(self, number: int) -> pq.ParquetFile:
        if number not in self._open:
            import pyarrow.fs as pafs

            fs, path = pafs.FileSystem.from_uri(self._files[number])
            self._open[number] = pq.ParquetFile(fs.open_input_file(path))  # random access, local or S3
        return self._open[number]

    def _row_group_starts(self, number: int) -> list[int]:
        if number not in self._group_rows:
            metadata = self._parquet(number).metadata
            sizes = [metadata.row_group(g).num_rows for g in range(metadata.num_row_groups)]
            self._group_rows[number] = [int(x) for x in np.cumsum([0, *sizes[:-1]])]
        return self._group_rows[number]


def load_corpus_index(uri: str, expected_version: str):
    """(VectorIndex, CorpusImages, manifest) of a built index, checked to belong to ``expected_version``."""
    from components.serving.ann import load_index
    from components.serving.index import Item, VectorIndex

    manifest = load_manifest(uri)
    if str(manifest.model_version) != str(expected_version):
        raise ValueError(
            f"index {uri} was built by model version {manifest.model_version}, not {expected_version}: "
            "serving never pairs a model with another version's embeddings"
        )
    table, where = _read_columns(uri, list(ITEM_COLUMNS))
    ids, captions, errors = (table.column(name).to_pylist() for name in ITEM_COLUMNS)
    keep = [i for i, error in enumerate(errors) if error == ""]
    items = [Item(id=ids[i], caption=captions[i], uri=f"index:{ids[i]}") for i in keep]
    with tempfile.TemporaryDirectory(prefix="align-index-") as tmp:
        local = Path(tmp) / INDEX_FILE
        local.write_bytes(read_bytes(join_uri(uri, INDEX_FILE)))
        faiss_index = load_index(local)
    if faiss_index.ntotal != len(items):
        raise ValueError(f"index {uri}: {faiss_index.ntotal} vectors for {len(items)} items")
    images = CorpusImages(uri, [ids[i] for i in keep], [where[i] for i in keep])
    return VectorIndex.from_faiss(faiss_index, items), images, manifest


def index_stage(cfg, model_version: str, source_uri: str) -> IndexManifest:
    """Build (or reuse) the version's corpus index and record it on the version and its run."""
    import mlflow

    from components.registry.store import INDEX_TAG

    tracking, name = cfg.storage.tracking_uri, cfg.registry.model_name
    uri, manifest = build_corpus_index(cfg.index, cfg.storage.indexes_uri, tracking, name, str(model_version), source_uri)
    client = mlflow.MlflowClient(tracking_uri=tracking)
    client.set_model_version_tag(name, str(model_version), INDEX_TAG, uri)
    run_id = client.get_model_version(name, str(model_version)).run_id
    client.log_dict(run_id, asdict(manifest), f"index/v{model_version}/manifest.json")
    client.log_metric(run_id, "index/items", manifest.items)
    client.log_metric(run_id, "index/rejected", manifest.rejected)
    if manifest.recall_at_10 is not None:
        client.log_metric(run_id, "index/recall_at_10", manifest.recall_at_10)
    return manifest
