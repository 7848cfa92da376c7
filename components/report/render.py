"""One self-contained HTML file comparing runs side by side: one column per run, one row per field.

Nothing is fetched when the file is opened (no CDN, script or external stylesheet; figures are inline
PNG data URIs), so the report can be mailed, attached to an issue or archived as it is. Every string
that comes from MLflow (run names, tags, params, metric names) is user input and goes through
``html.escape``; a run without a metric gets an empty cell.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Iterable, Sequence
from html import escape
from pathlib import Path

from components.report import plots
from components.report.collect import (
    ExperimentSummary,
    RunRecord,
    RunSelection,
    collect_experiment,
    collect_runs,
)
from components.secrets import redact_uri
from components.storage import write_bytes

# Shown for every run even when equal across runs; any other param is shown only where runs differ.
KEY_PARAMS = (
    "seed", "model.image_tower", "model.image_pretrained", "model.text.pretrained", "train.steps",
    "train.global_batch_size", "train.lr", "train.optimizer", "train.num_workers", "train.precision",
)
# (row label, tag): lineage the lifecycle writes on its runs (flows/tasks.py, registry/evaluations.py).
RUN_TAGS = (
    ("kind", "align.kind"), ("recipe", "align.recipe"), ("config hash", "align.config_hash"),
    ("dataset hash", "align.dataset_content_hash"), ("git commit", "align.git_commit"),
    ("parent run", "mlflow.parentRunId"), ("evaluated model", "align.model_name"),
    ("evaluated version", "align.model_version"),
)
_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.5em;margin-bottom:.2em} h2{font-size:1.15em;margin-top:1.6em}
.meta{color:#666} .scroll{overflow-x:auto}
table{border-collapse:collapse} th,td{border:1px solid #ddd;padding:.25em .55em;text-align:left;vertical-align:top}
thead th{background:#f4f4f4;position:sticky;top:0} tbody th{font-weight:normal;color:#444;white-space:nowrap}
tr.section th{background:#eef3f8;font-weight:bold;color:#222} td.num{text-align:right;font-variant-numeric:tabular-nums}
td.best{font-weight:bold} code{font-size:.9em}
.passed{color:#1a7f37;font-weight:bold} .failed{color:#c62828;font-weight:bold} .forced{color:#b26a00;font-weight:bold}
img{max-width:100%;height:auto}
"""
HIGHER_IS_BETTER = re.compile(r"(/R_at_\d+|mean_recall|acc\d+|mean_per_class_recall)$")
_ID_TAGS = {"align.config_hash", "align.dataset_content_hash", "align.git_commit", "mlflow.parentRunId"}
_GATE_CLASSES = {"passed", "failed", "forced"}


def _number(value: float | None) -> str:
    if value is None:
        return ""
    if not math.isfinite(value):
        return str(value)
    if value.is_integer():
        return f"{value:,.0f}"
    return f"{value:,.1f}" if abs(value) >= 1000 else f"{value:.4g}"


def _time(ms: int | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ms / 1000)) if ms else ""


def _duration(run: RunRecord) -> str:
    if not run.start_ms or not run.end_ms:
        return ""
    seconds = max(0, (run.end_ms - run.start_ms) // 1000)
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}h {minutes:02d}m {seconds:02d}s" if hours else f"{minutes}m {seconds:02d}s"


def _row(label: str, cells: Iterable[str], classes: Iterable[str] | None = None) -> str:
    """A table row; ``cells`` are HTML already (escaped by the caller), ``label`` is escaped here."""
    classes = list(classes) if classes is not None else None
    tds = "".join(
        f'<td class="{classes[i]}">{cell}</td>' if classes and classes[i] else f"<td>{cell}</td>"
        for i, cell in enumerate(cells)
    )
    return f"<tr><th>{escape(label)}</th>{tds}</tr>"


def _text_row(label: str, runs: Sequence[RunRecord], value: Callable[[RunRecord], str], code: bool = False) -> str:
    wrap = (lambda s: f"<code>{escape(s)}</code>" if s else "") if code else escape
    return _row(label, (wrap(value(run) or "") for run in runs))


