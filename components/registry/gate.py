"""The promotion gate: only models that clear absolute floors and do not regress reach users."""

from __future__ import annotations

from dataclasses import dataclass, field

from components.config import GateConfig


@dataclass
class GateDecision:
    passed: bool
    reasons: list[str] = field(default_factory=list)
    champion_version: str | None = None

    def to_dict(self) -> dict:
        return {"passed": self.passed, "reasons": self.reasons, "champion_version": self.champion_version}


def decide(
    challenger: dict[str, float],
    champion: dict[str, float] | None,
    cfg: GateConfig,
    champion_version: str | None = None,
) -> GateDecision:
    reasons: list[str] = []
    for name, floor in sorted(cfg.min_metrics.items()):
        if name not in challenger:
            reasons.append(f"{name} missing from the challenger's metrics")
        elif not challenger[name] >= floor:
            reasons.append(f"{name} = {challenger[name]:.4f} is below the floor {floor}")
    if champion is not None:
        metric = cfg.compare_metric
        if metric not in challenger:
            reasons.append(f"{metric} missing from the challenger's metrics")
        elif metric in champion and challenger[metric] < champion[metric] - cfg.max_regression:
            reasons.append(
                f"{metric} = {challenger[metric]:.4f} trails champion v{champion_version} "
                f"({champion[metric]:.4f}) by more than {cfg.max_regression}"
            )
    return GateDecision(passed=not reasons, reasons=reasons, champion_version=champion_version)
