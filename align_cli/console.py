"""What a person sees: one line per stage start and end, progress for the long parts, results, failures.

Two ways to draw the same events: live ``rich`` bars on a terminal, or on anything else (a file, CI)
plain lines at a slow, fixed pace with no escape codes. Both are ``progress.Sink``s, so the stage
lines are also logged (the run's log file has the story too).
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from typing import TextIO

from components.runtime.progress import Sink

NAME_WIDTH = 10
PLAIN_MIN_INTERVAL_S = 10.0  # plain progress lines: at least this far apart ...
PLAIN_MIN_STEP = 0.25  # ... and at least this much further along (the rarer of the two wins)
PLAIN_UNKNOWN_TOTAL_INTERVAL_S = 30.0  # without a total there is no 25%: a line this often


def duration(seconds: float) -> str:
    """``41 s``, ``2 min 05 s``: how long, to the second."""
    seconds = max(0, round(seconds))
    if seconds < 100:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    return f"{minutes} min {seconds:02d} s"


def count(value: float) -> str:
    """A count of things done: ``4,913``."""
    return f"{int(value):,}"


def number(value: float) -> str:
    """A measured value to three significant digits (``9.80``, ``0.0613``); from 100 on, whole (``1,536``)."""
    if isinstance(value, int) or abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:#.3g}".rstrip(".")


def describe_fields(fields: dict) -> str:
    """``{"loss": 8.3, "samples/s": 512.4}`` -> ``loss 8.3, 512 samples/s``."""
    parts = []
    for key, value in fields.items():
        if isinstance(value, (int, float)):
            parts.append(f"{value:,.0f} {key}" if key.endswith("/s") else f"{key} {number(value)}")
        else:
            parts.append(f"{key} {value}")
    return ", ".join(parts)


def stage_line(stage: str, depth: int, text: str) -> str:
    indent = "  " * depth
    return f"{indent}{stage:<{max(1, NAME_WIDTH - len(indent))}} {text}"


@dataclass
class _Task:
    description: str
    total: float | None
    unit: str
    depth: int
    printed_at: float
    completed: float = 0.0
    fields: dict = field(default_factory=dict)
    printed_fraction: float = 0.0
    first_report: tuple[float, float] | None = None  # (time, completed): the rate counts from here, not from start-up


class Console(Sink):
    """Results on ``out`` (what a pipe reads); the story (stage lines, progress) and failures on ``err``,
    as command-line tools do, so ``align ingest | jq`` sees only the JSON. Subclasses draw the progress."""

    live = True

    def __init__(self, out: TextIO, err: TextIO, clock=time.monotonic):
        self.out, self.err, self._clock = out, err, clock
        self.log_path: str | None = None  # the run's log, when library output goes to one
        self._lock = threading.RLock()
        self._depth = 0
        self._tasks: dict[str, _Task] = {}

    # stage lines (also logged by the base class)
    def stage_started(self, stage: str, depth: int) -> None:
        super().stage_started(stage, depth)
        with self._lock:
            self._depth = depth + 1
            self._story(stage_line(stage, depth, "started"))

    def stage_finished(self, stage: str, seconds: float, headline: str, depth: int) -> None:
        super().stage_finished(stage, seconds, headline, depth)
        with self._lock:
            self._depth = depth
            self._story(stage_line(stage, depth, f"done in {duration(seconds)}" + (f": {headline}" if headline else "")))

    def stage_failed(self, stage: str, seconds: float, error: BaseException, depth: int) -> None:
        super().stage_failed(stage, seconds, error, depth)
        with self._lock:
            self._depth = depth
            self._story(stage_line(stage, depth, f"failed after {duration(seconds)}"))

    # progress
    def task_started(self, task: str, description: str, total: float | None, unit: str) -> None:
        with self._lock:
            now = self._clock()
            self._tasks[task] = _Task(description, total, unit, self._depth, printed_at=now)
            self._task_added(task, self._tasks[task])

    def task_progress(self, task: str, completed: float, fields: dict) -> None:
        with self._lock:
            state = self._tasks.get(task)
            if state is None:
                return
            if state.first_report is None:
                state.first_report = (self._clock(), completed)
            state.completed = completed
            state.fields.update(fields)
            self._task_moved(task, state)

    def task_finished(self, task: str) -> None:
        with self._lock:
            state = self._tasks.pop(task, None)
            if state is not None:
                self._task_removed(task, state)

    # results and failures
    def result(self, text: str) -> None:
        """A verb's result (its JSON, the lifecycle's summary): what the command is for, on stdout."""
        with self._lock:
            self.stop_drawing()
            self.out.write(text.rstrip("\n") + "\n")
            self.out.flush()

    def note(self, text: str) -> None:
        """A line for the person, not for a pipe reading the result (stderr)."""
        with self._lock:
            self.stop_drawing()
            self.err.write(text + "\n")
            self.err.flush()

    def failure(self, title: str, reason: str, hint: str, log_note: str) -> None:
        with self._lock:
            self.stop_drawing()
            lines = [title, f"  Why: {reason}", f"  Try: {hint}"] + ([f"  Log: {log_note}"] if log_note else [])
            self.err.write("\n".join(lines) + "\n")
            self.err.flush()

    def close(self) -> None:
        with self._lock:
            self.stop_drawing()
            self.out.flush()
            self.err.flush()

    # for subclasses
    def _story(self, line: str) -> None:
        self.err.write(line + "\n")
        self.err.flush()

    def _task_added(self, task: str, state: _Task) -> None: ...

    def _task_moved(self, task: str, state: _Task) -> None: ...

    def _task_removed(self, task: str, state: _Task) -> None: ...

    def stop_drawing(self) -> None: ...


class PlainConsole(Console):
    """For files and CI: a progress line only when the task moved on by 25% *and* 10 s have passed."""

    def _task_moved(self, task: str, state: _Task) -> None:
        now = self._clock()
        if now - state.printed_at < PLAIN_MIN_INTERVAL_S:
            return
        if state.total:
            fraction = state.completed / state.total
            if fraction - state.printed_fraction < PLAIN_MIN_STEP or fraction >= 1:
                return
            state.printed_fraction = fraction
        elif now - state.printed_at < PLAIN_UNKNOWN_TOTAL_INTERVAL_S:
            return
        state.printed_at = now
        self._story(self._progress_line(state, now))

    @staticmethod
    def _progress_line(state: _Task, now: float) -> str:
        unit = f" {state.unit}" if state.unit else ""
        if state.total:
            text = f"{count(state.completed)}/{count(state.total)}{unit} ({100 * state.completed / state.total:.0f}%)"
        else:
            text = f"{count(state.completed)}{unit}"
        if state.fields:
            text += ", " + describe_fields(state.fields)
        since, first = state.first_report or (now, state.completed)
        if state.total and state.completed > first and now > since:
            rate = (state.completed - first) / (now - since)
            text += f", about {duration((state.total - state.completed) / rate)} left"
        return "  " * state.depth + f"{state.description}: {text}"


class LiveConsole(Console):
    """For a terminal: ``rich`` bars (count, rate fields, elapsed, ETA) below the stage lines."""

    def __init__(self, out: TextIO, err: TextIO):
        super().__init__(out, err)
        from rich.console import Console as RichConsole
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        try:
            width = os.get_terminal_size(err.fileno()).columns or None  # 0 from a pty nobody sized
        except (AttributeError, OSError, ValueError):
            width = None
        self._rich = RichConsole(file=err, width=width, highlight=False, markup=False, emoji=False)
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(bar_width=28),
            MofNCompleteColumn(),
            TextColumn("{task.fields[unit]}"),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=self._rich,
            redirect_stdout=False,  # library output is the log's, never the live display's
            redirect_stderr=False,
            transient=True,
            refresh_per_second=4,
        )
        self._bars: dict[str, object] = {}
        self._drawing = False

    def _story(self, line: str) -> None:
        from rich.text import Text

        if self._drawing:
            self._progress.console.print(Text(line))
        else:
            super()._story(line)

    def _task_added(self, task: str, state: _Task) -> None:
        if not self._drawing:
            self._progress.start()
            self._drawing = True
        self._bars[task] = self._progress.add_task(
            "  " * state.depth + state.description, total=state.total, unit=state.unit, info=""
        )

    def _task_moved(self, task: str, state: _Task) -> None:
        if task in self._bars:
            self._progress.update(self._bars[task], completed=state.completed, info=describe_fields(state.fields))

    def _task_removed(self, task: str, state: _Task) -> None:
        bar = self._bars.pop(task, None)
        if bar is not None:
            self._progress.remove_task(bar)
        if not self._bars:
            self.stop_drawing()

    def stop_drawing(self) -> None:
        if self._drawing:
            self._progress.stop()
            self._drawing = False
            for bar in list(self._progress.task_ids):
                self._progress.remove_task(bar)
            self._bars.clear()


def make_console(out: TextIO, err: TextIO, verbose: bool = False) -> Console:
    """Live bars on a terminal; plain lines otherwise, and when everything else is shown too (verbose)."""
    interactive = hasattr(err, "isatty") and err.isatty() and os.environ.get("TERM") != "dumb"
    return LiveConsole(out, err) if interactive and not verbose else PlainConsole(out, err)
