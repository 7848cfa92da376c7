"""One Prefect flow per lifecycle stage. Each runs alone (one CLI verb) or as a subflow of the lifecycle.

Parameters are typed: ``config`` is an ``AlignConfig``, so Prefect validates it before the flow run
starts and a bad value fails with pydantic's message naming the field. Stages whose outputs are pure
functions of their inputs are cached on those inputs' hashes (``components.runtime.stage_cache``):
ingest (config + source fingerprints), train (config sections + dataset content), evaluate (eval
section + model weights + evaluation sets) and register (run + weights). Gate and deploy are not:
they act on the registry's and the cluster's current state, and both are idempotent.
"""

# No `from __future__ import annotations` here: Prefect validates flow parameters from the real
# annotations, and a served run (`align schedule`) cannot resolve string ones.
from prefect import get_run_logger

from components.config import AlignConfig
from components.runtime import progress
from components.runtime.stage_cache import StageCache, StageKey, digest, file_digest, run_cached, tree_fingerprint
from components.secrets import redact_uri
from flows.tasks import (
    data_report_artifact,
    deploy_task,
    evaluation_artifact,
    evaluate_model_task,
    flow,
    evaluate_task,
    index_headline,
    index_task,
    ingest_task,
    promote_task,
    register_task,
    rollback_task,
    start_run_task,
    train_task,
    training_summary_artifact,
    with_retries,
)


def stage_cache(cfg: AlignConfig) -> StageCache:
    return StageCache(cfg.storage.stage_cache_uri, enabled=cfg.orchestration.cache)


def _corpus(dataset: dict):
    from components.data.ingest import CorpusPaths

    return CorpusPaths([], dataset["retrieval_json"], dataset["classification_dir"])


def _cached(record: dict) -> str:
    return " (cached)" if record.get("cached") else ""


@flow(name="align-ingest")
def ingest_flow(config: AlignConfig) -> dict:
    """Ingest and filter the corpus; the data stage itself reuses a dataset built from the same inputs."""
    with progress.stage("ingest") as stage:
        corpus, dataset = ingest_task(config)
        out = {"dataset_uri": dataset.dataset_uri, "kept_uri": dataset.kept_uri, "report": dataset.report,
               "manifest": dataset.manifest, "content_hash": dataset.manifest["content_hash"], "cached": dataset.cached,
               "retrieval_json": corpus.retrieval_json, "classification_dir": corpus.classification_dir}
        report = out["report"]
        stage.headline = (f"{report['rows_in']:,} pairs in, {report['rows_kept']:,} kept, "
                          f"{report['rows_rejected']:,} rejected{_cached(out)}")
    data_report_artifact(out)
    get_run_logger().info("dataset %s: %d in, %d kept, %d rejected%s", redact_uri(out["dataset_uri"]),
                          report["rows_in"], report["rows_kept"], report["rows_rejected"], _cached(out))
    return out


def train_key(cfg: AlignConfig, dataset: dict, run_tags: dict[str, str] | None = None) -> StageKey:
    inputs = {
        "model": cfg.section_hash("model"), "train": cfg.section_hash("train"), "seed": str(cfg.seed),
        "recipe": cfg.name, "experiment": cfg.registry.experiment, "tracking": redact_uri(cfg.storage.tracking_uri),
        "dataset": dataset["content_hash"],
    }
    if run_tags:  # a trial of an experiment is its own run, not a lifecycle's run with the same config
        inputs["run_tags"] = digest(run_tags)
    return StageKey("train", inputs)


@flow(name="align-train")
def train_flow(
    config: AlignConfig, dataset: dict | None = None, run_id: str | None = None, run_tags: dict[str, str] | None = None
) -> dict:
    """Train in a new MLflow run, or resume ``run_id`` from its last checkpoint.

    A lifecycle re-run after a crash finds the run its key started and resumes it; a finished key
    returns the recorded model without training.
    """
    cfg = config
    dataset = dataset or ingest_flow(cfg)
    with progress.stage("train") as stage:
        out = _train(cfg, dataset, run_id, run_tags)
        stage.headline = _train_headline(out)
    return out


def _train_headline(out: dict) -> str:
    metrics, parts = out["metrics"], []
    if "step" in metrics:
        parts.append(f"{int(metrics['step']):,} steps")
    if "train/loss" in metrics:
        parts.append(f"loss {metrics['train/loss']:.3f}")
    return ", ".join([*parts, f"run {out['run_id']}{_cached(out)}"])


