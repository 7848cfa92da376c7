"""PNG figures of evaluation results, for MLflow artifacts and reports.

Drawn through ``components.figures`` (matplotlib's object API and the Agg canvas, never ``pyplot``), which
also keeps importing this module cheap: matplotlib loads when a figure is drawn.
"""

from __future__ import annotations

import math
import os
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from components.figures import new_figure, save_png
from components.metrics.names import parse_recall_name
from components.metrics.ranking import as_labels

_DIRECTION_ORDER = ("image_to_text", "text_to_image")
_DIRECTION_LABELS = {"image_to_text": "image→text", "text_to_image": "text→image"}

_ANNOTATE_MAX_CLASSES = 20  # cell values stay legible up to here
_TICK_LABEL_MAX_CLASSES = 50  # beyond this, names overlap whatever the font size
_CONFUSION_MAX_INCHES = 14.0  # 1400 px at figures.DPI: a 1000-class matrix is still one bounded image
_CLASS_NAME_CHARS = 24

_MAX_QUERY_ROWS = 50  # one row is ~2.3 in; Agg refuses images over 2**16 px a side
_MAX_TOP_K = 20
_THUMBNAIL_PX = 256  # images are shown ~200 px wide; drawing full-size originals only costs memory
_HIT_COLOUR = "#2ca02c"
_MISS_COLOUR = "#d62728"


# --- retrieval --------------------------------------------------------------------------------------------


def _recall_table(metrics: Mapping[str, float]) -> dict[str, dict[int, float]]:
    """``{direction: {K: recall}}`` from flat metric names; other keys are ignored."""
    table: dict[str, dict[int, float]] = {}
    sources: dict[tuple[str, int], str] = {}
    for key, value in metrics.items():
        name = parse_recall_name(str(key))  # any prefix ("retrieval/", "val/"), either spelling
        if name is None:
            continue
        direction, k = name.direction, name.k
        try:
            recall = float(value)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"metric {key!r} must be a number, got {value!r}") from exc
        if not 0.0 <= recall <= 1.0:  # also refuses NaN
            raise ValueError(f"metric {key!r} must be a recall in [0, 1], got {value!r}")
        previous = table.setdefault(direction, {}).get(k)
        if previous is not None and previous != recall:
            # e.g. "val/…/R@1" next to "test/…/R@1": plotting either would hide the other.
            raise ValueError(f"metrics {sources[direction, k]!r} and {key!r} give different {direction} R@{k}")
        table[direction][k] = recall
        sources[direction, k] = str(key)
    return table


def plot_recall_bars(metrics: Mapping[str, float], path: str | os.PathLike[str], title: str = "") -> Path:
    """Grouped bars of Recall@K: one group per retrieval direction, one bar per K, value on each bar.

    Accepts ``"image_to_text/R@1"`` and the MLflow spelling ``"retrieval/image_to_text/R_at_1"``; keys that
    are not ``<direction>/R@K`` (``mean_recall``, accuracies) are ignored.
    """
    table = _recall_table(metrics)
    if not table:
        raise ValueError(
            "no Recall@K metrics to plot: expected keys like 'image_to_text/R@1' or 'text_to_image/R_at_5', "
            f"got {sorted(map(str, metrics))[:10]}"
        )
    directions = [d for d in _DIRECTION_ORDER if d in table] + sorted(set(table) - set(_DIRECTION_ORDER))
    ks = sorted({k for per_k in table.values() for k in per_k})

    fig = new_figure(max(5.0, 1.2 + 0.7 * len(directions) * len(ks)), 4.2)
    ax = fig.add_subplot()
    width = 0.8 / len(ks)
    for i, k in enumerate(ks):
        xs = [g + (i - (len(ks) - 1) / 2) * width for g, d in enumerate(directions) if k in table[d]]
        values = [table[d][k] for d in directions if k in table[d]]
        ax.bar(xs, values, width=width * 0.95, label=f"R@{k}", color=f"C{i}")
        for x, v in zip(xs, values, strict=True):
            inside = v > 0.88  # a label above a full bar would leave the [0, 1] axis
            ax.text(
                x,
                v - 0.015 if inside else v + 0.015,
                f"{v:.3f}",
                ha="center",
                va="top" if inside else "bottom",
                fontsize=8,
                color="white" if inside else "black",
            )
    ax.set_xticks(range(len(directions)), [_DIRECTION_LABELS.get(d, d.replace("_", " ")) for d in directions])
    ax.set_ylim(0.0, 1.0)
    ax.set_ylabel("recall")
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    # Outside the axes: inside, it would cover the tallest bars.
    fig.legend(loc="outside lower center", ncols=len(ks), fontsize=8, frameon=False)
    if title:
        ax.set_title(title)
    return save_png(fig, path)


