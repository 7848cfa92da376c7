"""Evaluation suites: load a configured suite, fingerprint it, score an encoder on it.

A suite's *content hash* covers its data (every image's bytes, captions, labels) and its protocol
(task, split, templates, class names, K values), so two models are only ever compared on identical
suites. Flat metric names are what MLflow and the gate see: ``<suite>/text_to_image/R_at_1`` ("@" is
not a legal character in MLflow metric names).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from components.config import EvalConfig, SuiteConfig
from components.data.eval_sets import ClassificationSet, RetrievalSet, load_image_folder, load_karpathy
from components.evaluation.batching import encode_images, encode_texts
from components.evaluation.classification import classification_metrics, zero_shot_classifier
from components.evaluation.runner import TASK_CLASSIFICATION, TASK_KNN, TASK_RETRIEVAL, benchmark_record
from components.metrics.names import mlflow_metric_name
from components.metrics.retrieval import retrieval_metrics
from components.runtime import progress

DEFAULT_KS = {TASK_RETRIEVAL: [1, 5, 10], TASK_CLASSIFICATION: [1, 5], TASK_KNN: [1, 10]}
PACKAGED_SETS = ("animal_mnist",)
TOP_K_SHOWN = 5


class SuiteError(ValueError):
    """A suite cannot be loaded or scored; the message names the suite and the file at fault."""


@dataclass(frozen=True)
class CorpusSets:
    """The corpus' own evaluation sets, used by suites whose ``path`` is empty."""

    retrieval_json: str
    classification_dir: str = ""


@dataclass(frozen=True)
class LoadedSuite:
    config: SuiteConfig
    data: RetrievalSet | ClassificationSet
    source: str  # the file, folder or package it was read from
    content_hash: str

    @property
    def ks(self) -> list[int]:
        return list(self.config.ks or DEFAULT_KS[self.config.task])


@dataclass
class SuiteResult:
    name: str
    task: str
    content_hash: str
    source: str
    metrics: dict[str, float]  # suite-local names, e.g. "text_to_image/R@1"
    record: dict  # CLIP_benchmark-shaped
    details: dict = field(default_factory=dict)  # per-class accuracy, confusion matrix, sizes
    plots: list[Path] = field(default_factory=list)

    def flat_metrics(self) -> dict[str, float]:
        return {mlflow_metric_name(self.name, key): value for key, value in self.metrics.items()}


@dataclass
class EvalReport:
    results: list[SuiteResult] = field(default_factory=list)

    @property
    def metrics(self) -> dict[str, float]:
        return {name: value for result in self.results for name, value in result.flat_metrics().items()}

    @property
    def records(self) -> list[dict]:
        return [result.record for result in self.results]

    @property
    def hashes(self) -> dict[str, str]:
        return {result.name: result.content_hash for result in self.results}

    def to_dict(self) -> dict:
        """Plain JSON (numpy scalars and arrays become numbers and lists): a stage-cache record."""
        import dataclasses

        def plain(value):
            return value.tolist() if hasattr(value, "tolist") else str(value)

        results = [dataclasses.asdict(result) | {"plots": [str(p) for p in result.plots]} for result in self.results]
        return json.loads(json.dumps({"results": results}, default=plain))

    @classmethod
    def from_dict(cls, data: dict) -> EvalReport:
        return cls([SuiteResult(**{**r, "plots": [Path(p) for p in r["plots"]]}) for r in data["results"]])


# --- loading and fingerprinting --------------------------------------------------------------------------