def _train(cfg: AlignConfig, dataset: dict, run_id: str | None, run_tags: dict[str, str] | None) -> dict:
    from pathlib import Path

    from components.model.artifact import WEIGHTS_FILE
    from components.registry.store import run_exists

    logger = get_run_logger()
    cache, key = stage_cache(cfg), train_key(cfg, dataset, run_tags)
    if run_id is None:  # an explicit run id is a request to (re)train that run, not a cache query
        done = cache.lookup(key)
        if done and run_exists(cfg.storage.tracking_uri, done["run_id"]) and (Path(done["artifact_dir"]) / WEIGHTS_FILE).is_file():
            logger.info("train: cached, run %s (%s)", done["run_id"], key.digest)
            training_summary_artifact(done | {"cached": True})
            return done | {"cached": True}
        started = cache.started(key)
        if started and run_exists(cfg.storage.tracking_uri, started["run_id"]):
            run_id = started["run_id"]
            logger.info("train: resuming run %s, which an earlier attempt started (%s)", run_id, key.digest)
    if run_id is None:
        run_id = with_retries(start_run_task, cfg)(cfg, dataset, run_tags)
        cache.mark_started(key, {"run_id": run_id})
    trained = train_task(cfg, dataset["kept_uri"], run_id, dataset["retrieval_json"])
    out = {"run_id": run_id, "artifact_dir": trained.artifact_dir, "checkpoint": trained.checkpoint_path,
           "artifact_hash": file_digest(str(Path(trained.artifact_dir) / WEIGHTS_FILE)),
           "metrics": {k: v for k, v in trained.metrics.items() if isinstance(v, (int, float))}}
    cache.mark_complete(key, out)
    training_summary_artifact(out)
    return out | {"cached": False}


def _evaluation_sets_fingerprint(cfg: AlignConfig, corpus) -> str:
    from pathlib import Path

    paths = {corpus.retrieval_json, corpus.classification_dir, *(s.path for s in cfg.eval.suites if s.path)}
    return digest({path: tree_fingerprint(path) for path in sorted(p for p in paths if p and Path(p).exists())})


@flow(name="align-evaluate")
def evaluate_flow(
    config: AlignConfig, trained: dict | None = None, dataset: dict | None = None, run_id: str | None = None,
    model_uri: str = "", suites: list[str] | None = None,
) -> dict:
    """Evaluate a trained model (the lifecycle's, or run ``run_id``'s), or any registered version
    (``models:/<name>@<alias>``). Only the lifecycle's evaluation is cached: it has a weights hash."""
    with progress.stage("evaluate") as stage:
        out = _evaluate(config, trained, dataset, run_id, model_uri, suites)
        stage.headline = _evaluate_headline(out)
    return out


def _evaluate(cfg: AlignConfig, trained: dict | None, dataset: dict | None, run_id: str | None, model_uri: str,
              suites: list[str] | None) -> dict:
    from components.data.ingest import prepare_corpus
    from components.evaluation.suite import EvalReport
    from components.train.stage import model_dir_for_run

    corpus = _corpus(dataset) if dataset else prepare_corpus(cfg)
    if model_uri:
        name, version, report, eval_run = evaluate_model_task(cfg, model_uri, corpus, suites)
        return {"model": f"{name}/{version}", "run_id": eval_run, "metrics": report.metrics, "results": report.records,
                "suite_hashes": report.hashes}
    if trained is None:
        report = evaluate_task(cfg, model_dir_for_run(cfg, run_id), run_id, corpus, suites)
        return {"run_id": run_id, "metrics": report.metrics, "results": report.records, "suite_hashes": report.hashes}
    key = StageKey("evaluate", {"eval": cfg.section_hash("eval"), "weights": trained["artifact_hash"],
                                "run_id": trained["run_id"], "suites": ",".join(suites or []),
                                "sets": _evaluation_sets_fingerprint(cfg, corpus)})
    outputs, cached = run_cached(
        stage_cache(cfg), key,
        lambda: evaluate_task(cfg, trained["artifact_dir"], trained["run_id"], corpus, suites).to_dict(),
    )
    report = EvalReport.from_dict(outputs)
    if cached:
        get_run_logger().info("evaluate: cached (%s)", key.digest)
        evaluation_artifact(report, "(cached)")
    return {"run_id": trained["run_id"], "metrics": report.metrics, "results": report.records,
            "suite_hashes": report.hashes, "report": outputs, "cached": cached}


_HEADLINE_METRICS = ("mean_recall", "acc1", "k1/acc1")  # per suite, the first of these it has


def _evaluate_headline(out: dict) -> str:
    by_suite: dict[str, dict[str, float]] = {}
    for name, value in out["metrics"].items():
        suite, _, metric = name.partition("/")
        by_suite.setdefault(suite, {})[metric] = value
    shown = []
    for suite, metrics in by_suite.items():
        metric = next((m for m in _HEADLINE_METRICS if m in metrics), min(metrics))
        shown.append(f"{suite} {metric} {metrics[metric]:.3f}")
    return ", ".join(shown) + _cached(out)


def _register_headline(cfg: AlignConfig, version: str, cached: bool = False) -> str:
    return f"{cfg.registry.model_name} version {version} (challenger){_cached({'cached': cached})}"


