"""Prefect tasks, one per lifecycle stage; each is a thin call into ``components``.

Heavy stages run Ray Data / Ray Train *inside* ordinary tasks (ARCHITECTURE.md, decisions), connected to the
configured Ray cluster. Prefect's own task cache is off: stages are cached by ``flows.stages`` on
their inputs' hashes (``components.runtime.stage_cache``), in JSON records next to the outputs.

Every flow is declared with :func:`flow` (Prefect's, with redacted parameters): Prefect records each flow
run's parameters in its database, and a config's store URI may hold a password.
"""

from __future__ import annotations

from prefect import Flow, task
from prefect.cache_policies import NONE
from prefect.tasks import exponential_backoff

from components.config import AlignConfig
from components.secrets import redact, redact_text


class RedactedParametersFlow(Flow):
    """A Prefect flow whose run records hold its parameters redacted (``components.secrets.redact``).

    The function still gets the real values: a flow called in this process runs on the objects it was
    given, and only the copy sent to Prefect's API (``serialize_parameters``) loses its credentials. A
    deployment's run reads its parameters from the API instead, so a scheduled retrain takes its
    credentials from the recipe file or the environment (``flows.schedule``; README, Security), never
    from its recorded parameters.
    """

    def serialize_parameters(self, parameters):
        return redact(super().serialize_parameters(parameters))

    def with_options(self, **options):
        copy = super().with_options(**options)  # Prefect builds a plain Flow; keep the redaction
        copy.__class__ = type(self)
        return copy


def flow(**options):
    """``@prefect.flow(**options)``, recording the flow's parameters redacted (:class:`RedactedParametersFlow`)."""
    return lambda fn: RedactedParametersFlow(fn=fn, **options)


def with_retries(stage_task, cfg: AlignConfig):
    """``stage_task`` retried with exponential back-off and jitter (``orchestration.retries``).

    Only for steps that talk to S3 or the tracking server and are safe to repeat: a blip in either
    should cost seconds, not a lifecycle. Training and ingest are not retried here (Ray Train restarts
    from checkpoints itself; a half-written dataset must be looked at, not overwritten).
    """
    orchestration = cfg.orchestration
    if orchestration.retries == 0:
        return stage_task
    return stage_task.with_options(
        retries=orchestration.retries,
        retry_delay_seconds=exponential_backoff(backoff_factor=orchestration.retry_delay_s),
        retry_jitter_factor=0.5,
    )


@task(name="ingest-and-filter", cache_policy=NONE)
def ingest_task(cfg: AlignConfig):
    from components.data.ingest import ingest, prepare_corpus
    from components.runtime.ray_cluster import connect

    connect(cfg)
    corpus = prepare_corpus(cfg)
    return corpus, ingest(cfg, corpus)


@task(name="start-mlflow-run", cache_policy=NONE)
def start_run_task(cfg: AlignConfig, dataset: dict, extra_tags: dict[str, str] | None = None) -> str:
    """Open the lifecycle's MLflow run, linked to the filtered dataset (``ingest_flow``'s output);
    ``extra_tags`` nest it, e.g. as an experiment trial under its parent run."""
    from components.registry.store import git_commit
    from components.runtime.tracking import log_dataset, prepare_tracking, start_lifecycle_run

    prepare_tracking(cfg.storage)
    tags = {
        "align.config_hash": cfg.config_hash(),
        "align.git_commit": git_commit(),
        "align.dataset_content_hash": dataset["content_hash"],
        "align.recipe": cfg.name,
    } | dict(extra_tags or {})
    run_name = tags.get("align.trial") or f"{cfg.name}-seed{cfg.seed}"
    run_id = start_lifecycle_run(cfg, tags, run_name=run_name)
    log_dataset(cfg.storage.tracking_uri, run_id, dataset["dataset_uri"], dataset["manifest"], dataset["report"])
    return run_id


@task(name="train", cache_policy=NONE)
def train_task(cfg: AlignConfig, kept_uri: str, run_id: str, validation_json: str = ""):
    from components.runtime.ray_cluster import connect
    from components.train.stage import train_stage

    connect(cfg)
    return train_stage(cfg, kept_uri, run_id, validation_json)


def corpus_sets(corpus):
    """The corpus' own evaluation sets, for suites that do not name a path."""
    from components.evaluation.suite import CorpusSets

    return CorpusSets(corpus.retrieval_json, corpus.classification_dir)


@task(name="evaluate", cache_policy=NONE)
def evaluate_task(cfg: AlignConfig, artifact_dir: str, run_id: str, corpus, suites: list[str] | None = None):
    from components.evaluation.stage import evaluate_stage

    report = evaluate_stage(cfg, artifact_dir, run_id, corpus_sets(corpus), suites)
    evaluation_artifact(report)
    return report


@task(name="evaluate-registered-model", cache_policy=NONE)
def evaluate_model_task(cfg: AlignConfig, model_uri: str, corpus, suites: list[str] | None = None):
    from components.registry.evaluations import evaluate_version
    from components.registry.store import resolve_version

    name, version = resolve_version(cfg.storage.tracking_uri, model_uri)
    report, run_id = evaluate_version(cfg, name, version, corpus_sets(corpus), suites)
    evaluation_artifact(report, f"{name} v{version}")
    return name, version, report, run_id