def _classification_set(suite: SuiteConfig, path: str) -> ClassificationSet:
    from components.evaluation.prompts import resolve_class_names

    if path in PACKAGED_SETS:
        from components.evaluation.packaged import load_animal_mnist

        pixels, labels, names, _ = load_animal_mnist(suite.max_images)
        cset = ClassificationSet(
            name="animal_mnist", images=list(pixels), labels=labels, class_names=names,
            class_folders=list(names), keys=[f"animal_mnist[{i}]" for i in range(len(labels))],
        )
    elif Path(path).suffix.lower() in (".csv", ".parquet"):
        from components.evaluation.tables import read_labelled_table

        images, labels, names = read_labelled_table(path, suite.image_column, suite.label_column)
        cset = ClassificationSet(
            name=Path(path).stem, images=images, labels=labels, class_names=names, class_folders=list(names),
            keys=[f"{Path(path).name} row {i}" for i in range(len(labels))],
        )
        cset = _subsample(cset, suite.max_images)
    else:
        cset = _subsample(load_image_folder(path), suite.max_images)
    names = resolve_class_names(suite.class_names, cset.class_names)
    if len(names) != len(cset.class_names):
        raise ValueError(f"{suite.class_names} lists {len(names)} class names; {path} has {len(cset.class_names)} classes")
    return ClassificationSet(cset.name, cset.images, cset.labels, names, cset.class_folders, cset.keys)


def _subsample(cset: ClassificationSet, max_images: int) -> ClassificationSet:
    """Keep about ``max_images`` images, the same share of every class, chosen by position."""
    if max_images <= 0 or len(cset) <= max_images:
        return cset
    keep = np.sort(np.concatenate([
        members[np.linspace(0, len(members) - 1, max(1, round(len(members) * max_images / len(cset)))).astype(int)]
        for members in (np.flatnonzero(cset.labels == c) for c in np.unique(cset.labels))
    ]))
    return ClassificationSet(
        cset.name, [cset.images[i] for i in keep], cset.labels[keep], cset.class_names, cset.class_folders,
        [cset.keys[i] for i in keep],
    )


def _item_bytes(item) -> bytes:
    if isinstance(item, Path):
        try:
            return item.read_bytes()
        except FileNotFoundError as exc:
            raise FileNotFoundError(f"evaluation image {item} does not exist") from exc
    if isinstance(item, np.ndarray):
        return f"{item.shape}{item.dtype}".encode() + np.ascontiguousarray(item).tobytes()
    return bytes(item)


def _content_hash(suite: SuiteConfig, data: RetrievalSet | ClassificationSet) -> str:
    from components.evaluation.prompts import resolve_templates

    protocol = {
        "task": suite.task,
        "ks": list(suite.ks or DEFAULT_KS[suite.task]),
        "split": suite.split if suite.task == TASK_RETRIEVAL else None,
        "templates": resolve_templates(suite.templates) if suite.task == TASK_CLASSIFICATION else None,
        "knn_query_fraction": suite.knn_query_fraction if suite.task == TASK_KNN else None,
        "max_images": suite.max_images,
    }
    digest = hashlib.sha256(json.dumps(protocol, sort_keys=True).encode())
    if isinstance(data, RetrievalSet):
        digest.update(json.dumps([data.captions, data.caption_to_image.tolist()]).encode())
        images = list(data.image_paths)
    else:
        # Keys decide the kNN gallery/query split, so they are content too.
        digest.update(json.dumps([data.class_names, data.labels.tolist(), data.keys]).encode())
        images = list(data.images)
    for item in images:
        content = _item_bytes(item)
        digest.update(len(content).to_bytes(8, "little"))
        digest.update(content)
    return digest.hexdigest()[:16]


def load_suite(suite: SuiteConfig, corpus: CorpusSets) -> LoadedSuite:
    """Read a suite and fingerprint it; every failure becomes a ``SuiteError`` naming the file."""
    retrieval = suite.task == TASK_RETRIEVAL
    path = suite.path or (corpus.retrieval_json if retrieval else corpus.classification_dir)
    if not path:
        raise SuiteError(f"suite {suite.name!r}: no path given and the corpus has no default set for {suite.task}")
    try:
        if retrieval:
            data = load_karpathy(path, split=suite.split)
        else:
            data = _classification_set(suite, path)
        return LoadedSuite(suite, data, path, _content_hash(suite, data))
    except FileNotFoundError as exc:
        raise SuiteError(f"suite {suite.name!r}: {exc.args[-1] if exc.args else exc} (path: {path})") from exc
    except (ValueError, OSError, ImportError) as exc:
        raise SuiteError(f"suite {suite.name!r} ({path}): {exc}") from exc


