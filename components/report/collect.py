"""Read the runs a report compares out of MLflow, into plain data that rendering needs no MLflow for.

A report compares a *selection* of runs: the newest N runs of the experiment (default), explicit run
ids, or the children of one parent run (MLflow's ``mlflow.parentRunId`` tag, which is how an experiment
flow's trials hang under its parent run). Each run comes with the registered model versions logged from
it, their aliases and the gate's decision tags, so one table says which run became which version and why
it does or does not serve.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

DEFAULT_LAST = 10
LOSS_METRIC = "train/loss"
PARENT_TAG = "mlflow.parentRunId"
_RUN_ID = re.compile(r"^[0-9A-Za-z_-]{1,64}$")  # also keeps quotes out of MLflow filter strings
_PAGE = 1000


@dataclass(frozen=True)
class RunSelection:
    """Which runs to compare: explicit ids, a parent's children, or the newest ``last`` runs."""

    run_ids: tuple[str, ...] = ()
    parent_run_id: str = ""
    last: int = DEFAULT_LAST

    def __post_init__(self) -> None:
        if self.run_ids and self.parent_run_id:
            raise ValueError("choose runs either by id or by parent run, not both")
        if self.last < 1:
            raise ValueError(f"--last must be at least 1, got {self.last}")
        for run_id in (*self.run_ids, *([self.parent_run_id] if self.parent_run_id else [])):
            if not _RUN_ID.match(run_id):
                raise ValueError(f"{run_id!r} is not an MLflow run id")

    def describe(self, experiment: str) -> str:
        if self.run_ids:
            return f"{len(self.run_ids)} run(s) chosen by id"
        if self.parent_run_id:
            return f"the child runs of run {self.parent_run_id}"
        return f"the newest {self.last} run(s) of experiment {experiment}"


@dataclass
class VersionRecord:
    """A registered model version logged from a run, with its aliases and gate decision tags."""

    name: str
    version: str
    aliases: list[str] = field(default_factory=list)
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def gate(self) -> str:
        return self.tags.get("align.gate", "")

    @property
    def gate_reason(self) -> str:
        return self.tags.get("align.gate.reason", "")


@dataclass
class RunRecord:
    run_id: str
    name: str
    status: str
    start_ms: int | None
    end_ms: int | None
    params: dict[str, str]
    metrics: dict[str, float]  # the latest value of each metric
    tags: dict[str, str]
    loss_history: list[tuple[int, float]] = field(default_factory=list)  # (step, value)
    versions: list[VersionRecord] = field(default_factory=list)

    @property
    def label(self) -> str:
        """A short name for legends and column heads: the run name, else the id's start."""
        return self.name or self.run_id[:8]


def _experiment_id(client, experiment: str) -> str:
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise LookupError(f"no MLflow experiment {experiment!r} yet: run `align train` (or `align run`) first")
    return found.experiment_id


def _search_all(client, experiment_ids: list[str], filter_string: str, order_by: list[str], limit: int | None):
    """Every matching run (MLflow pages results), at most ``limit``."""
    runs, token = [], None
    while limit is None or len(runs) < limit:
        page = client.search_runs(
            experiment_ids, filter_string, max_results=min(_PAGE, limit - len(runs)) if limit else _PAGE,
            order_by=order_by, page_token=token,
        )
        runs.extend(page)
        token = page.token
        if not token:
            break
    return runs


def _select(client, experiment: str, selection: RunSelection) -> list:
    from mlflow.exceptions import MlflowException

    if selection.run_ids:
        runs = []
        for run_id in selection.run_ids:
            try:
                runs.append(client.get_run(run_id))
            except MlflowException as err:
                raise LookupError(f"no MLflow run {run_id!r}: {err.message}") from err
        return runs
    if selection.parent_run_id:
        try:
            parent = client.get_run(selection.parent_run_id)
        except MlflowException as err:
            raise LookupError(f"no MLflow parent run {selection.parent_run_id!r}: {err.message}") from err
        children = _search_all(
            client, [parent.info.experiment_id], f"tags.`{PARENT_TAG}` = '{selection.parent_run_id}'",
            ["attributes.start_time ASC"], None,
        )
        if not children:
            raise LookupError(f"run {selection.parent_run_id} has no child runs to compare")
        return children
    newest = _search_all(client, [_experiment_id(client, experiment)], "", ["attributes.start_time DESC"], selection.last)
    if not newest:
        raise LookupError(f"experiment {experiment!r} has no runs yet: run `align train` (or `align run`) first")
    return newest[::-1]  # oldest on the left: columns read as a timeline


