"""Who is champion, and how they got there: alias moves with a recorded history.

MLflow aliases have no memory, so every move of ``champion`` (gate pass, forced promotion, rollback)
is appended to a JSON history on the registered model (tag ``align.champion_history``) and noted on
the versions involved. Rollback replays that history as a stack: promotions push, rollbacks pop, so
rolling back twice walks back two champions instead of flipping between the last two.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

from components.registry.store import CHAMPION

HISTORY_TAG = "align.champion_history"
HISTORY_LIMIT = 200  # events kept; the registry caps a tag value at 100k characters
PROMOTED_BY_GATE, PROMOTED_BY_HAND, ROLLED_BACK = "gate", "forced", "rollback"


class RollbackError(RuntimeError):
    """There is no earlier champion to return to."""


def _client(tracking_uri: str):
    import mlflow

    return mlflow.MlflowClient(tracking_uri=tracking_uri)


def champion_history(tracking_uri: str, model_name: str) -> list[dict]:
    """Every recorded move of ``champion``, oldest first (empty for a model never promoted by us)."""
    model = _client(tracking_uri).get_registered_model(model_name)
    raw = model.tags.get(HISTORY_TAG, "[]")
    try:
        history = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"registered model {model_name!r} has an unreadable {HISTORY_TAG} tag: {exc}") from exc
    return history if isinstance(history, list) else []


def champion_stack(history: list[dict]) -> list[str]:
    """Replay the history: the champions a rollback would walk back through, current last."""
    stack: list[str] = []
    for event in history:
        if event.get("how") == ROLLED_BACK:
            if stack:
                stack.pop()
            if not stack or stack[-1] != event["version"]:
                stack.append(event["version"])  # a history written before we kept one
        elif not stack or stack[-1] != event["version"]:
            stack.append(event["version"])
    return stack


def set_champion(tracking_uri: str, model_name: str, version: str, how: str, reason: str = "") -> dict:
    """Move ``champion`` to ``version`` and record the move; returns the recorded event."""
    client = _client(tracking_uri)
    history = champion_history(tracking_uri, model_name)
    previous = client.get_registered_model(model_name).aliases.get(CHAMPION)
    event = {
        "version": str(version),
        "previous": str(previous) if previous is not None else None,
        "how": how,
        "reason": reason,
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    client.set_registered_model_alias(model_name, CHAMPION, str(version))
    history = (history + [event])[-HISTORY_LIMIT:]
    client.set_registered_model_tag(model_name, HISTORY_TAG, json.dumps(history))
    client.set_model_version_tag(model_name, str(version), "align.champion_since", event["at"])
    client.set_model_version_tag(model_name, str(version), "align.promotion", how)
    if reason:
        client.set_model_version_tag(model_name, str(version), "align.promotion_reason", reason[:4000])
    return event


def rollback(tracking_uri: str, model_name: str, reason: str = "", prepare: Callable[[str], object] | None = None) -> dict:
    """Move ``champion`` back to the champion before the current one; returns the recorded event.

    ``prepare(version)`` runs before the alias moves (serving follows the alias at once).
    """
    client = _client(tracking_uri)
    current = client.get_registered_model(model_name).aliases.get(CHAMPION)
    stack = champion_stack(champion_history(tracking_uri, model_name))
    if current is None:
        raise RollbackError(f"{model_name} has no champion to roll back from")
    if len(stack) < 2 or stack[-1] != str(current):
        raise RollbackError(
            f"{model_name}: no earlier champion recorded before v{current} "
            f"(promotion history: {stack or 'empty'}); promote a version with `align promote --version N` instead"
        )
    target = stack[-2]
    if prepare is not None:
        prepare(target)
    event = set_champion(tracking_uri, model_name, target, ROLLED_BACK, reason)
    note = f"{event['at']}: champion rolled back to v{target}" + (f" ({reason})" if reason else "")
    client.set_model_version_tag(model_name, str(current), "align.rolled_back", note[:4000])
    return event
