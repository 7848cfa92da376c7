"""Experiment specs (grid and named trials), and the comparison table and plot of their results."""

import numpy as np
import pytest

from components.config import PROJECT_ROOT
from components.experiments.compare import TrialResult, comparison_table, metric_plot, to_csv, to_markdown
from components.experiments.spec import ExperimentSpec, expand, load_spec, trial_config


def test_a_grid_expands_to_its_product_then_the_named_trials():
    spec = ExperimentSpec(
        name="negatives", overrides=["train.steps=10"],
        grid={"train.global_batch_size": [16, 32], "model.learn_temperature": [True, False]},
        trials=[{"name": "fixed-1/32", "overrides": ["model.learn_temperature=false", "model.init_temperature=0.03125"]}],
    )
    trials = expand(spec)
    assert [t.name for t in trials] == [
        "global_batch_size=16,learn_temperature=true", "global_batch_size=16,learn_temperature=false",
        "global_batch_size=32,learn_temperature=true", "global_batch_size=32,learn_temperature=false", "fixed-1/32",
    ]
    cfg = trial_config(spec, trials[1])
    assert cfg.train.steps == 10 and cfg.train.global_batch_size == 16 and cfg.model.learn_temperature is False
    assert trial_config(spec, trials[-1]).model.init_temperature == pytest.approx(1 / 32)


def test_a_bad_trial_fails_the_spec_naming_the_trial():
    with pytest.raises(ValueError, match="(?s)trial 'steps=5'.*trian"):
        ExperimentSpec(name="typo", grid={"trian.steps": [5]})
    with pytest.raises(ValueError, match="no trials"):
        ExperimentSpec(name="empty")
    with pytest.raises(ValueError, match="unique"):
        ExperimentSpec(name="twice", trials=[{"name": "a"}, {"name": "a"}])


