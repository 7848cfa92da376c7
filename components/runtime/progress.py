"""Stage and progress events from the library, shown by whoever installed a sink (the CLI's console).

The library reports and never prints: by default events only go to logging, so library use and tests
stay quiet. A stage is one line when it starts and one when it ends (its duration and a headline); a
task is a progress bar (``completed`` of ``total``, plus fields such as the loss).

Code on Ray workers (training's rank 0, Ray Data UDFs) cannot call the driver's sink. ``worker_task``
hands it a picklable ``WorkerProgress`` that sends to a small actor (no CPU) which a driver thread
polls and forwards to the sink. The actor exists only while a sink that shows progress live is
installed; otherwise the reporter does nothing.
"""

from __future__ import annotations

import contextvars
import itertools
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

log = logging.getLogger("align.progress")

POLL_INTERVAL_S = 0.5
WORKER_MIN_INTERVAL_S = 0.5  # a worker sends the latest value at most this often (counts are always sent)


class Sink:
    """Where events go. This default only logs them; the CLI installs one that draws them."""

    live = False  # True: wants per-task progress, from Ray workers too (worth an actor)

    def stage_started(self, stage: str, depth: int) -> None:
        log.info("%s started", stage)

    def stage_finished(self, stage: str, seconds: float, headline: str, depth: int) -> None:
        log.info("%s done in %.1f s%s", stage, seconds, f": {headline}" if headline else "")

    def stage_failed(self, stage: str, seconds: float, error: BaseException, depth: int) -> None:
        log.info("%s failed after %.1f s: %s: %s", stage, seconds, type(error).__name__, error)

    def task_started(self, task: str, description: str, total: float | None, unit: str) -> None:
        log.debug("%s: started (%s %s)", description, total if total is not None else "?", unit)

    def task_progress(self, task: str, completed: float, fields: dict) -> None:
        log.debug("%s: %s %s", task, completed, fields)

    def task_finished(self, task: str) -> None:
        log.debug("%s: finished", task)


_sink: Sink = Sink()
_board: _BoardPoller | None = None
_board_lock = threading.Lock()
_depth = contextvars.ContextVar("align_stage_depth", default=0)
_task_ids = itertools.count(1)
_STAGE_ATTRIBUTE = "_align_failed_stage"


def current_sink() -> Sink:
    return _sink


def live() -> bool:
    """Whether anyone watches progress live: worth counting rows that would otherwise go uncounted."""
    return _sink.live


@contextmanager
def installed(sink: Sink) -> Iterator[Sink]:
    """Send events to ``sink`` inside the block; the worker board (if one was made) goes with it."""
    global _sink
    previous, _sink = _sink, sink
    try:
        yield sink
    finally:
        _close_board()
        _sink = previous


# --- stages ---------------------------------------------------------------------------------------------


@dataclass
class Stage:
    """A running stage; set ``headline`` to the numbers its closing line should show."""

    name: str
    headline: str = ""


@contextmanager
def stage(name: str) -> Iterator[Stage]:
    """One line as the stage starts, one as it ends: with its duration and headline, or that it failed.

    A failure is reported once, by the innermost stage it passes through, which is remembered on the
    exception (``failed_stage``) so the CLI can say where things went wrong.
    """
    sink, depth = _sink, _depth.get()
    handle = Stage(name)
    started = time.monotonic()
    sink.stage_started(name, depth)
    _depth.set(depth + 1)
    try:
        yield handle
    except BaseException as error:
        _depth.set(depth)
        if failed_stage(error) is None:
            _remember_stage(error, name)
            sink.stage_failed(name, time.monotonic() - started, error, depth)
        raise
    _depth.set(depth)
    sink.stage_finished(name, time.monotonic() - started, handle.headline, depth)


def _remember_stage(error: BaseException, name: str) -> None:
    try:
        setattr(error, _STAGE_ATTRIBUTE, name)
    except (AttributeError, TypeError):  # an exception type with __slots__: it stays unattributed
        pass


