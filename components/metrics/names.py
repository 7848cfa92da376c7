"""Metric names as MLflow records them, and the Recall@K names read back for plots.

MLflow forbids "@", so ``R@1`` is logged as ``R_at_1`` (``retrieval/text_to_image/R_at_1``). The name is
built and parsed here only, so the writers (validation, evaluation) and the readers (the evaluation's and
the report's plots) cannot drift apart.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# "[<prefix>/]<direction>/R@K" or the MLflow spelling "…/R_at_K"; the prefix is a suite name, "val", or
# a path of them.
_RECALL_NAME = re.compile(r"^(?:(?P<prefix>.*)/)?(?P<direction>[^/]+)/R(?P<spelling>@|_at_)(?P<k>[1-9][0-9]*)$")


def mlflow_metric_name(*parts: str) -> str:
    return "/".join(parts).replace("@", "_at_")


@dataclass(frozen=True)
class RecallName:
    prefix: str | None  # everything before the direction ("retrieval", "val"); None when the name has none
    direction: str  # "image_to_text", "text_to_image"
    k: int
    logged: bool  # spelled as MLflow records it (R_at_K), not R@K


def parse_recall_name(name: str) -> RecallName | None:
    """The parts of a Recall@K metric name; None for any other metric (``mean_recall``, accuracies)."""
    match = _RECALL_NAME.match(name)
    if match is None:
        return None
    return RecallName(match["prefix"], match["direction"], int(match["k"]), match["spelling"] == "_at_")
