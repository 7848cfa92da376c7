"""Promotion gate decisions and the paper's warm-up + linear-decay schedule."""

import pytest
import torch

from components.config import GateConfig
from components.registry.gate import decide
from components.train.schedule import build_optimizer, warmup_linear_decay

GATE = GateConfig(min_metrics={"r1": 0.1}, compare_metric="mean", max_regression=0.01)


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
