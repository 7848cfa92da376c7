"""The report's figures, as ``data:image/png;base64`` URIs so the HTML file carries them inline.

Built with ``components.figures`` (``new_figure`` / ``png_bytes``) on ``matplotlib.figure.Figure``, never
through ``pyplot`` (no process-wide backend switch, no global figure registry); matplotlib is imported
inside the functions so importing this module stays cheap. Every function returns None when no run has the data.
"""

from __future__ import annotations

import base64
import math
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

from components.figures import new_figure, png_bytes
from components.metrics.names import parse_recall_name
from components.report.collect import RunRecord

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# Top-1 accuracies of the classification suites: "<suite>/acc1" (zero-shot) and "<suite>/k<K>/acc1" (kNN).
ACCURACY_METRIC = re.compile(r"^(?!train/|val/|system/).+/acc1$")
_LABEL_CHARS = 32


def run_label(run: RunRecord) -> str:
    """Legend text: the name (shortened) and the id's start, which tells apart runs named alike.

    "$" would start matplotlib mathtext and a leading "_" hides a legend entry: both are neutralised,
    since run names are whatever the user typed.
    """
    name = run.label if len(run.label) <= _LABEL_CHARS else run.label[: _LABEL_CHARS - 1] + "…"
    text = f"{name} · {run.run_id[:8]}".replace("$", r"\$")
    return " " + text if text.startswith("_") else text


def _style(index: int) -> dict:
    """Colour per run, the same in every figure; the line style changes once the 10 colours repeat."""
    return {"color": f"C{index % 10}", "linestyle": ("-", "--", ":", "-.")[(index // 10) % 4]}


def _data_uri(fig: Figure) -> str:
    return png_uri(png_bytes(fig))


def png_uri(data: bytes) -> str:
    """PNG bytes as a ``data:`` URI, so the figure travels inside the HTML file."""
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _legend(fig: Figure, axes_list, columns: int) -> None:
    handles: dict[str, object] = {}
    for ax in axes_list:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, handle)
    if handles:
        fig.legend(
            list(handles.values()), list(handles), loc="outside lower center", ncols=columns, fontsize=8, frameon=False
        )


def loss_curves(runs: Sequence[RunRecord]) -> str | None:
    """Training loss against step, one line per run."""
    if not any(run.loss_history for run in runs):
        return None
    fig = new_figure(8.0, 4.5)
    ax = fig.add_subplot()
    for index, run in enumerate(runs):
        if run.loss_history:
            steps, values = zip(*run.loss_history, strict=True)
            ax.plot(steps, values, label=run_label(run), linewidth=1.4, **_style(index))
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("step")
    ax.set_ylabel("train/loss")
    ax.grid(alpha=0.3)
    _legend(fig, [ax], columns=min(3, len(runs)))
    return _data_uri(fig)


def recall_table(metrics: dict[str, float]) -> dict[tuple[str, str], dict[int, float]]:
    """``{(suite, direction): {K: recall}}`` from a run's flat MLflow metrics.

    Only names as MLflow records them count: ``<suite>/<direction>/R_at_<K>``, where suite may be "val".
    """
    table: dict[tuple[str, str], dict[int, float]] = {}
    for name, value in metrics.items():
        recall = parse_recall_name(name)
        if recall and recall.prefix and recall.logged and value is not None and math.isfinite(value):
            table.setdefault((recall.prefix, recall.direction), {})[recall.k] = float(value)
    return table


def recall_curves(runs: Sequence[RunRecord]) -> str | None:
    """R@K against K, one panel per suite and direction, one line per run."""
    tables = [recall_table(run.metrics) for run in runs]
    panels = sorted({panel for table in tables for panel in table})
    if not panels:
        return None
    columns = min(3, len(panels))
    rows = math.ceil(len(panels) / columns)
    fig = new_figure(4.0 * columns, 3.2 * rows + 0.6)
    axes = []
    for position, (suite, direction) in enumerate(panels, start=1):
        ax = fig.add_subplot(rows, columns, position)
        ks: set[int] = set()
        for index, (run, table) in enumerate(zip(runs, tables, strict=True)):
            points = sorted(table.get((suite, direction), {}).items())
            if points:
                ks.update(k for k, _ in points)
                ax.plot(*zip(*points, strict=True), marker="o", label=run_label(run), **_style(index))
        ax.set_title(f"{suite}: {direction.replace('_', ' ')}", fontsize=9)
        ax.set_xticks(sorted(ks), [f"R@{k}" for k in sorted(ks)])
        ax.set_ylim(0.0, 1.0)
        ax.grid(alpha=0.3)
        axes.append(ax)
    _legend(fig, axes, columns=min(3, len(runs)))
    return _data_uri(fig)


def accuracy_bars(runs: Sequence[RunRecord]) -> str | None:
    """Top-1 accuracy per classification metric, one bar per run."""
    names = sorted({name for run in runs for name in run.metrics if ACCURACY_METRIC.match(name)})
    if not names:
        return None
    having = [(index, run) for index, run in enumerate(runs) if any(name in run.metrics for name in names)]
    fig = new_figure(max(6.0, 1.0 + 0.35 * len(names) * len(having)), 4.0)
    ax = fig.add_subplot()
    width = 0.8 / len(having)
    for slot, (index, run) in enumerate(having):  # index keeps each run's colour the same as elsewhere
        xs = [g + (slot - (len(having) - 1) / 2) * width for g, name in enumerate(names) if name in run.metrics]
        values = [run.metrics[name] for name in names if name in run.metrics]
        ax.bar(xs, values, width=width * 0.95, label=run_label(run), color=_style(index)["color"])
    slanted = len(names) > 3
    ax.set_xticks(range(len(names)), names, rotation=20 if slanted else 0, ha="right" if slanted else "center")
    ax.set_xlim(-0.5, len(names) - 0.5)
    ax.set_ylim(0.0, 1.0)
    ax.set_ylabel("top-1 accuracy")
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    _legend(fig, [ax], columns=min(3, len(runs)))
    return _data_uri(fig)