def test_a_spec_file_takes_extra_overrides_for_every_trial(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("name: small\ntrials:\n  - name: base\n  - name: more\n    overrides: [train.steps=7]\n")
    spec = load_spec(path, [f"storage.home={tmp_path}"])
    assert [trial_config(spec, t).storage.home for t in expand(spec)] == [str(tmp_path)] * 2
    with pytest.raises(FileNotFoundError):
        load_spec(tmp_path / "missing.yaml")


def test_the_comparison_table_lists_every_trial_and_leaves_missing_metrics_empty():
    results = [
        TrialResult("a", ["train.steps=5"], "r1", {"retrieval/text_to_image/R_at_1": 0.5, "train/loss": 2.0}),
        TrialResult("b", ["train.steps=9"], "r2", {"retrieval/text_to_image/R_at_1": 0.25, "extra/metric": 1.0}),
    ]
    table = comparison_table(results)
    assert table["columns"] == ["retrieval/text_to_image/R_at_1", "train/loss", "extra/metric"]  # headline first
    assert table["rows"][1]["train/loss"] is None and table["rows"][0]["extra/metric"] is None
    markdown = to_markdown(table, "t")
    assert "| a | 0.5000 | 2.0000 |  |" in markdown and "| b | 0.2500 |  | 1.0000 |" in markdown
    assert to_csv(table).splitlines()[0] == "trial,run_id,overrides,error,retrieval/text_to_image/R_at_1,train/loss,extra/metric"
    assert metric_plot(table, ["retrieval/text_to_image/R_at_1", "train/loss"]).startswith(b"\x89PNG")


def _table(rows):
    from components.experiments.compare import comparison_table

    return comparison_table([TrialResult(name, [], f"r{i}", metrics) for i, (name, metrics) in enumerate(rows)])


def test_a_better_claim_holds_or_fails_by_its_margin():
    from components.experiments.claims import ClaimSpec, check

    claim = ClaimSpec(name="negatives", kind="better", better="full", worse="half", metric="retrieval/mean_recall")
    holds = check(claim, _table([("full", {"retrieval/mean_recall": 0.30}), ("half", {"retrieval/mean_recall": 0.25})]))
    assert holds["holds"] is True and holds["margin"] == pytest.approx(0.05)
    fails = check(claim, _table([("full", {"retrieval/mean_recall": 0.20}), ("half", {"retrieval/mean_recall": 0.25})]))
    assert fails["holds"] is False and "-0.0500" in fails["detail"]
    missing = check(claim, _table([("full", {"retrieval/mean_recall": 0.2}), ("half", {})]))
    assert missing["holds"] is None


def test_the_temperature_claim_compares_the_learned_value_with_the_best_fixed_one():
    from components.experiments.claims import ClaimSpec, check, claims_markdown

    claim = ClaimSpec(name="temperature", kind="temperature", learnable="learned",
                      fixed={"t16": 1 / 16, "t32": 1 / 32, "t64": 1 / 64})
    rows = [("learned", {"train/temperature": 0.02, "retrieval/mean_recall": 0.3}),
            ("t16", {"retrieval/mean_recall": 0.1}), ("t32", {"retrieval/mean_recall": 0.2}),
            ("t64", {"retrieval/mean_recall": 0.25})]
    verdict = check(claim, _table(rows))
    assert verdict["best_fixed"] == "t64" and verdict["holds"] is True  # 0.02 is x1.28 from 1/64
    assert verdict["factor"] == pytest.approx(0.02 * 64)
    far = check(claim, _table([("learned", {"train/temperature": 0.2, "retrieval/mean_recall": 0.3}), *rows[1:]]))
    assert far["holds"] is False and far["factor"] == pytest.approx(0.2 * 64)
    assert "| temperature:  | **no** |" in claims_markdown([far], [claim])
    from components.experiments.claims import claims_plot

    missing = check(claim, _table(rows[1:] + [("learned", {})]))
    assert missing["holds"] is None  # drawn without the unmeasured claim, next to the measured ones
    assert claims_plot([verdict, far, missing], [claim], _table(rows)).startswith(b"\x89PNG")


def test_a_claim_must_name_trials_of_its_experiment():
    with pytest.raises(ValueError, match="not in the experiment"):
        ExperimentSpec(name="c", trials=[{"name": "a"}],
                       claims=[{"name": "x", "kind": "better", "better": "a", "worse": "b"}])


@pytest.mark.parametrize("path", sorted((PROJECT_ROOT / "configs" / "experiments").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_experiment_loads(path):
    spec = load_spec(path)
    assert len(expand(spec)) >= 2 and spec.claims


class _FactoredEncoder:
    """Embeddings that are colour + shape directions (a perfectly compositional model), or random ones."""

    def __init__(self, compositional: bool):
        from components.evaluation import arithmetic

        rng = np.random.default_rng(0)
        basis = np.linalg.qr(rng.standard_normal((32, 8)))[0].T  # 8 orthonormal directions
        self.colour = dict(zip(arithmetic.COLOURS, basis[:4], strict=True))
        self.shape = dict(zip(arithmetic.SHAPES, basis[4:], strict=True))
        self.compositional, self.rng = compositional, rng

    def encode_images(self, drawings):
        if not self.compositional:
            return self.rng.standard_normal((len(drawings), 32))
        return np.stack([self.colour[c] + self.shape[s] + 0.01 * self.rng.standard_normal(32) for c, s in drawings])

    def encode_texts(self, texts):
        return np.stack([2 * self.colour[t] for t in texts])


def test_the_arithmetic_probe_scores_a_compositional_model_high_and_a_random_one_near_chance(monkeypatch):
    from components.evaluation import arithmetic

    monkeypatch.setattr(arithmetic, "draw", lambda colour, shape, rng, size=0: (colour, shape))  # no pixels needed
    assert arithmetic.arithmetic_probe(_FactoredEncoder(True)) == {"swap_acc": 1.0, "colour_acc": 1.0, "example": 1.0}
    random_model = arithmetic.arithmetic_probe(_FactoredEncoder(False))
    assert random_model["swap_acc"] <= 0.25


def test_the_probe_draws_real_scenes():
    import random

    from components.evaluation.arithmetic import DRAW_SIZE, draw

    image = draw("blue", "circle", random.Random(0))
    assert image.size == (DRAW_SIZE, DRAW_SIZE)
    r, g, b = image.getpixel((DRAW_SIZE // 2, DRAW_SIZE // 2))[:3]
    assert b > r and b > g  # the object sits in the middle, and it is blue


def test_an_at_least_claim_reads_one_trial():
    from components.experiments.claims import ClaimSpec, check

    claim = ClaimSpec(name="arithmetic", kind="at_least", trial="base", metric="arithmetic/swap_acc", at_least=0.5)
    assert check(claim, _table([("base", {"arithmetic/swap_acc": 0.25})]))["holds"] is False
    assert check(claim, _table([("base", {"arithmetic/swap_acc": 0.75})]))["margin"] == pytest.approx(0.25)


def test_the_gpu_study_is_the_cpu_study_arm_for_arm_on_one_gpu():
    cpu, gpu = (load_spec(PROJECT_ROOT / "configs" / "experiments" / f"align-claims-{kind}.yaml") for kind in ("cpu", "gpu"))
    assert [t.name for t in expand(gpu)] == [t.name for t in expand(cpu)]
    assert [c.model_dump() for c in gpu.claims] == [c.model_dump() for c in cpu.claims]  # same thresholds
    trials = {t.name: trial_config(gpu, t) for t in expand(gpu)}
    baseline = trials["baseline"]
    assert (baseline.train.use_gpu, baseline.train.num_workers, baseline.train.precision) == (True, 1, "bf16")
    assert trials["half-negatives"].train.global_batch_size * 2 == baseline.train.global_batch_size
    pairs = {name: cfg.train.global_batch_size * cfg.train.steps for name, cfg in trials.items()}
    same_steps = trials.pop("half-negatives-same-steps").train
    assert (same_steps.steps, same_steps.global_batch_size * 2) == (baseline.train.steps, baseline.train.global_batch_size)
    assert {pairs[name] for name in trials} == {pairs["baseline"]}, "every other arm sees the same number of pairs"


def test_align_experiment_prints_the_parent_and_a_report_command_for_the_same_state(tmp_path, monkeypatch, capsys):
    import flows.experiment
    from align_cli.main import main

    spec_path = tmp_path / "exp.yaml"
    spec_path.write_text("name: small\ntrials:\n  - name: base\n  - name: more\n    overrides: [train.steps=7]\n")
    table = _table([("base", {"retrieval/mean_recall": 0.5}), ("more", {"retrieval/mean_recall": 0.25})])
    ran = []
    monkeypatch.setattr(flows.experiment, "run_experiment", lambda spec: ran.append(spec) or {"parent_run_id": "p1", "table": table})
    assert main(["experiment", str(spec_path), f"storage.home={tmp_path}", "seed=3"]) == 0
    out = capsys.readouterr().out
    assert [t.name for t in expand(ran[0])] == ["base", "more"]
    assert "| more |" in out and "parent run: p1\n" in out
    assert f"report: align report --parent p1 storage.home={tmp_path}\n" in out


def test_a_failed_trial_is_compared_as_failed_and_a_rerun_retries_it_under_the_same_parent(tmp_path, monkeypatch):
    """Training and evaluation are stand-ins here (the e2e test runs real ones); the flow's bookkeeping is real."""
    import json
    from pathlib import Path

    import mlflow

    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect"))
    import flows.experiment as experiment

    broken = {"steps": 7}
    trained = []

    def fake_train(cfg, dataset, run_tags):
        trained.append(cfg.train.steps)
        if cfg.train.steps == broken.get("steps"):
            raise ValueError("worker lost")
        return {"run_id": f"run-{cfg.train.steps}", "metrics": {"train/loss": 1.0}, "cached": False, "artifact_dir": ""}

    monkeypatch.setattr(experiment, "ingest_flow", lambda cfg: {"kept_uri": "", "content_hash": "c"})
    monkeypatch.setattr(experiment, "train_flow", fake_train)
    monkeypatch.setattr(experiment, "evaluate_flow", lambda cfg, trained, dataset: {"metrics": {"retrieval/mean_recall": cfg.train.steps / 10}})
    spec = ExperimentSpec(name="flaky", overrides=[f"storage.home={tmp_path}"], grid={"train.steps": [5, 7]},
                          arithmetic_probe=False,
                          claims=[{"name": "longer_is_better", "kind": "better", "better": "steps=7", "worse": "steps=5"}])

    with pytest.raises(RuntimeError, match=r"1 of 2 trials failed \(steps=7\).*re-run the spec"):
        experiment.run_experiment(spec)
    assert sorted(trained) == [5, 7], "the other trial still ran"
    client = mlflow.MlflowClient(trial_config(spec, expand(spec)[0]).storage.tracking_uri)
    parent = client.search_runs([client.get_experiment_by_name("align-embedded").experiment_id], "tags.`align.kind` = 'experiment'")[0]
    assert parent.info.status == "FAILED"
    (tmp_path / "download").mkdir()
    table = json.loads(Path(client.download_artifacts(parent.info.run_id, "comparison/table.json", str(tmp_path / "download"))).read_text())
    failed = next(row for row in table["rows"] if row["trial"] == "steps=7")
    assert failed["error"] == "ValueError: worker lost" and failed["retrieval/mean_recall"] is None
    assert "claim/longer_is_better" not in client.get_run(parent.info.run_id).data.metrics  # not measured

    broken.clear()
    result = experiment.run_experiment(spec)
    assert result["parent_run_id"] == parent.info.run_id and client.get_run(parent.info.run_id).info.status == "FINISHED"
    assert [v["holds"] for v in result["claims"]] == [True]
