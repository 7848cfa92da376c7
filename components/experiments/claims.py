"""ALIGN's claims as checks over an experiment's comparison table: each holds or not, with by how much.

A claim names the trials it compares and the metric it reads; nothing is tuned here, the verdict is
computed from whatever the trials measured. Three kinds cover the paper's claims:
- ``better``: trial ``better`` scores above trial ``worse`` on ``metric`` (data scale vs noise, number
  of negatives);
- ``temperature``: the ``learnable`` trial's final temperature lands near the best of the ``fixed``
  trials (by ``metric``), within a factor ``tolerance``; the paper's learnable temperature converged
  near 1/64, and a fixed 1/32 was clearly worse;
- ``at_least``: ``trial`` reaches ``at_least`` on ``metric`` (the image + text arithmetic probe).
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

TEMPERATURE_METRIC = "train/temperature"


class ClaimSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    statement: str = ""  # the paper's claim in words, shown in the report
    kind: Literal["better", "temperature", "at_least"]
    metric: str = "retrieval/mean_recall"
    better: str = ""  # kind better: the trial expected to score higher ...
    worse: str = ""  # ... than this one
    learnable: str = ""  # kind temperature: the trial with a learnable temperature ...
    fixed: dict[str, float] = Field(default_factory=dict)  # ... against these fixed-temperature trials (name -> T)
    tolerance: float = Field(2.0, gt=1.0)  # "near": within this factor of the best fixed temperature
    trial: str = ""  # kind at_least: the trial whose ``metric`` ...
    at_least: float = 0.0  # ... must reach this (set before the run, from the claim, not from results)

    def trials(self) -> list[str]:
        return {"better": [self.better, self.worse], "temperature": [self.learnable, *self.fixed],
                "at_least": [self.trial]}[self.kind]


def _row(table: dict, trial: str) -> dict:
    for row in table["rows"]:
        if row["trial"] == trial:
            return row
    raise KeyError(f"no trial {trial!r} in the experiment")


def _value(table: dict, trial: str, metric: str) -> float | None:
    value = _row(table, trial).get(metric)
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def check(claim: ClaimSpec, table: dict) -> dict:
    """The verdict: ``holds`` (True/False, None when a number is missing), the numbers, and a sentence."""
    if claim.kind == "better":
        high, low = _value(table, claim.better, claim.metric), _value(table, claim.worse, claim.metric)
        if high is None or low is None:
            return {"claim": claim.name, "holds": None, "detail": f"{claim.metric} missing for a trial"}
        margin = high - low
        return {"claim": claim.name, "holds": margin > 0, "metric": claim.metric, claim.better: high,
                claim.worse: low, "margin": margin,
                "detail": f"{claim.better} {high:.4f} vs {claim.worse} {low:.4f} on {claim.metric}: "
                          f"{'+' if margin >= 0 else ''}{margin:.4f}"}
    if claim.kind == "at_least":
        value = _value(table, claim.trial, claim.metric)
        if value is None:
            return {"claim": claim.name, "holds": None, "detail": f"{claim.metric} missing for {claim.trial}"}
        return {"claim": claim.name, "holds": value >= claim.at_least, "metric": claim.metric, "value": value,
                "margin": value - claim.at_least,
                "detail": f"{claim.trial} {value:.4f} on {claim.metric} (needs {claim.at_least:g})"}
    scores = {name: _value(table, name, claim.metric) for name in claim.fixed}
    learned = _value(table, claim.learnable, TEMPERATURE_METRIC)
    if learned is None or any(v is None for v in scores.values()):
        return {"claim": claim.name, "holds": None, "detail": f"{claim.metric} or the learned temperature missing"}
    best = max(scores, key=lambda name: scores[name])
    ratio = learned / claim.fixed[best]
    factor = max(ratio, 1 / ratio)
    learnable_score = _value(table, claim.learnable, claim.metric)
    return {"claim": claim.name, "holds": factor <= claim.tolerance, "metric": claim.metric,
            "learned_temperature": learned, "best_fixed": best, "best_fixed_temperature": claim.fixed[best],
            "factor": factor, "scores": scores, "learnable_score": learnable_score,
            "detail": f"learned T={learned:.4f} (1/{1 / learned:.0f}); best fixed {best} T={claim.fixed[best]:.4f} "
                      f"scores {scores[best]:.4f}; off by x{factor:.2f} (near means within x{claim.tolerance:g})"}


def claims_markdown(verdicts: list[dict], claims: list[ClaimSpec]) -> str:
    statements = {c.name: c.statement for c in claims}
    lines = ["## Claims", "", "| claim | holds | numbers |", "|---|---|---|"]
    for v in verdicts:
        mark = {True: "yes", False: "**no**", None: "not measured"}[v["holds"]]
        lines.append(f"| {v['claim']}: {statements.get(v['claim'], '')} | {mark} | {v['detail']} |")
    return "\n".join(lines) + "\n"


def claims_plot(verdicts: list[dict], claims: list[ClaimSpec], table: dict) -> bytes:
    """One panel per claim, drawn from the numbers its verdict used, as PNG bytes.

    ``better``: the two trials' bars; ``at_least``: the trial's bar against the bound; ``temperature``:
    the metric of each fixed temperature (log scale) with the learnable trial placed at the temperature
    it learned, and the band the claim calls "near" around the best fixed one.
    """
    from components.figures import new_figure, png_bytes

    by_name = {claim.name: claim for claim in claims}
    shown = [v for v in verdicts if v["holds"] is not None and v["claim"] in by_name]
    columns = min(3, max(1, len(shown)))
    rows = max(1, math.ceil(len(shown) / columns))
    figure = new_figure(4.4 * columns, 3.4 * rows)
    for i, verdict in enumerate(shown):
        claim = by_name[verdict["claim"]]
        axes = figure.add_subplot(rows, columns, i + 1)
        colour = "#1a7f37" if verdict["holds"] else "#c62828"
        if claim.kind == "temperature":
            points = sorted((t, verdict["scores"][name]) for name, t in claim.fixed.items())
            axes.plot([t for t, _ in points], [s for _, s in points], "o-", color="#4c72b0", label="fixed T")
            best = verdict["best_fixed_temperature"]
            axes.axvspan(best / claim.tolerance, best * claim.tolerance, color=colour, alpha=0.12, label="near best")
            if verdict["learnable_score"] is not None:
                axes.plot([verdict["learned_temperature"]], [verdict["learnable_score"]], "*", ms=14, color=colour,
                          label=f"learned T=1/{1 / verdict['learned_temperature']:.0f}")
            axes.set_xscale("log", base=2)
            axes.set_xticks([t for t, _ in points], [f"1/{1 / t:.0f}" for t, _ in points], fontsize=8)
            axes.minorticks_off()
            axes.set_xlabel("temperature", fontsize=8)
            axes.legend(fontsize=7)
        else:
            names = [claim.better, claim.worse] if claim.kind == "better" else [claim.trial]
            values = [_value(table, name, claim.metric) or 0.0 for name in names]
            bars = axes.bar(range(len(names)), values, color=[colour, "#8c8c8c"][: len(names)])
            axes.bar_label(bars, fmt="%.3f", fontsize=8)
            axes.set_xticks(range(len(names)), names, fontsize=8)
            if claim.kind == "at_least":
                axes.axhline(claim.at_least, color="#222", linestyle="--", linewidth=1)
        axes.set_ylabel(claim.metric, fontsize=8)
        axes.set_title(f"{claim.name}: {'holds' if verdict['holds'] else 'does not hold'}", fontsize=9, color=colour)
    return png_bytes(figure)
