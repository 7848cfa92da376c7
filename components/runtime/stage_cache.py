"""Stage caching: a lifecycle stage's outputs, keyed by exactly what they were computed from.

A key is the stage name plus named input hashes: the config sections the stage reads and the content
hashes of its upstream outputs (dataset, model weights, evaluation sets). Re-running a lifecycle with
unchanged inputs, or after a crash, finds the finished stages' records and skips them; changing one
input changes the keys of the stages that depend on it, and only those run again.

Records are small JSON files under ``<home>/stage-cache/<stage>/<digest>.json`` (a local folder or
S3, like every other state), readable with any JSON tool: nothing is unpickled. A stage may also
record that it *started* (the training run it opened), so a re-run after a crash resumes that run.

Neither a key nor a record holds a credential: inputs and outputs are redacted (``components.secrets``),
so a store URI's password is neither written into a record nor part of a key, and rotating it keeps
every cache valid. Redaction leaves a URI without secrets as it is, so such keys are unchanged.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from components.secrets import redact
from components.storage import exists, join_uri, list_names, read_bytes, read_json, write_json

log = logging.getLogger(__name__)

STARTED, COMPLETE = "started", "complete"


def digest(payload: object) -> str:
    """Short, stable hash of a JSON-able value (dict keys sorted)."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:20]


def file_digest(uri: str) -> str:
    """Content hash of one file (local or S3), e.g. the model weights a later stage depends on."""
    return hashlib.sha256(read_bytes(uri)).hexdigest()[:20]


def tree_fingerprint(uri: str) -> str:
    """Cheap fingerprint of a source folder or file: every file's relative path, size and mtime.

    Hashing the bytes of a raw corpus would cost as much as ingesting it; size + modification time is
    what ``make`` and rsync trust, and catches added, removed, replaced and rewritten files.
    """
    import pyarrow.fs as pafs

    if "://" not in uri:
        from pathlib import Path

        uri = str(Path(uri).resolve())
    fs, root = pafs.FileSystem.from_uri(uri)
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"source {uri} does not exist")
    infos = [info] if info.type == pafs.FileType.File else fs.get_file_info(pafs.FileSelector(root, recursive=True))
    entries = sorted(
        (i.path.removeprefix(root), i.size, i.mtime_ns or 0) for i in infos if i.type == pafs.FileType.File
    )
    return digest(entries)


@dataclass(frozen=True)
class StageKey:
    """What a stage's outputs depend on: ``inputs`` maps an input's name to its hash."""

    stage: str
    inputs: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "inputs", redact(dict(self.inputs)))  # no password in a key, nor in its digest

    @property
    def digest(self) -> str:
        return digest({"stage": self.stage, "inputs": self.inputs})


class StageCache:
    """Records of finished (and started) stages under one root URI; ``enabled=False`` always misses."""

    def __init__(self, root_uri: str, enabled: bool = True) -> None:
        self.root_uri, self.enabled = root_uri.rstrip("/"), enabled

    def _uri(self, key: StageKey) -> str:
        return join_uri(self.root_uri, key.stage, f"{key.digest}.json")

    def _read(self, key: StageKey) -> dict | None:
        uri = self._uri(key)
        if not self.enabled or not exists(uri):
            return None
        try:
            return read_json(uri)
        except (OSError, ValueError) as error:  # a torn write is a miss, not a crash
            log.warning("ignoring unreadable stage record %s: %s", uri, error)
            return None

    def lookup(self, key: StageKey) -> dict | None:
        """Outputs of a finished run of this stage with these inputs, else None."""
        record = self._read(key)
        return record["outputs"] if record and record.get("status") == COMPLETE else None

    def started(self, key: StageKey) -> dict | None:
        """What an unfinished earlier attempt recorded when it started (e.g. its run id), else None."""
        record = self._read(key)
        return record["outputs"] if record and record.get("status") == STARTED else None

    def _write(self, key: StageKey, status: str, outputs: dict) -> None:
        if self.enabled:
            record = {"stage": key.stage, "inputs": key.inputs, "status": status, "outputs": redact(outputs),
                      "written_at": time.time()}
            write_json(self._uri(key), record)

    def mark_started(self, key: StageKey, outputs: dict) -> None:
        self._write(key, STARTED, outputs)

    def mark_complete(self, key: StageKey, outputs: dict) -> None:
        self._write(key, COMPLETE, outputs)

    def records(self, stage: str) -> list[dict]:
        """Every record of ``stage`` (for inspection and tests)."""
        folder = join_uri(self.root_uri, stage)
        return [read_json(join_uri(folder, name)) for name in list_names(folder) if name.endswith(".json")]


def run_cached(
    cache: StageCache,
    key: StageKey,
    compute: Callable[[], dict],
    still_valid: Callable[[dict], bool] = lambda outputs: True,
) -> tuple[dict, bool]:
    """``(outputs, cached)``: the recorded outputs when the stage already finished with these inputs
    (and ``still_valid`` confirms what they point at still exists), else ``compute()``, recorded."""
    found = cache.lookup(key)
    if found is not None and still_valid(found):
        log.info("stage %s: cached (%s)", key.stage, key.digest)
        return found, True
    outputs = compute()
    cache.mark_complete(key, outputs)
    return outputs, False
