"""An experiment on a tiny grid: each trial is an MLflow child run of one parent, the comparison is logged
to the parent, `align report --parent` renders the children, and re-running the spec reuses everything."""

import os

import mlflow
import pytest

from components.experiments.spec import ExperimentSpec
from tests.train_fixtures import TINY_LIFECYCLE

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture(scope="module")
def experiment(ray_session, ray_home):
    os.environ["PREFECT_HOME"] = str(ray_home / "prefect")
    from flows.experiment import run_experiment

    spec = ExperimentSpec(name="tiny-temperature", overrides=[f"storage.home={ray_home}", *TINY_LIFECYCLE, "train.steps=4"],
                          grid={"model.learn_temperature": [True, False]},
                          claims=[{"name": "learning_t_helps", "kind": "better", "better": "learn_temperature=true",
                                   "worse": "learn_temperature=false"}])
    first = run_experiment(spec)
    again = run_experiment(spec)
    return spec, first, again


def test_trials_are_child_runs_of_one_parent(experiment, ray_home):
    from components.config import load_config

    spec, first, _ = experiment
    cfg = load_config(None, spec.overrides)
    client = mlflow.MlflowClient(cfg.storage.tracking_uri)
    parent = client.get_run(first["parent_run_id"])
    assert parent.data.tags["align.experiment"] == "tiny-temperature" and parent.data.params["trials"] == "2"
    assert parent.info.status == "FINISHED"
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert sorted(c.data.tags["align.trial"] for c in children) == ["learn_temperature=false", "learn_temperature=true"]
    assert {c.info.run_id for c in children} == {row["run_id"] for row in first["table"]["rows"]}
    for child in children:
        assert "retrieval/mean_recall" in child.data.metrics  # evaluated like any lifecycle run
        assert 0.0 <= child.data.metrics["arithmetic/swap_acc"] <= 1.0  # and probed
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "comparison")}
    assert artifacts == {f"comparison/{name}" for name in ("table.md", "table.csv", "table.json", "metrics.png",
                                                          "claims.json", "claims.md", "claims.png")}
    assert parent.data.metrics["claim/learning_t_helps"] in (0.0, 1.0)  # a verdict either way, from the numbers


def test_the_report_renders_the_parents_children(experiment, tmp_path):
    from align_cli.main import main

    spec, first, _ = experiment
    out = tmp_path / "report.html"
    home = next(o for o in spec.overrides if o.startswith("storage.home="))
    assert main(["report", home, "--parent", first["parent_run_id"], "--out", str(out)]) == 0
    html = out.read_text()
    assert all(row["run_id"] in html for row in first["table"]["rows"])
    assert "Experiment tiny-temperature: claims" in html and "learning_t_helps" in html


def test_rerunning_the_spec_reuses_the_parent_and_every_trial(experiment):
    _, first, again = experiment
    assert again["parent_run_id"] == first["parent_run_id"]
    assert all(trial["cached"] for trial in again["trials"])
    assert again["table"]["rows"] == first["table"]["rows"]
