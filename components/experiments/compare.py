"""The comparison of an experiment's trials: one table (trial x metric) and plots, logged to the parent run.

Written as plain files (Markdown and CSV for people, JSON for tools, PNG plots) under the parent run's
``comparison/`` artifacts; ``align report --parent <run>`` renders the children side by side as well.
"""

from __future__ import annotations

import csv
import io
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

# Shown first when present; every other numeric metric of the trials follows, sorted.
HEADLINE_METRICS = (
    "retrieval/text_to_image/R_at_1", "retrieval/image_to_text/R_at_1", "retrieval/mean_recall",
    "classification/acc1", "knn/k1/acc1", "train/temperature", "train/loss",
)


@dataclass
class TrialResult:
    name: str
    overrides: list[str]
    run_id: str
    metrics: dict[str, float] = field(default_factory=dict)
    cached: bool = False
    error: str = ""  # why the trial failed; its metrics are then empty and its claims "not measured"


def metric_columns(results: list[TrialResult]) -> list[str]:
    present = {name for r in results for name in r.metrics}
    return [m for m in HEADLINE_METRICS if m in present] + sorted(present - set(HEADLINE_METRICS))


def comparison_table(results: list[TrialResult]) -> dict:
    """Rows of trial name, run id, overrides and every metric (None where a trial lacks it)."""
    columns = metric_columns(results)
    rows = [{"trial": r.name, "run_id": r.run_id, "overrides": " ".join(r.overrides), "error": r.error,
             **{m: r.metrics.get(m) for m in columns}} for r in results]
    return {"columns": columns, "rows": rows}


def to_markdown(table: dict, title: str) -> str:
    columns = table["columns"]
    lines = [f"## {title}", "", "| trial | " + " | ".join(f"`{c}`" for c in columns) + " |",
             "|---|" + "---|" * len(columns)]
    for row in table["rows"]:
        cells = ["" if row[c] is None else f"{row[c]:.4f}" for c in columns]
        lines.append(f"| {_label(row)} | " + " | ".join(cells) + " |")
    failed = [f"- {row['trial']}: {row['error']}" for row in table["rows"] if row.get("error")]
    return "\n".join(lines + (["", "Failed trials:", *failed] if failed else [])) + "\n"


def _label(row: dict) -> str:
    return f"{row['trial']} (failed)" if row.get("error") else row["trial"]


def to_csv(table: dict) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=["trial", "run_id", "overrides", "error", *table["columns"]])
    writer.writeheader()
    writer.writerows(table["rows"])
    return out.getvalue()


def metric_plot(table: dict, metrics: list[str]) -> bytes:
    """One horizontal bar panel per metric, a bar per trial, as PNG bytes (Agg canvas, no pyplot state)."""
    from components.figures import new_figure, png_bytes

    metrics = [m for m in metrics if any(row[m] is not None for row in table["rows"])] or table["columns"][:1]
    trials = [_label(row) for row in table["rows"]]
    figure = new_figure(4.5 * len(metrics), 0.45 * len(trials) + 1.5)
    for i, metric in enumerate(metrics):
        axes = figure.add_subplot(1, len(metrics), i + 1)
        values = [row[metric] if row[metric] is not None else 0.0 for row in table["rows"]]
        axes.barh(range(len(trials)), values, color="#4c72b0")
        axes.set_yticks(range(len(trials)), trials if i == 0 else [""] * len(trials), fontsize=8)
        axes.invert_yaxis()
        axes.set_title(metric, fontsize=9)
    return png_bytes(figure)


def log_comparison(tracking_uri: str, parent_run_id: str, results: list[TrialResult], title: str) -> dict:
    """Log the table (md, csv, json) and the plot under the parent run's ``comparison/``; returns the table."""
    import mlflow

    table = comparison_table(results)
    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    client.log_text(parent_run_id, to_markdown(table, title), "comparison/table.md")
    client.log_text(parent_run_id, to_csv(table), "comparison/table.csv")
    client.log_text(parent_run_id, json.dumps(table, indent=2), "comparison/table.json")
    headline = [m for m in HEADLINE_METRICS[:5] if m in table["columns"]]
    with tempfile.TemporaryDirectory() as folder:
        plot = Path(folder) / "metrics.png"
        plot.write_bytes(metric_plot(table, headline))
        client.log_artifact(parent_run_id, str(plot), "comparison")
    return table


def log_claims(tracking_uri: str, parent_run_id: str, verdicts: list[dict], claims, table: dict) -> None:
    """The claims' verdicts under the parent run's ``comparison/`` (JSON, Markdown, a plot), one metric each."""
    import mlflow

    from components.experiments.claims import claims_markdown, claims_plot

    statements = {claim.name: claim.statement for claim in claims}
    recorded = [{"statement": statements.get(v["claim"], "")} | v for v in verdicts]
    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    client.log_text(parent_run_id, json.dumps(recorded, indent=2, default=str), "comparison/claims.json")
    client.log_text(parent_run_id, claims_markdown(verdicts, claims), "comparison/claims.md")
    with tempfile.TemporaryDirectory() as folder:
        plot = Path(folder) / "claims.png"
        plot.write_bytes(claims_plot(verdicts, claims, table))
        client.log_artifact(parent_run_id, str(plot), "comparison")
    for verdict in verdicts:
        if verdict["holds"] is not None:
            client.log_metric(parent_run_id, f"claim/{verdict['claim']}", float(verdict["holds"]))