def select_suites(cfg: EvalConfig, names: list[str] | None = None) -> list[SuiteConfig]:
    """The configured suites, or the named subset (unknown names fail with the known ones listed)."""
    if not names:
        return list(cfg.suites)
    known = {suite.name: suite for suite in cfg.suites}
    unknown = [name for name in names if name not in known]
    if unknown:
        raise SuiteError(f"unknown suite(s) {unknown}; configured: {sorted(known)}")
    return [known[name] for name in names]


# --- scoring ---------------------------------------------------------------------------------------------


def _retrieval(encoder, loaded: LoadedSuite, batch_size: int, plot_dir: Path | None) -> tuple[dict, dict, list]:
    rset: RetrievalSet = loaded.data
    image_emb = encode_images(encoder, rset.load_image, len(rset), batch_size)
    text_emb = encode_texts(encoder, rset.captions, batch_size)
    metrics = retrieval_metrics(image_emb, text_emb, rset.caption_to_image, ks=loaded.ks)
    details = {"images": len(rset), "captions": len(rset.captions)}
    plots = []
    if plot_dir is not None:
        from components.evaluation.plots import plot_recall_bars, plot_top_images

        plots.append(plot_recall_bars(metrics, plot_dir / "recall_at_k.png", title=loaded.config.name))
        count = min(loaded.config.plot_queries, len(rset))
        if count:
            queries = [rset.image_to_captions[i][0] for i in np.linspace(0, len(rset) - 1, count).astype(int)]
            scores = text_emb[queries] @ image_emb.T
            top = np.argsort(-scores, axis=1, kind="stable")[:, :TOP_K_SHOWN]
            images = [[rset.load_image(int(j)) for j in row] for row in top]
            plots.append(plot_top_images(
                [rset.captions[q] for q in queries], images,
                [[float(scores[r, j]) for j in row] for r, row in enumerate(top)],
                [[int(j) == int(rset.caption_to_image[q]) for j in row] for q, row in zip(queries, top, strict=True)],
                plot_dir / "top_images.png", title=f"{loaded.config.name}: top {TOP_K_SHOWN} images per text query",
            ))
    return metrics, details, plots


def _per_class(cset: ClassificationSet, labels: np.ndarray, predictions: np.ndarray) -> tuple[np.ndarray, dict]:
    from components.evaluation.plots import confusion_matrix

    matrix = confusion_matrix(labels, predictions, len(cset.class_names))
    totals = matrix.sum(axis=1)
    accuracy = {
        name: float(matrix[c, c] / totals[c]) for c, name in enumerate(cset.class_names) if totals[c] > 0
    }
    return matrix, {"per_class_accuracy": accuracy, "class_names": cset.class_names, "confusion_matrix": matrix.tolist()}


def _classification(encoder, loaded: LoadedSuite, batch_size: int, plot_dir: Path | None) -> tuple[dict, dict, list]:
    from components.evaluation.prompts import resolve_templates

    cset: ClassificationSet = loaded.data
    class_emb = zero_shot_classifier(encoder, cset.class_names, resolve_templates(loaded.config.templates), batch_size)
    image_emb = encode_images(encoder, cset.load_image, len(cset), batch_size)
    metrics = classification_metrics(image_emb, cset.labels, class_emb, ks=loaded.ks)
    matrix, details = _per_class(cset, cset.labels, np.argmax(image_emb @ class_emb.T, axis=1))
    details["images"] = len(cset)
    return metrics, details, _confusion_plot(matrix, cset, loaded, plot_dir)


def _knn(encoder, loaded: LoadedSuite, batch_size: int, plot_dir: Path | None) -> tuple[dict, dict, list]:
    from components.evaluation.knn import knn_metrics, split_gallery_query

    cset: ClassificationSet = loaded.data
    gallery, query = split_gallery_query(cset.labels, cset.keys, loaded.config.knn_query_fraction)
    image_emb = encode_images(encoder, cset.load_image, len(cset), batch_size)
    metrics = knn_metrics(image_emb[gallery], cset.labels[gallery], image_emb[query], cset.labels[query], ks=loaded.ks)
    # The confusion matrix is shown for the smallest K (k=1 by default: the paper's "KNN R@1").
    scores = image_emb[query] @ image_emb[gallery].T
    predictions = cset.labels[gallery][np.argmax(scores, axis=1)]
    matrix, details = _per_class(cset, cset.labels[query], predictions)
    details |= {"gallery": int(len(gallery)), "queries": int(len(query)), "confusion_matrix_k": 1}
    return metrics, details, _confusion_plot(matrix, cset, loaded, plot_dir)