def failed_stage(error: BaseException) -> str | None:
    """The stage an exception (or one it was raised from) failed in; None if it left no stage."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        name = getattr(error, _STAGE_ATTRIBUTE, None)
        if name:
            return name
        error = error.__cause__ or error.__context__
    return None


# --- tasks on the driver --------------------------------------------------------------------------------


class TaskProgress:
    """A progress bar fed from this process."""

    def __init__(self, sink: Sink, task: str):
        self._sink, self.task, self.completed = sink, task, 0.0

    def advance(self, amount: float = 1, **fields) -> None:
        self.update(self.completed + amount, **fields)

    def update(self, completed: float, **fields) -> None:
        self.completed = completed
        self._sink.task_progress(self.task, completed, fields)


@contextmanager
def task(description: str, total: float | None = None, unit: str = "") -> Iterator[TaskProgress]:
    """A progress bar for work done in this process (``total`` None: unknown)."""
    sink, task_id = _sink, f"{description}#{next(_task_ids)}"
    sink.task_started(task_id, description, total, unit)
    try:
        yield TaskProgress(sink, task_id)
    finally:
        sink.task_finished(task_id)


# --- tasks on Ray workers -------------------------------------------------------------------------------


class WorkerProgress:
    """Picklable reporter for code on Ray workers; does nothing when no board was made for it."""

    def __init__(self, board=None, task: str = "", min_interval_s: float = WORKER_MIN_INTERVAL_S):
        self._board, self.task, self._min_interval_s = board, task, min_interval_s
        self._last_sent: float | None = None

    def __getstate__(self) -> dict:  # each copy thins out its own sends
        return {"_board": self._board, "task": self.task, "_min_interval_s": self._min_interval_s, "_last_sent": None}

    @property
    def enabled(self) -> bool:
        return self._board is not None

    def advance(self, amount: float, **fields) -> None:
        """Add ``amount`` done (rows of a batch); every call is sent, so counts from many workers add up."""
        if self._board is not None:
            self._send(self._board.advance, amount, fields)

    def update(self, completed: float, *, final: bool = False, **fields) -> None:
        """Where this task is now (a step count); the latest value wins, so calls are thinned out."""
        if self._board is None:
            return
        now = time.monotonic()
        if final or self._last_sent is None or now - self._last_sent >= self._min_interval_s:
            self._last_sent = now
            self._send(self._board.update, completed, fields)

    def _send(self, method, value: float, fields: dict) -> None:
        try:
            method.remote(self.task, float(value), fields)
        except Exception:  # progress must never break the work it reports on
            log.debug("progress for %s not sent", self.task, exc_info=True)


class _ProgressBoard:
    """The actor workers report to: the latest count and fields per task, drained by the driver."""

    def __init__(self):
        self._tasks: dict[str, list] = {}
        self._changed: set[str] = set()

    def advance(self, task: str, amount: float, fields: dict) -> None:
        entry = self._tasks.setdefault(task, [0.0, {}])
        entry[0] += amount
        entry[1].update(fields)
        self._changed.add(task)

    def update(self, task: str, completed: float, fields: dict) -> None:
        entry = self._tasks.setdefault(task, [0.0, {}])
        entry[0] = completed
        entry[1].update(fields)
        self._changed.add(task)

    def drain(self) -> dict[str, tuple[float, dict]]:
        changed = {task: (self._tasks[task][0], dict(self._tasks[task][1])) for task in self._changed}
        self._changed.clear()
        return changed


class _BoardPoller:
    """The driver's end: one board actor and a thread forwarding what it holds to the sink."""

    def __init__(self, sink: Sink, interval_s: float = POLL_INTERVAL_S):
        import ray

        self.sink, self._interval_s = sink, interval_s
        self.handle = ray.remote(num_cpus=0)(_ProgressBoard).remote()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="align-progress-poller", daemon=True)
        self._thread.start()

    def flush(self) -> None:
        import ray

        with self._lock:
            changes = ray.get(self.handle.drain.remote(), timeout=10)
            for task, (completed, fields) in changes.items():
                self.sink.task_progress(task, completed, fields)

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            try:
                self.flush()
            except Exception:  # a missed poll only delays a bar
                log.debug("progress poll failed", exc_info=True)

    def close(self) -> None:
        import ray

        self._stop.set()
        self._thread.join(timeout=5)
        if ray.is_initialized():
            try:
                ray.kill(self.handle)
            except Exception:  # gone with its cluster already
                log.debug("progress board not killed", exc_info=True)


def _ray_connected() -> bool:
    import sys

    ray = sys.modules.get("ray")  # not imported: certainly not connected (and no import just to ask)
    return ray is not None and ray.is_initialized()


def _board_for(sink: Sink) -> _BoardPoller:
    global _board
    with _board_lock:
        if _board is None or _board.sink is not sink:
            _board = _BoardPoller(sink)
        return _board


def _close_board() -> None:
    global _board
    with _board_lock:
        board, _board = _board, None
    if board is not None:
        board.close()


@contextmanager
def worker_task(description: str, total: float | None = None, unit: str = "") -> Iterator[WorkerProgress]:
    """A progress bar fed from Ray workers: pass the yielded reporter to them (it pickles)."""
    sink = _sink
    if not sink.live or not _ray_connected():
        yield WorkerProgress()
        return
    board, task_id = _board_for(sink), f"{description}#{next(_task_ids)}"
    sink.task_started(task_id, description, total, unit)
    try:
        yield WorkerProgress(board.handle, task_id)
    finally:
        try:
            board.flush()  # the last values before the bar goes
        except Exception:  # a bar short of its end is no reason to fail the task
            log.debug("final progress poll failed", exc_info=True)
        sink.task_finished(task_id)
