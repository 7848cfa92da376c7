"""Promotion gate decisions and the paper's warm-up + linear-decay schedule."""

import pytest
import torch

from components.config import GateConfig
from components.registry.gate import decide, gate_suites
from components.registry.promotion import champion_stack
from components.train.schedule import build_optimizer, warmup_linear_decay

GATE = GateConfig(min_metrics={"r1": 0.1}, max_regression={"mean": 0.01})


def test_first_model_only_needs_the_floors():
    assert decide({"r1": 0.2, "mean": 0.3}, None, GATE).passed
    failed = decide({"r1": 0.05, "mean": 0.3}, None, GATE)
    assert not failed.passed and "below the floor" in failed.reasons[0]
    assert "missing" in decide({"mean": 0.3}, None, GATE).reasons[0]


def test_challenger_must_not_regress_beyond_tolerance():
    champion = {"r1": 0.3, "mean": 0.50}
    assert decide({"r1": 0.3, "mean": 0.495}, champion, GATE, "1").passed  # within 0.01
    worse = decide({"r1": 0.3, "mean": 0.48}, champion, GATE, "1")
    assert not worse.passed and "champion v1" in worse.reasons[0]
    assert worse.deltas() == {"mean": pytest.approx(-0.02)}
    assert "missing from champion v1" in decide({"r1": 0.3, "mean": 0.5}, {"r1": 0.3}, GATE, "1").reasons[0]


def test_every_metric_has_its_own_tolerance_and_the_table_shows_each_check():
    gate = GateConfig(
        min_metrics={"ret/R_at_1": 0.05, "cls/acc1": 0.2},
        max_regression={"ret/mean_recall": 0.0, "cls/acc1": 0.05},
    )
    champion = {"ret/R_at_1": 0.3, "ret/mean_recall": 0.40, "cls/acc1": 0.50}
    ok = decide({"ret/R_at_1": 0.3, "ret/mean_recall": 0.41, "cls/acc1": 0.46}, champion, gate, "3")
    assert ok.passed and [c.metric for c in ok.checks] == ["cls/acc1", "ret/R_at_1", "ret/mean_recall"]
    bad = decide({"ret/R_at_1": 0.01, "ret/mean_recall": 0.41, "cls/acc1": 0.44}, champion, gate, "3")
    assert not bad.passed and len(bad.reasons) == 2  # below a floor, and acc1 trails by > 0.05
    table = bad.to_markdown("align", "4")
    assert "**failed**" in table and "| `cls/acc1` | 0.4400 | 0.5000 | -0.0600 |" in table
    assert gate_suites(gate) == ["cls", "ret"]


def test_a_forced_promotion_reads_as_forced():
    decision = decide({"r1": 0.0}, None, GATE)
    decision.passed, decision.forced_reason = True, "hotfix for a broken tokenizer"
    assert decision.outcome == "forced" and "hotfix" in decision.to_markdown("align", "7")


def test_rollback_walks_back_through_champions_instead_of_flipping():
    history = [{"version": v, "how": "gate"} for v in ("1", "2", "3")]
    assert champion_stack(history) == ["1", "2", "3"]
    history.append({"version": "2", "how": "rollback"})
    assert champion_stack(history) == ["1", "2"]  # a second rollback goes to v1, not back to v3
    history.append({"version": "1", "how": "rollback"})
    assert champion_stack(history) == ["1"]
    history.append({"version": "4", "how": "forced"})
    assert champion_stack(history) == ["1", "4"]


def test_schedule_warms_up_linearly_then_decays_to_zero():
    assert warmup_linear_decay(0, 10, 100) == pytest.approx(0.1)
    assert warmup_linear_decay(9, 10, 100) == pytest.approx(1.0)
    assert warmup_linear_decay(55, 10, 100) == pytest.approx(0.5)
    assert warmup_linear_decay(100, 10, 100) == 0.0


def test_optimizers_exempt_biases_norms_and_temperature_from_weight_decay():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    model.log_temperature = torch.nn.Parameter(torch.tensor(0.0))
    lamb = build_optimizer("lamb", model, 1e-3, 1e-5)
    assert type(lamb).__name__ == "Lamb"
    decay = {id(p): g["weight_decay"] for g in lamb.param_groups for p in g["params"]}
    assert decay[id(model[0].weight)] == 1e-5
    assert decay[id(model[0].bias)] == decay[id(model[1].weight)] == decay[id(model.log_temperature)] == 0.0
    assert isinstance(build_optimizer("adamw", model, 1e-3, 1e-5), torch.optim.AdamW)
    with pytest.raises(ValueError):
        build_optimizer("sgd", model, 1e-3, 0)