def _section(title: str, width: int) -> str:
    return f'<tr class="section"><th colspan="{width + 1}">{escape(title)}</th></tr>'


def _metric_rows(runs: Sequence[RunRecord], names: Sequence[str]) -> list[str]:
    """One row per metric; a missing value is an empty cell. For recalls and accuracies (higher is
    better) the best value is bold when runs differ."""
    rows = []
    for name in names:
        values = [run.metrics.get(name) for run in runs]
        known = [v for v in values if v is not None and math.isfinite(v)]
        top = max(known) if HIGHER_IS_BETTER.search(name) and len(set(known)) > 1 else None
        classes = ["num best" if v is not None and v == top else "num" for v in values]
        rows.append(_row(name, (_number(v) for v in values), classes))
    return rows


def _versions_cell(run: RunRecord) -> str:
    return "<br>".join(
        f"{escape(v.name)} v{escape(v.version)}" + (f" <b>@{escape(', @'.join(v.aliases))}</b>" if v.aliases else "")
        for v in run.versions
    )


def _gate_cell(run: RunRecord) -> str:
    parts = []
    for v in run.versions:
        if not v.gate:
            continue
        css = v.gate if v.gate in _GATE_CLASSES else ""
        against = v.tags.get("align.gate.champion_version", "")
        parts.append(
            f'v{escape(v.version)}: <span class="{css}">{escape(v.gate)}</span>'
            + (f" vs champion v{escape(against)}" if against else "")
            + (f"<br><small>{escape(v.gate_reason)}</small>" if v.gate_reason else "")
        )
    return "<br>".join(parts)


def _comparison_table(runs: Sequence[RunRecord]) -> str:
    width = len(runs)
    head = "".join(f"<th>{escape(run.label)}<br><code>{escape(run.run_id[:8])}</code></th>" for run in runs)
    rows = [_section("Run", width)]
    rows.append(_text_row("run id", runs, lambda r: r.run_id, code=True))
    rows.append(_text_row("started", runs, lambda r: _time(r.start_ms)))
    rows.append(_text_row("duration", runs, _duration))
    rows.append(_text_row("status", runs, lambda r: r.status))
    for label, tag in RUN_TAGS:
        if any(tag in run.tags for run in runs):
            rows.append(_text_row(label, runs, lambda r, tag=tag: r.tags.get(tag, ""), code=tag in _ID_TAGS))
    rows.append(_section("Registry", width))
    rows.append(_row("model version", (_versions_cell(run) for run in runs)))
    rows.append(_row("gate", (_gate_cell(run) for run in runs)))

    names = sorted({name for run in runs for name in run.metrics})
    groups = [
        ("Evaluation", [n for n in names if not n.startswith(("train/", "val/", "system/"))]),
        ("Validation during training (last)", [n for n in names if n.startswith("val/")]),
        ("Training (last logged)", [n for n in names if n.startswith("train/")]),
    ]
    for title, group in groups:
        if group:
            rows.append(_section(title, width))
            rows.extend(_metric_rows(runs, group))

    shown = _shown_params(runs)
    if shown:
        rows.append(_section("Parameters (key ones, and all that differ)", width))
        rows.extend(_text_row(name, runs, lambda r, name=name: r.params.get(name, "")) for name in shown)
    body = "".join(rows)
    return f'<div class="scroll"><table><thead><tr><th></th>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def _shown_params(runs: Sequence[RunRecord]) -> list[str]:
    names = sorted({name for run in runs for name in run.params})
    differing = [n for n in names if len({run.params.get(n) for run in runs}) > 1]
    return [n for n in KEY_PARAMS if n in names] + [n for n in differing if n not in KEY_PARAMS]


def _details_table(
    title: str, runs: Sequence[RunRecord], names: Sequence[str], cell: Callable[[RunRecord, str], str]
) -> str:
    if not names:
        return ""
    head = "".join(f"<th>{escape(run.label)}</th>" for run in runs)
    body = "".join(_row(name, (cell(run, name) for run in runs)) for name in names)
    return (
        f"<details><summary>{escape(title)} ({len(names)})</summary><div class=\"scroll\"><table>"
        f"<thead><tr><th></th>{head}</tr></thead><tbody>{body}</tbody></table></div></details>"
    )


