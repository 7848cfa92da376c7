"""The ingest stage as one call: make sure the corpus exists, then filter it (cached by content).

The filtered dataset's folder is named by the hashes of the corpus and filter settings, so a rerun
with another training seed reuses it instead of re-reading the corpus, and a changed filter setting
never overwrites an older dataset that models were trained on.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from components.config import AlignConfig, SourceConfig
from components.data import schema
from components.data.decode import decode_image, dhash
from components.data.pipeline import run_filter
from components.runtime.metrics import record_filter_report
from components.storage import exists, join_uri, read_json, remove_tree

log = logging.getLogger(__name__)


@dataclass
class CorpusPaths:
    sources: list[SourceConfig]  # raw pairs to ingest
    retrieval_json: str  # Karpathy-style eval split
    classification_dir: str  # ImageFolder zero-shot classification set


@dataclass
class IngestResult:
    dataset_uri: str
    kept_uri: str
    report: dict
    manifest: dict
    cached: bool


def prepare_corpus(cfg: AlignConfig) -> CorpusPaths:
    """The corpus to ingest and the eval suites; generates the embedded synthetic one on first use."""
    if cfg.corpus.kind == "synthetic":
        from components.data.synthetic import generate_corpus

        root = Path(cfg.storage.home) / "corpus" / f"synthetic-{cfg.section_hash('corpus')}"
        if not (root / "corpus_summary.json").is_file():
            log.info("generating the embedded synthetic corpus under %s", root)
            generate_corpus(cfg.corpus, root)
        return CorpusPaths(
            sources=[SourceConfig(name="synthetic", format="sidecar", path=str(root / "train"))],
            retrieval_json=cfg.eval.retrieval_json or str(root / "eval" / "dataset.json"),
            classification_dir=cfg.eval.classification_dir or str(root / "classify"),
        )
    if not cfg.corpus.sources:
        raise ValueError("corpus.kind=sources needs corpus.sources: a list of {name, format, path}")
    retrieval_json = cfg.eval.retrieval_json
    if not retrieval_json and cfg.corpus.eval_holdout is not None:
        retrieval_json = str(_holdout(cfg))
    if not retrieval_json:
        raise ValueError(
            "a real corpus needs an evaluation split: eval.retrieval_json (a Karpathy-split JSON) "
            "or corpus.eval_holdout (rendered from one of its svg sources)"
        )
    return CorpusPaths(list(cfg.corpus.sources), retrieval_json, cfg.eval.classification_dir)


def _holdout(cfg: AlignConfig) -> Path:
    from components.data.holdout import build_holdout

    holdout = cfg.corpus.eval_holdout
    by_name = {s.name: s for s in cfg.corpus.sources}
    if holdout.source not in by_name:
        raise ValueError(f"corpus.eval_holdout.source {holdout.source!r} is not one of {sorted(by_name)}")
    folder = Path(cfg.storage.home) / "corpus" / f"holdout-{cfg.section_hash('corpus')}"
    log.info("rendering the evaluation holdout from source %r under %s", holdout.source, folder)
    return build_holdout(by_name[holdout.source], holdout, folder)


def eval_image_hashes(retrieval_json: str, split: str) -> np.ndarray:
    """dHashes of the evaluation images, so near-duplicates of them never reach training."""
    from components.data.eval_sets import load_karpathy

    rset = load_karpathy(retrieval_json, split=split)
    hashes = []
    for path in rset.image_paths:
        image, verdict = decode_image(Path(path).read_bytes(), max_pixels=1 << 31)
        if image is None:
            raise ValueError(f"evaluation image {path} does not decode: {verdict}")
        hashes.append(dhash(image))
    return np.array(hashes, dtype=np.uint64)


def dataset_key(cfg: AlignConfig, corpus: CorpusPaths) -> str:
    """What a filtered dataset depends on: the corpus and filter settings, and the files themselves
    (each source's and the evaluation split's fingerprint), so edited sources are ingested again."""
    from components.runtime.stage_cache import digest, tree_fingerprint

    files = {source.name: tree_fingerprint(source.path) for source in corpus.sources}
    files["eval_split"] = tree_fingerprint(corpus.retrieval_json)
    return digest({"config": cfg.section_hash("corpus", "filter"), "files": files})[:16]


def ingest(cfg: AlignConfig, corpus: CorpusPaths | None = None) -> IngestResult:
    corpus = corpus or prepare_corpus(cfg)
    name = "-".join(s.name for s in corpus.sources)[:60]
    version = dataset_key(cfg, corpus)
    key = f"{name}-{version}"
    dataset_uri = join_uri(cfg.storage.datasets_uri, key)
    manifest_uri = join_uri(dataset_uri, schema.MANIFEST_FILE)
    if exists(manifest_uri):
        manifest = read_json(manifest_uri)
        report = read_json(join_uri(dataset_uri, schema.REPORT_FILE))
        return IngestResult(dataset_uri, manifest["kept_uri"], report, manifest, cached=True)
    # The manifest is written last: a folder without one is an interrupted attempt's. Its shards must not
    # join this attempt's (Ray Data adds files beside what is there), so the rerun starts clean.
    if remove_tree(dataset_uri):
        log.warning("removed the incomplete dataset an interrupted ingest left at %s", dataset_uri)
    hashes = eval_image_hashes(corpus.retrieval_json, cfg.eval.retrieval_split)
    result = run_filter(
        corpus.sources, dataset_uri, cfg.filter, eval_hashes=hashes, config_hash=cfg.section_hash("filter")
    )
    record_filter_report(name, version, result.report)  # Prometheus counters, for the data dashboard
    return IngestResult(dataset_uri, result.manifest["kept_uri"], result.report, result.manifest, cached=False)