def evaluation_artifact(report, title: str = "") -> None:
    """The evaluation table (suite, metric, value, suite hash) as a Prefect artifact."""
    from prefect.artifacts import create_markdown_artifact

    lines = [f"## Evaluation {title}".rstrip(), "", "| suite | metric | value | suite hash |", "|---|---|---|---|"]
    for result in report.results:
        for metric, value in sorted(result.metrics.items()):
            lines.append(f"| {result.name} | `{metric}` | {value:.4f} | {result.content_hash} |")
    create_markdown_artifact("\n".join(lines), key="evaluation", description="evaluation results per suite")


@task(name="register", cache_policy=NONE)
def register_task(cfg: AlignConfig, run_id: str, artifact_dir: str, corpus, manifest: dict, evaluation=None) -> str:
    from prefect.runtime import flow_run

    from components.registry.stage import register_stage

    lineage = {"align.prefect_flow_run_id": str(flow_run.id)} if flow_run.id else {}
    return register_stage(cfg, run_id, artifact_dir, corpus.retrieval_json, manifest, evaluation, lineage)


def _index_builder(cfg: AlignConfig, kept_uri: str):
    """What must exist before ``champion`` moves: the new champion's search index over ``kept_uri``."""
    if cfg.index.source != "dataset" or not kept_uri:
        return None

    def build(version: str) -> None:
        from components.runtime import progress
        from components.runtime.ray_cluster import connect
        from components.serving.corpus_index import index_stage

        with progress.stage("index") as stage:
            connect(cfg)
            stage.headline = index_headline(index_stage(cfg, version, kept_uri))

    return build


def index_headline(manifest) -> str:
    """What the index stage's closing line says: how many images, and which index."""
    rejected = f", {manifest.rejected:,} could not be read" if manifest.rejected else ""
    kind = "exact" if manifest.recall_at_10 is None else f"{manifest.spec}, recall@10 {manifest.recall_at_10:.3f}"
    return f"{manifest.items:,} images of version {manifest.model_version}{rejected} ({kind})"


@task(name="gate-and-promote", cache_policy=NONE)
def promote_task(cfg: AlignConfig, version: str, corpus, evaluation=None, force_reason: str = "", kept_uri: str = ""):
    """Gate, then (on a pass) build the version's search index and move ``champion``."""
    from prefect.artifacts import create_markdown_artifact

    from components.registry.stage import promote_stage

    decision = promote_stage(cfg, version, corpus_sets(corpus), evaluation, force_reason, _index_builder(cfg, kept_uri))
    create_markdown_artifact(
        decision.to_markdown(cfg.registry.model_name, version), key="gate-decision", description="promotion gate"
    )
    return decision


@task(name="build-search-index", cache_policy=NONE)
def index_task(cfg: AlignConfig, version: str, kept_uri: str):
    from components.runtime.ray_cluster import connect
    from components.serving.corpus_index import index_stage

    connect(cfg)
    return index_stage(cfg, version, kept_uri)


@task(name="rollback", cache_policy=NONE)
def rollback_task(cfg: AlignConfig, reason: str = "", kept_uri: str = "") -> dict:
    from components.registry.stage import rollback_stage

    return rollback_stage(cfg, reason, _index_builder(cfg, kept_uri))


@task(name="deploy", cache_policy=NONE)
def deploy_task(cfg: AlignConfig, champion_version: str | None = None) -> str:
    """Serve the champion: a running app follows it in place; readiness means *that* version answers."""
    from components.runtime.ray_cluster import connect
    from components.serving.deploy import deploy, ensure_serving

    connect(cfg)
    if champion_version is None:
        return deploy(cfg.serve, cfg.registry, cfg.storage.tracking_uri)
    return ensure_serving(cfg.serve, cfg.registry, cfg.storage.tracking_uri, champion_version)


def data_report_artifact(dataset: dict) -> None:
    """The data stage's report as a Prefect artifact: rows in, kept, rejected per rule."""
    from prefect.artifacts import create_markdown_artifact

    report = dataset["report"]
    lines = [f"## Data {dataset['dataset_uri']}{' (cached)' if dataset['cached'] else ''}", "",
             f"{report['rows_in']} pairs in, {report['rows_kept']} kept, {report['rows_rejected']} rejected", "",
             "| rule | rows rejected |", "|---|---|"]
    lines += [f"| `{rule}` | {count} |" for rule, count in sorted(report.get("rejected_by_rule", {}).items())]
    create_markdown_artifact(redact_text("\n".join(lines)), key="data-report", description="ingest and filter report")


def training_summary_artifact(trained: dict) -> None:
    """The training run's final numbers as a Prefect artifact, with where the model and run are."""
    from prefect.artifacts import create_markdown_artifact

    lines = [f"## Training run {trained['run_id']}{' (cached)' if trained.get('cached') else ''}", "",
             f"model: `{trained['artifact_dir']}` (weights sha256 {trained['artifact_hash']})",
             f"checkpoint: `{trained['checkpoint']}`", "", "| metric | value |", "|---|---|"]
    lines += [f"| `{name}` | {value:.4g} |" for name, value in sorted(trained["metrics"].items())
              if isinstance(value, (int, float))]
    create_markdown_artifact(redact_text("\n".join(lines)), key="training-summary", description="training summary")