@flow(name="align-register")
def register_flow(config: AlignConfig, trained: dict, dataset: dict, evaluation: dict | None = None) -> dict:
    """Register the trained model as a new version (aliased challenger); once per run and weights."""
    from components.evaluation.suite import EvalReport
    from components.registry.store import version_exists

    cfg = config
    report = EvalReport.from_dict(evaluation["report"]) if evaluation else None
    key = StageKey("register", {"run_id": trained["run_id"], "weights": trained["artifact_hash"],
                                "model_name": cfg.registry.model_name,
                                "tracking": redact_uri(cfg.storage.tracking_uri)})
    with progress.stage("register") as stage:
        outputs, cached = run_cached(
            stage_cache(cfg), key,
            lambda: {"version": with_retries(register_task, cfg)(
                cfg, trained["run_id"], trained["artifact_dir"], _corpus(dataset), dataset["manifest"], report)},
            still_valid=lambda found: version_exists(cfg.storage.tracking_uri, cfg.registry.model_name, found["version"]),
        )
        stage.headline = _register_headline(cfg, outputs["version"], cached)
    return outputs | {"cached": cached}


@flow(name="align-promote")
def promote_flow(
    config: AlignConfig, run_id: str | None = None, version: str | None = None, force_reason: str = "",
    serve: bool = True, evaluation: dict | None = None, dataset: dict | None = None,
) -> dict:
    """Gate a registered ``version`` (or register ``run_id``'s model first); serve the new champion."""
    from components.data.ingest import prepare_corpus
    from components.evaluation.suite import EvalReport
    from components.runtime.tracking import run_dict
    from components.train.stage import model_dir_for_run

    cfg = config
    corpus = _corpus(dataset) if dataset else prepare_corpus(cfg)
    if version is None:
        with progress.stage("register") as stage:
            manifest = run_dict(cfg.storage, run_id, "dataset/manifest.json")
            version = with_retries(register_task, cfg)(cfg, run_id, model_dir_for_run(cfg, run_id), corpus, manifest)
            stage.headline = _register_headline(cfg, version)
    kept_uri = ""
    if cfg.index.source == "dataset":  # the new champion's search index is built from the filtered dataset
        kept_uri = dataset["kept_uri"] if dataset else ingest_task(cfg)[1].kept_uri  # cached by content
    report = EvalReport.from_dict(evaluation["report"]) if evaluation else None
    with progress.stage("gate") as stage:
        decision = with_retries(promote_task, cfg)(cfg, version, corpus, report, force_reason, kept_uri)
        stage.headline = _gate_headline(decision.to_dict(), str(version))
    url = _serve(cfg, version) if decision.passed and serve else ""
    return {"model_version": version, "gate": decision.to_dict(), "serving_url": url}


def _gate_headline(gate: dict, version: str) -> str:
    if gate["outcome"] == "failed":
        return "failed: " + "; ".join(gate["reasons"])
    if gate["champion_version"] == version:
        return f"version {version} is the champion already"
    how = f"forced ({gate['forced_reason']})" if gate["outcome"] == "forced" else "passed"
    return f"{how}, version {version} is the champion now"


def _serve(cfg: AlignConfig, version: str | None = None) -> str:
    with progress.stage("serve") as stage:
        url = with_retries(deploy_task, cfg)(cfg, version)
        stage.headline = f"{url} answers" + (f" with version {version}" if version else "")
    return url


@flow(name="align-rollback")
def rollback_flow(config: AlignConfig, reason: str = "", serve: bool = True) -> dict:
    """Move ``champion`` back to the previous champion and let serving follow it."""
    cfg = config
    kept_uri = ingest_task(cfg)[1].kept_uri if cfg.index.source == "dataset" else ""  # cached by content
    with progress.stage("rollback") as stage:
        event = with_retries(rollback_task, cfg)(cfg, reason, kept_uri)
        stage.headline = f"champion back to version {event['version']}"
    url = _serve(cfg, event["version"]) if serve else ""
    return {"champion": event, "serving_url": url}


@flow(name="align-index")
def index_flow(config: AlignConfig, version: str | None = None) -> dict:
    """Embed the filtered dataset with a version (default: the champion) into its search index."""
    from dataclasses import asdict

    from components.registry.store import champion_version

    cfg = config
    version = version or champion_version(cfg.storage.tracking_uri, cfg.registry.model_name)
    if version is None:
        raise LookupError(f"{cfg.registry.model_name} has no champion yet; pass --version")
    with progress.stage("index") as stage:
        _, dataset = ingest_task(cfg)
        manifest = with_retries(index_task, cfg)(cfg, str(version), dataset.kept_uri)
        stage.headline = index_headline(manifest)
    return asdict(manifest)


@flow(name="align-serve")
def serve_flow(config: AlignConfig) -> dict:
    return {"serving_url": _serve(config)}
