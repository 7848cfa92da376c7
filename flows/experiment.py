"""An experiment: every trial of a spec trained and evaluated as an MLflow child run of one parent run,
then compared in a table and plots logged to the parent.

Trials are subflows of the stage flows (ingest, train, evaluate); they never register or promote. Up to
``spec.max_parallel`` train at once, each as its own Ray Train run on the cluster. The parent run is
recorded in the stage cache under the spec's hash, so re-running the same spec after a crash resumes its
trials (finished ones are cached) under the same parent.
"""

# No `from __future__ import annotations`: Prefect validates flow parameters from the real annotations.
from prefect import get_run_logger, task
from prefect.cache_policies import NONE
from prefect.task_runners import ThreadPoolTaskRunner

from components.experiments.claims import check, claims_markdown
from components.experiments.compare import TrialResult, log_claims, log_comparison, to_markdown
from components.experiments.spec import ExperimentSpec, Trial, expand, trial_config
from components.runtime.stage_cache import StageKey, digest
from components.secrets import redact
from flows.stages import evaluate_flow, ingest_flow, stage_cache, train_flow
from flows.tasks import flow


@task(name="trial", cache_policy=NONE)
def trial_task(spec: ExperimentSpec, trial: Trial, parent_run_id: str, dataset: dict) -> TrialResult:
    """Train and evaluate one trial as a child run (its dataset is already built)."""
    from components.experiments.runs import child_tags

    cfg = trial_config(spec, trial)
    trained = train_flow(cfg, dataset, run_tags=child_tags(parent_run_id, spec.name, trial.name))
    evaluation = evaluate_flow(cfg, trained=trained, dataset=dataset)
    final = {k: v for k, v in trained["metrics"].items() if k in ("train/loss", "train/temperature")}
    metrics = final | evaluation["metrics"]  # the last logged loss and temperature, then every suite metric
    if spec.arithmetic_probe:
        metrics |= arithmetic_task(trained["artifact_dir"], trained["run_id"], cfg.storage.tracking_uri)
    return TrialResult(trial.name, trial.overrides, trained["run_id"], metrics, cached=trained["cached"])


@task(name="arithmetic-probe", cache_policy=NONE)
def arithmetic_task(artifact_dir: str, run_id: str, tracking_uri: str) -> dict[str, float]:
    """The trial's model on image + text arithmetic, logged to its run as ``arithmetic/*``."""
    from components.evaluation.arithmetic import arithmetic_probe
    from components.experiments.runs import log_metrics
    from components.model.artifact import load_encoder

    metrics = {f"arithmetic/{k}": v for k, v in arithmetic_probe(load_encoder(artifact_dir)).items()}
    log_metrics(tracking_uri, run_id, metrics)
    return metrics


@flow(name="align-experiment", task_runner=ThreadPoolTaskRunner(max_workers=1))  # see run_experiment
def experiment_flow(spec: ExperimentSpec) -> dict:
    """Run ``spec``'s trials under one parent run; returns the comparison table and the parent's id.

    A failed trial does not stop the others: it is listed in the comparison with its error (its claims
    are "not measured"), the parent run ends FAILED and the flow raises after logging everything. A
    re-run resumes under the same parent, reusing the finished trials and retrying the failed ones.
    """
    from components.experiments.runs import start_parent_run
    from components.runtime.tracking import set_run_status

    logger = get_run_logger()
    trials = expand(spec)
    first = trial_config(spec, trials[0])
    tracking_uri = first.storage.tracking_uri
    cache, key = stage_cache(first), StageKey("experiment", {"spec": digest(redact(spec.model_dump()))})
    started = cache.started(key) or cache.lookup(key)
    parent = started["parent_run_id"] if started else start_parent_run(first, spec)
    if started:
        set_run_status(tracking_uri, parent, "RUNNING")
    else:
        cache.mark_started(key, {"parent_run_id": parent})
    logger.info("experiment %s: %d trials under parent run %s", spec.name, len(trials), parent)
    # Datasets first, one at a time: trials that share one must not build it side by side (the data
    # stage caches by content, so each distinct dataset is built once). Then trials train in parallel.
    datasets = [ingest_flow(trial_config(spec, trial)) for trial in trials]
    futures = [trial_task.submit(spec, trial, parent, dataset) for trial, dataset in zip(trials, datasets)]
    results = [_result_or_failure(trial, future, logger) for trial, future in zip(trials, futures)]
    table = log_comparison(tracking_uri, parent, results, f"Experiment {spec.name}")
    verdicts = [check(claim, table) for claim in spec.claims]
    if verdicts:
        log_claims(tracking_uri, parent, verdicts, spec.claims, table)
    _comparison_artifact(table, verdicts, spec)
    failed = [r.name for r in results if r.error]
    if failed:
        set_run_status(tracking_uri, parent, "FAILED")
        raise RuntimeError(f"experiment {spec.name}: {len(failed)} of {len(results)} trials failed ({', '.join(failed)}); "
                           f"the others are compared in parent run {parent}; re-run the spec to retry the failed ones")
    cache.mark_complete(key, {"parent_run_id": parent})
    set_run_status(tracking_uri, parent, "FINISHED")
    return {"parent_run_id": parent, "table": table, "claims": verdicts, "trials": [r.__dict__ for r in results]}


def _result_or_failure(trial: Trial, future, logger) -> TrialResult:
    try:
        return future.result()
    except Exception as err:  # noqa: BLE001 - recorded in the comparison, raised once all trials are in
        logger.error("trial %s failed: %s: %s", trial.name, type(err).__name__, err)
        return TrialResult(trial.name, trial.overrides, run_id="", error=f"{type(err).__name__}: {err}")


def run_experiment(spec: ExperimentSpec) -> dict:
    """The flow with its task runner sized to ``spec.max_parallel`` (trials training at once)."""
    return experiment_flow.with_options(task_runner=ThreadPoolTaskRunner(max_workers=spec.max_parallel))(spec)


def _comparison_artifact(table: dict, verdicts: list[dict], spec: ExperimentSpec) -> None:
    from prefect.artifacts import create_markdown_artifact

    text = to_markdown(table, f"Experiment {spec.name}")
    if verdicts:
        text += "\n" + claims_markdown(verdicts, spec.claims)
    create_markdown_artifact(text, key="experiment-comparison", description="trials compared, claims checked")
