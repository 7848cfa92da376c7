"""The command line: one verb per stage, recipes + overrides, no side effects before a verb runs."""

import subprocess
import sys

import pytest

from align_cli.main import _parser, main


def test_every_lifecycle_stage_has_a_verb():
    verbs = set(_parser()._subparsers._group_actions[0].choices)
    assert {"run", "ingest", "train", "evaluate", "promote", "rollback", "index", "serve", "search", "down", "config"} <= verbs


def test_train_resumes_a_given_run_and_evaluate_promote_take_one():
    parser = _parser()
    assert parser.parse_args(["train", "--run-id", "abc", "train.steps=9"]).run_id == "abc"
    assert parser.parse_args(["train"]).run_id is None
    assert parser.parse_args(["evaluate", "--run-id", "abc"]).run_id == "abc"


def test_registry_verbs_take_a_model_uri_a_version_a_forced_reason_and_a_rollback_reason():
    parser = _parser()
    evaluate = parser.parse_args(["evaluate", "--model", "models:/align@champion", "--suite", "knn", "--suite", "retrieval"])
    assert evaluate.model == "models:/align@champion" and evaluate.suite == ["knn", "retrieval"]
    promote = parser.parse_args(["promote", "--version", "3", "--force", "hotfix", "--no-serve"])
    assert (promote.version, promote.force, promote.no_serve) == ("3", "hotfix", True)
    assert parser.parse_args(["rollback", "--reason", "bad answers"]).reason == "bad answers"
    with pytest.raises(SystemExit):  # a run and a registered model at once is ambiguous
        parser.parse_args(["evaluate", "--run-id", "abc", "--model", "models:/align@champion"])


def test_config_verb_prints_the_resolved_tree_with_overrides(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ALIGN_HOME", str(tmp_path))
    assert main(["config", "seed=7", "train.steps=3"]) == 0
    out = capsys.readouterr().out
    assert "seed: 7" in out and "steps: 3" in out and f"home: {tmp_path}" in out


def test_bad_override_is_refused_with_a_clear_message(tmp_path, monkeypatch):
    monkeypatch.setenv("ALIGN_HOME", str(tmp_path))
    with pytest.raises(Exception, match="stepz"):
        main(["config", "train.stepz=3"])


def test_importing_the_cli_starts_nothing():
    """No Ray, Prefect or MLflow import (let alone a server) just from importing the CLI and library."""
    code = (
        "import sys, align_cli.main, components.config, components.data.pipeline, components.train.loop;"
        "print(sorted(m for m in ('ray', 'prefect', 'mlflow') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_address_flag_runs_any_stage_on_an_existing_cluster(tmp_path, monkeypatch, capsys):
    import yaml

    parser = _parser()
    assert parser.parse_args(["run", "--address", "10.0.0.5:6379", "seed=2"]).address == "10.0.0.5:6379"
    assert parser.parse_args(["train", "--address", "auto"]).address == "auto"
    assert parser.parse_args(["run"]).address is None
    monkeypatch.setenv("ALIGN_HOME", str(tmp_path))
    assert main(["config", "--address", "head:6379", "ray.address=other:6379", "seed=3"]) == 0
    resolved = yaml.safe_load(capsys.readouterr().out)
    assert resolved["ray"]["address"] == "head:6379" and resolved["seed"] == 3  # the flag sets ray.address only
    assert main(["config"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["ray"]["address"] == "local"  # default: a local head


def test_search_with_nothing_serving_names_the_fix(tmp_path, monkeypatch, capsys):
    from components.runtime.ray_cluster import free_port

    monkeypatch.setenv("ALIGN_HOME", str(tmp_path))
    assert main(["search", "a red circle", "--url", f"http://127.0.0.1:{free_port()}"]) == 1
    err = capsys.readouterr().err
    assert "nothing answers at http://127.0.0.1:" in err and "align serve" in err and "Traceback" not in err


def test_down_with_nothing_running_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ALIGN_HOME", str(tmp_path))
    assert main(["down"]) == 0
    assert capsys.readouterr().out.strip() == "nothing was running"
