"""PNG figures on matplotlib's object API, for every package that draws (evaluation, report, experiments).

Figures are built on ``matplotlib.figure.Figure`` and written through ``savefig`` (the Agg canvas), never
through ``pyplot``: pyplot keeps a global registry of figures and a process-wide backend, which leaks
memory in long-lived workers and is not thread-safe. matplotlib itself is imported inside the functions,
so importing this module stays cheap and does not build matplotlib's font cache.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.figure import Figure

DPI = 100


def new_figure(width: float, height: float) -> Figure:
    """A figure on matplotlib's object API (no pyplot state), laid out for saving as PNG."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def png_bytes(fig: Figure) -> bytes:
    """``fig`` as PNG bytes (for embedding or logging), dropping its artists so the memory goes now."""
    import io

    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format="png", dpi=DPI)
    finally:
        fig.clear()
    return buffer.getvalue()


def save_png(fig: Figure, path: str | os.PathLike[str]) -> Path:
    """Write ``fig`` as PNG (creating parent folders) and drop its artists so the memory goes now."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        fig.savefig(out, format="png", dpi=DPI)
    finally:
        fig.clear()
    return out
