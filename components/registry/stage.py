"""Register a trained model (challenger), gate it against the champion, promote or roll back.

The gate compares challenger and champion on the *same* suites with the *same* content hashes; a
champion whose stored results are for other suite contents is evaluated again first. Every outcome
is written on the challenger's version (tags ``align.gate*``), so the registry alone explains why a
model does or does not serve.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

from components.config import AlignConfig
from components.evaluation.suite import CorpusSets, EvalReport, suite_hashes
from components.registry.evaluations import record_version_evaluation, version_metrics_on
from components.registry.gate import GateDecision, decide, gate_suites
from components.registry.promotion import PROMOTED_BY_GATE, PROMOTED_BY_HAND, rollback, set_champion
from components.registry.search_index import build_search_index
from components.registry.store import CHAMPION, alias_version, git_commit, register_model


def register_stage(
    cfg: AlignConfig,
    run_id: str,
    artifact_dir: str,
    retrieval_json: str,
    dataset_manifest: dict,
    evaluation: EvalReport | None = None,
    lineage: dict[str, str] | None = None,
) -> str:
    """Attach the search index, log + register the pyfunc, alias it challenger; returns the version.

    ``evaluation`` (the run's own results) is recorded on the version so the gate need not repeat it.
    """
    from components.model.artifact import load_encoder

    encoder = load_encoder(artifact_dir, batch_size=cfg.eval.batch_size, device=cfg.eval.device)
    build_search_index(encoder, retrieval_json, cfg.eval.retrieval_split, artifact_dir, cfg.eval.batch_size)
    tags = {
        "align.dataset_content_hash": dataset_manifest.get("content_hash", ""),
        "align.dataset_config_hash": dataset_manifest.get("config_hash", ""),
        "align.config_hash": cfg.config_hash(),
        "align.git_commit": git_commit(),
        "align.parent_run_id": run_id,
        "align.recipe": cfg.name,
        "align.seed": str(cfg.seed),
    } | dict(lineage or {})
    version = register_model(
        cfg.storage.tracking_uri, run_id, cfg.registry.model_name, artifact_dir, encoder.embed_dim, tags
    )
    if evaluation is not None:
        record_version_evaluation(cfg.storage.tracking_uri, cfg.registry.model_name, str(version.version), evaluation, run_id)
    return str(version.version)


def _record_decision(cfg: AlignConfig, version: str, decision: GateDecision) -> None:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=cfg.storage.tracking_uri)
    name = cfg.registry.model_name
    tags = {
        "align.gate": decision.outcome,
        "align.gate.checked_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "align.gate.champion_version": decision.champion_version or "",
        "align.gate.suites": json.dumps(decision.suite_hashes, sort_keys=True),
        "align.gate.reason": "; ".join(decision.reasons) or ("forced: " + decision.forced_reason if decision.forced_reason else "all checks passed"),
    }
    tags |= {f"align.gate.delta.{metric}": f"{delta:+.6f}" for metric, delta in decision.deltas().items()}
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value[:4000])


def promote_stage(
    cfg: AlignConfig,
    version: str,
    corpus: CorpusSets,
    challenger_report: EvalReport | None = None,
    force_reason: str = "",
    prepare: Callable[[str], object] | None = None,
) -> GateDecision:
    """Gate ``version`` against the floors and the champion; move ``champion`` if it passes.

    ``challenger_report`` is the challenger's fresh evaluation when the caller has one; otherwise its
    recorded results are used (or it is evaluated). ``force_reason`` skips the gate and is recorded.
    ``prepare(version)`` runs just before the alias moves (e.g. building the version's search index),
    because serving follows the alias as soon as it moves.
    """
    import mlflow

    tracking, name = cfg.storage.tracking_uri, cfg.registry.model_name
    version = str(version)
    mlflow.MlflowClient(tracking_uri=tracking).get_model_version(name, version)  # fails clearly if absent
    champion = alias_version(tracking, name, CHAMPION)
    champion_version = str(champion.version) if champion is not None else None
    if champion_version == version:
        return GateDecision(passed=True, reasons=[], champion_version=version)
    if force_reason:
        decision = GateDecision(passed=True, champion_version=champion_version, forced_reason=force_reason)
        _record_decision(cfg, version, decision)
        if prepare is not None:
            prepare(version)
        set_champion(tracking, name, version, PROMOTED_BY_HAND, force_reason)
        return decision

    needed = gate_suites(cfg.gate)
    if challenger_report is not None and set(needed) <= set(challenger_report.hashes):
        hashes = {suite: challenger_report.hashes[suite] for suite in needed}
        challenger = challenger_report.metrics
    else:
        hashes = suite_hashes(cfg.eval, corpus, needed)
        challenger, _ = version_metrics_on(cfg, name, version, corpus, hashes)
    champion_metrics = None
    if champion_version is not None:
        champion_metrics, _ = version_metrics_on(cfg, name, champion_version, corpus, hashes)
    decision = decide(challenger, champion_metrics, cfg.gate, champion_version)
    decision.suite_hashes = hashes
    _record_decision(cfg, version, decision)
    if decision.passed:
        if prepare is not None:
            prepare(version)
        set_champion(tracking, name, version, PROMOTED_BY_GATE)
    return decision


def rollback_stage(cfg: AlignConfig, reason: str = "", prepare: Callable[[str], object] | None = None) -> dict:
    """Move ``champion`` back to the previous champion; returns the recorded event."""
    return rollback(cfg.storage.tracking_uri, cfg.registry.model_name, reason, prepare)