def _confusion_plot(matrix: np.ndarray, cset: ClassificationSet, loaded: LoadedSuite, plot_dir: Path | None) -> list:
    if plot_dir is None:
        return []
    from components.evaluation.plots import plot_confusion_matrix

    return [plot_confusion_matrix(matrix, cset.class_names, plot_dir / "confusion_matrix.png", title=loaded.config.name)]


_SCORERS = {TASK_RETRIEVAL: _retrieval, TASK_CLASSIFICATION: _classification, TASK_KNN: _knn}


def benchmark_metrics(task: str, metrics: dict[str, float]) -> dict[str, float]:
    """Our metric names in CLIP_benchmark's vocabulary, so records compare with its published tables.

    CLIP_benchmark calls text→image "image_retrieval" (images are retrieved) and image→text
    "text_retrieval".
    """
    if task != TASK_RETRIEVAL:
        return dict(metrics)
    renamed = {}
    for key, value in metrics.items():
        direction, _, k = key.partition("/R@")
        if direction == "text_to_image":
            renamed[f"image_retrieval_recall@{k}"] = value
        elif direction == "image_to_text":
            renamed[f"text_retrieval_recall@{k}"] = value
        else:
            renamed[key] = value
    return renamed


def evaluate_suite(
    encoder, loaded: LoadedSuite, model_name: str, pretrained: str, batch_size: int, plot_dir: Path | None = None
) -> SuiteResult:
    name = loaded.config.name
    try:
        metrics, details, plots = _SCORERS[loaded.config.task](encoder, loaded, batch_size, plot_dir)
    except (FileNotFoundError, OSError, ValueError) as exc:
        raise SuiteError(f"suite {name!r} ({loaded.source}): {exc}") from exc
    dataset = getattr(loaded.data, "name", name)
    record = benchmark_record(dataset, model_name, pretrained, loaded.config.task, benchmark_metrics(loaded.config.task, metrics))
    details = {"suite": name, "source": loaded.source, "content_hash": loaded.content_hash} | details
    return SuiteResult(name, loaded.config.task, loaded.content_hash, loaded.source, metrics, record, details, plots)


def evaluate_suites(
    encoder,
    cfg: EvalConfig,
    corpus: CorpusSets,
    model_name: str,
    pretrained: str,
    out_dir: Path | None = None,
    names: list[str] | None = None,
) -> EvalReport:
    """Score ``encoder`` on the configured suites (or the ``names`` subset); plots go under ``out_dir``."""
    report = EvalReport()
    for suite in select_suites(cfg, names):
        loaded = load_suite(suite, corpus)
        plot_dir = out_dir / suite.name if (out_dir is not None and cfg.plots) else None
        with progress.task(suite.name, total=len(loaded.data), unit="images") as bar:
            counted = _CountingEncoder(encoder, bar)
            report.results.append(evaluate_suite(counted, loaded, model_name, pretrained, cfg.batch_size, plot_dir))
    return report


class _CountingEncoder:
    """The encoder as it is, except that each batch of images it embeds moves a progress bar."""

    def __init__(self, encoder, bar):
        self._encoder, self._bar = encoder, bar

    def encode_images(self, images):
        embeddings = self._encoder.encode_images(images)
        self._bar.advance(len(images))
        return embeddings

    def __getattr__(self, name: str):
        return getattr(self._encoder, name)


def suite_hashes(cfg: EvalConfig, corpus: CorpusSets, names: list[str] | None = None) -> dict[str, str]:
    """Content hashes of the suites without scoring anything (reads and hashes the files)."""
    return {suite.name: load_suite(suite, corpus).content_hash for suite in select_suites(cfg, names)}