# --- classification ---------------------------------------------------------------------------------------


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """``(num_classes, num_classes)`` int64 counts; row = true class, column = predicted class."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    num_classes = int(num_classes)
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {labels.shape}")
    labels = as_labels("labels", labels, labels.shape[0], num_classes)
    predictions = as_labels("predictions", predictions, labels.shape[0], num_classes)
    counts = np.bincount(labels * num_classes + predictions, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes).astype(np.int64, copy=False)


def _short(name: str, limit: int = _CLASS_NAME_CHARS) -> str:
    return name if len(name) <= limit else name[: limit - 1] + "…"


def plot_confusion_matrix(
    matrix: np.ndarray,
    class_names: Sequence[str],
    path: str | os.PathLike[str],
    title: str = "",
    normalise: bool = True,
) -> Path:
    """Heat map of a confusion matrix (rows true, columns predicted), row-normalised by default.

    Row normalisation shows per-class recall on the diagonal whatever the class sizes. Cells are
    annotated up to 20 classes and named up to 50; larger matrices (ImageNet's 1000) are drawn as a plain
    heat map in a figure no larger than 14 inches a side.
    """
    class_names = [str(name) for name in class_names]
    matrix = np.asarray(matrix)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"confusion matrix must be square (n, n), got shape {matrix.shape}")
    n = matrix.shape[0]
    if n == 0:
        raise ValueError("confusion matrix has no classes")
    if n != len(class_names):
        raise ValueError(f"confusion matrix is {n}x{n} but {len(class_names)} class names were given")
    if not np.issubdtype(matrix.dtype, np.number) or np.issubdtype(matrix.dtype, np.complexfloating):
        raise ValueError(f"confusion matrix must hold real numbers, got dtype {matrix.dtype}")
    values = matrix.astype(np.float64)
    if not np.isfinite(values).all() or (values < 0).any():
        raise ValueError("confusion matrix must hold finite, non-negative counts")
    if normalise:
        row_sums = values.sum(axis=1, keepdims=True)
        # A class with no images keeps an all-zero row instead of NaNs.
        values = np.divide(values, row_sums, out=np.zeros_like(values), where=row_sums > 0)
    vmax = 1.0 if normalise else max(float(values.max()), 1.0)

    side = min(_CONFUSION_MAX_INCHES, max(5.0, 2.5 + 0.45 * n))
    fig = new_figure(side + 1.0, side)  # +1 in for the colour bar
    ax = fig.add_subplot()
    # Sharp cells while each gets a few pixels; beyond that, smoothing keeps off-diagonal mass visible
    # where nearest-neighbour sampling would drop whole rows.
    interpolation = "nearest" if n <= 200 else "auto"
    image = ax.imshow(values, cmap="Blues", vmin=0.0, vmax=vmax, interpolation=interpolation)
    fig.colorbar(image, ax=ax, shrink=0.8, label="fraction of true class" if normalise else "count")
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    if n <= _TICK_LABEL_MAX_CLASSES:
        font = max(5.0, min(10.0, 300.0 / n))
        names = [_short(name) for name in class_names]
        ax.set_xticks(range(n), names, rotation=90 if n > 8 else 45, ha="center" if n > 8 else "right", fontsize=font)
        ax.set_yticks(range(n), names, fontsize=font)
    else:
        ax.set_xticks([])
        ax.set_yticks([])
    if n <= _ANNOTATE_MAX_CLASSES:
        font = max(5.0, min(10.0, 140.0 / n))
        integral = not normalise and bool(np.all(values == np.round(values)))
        for (row, col), v in np.ndenumerate(values):
            text = f"{v:.2f}" if normalise else (f"{int(v)}" if integral else f"{v:.3g}")
            colour = "white" if v > 0.6 * vmax else "black"
            ax.text(col, row, text, ha="center", va="center", fontsize=font, color=colour)
    if title:
        ax.set_title(title)
    return save_png(fig, path)


# --- retrieval examples -----------------------------------------------------------------------------------


def _validate_top_images(
    queries: Sequence[str],
    images: Sequence[Sequence[Image.Image]],
    scores: Sequence[Sequence[float]],
    hits: Sequence[Sequence[bool]],
) -> int:
    """Check the nested lengths agree; return the widest row's K."""
    if len(queries) == 0:
        raise ValueError("at least one query is needed")
    if len(queries) > _MAX_QUERY_ROWS:
        raise ValueError(f"at most {_MAX_QUERY_ROWS} queries fit one figure, got {len(queries)}; plot a slice")
    for name, rows in (("images", images), ("scores", scores), ("hits", hits)):
        if len(rows) != len(queries):
            raise ValueError(f"{name} has {len(rows)} rows but there are {len(queries)} queries")
    widest = 0
    for q, (row_images, row_scores, row_hits) in enumerate(zip(images, scores, hits, strict=True)):
        k = len(row_images)
        if len(row_scores) != k or len(row_hits) != k:
            raise ValueError(
                f"query {q} has {k} images, {len(row_scores)} scores and {len(row_hits)} hits; they must agree"
            )
        if k == 0:
            raise ValueError(f"query {q} has no retrieved images")
        for j, image in enumerate(row_images):
            if not isinstance(image, Image.Image):
                raise TypeError(f"images[{q}][{j}] must be a PIL image, got {type(image).__name__}")
        for j, score in enumerate(row_scores):
            if isinstance(score, (str, bytes)) or not isinstance(score, (int, float, np.number)):
                raise TypeError(f"scores[{q}][{j}] must be a number, got {score!r}")
        widest = max(widest, k)
    if widest > _MAX_TOP_K:
        raise ValueError(f"at most {_MAX_TOP_K} images per query fit one figure, got {widest}")
    return widest


def _thumbnail(image: Image.Image) -> np.ndarray:
    """A small RGB copy; transparency is flattened onto white so cut-outs don't turn black."""
    small = image.copy()
    small.thumbnail((_THUMBNAIL_PX, _THUMBNAIL_PX))
    if small.mode in ("RGBA", "LA", "PA") or (small.mode == "P" and "transparency" in small.info):
        rgba = small.convert("RGBA")
        flat = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        small = Image.alpha_composite(flat, rgba)
    return np.asarray(small.convert("RGB"))


def _wrap(text: str, width: int = 26, max_lines: int = 7) -> str:
    lines = textwrap.wrap(text, width=width) or [""]
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = lines[-1][: width - 1] + "…"
    return "\n".join(lines)


def plot_top_images(
    queries: Sequence[str],
    images: Sequence[Sequence[Image.Image]],
    scores: Sequence[Sequence[float]],
    hits: Sequence[Sequence[bool]],
    path: str | os.PathLike[str],
    title: str = "",
) -> Path:
    """Grid of text→image retrievals: one row per query, its top-K images left to right.

    Each image carries its score and a frame: green when it is a ground-truth match, red otherwise (the
    word "hit"/"miss" repeats it for readers who cannot tell the colours apart).
    """
    k = _validate_top_images(queries, images, scores, hits)
    rows = len(queries)
    fig = new_figure(2.8 + 2.0 * k, 0.4 * bool(title) + 2.3 * rows)
    axes = fig.subplots(rows, k + 1, squeeze=False, gridspec_kw={"width_ratios": [1.4] + [1.0] * k})
    for q, query in enumerate(queries):
        text_ax = axes[q, 0]
        text_ax.axis("off")
        text_ax.text(0.0, 0.5, _wrap(str(query)), ha="left", va="center", fontsize=9, transform=text_ax.transAxes)
        for j in range(k):
            ax = axes[q, j + 1]
            if j >= len(images[q]):
                ax.axis("off")  # a shorter row than the widest
                continue
            hit = bool(hits[q][j])
            colour = _HIT_COLOUR if hit else _MISS_COLOUR
            ax.imshow(_thumbnail(images[q][j]))
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_edgecolor(colour)
                spine.set_linewidth(4)
            score = float(scores[q][j])
            label = f"{score:.3f}" if math.isfinite(score) else str(score)
            ax.set_xlabel(f"{label}  {'hit' if hit else 'miss'}", fontsize=8, color=colour)
    if title:
        fig.suptitle(title)
    return save_png(fig, path)