def _versions_by_run(client, run_ids: list[str]) -> dict[str, list[VersionRecord]]:
    """Registered versions logged from these runs; aliases come from their registered models
    (``search_model_versions`` leaves a version's aliases empty)."""
    found: dict[str, list[VersionRecord]] = {run_id: [] for run_id in run_ids}
    aliases_of: dict[str, dict[str, list[str]]] = {}
    for run_id in run_ids:
        for version in client.search_model_versions(f"run_id = '{run_id}'"):
            if version.name not in aliases_of:
                by_version: dict[str, list[str]] = {}
                for alias, number in client.get_registered_model(version.name).aliases.items():
                    by_version.setdefault(str(number), []).append(alias)
                aliases_of[version.name] = by_version
            found[run_id].append(
                VersionRecord(
                    version.name, str(version.version), sorted(aliases_of[version.name].get(str(version.version), [])),
                    dict(version.tags),
                )
            )
        found[run_id].sort(key=lambda v: (v.name, int(v.version) if v.version.isdigit() else 0))
    return found


def collect_runs(tracking_uri: str, experiment: str, selection: RunSelection) -> list[RunRecord]:
    """The selected runs as ``RunRecord`` s; a LookupError names what was missing when none match."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    runs = _select(client, experiment, selection)
    versions = _versions_by_run(client, [run.info.run_id for run in runs])
    records = []
    for run in runs:
        run_id = run.info.run_id
        history = []
        if LOSS_METRIC in run.data.metrics:
            history = sorted((m.step, m.value) for m in client.get_metric_history(run_id, LOSS_METRIC))
        records.append(
            RunRecord(
                run_id=run_id,
                name=run.info.run_name or run.data.tags.get("mlflow.runName", ""),
                status=run.info.status,
                start_ms=run.info.start_time,
                end_ms=run.info.end_time,
                params=dict(run.data.params),
                metrics=dict(run.data.metrics),
                tags=dict(run.data.tags),
                loss_history=history,
                versions=versions[run_id],
            )
        )
    return records


@dataclass
class ExperimentSummary:
    """What an experiment flow logged to its parent run: the claims' verdicts and the comparison plots."""

    parent_run_id: str
    name: str
    claims: list[dict] = field(default_factory=list)  # verdicts with their statements (comparison/claims.json)
    figures: dict[str, bytes] = field(default_factory=dict)  # title -> PNG bytes


# (title, artifact) of the parent's figures, in the order the report shows them.
EXPERIMENT_FIGURES = (("Claims", "comparison/claims.png"), ("Trials compared", "comparison/metrics.png"))


def collect_experiment(tracking_uri: str, parent_run_id: str) -> ExperimentSummary:
    """The parent run's comparison artifacts; a parent without them (not an experiment) gives an empty summary."""
    import json
    import tempfile
    from pathlib import Path

    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    parent = client.get_run(parent_run_id)
    summary = ExperimentSummary(parent_run_id, parent.data.tags.get("align.experiment", parent.info.run_name or ""))
    present = {artifact.path for artifact in client.list_artifacts(parent_run_id, "comparison")}
    with tempfile.TemporaryDirectory() as folder:
        def read(path: str) -> bytes | None:
            if path not in present:
                return None
            try:
                return Path(client.download_artifacts(parent_run_id, path, folder)).read_bytes()
            except (MlflowException, OSError):
                return None

        claims = read("comparison/claims.json")
        if claims:
            summary.claims = [v for v in json.loads(claims) if isinstance(v, dict)]
        for title, path in EXPERIMENT_FIGURES:
            data = read(path)
            if data and data.startswith(b"\x89PNG"):
                summary.figures[title] = data
    return summary