def _figure(title: str, uri: str | None, alt: str) -> str:
    return f'<h2>{escape(title)}</h2><img src="{uri}" alt="{escape(alt)}">' if uri else ""


def _experiment_section(summary: ExperimentSummary | None) -> str:
    """The parent's verdicts on its claims and its comparison plots, above the per-run table."""
    if summary is None or not (summary.claims or summary.figures):
        return ""
    verdicts = {True: ("passed", "holds"), False: ("failed", "does not hold"), None: ("", "not measured")}
    rows = "".join(
        f"<tr><th><code>{escape(str(v.get('claim', '')))}</code><br>{escape(str(v.get('statement', '')))}</th>"
        f'<td class="{verdicts[v.get("holds")][0]}">{verdicts[v.get("holds")][1]}</td>'
        f"<td>{escape(str(v.get('detail', '')))}</td></tr>"
        for v in summary.claims if v.get("holds") in (True, False, None)
    )
    table = f"<table><thead><tr><th>claim</th><th>verdict</th><th>numbers</th></tr></thead><tbody>{rows}</tbody></table>"
    figures = "".join(_figure(title, plots.png_uri(data), title) for title, data in summary.figures.items())
    return f"<h2>Experiment {escape(summary.name)}: claims</h2>" + (table if rows else "") + figures


def render_html(
    runs: Sequence[RunRecord], experiment: str, selection: RunSelection, tracking_uri: str, generated_ms: int,
    summary: ExperimentSummary | None = None,
) -> str:
    """The whole report as one HTML string."""
    if not runs:
        raise ValueError("no runs to report")
    all_params = sorted({name for run in runs for name in run.params})
    system = sorted({name for run in runs for name in run.metrics if name.startswith("system/")})
    meta = (
        f"Compares {escape(selection.describe(experiment))} · "
        f"tracking <code>{escape(redact_uri(tracking_uri))}</code> · generated {escape(_time(generated_ms))}"
    )
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>ALIGN experiment report: {escape(experiment)}</title><style>{_CSS}</style></head><body>",
        "<h1>ALIGN experiment report</h1>",
        f'<p class="meta">{meta}</p>',
        _experiment_section(summary),
        f"<h2>Runs compared ({len(runs)})</h2>",
        _comparison_table(runs),
        _details_table("All parameters", runs, all_params, lambda r, n: escape(r.params.get(n, ""))),
        _details_table("System metrics (last sample)", runs, system, lambda r, n: _number(r.metrics.get(n))),
        _figure("Training loss", plots.loss_curves(runs), "train/loss against step, one line per run"),
        _figure("Retrieval R@K", plots.recall_curves(runs), "recall at K per suite and direction, one line per run"),
        _figure("Classification top-1 accuracy", plots.accuracy_bars(runs), "top-1 accuracy per suite, one bar per run"),
        "</body></html>",
    ]
    return "\n".join(part for part in parts if part) + "\n"


def default_report_path(home: str) -> Path:
    """``<home>/reports/report-<local time>.html``; a remote home keeps reports in ./.align instead."""
    from components.config import resolve_home

    base = Path(resolve_home(".align") if "://" in home else home)
    return base / "reports" / f"report-{time.strftime('%Y%m%d-%H%M%S')}.html"


def write_report(tracking_uri: str, experiment: str, selection: RunSelection, out: str | Path) -> Path:
    """Collect the selected runs from MLflow and write the report to ``out``; returns its path."""
    runs = collect_runs(tracking_uri, experiment, selection)
    summary = collect_experiment(tracking_uri, selection.parent_run_id) if selection.parent_run_id else None
    html = render_html(runs, experiment, selection, tracking_uri, int(time.time() * 1000), summary)
    path = Path(out).resolve()
    write_bytes(str(path), html.encode("utf-8"))  # whole or not at all: a browser open on it never sees half
    return path
