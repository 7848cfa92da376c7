"""Register a trained model (challenger) and let the gate decide whether it becomes champion."""

from __future__ import annotations

from components.config import AlignConfig
from components.registry.gate import GateDecision, decide
from components.registry.search_index import build_search_index
from components.registry.store import CHAMPION, alias_version, git_commit, promote, register_model, version_metrics


def register_stage(
    cfg: AlignConfig, run_id: str, artifact_dir: str, retrieval_json: str, dataset_manifest: dict
) -> str:
    """Attach the search index, log + register the pyfunc, alias it challenger; returns the version."""
    from components.model.artifact import load_encoder

    encoder = load_encoder(artifact_dir, batch_size=cfg.eval.batch_size)
    build_search_index(encoder, retrieval_json, cfg.eval.retrieval_split, artifact_dir, cfg.eval.batch_size)
    tags = {
        "align.dataset_content_hash": dataset_manifest.get("content_hash", ""),
        "align.dataset_config_hash": dataset_manifest.get("config_hash", ""),
        "align.config_hash": cfg.config_hash(),
        "align.git_commit": git_commit(),
        "align.seed": str(cfg.seed),
    }
    version = register_model(
        cfg.storage.tracking_uri, run_id, cfg.registry.model_name, artifact_dir, encoder.embed_dim, tags
    )
    return str(version.version)


def promote_stage(cfg: AlignConfig, version: str, metrics: dict[str, float]) -> GateDecision:
    """Gate ``version`` against the floors and the current champion; move ``champion`` if it passes."""
    import mlflow

    tracking = cfg.storage.tracking_uri
    champion = alias_version(tracking, cfg.registry.model_name, CHAMPION)
    if champion is not None and str(champion.version) == version:
        return GateDecision(passed=True, reasons=["already champion"], champion_version=version)
    champion_metrics = version_metrics(tracking, champion) if champion is not None else None
    decision = decide(metrics, champion_metrics, cfg.gate, str(champion.version) if champion else None)
    client = mlflow.MlflowClient(tracking_uri=tracking)
    client.set_model_version_tag(cfg.registry.model_name, version, "align.gate", "passed" if decision.passed else "failed")
    if decision.reasons:
        client.set_model_version_tag(cfg.registry.model_name, version, "align.gate_reasons", "; ".join(decision.reasons)[:4000])
    if decision.passed:
        promote(tracking, cfg.registry.model_name, version)
    return decision
