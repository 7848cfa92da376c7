"""The promotion gate: only models that clear absolute floors and do not regress reach users.

A pure function of two metric dicts and the policy, so every decision can be re-derived from what the
registry recorded. Missing metrics fail: a suite that silently did not run must not look like a pass.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from components.config import GateConfig


@dataclass
class MetricCheck:
    metric: str
    challenger: float | None
    champion: float | None = None
    floor: float | None = None
    tolerance: float | None = None  # ε: how far the challenger may trail the champion
    passed: bool = True
    reason: str = ""

    @property
    def delta(self) -> float | None:
        """Challenger minus champion (positive: better), when both are known."""
        if self.challenger is None or self.champion is None:
            return None
        return self.challenger - self.champion


@dataclass
class GateDecision:
    passed: bool
    reasons: list[str] = field(default_factory=list)
    champion_version: str | None = None
    checks: list[MetricCheck] = field(default_factory=list)
    forced_reason: str = ""  # set when a person promoted past the gate
    suite_hashes: dict[str, str] = field(default_factory=dict)

    @property
    def outcome(self) -> str:
        return "forced" if self.forced_reason else ("passed" if self.passed else "failed")

    def deltas(self) -> dict[str, float]:
        return {check.metric: check.delta for check in self.checks if check.delta is not None}

    def to_dict(self) -> dict:
        return {
            "passed": self.passed,
            "outcome": self.outcome,
            "reasons": self.reasons,
            "champion_version": self.champion_version,
            "forced_reason": self.forced_reason,
            "suite_hashes": self.suite_hashes,
            "checks": [asdict(check) | {"delta": check.delta} for check in self.checks],
        }

    def to_markdown(self, model_name: str, version: str) -> str:
        """The decision as a table (a Prefect artifact; also readable in logs)."""
        champion = f"v{self.champion_version}" if self.champion_version else "none yet"
        lines = [
            f"## Gate for {model_name} v{version}: **{self.outcome}** (champion: {champion})",
            "",
            "| metric | challenger | champion | delta | floor | max regression | result |",
            "|---|---|---|---|---|---|---|",
        ]

        def cell(value: float | None, signed: bool = False) -> str:
            return "–" if value is None else (f"{value:+.4f}" if signed else f"{value:.4f}")

        for c in self.checks:
            result = "ok" if c.passed else f"**fail**: {c.reason}"
            lines.append(
                f"| `{c.metric}` | {cell(c.challenger)} | {cell(c.champion)} | {cell(c.delta, True)} "
                f"| {cell(c.floor)} | {cell(c.tolerance)} | {result} |"
            )
        if self.forced_reason:
            lines += ["", f"Promoted by hand past the gate: {self.forced_reason}"]
        if self.suite_hashes:
            lines += ["", "Suites: " + ", ".join(f"`{n}` {h}" for n, h in sorted(self.suite_hashes.items()))]
        return "\n".join(lines)


def decide(
    challenger: dict[str, float],
    champion: dict[str, float] | None,
    cfg: GateConfig,
    champion_version: str | None = None,
) -> GateDecision:
    """Check every floor and, when there is a champion, every tolerated regression."""
    checks: dict[str, MetricCheck] = {}

    def check(metric: str) -> MetricCheck:
        if metric not in checks:
            checks[metric] = MetricCheck(metric, challenger.get(metric))
        return checks[metric]

    def fail(c: MetricCheck, reason: str) -> None:
        c.passed = False
        c.reason = f"{c.reason}; {reason}" if c.reason else reason

    for metric, floor in sorted(cfg.min_metrics.items()):
        c = check(metric)
        c.floor = floor
        if c.challenger is None:
            fail(c, f"{metric} missing from the challenger's evaluation")
        elif not c.challenger >= floor:
            fail(c, f"{metric} = {c.challenger:.4f} is below the floor {floor}")
    if champion is not None:
        for metric, tolerance in sorted(cfg.max_regression.items()):
            c = check(metric)
            c.tolerance = tolerance
            c.champion = champion.get(metric)
            if c.challenger is None:
                fail(c, f"{metric} missing from the challenger's evaluation")
            elif c.champion is None:
                fail(c, f"{metric} missing from champion v{champion_version}'s evaluation")
            elif not c.challenger >= c.champion - tolerance:
                fail(
                    c,
                    f"{metric} = {c.challenger:.4f} trails champion v{champion_version} ({c.champion:.4f}) "
                    f"by more than {tolerance}",
                )
    ordered = [checks[name] for name in sorted(checks)]
    reasons = [c.reason for c in ordered if not c.passed]
    return GateDecision(passed=not reasons, reasons=reasons, champion_version=champion_version, checks=ordered)


def gate_suites(cfg: GateConfig) -> list[str]:
    """The suites the policy reads: the first part of every gated metric name."""
    return sorted({name.split("/", 1)[0] for name in (*cfg.min_metrics, *cfg.max_regression)})
