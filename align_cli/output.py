"""Send everything the libraries print to a log file, and keep the real terminal for the console.

Ray, Ray Data, Prefect, MLflow, faiss and Hugging Face write wherever they like: Python's
``sys.stdout``/``sys.stderr``, logging handlers bound to them, warnings, subprocesses that inherit the
file descriptors, C code writing to fd 1/2, and Ray's driver-side forwarding of worker output. Pointing
fds 1 and 2 themselves at the log file catches all of it; the console writes to duplicates of the
original descriptors made beforehand.
"""

from __future__ import annotations

import io
import logging
import os
import sys
import time
from pathlib import Path
from typing import TextIO

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def log_path(home: str, verb: str, now: float | None = None) -> Path:
    """``<home>/logs/<verb>-<YYYYmmdd-HHMMSS>.log``; a remote home logs under the temp folder instead."""
    import tempfile

    folder = Path(home) / "logs" if "://" not in home else Path(tempfile.gettempdir()) / "align-logs"
    return folder / f"{verb}-{time.strftime('%Y%m%d-%H%M%S', time.localtime(now))}.log"


def _is_descriptor(stream, fd: int) -> bool:
    try:
        return stream.fileno() == fd
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return False


def configure_logging(stream: TextIO | None = None) -> logging.Handler:
    """INFO and above from every logger to ``stream`` (default: stderr), as one root handler."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per Prefect API call otherwise
    return handler


class RedirectedOutput:
    """Fds 1 and 2 (and Python's streams, logging, warnings) into ``path`` until ``restore``.

    ``console_out``/``console_err`` reach what stdout/stderr were before. When ``sys.stdout`` is not
    fd 1 (a test's capture, an embedding program), it is the console as it is, and Python-level writes
    are pointed at the log explicitly; the fds are redirected either way.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.log = open(self.path, "a", buffering=1, encoding="utf-8", errors="replace")  # noqa: SIM115 -- closed in restore
        self._opened: list[TextIO] = []
        self._saved_streams = (sys.stdout, sys.stderr)
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (AttributeError, OSError, ValueError):
                pass
        self.console_out = self._console(sys.stdout, 1)
        self.console_err = self._console(sys.stderr, 2)
        self._saved_fds = (os.dup(1), os.dup(2))
        os.dup2(self.log.fileno(), 1)
        os.dup2(self.log.fileno(), 2)
        if not _is_descriptor(sys.stdout, 1):
            sys.stdout = self._on_descriptor(1)
        if not _is_descriptor(sys.stderr, 2):
            sys.stderr = self._on_descriptor(2)
        self._root_level = logging.getLogger().level
        self._handler = configure_logging(self.log)
        self._restored = False

    def _console(self, stream, fd: int) -> TextIO:
        if not _is_descriptor(stream, fd):
            return stream
        encoding = getattr(stream, "encoding", None) or "utf-8"
        console = open(os.dup(fd), "w", buffering=1, encoding=encoding, errors="replace")  # noqa: SIM115
        self._opened.append(console)
        return console

    def _on_descriptor(self, fd: int) -> TextIO:
        stream = open(fd, "w", buffering=1, encoding="utf-8", errors="replace", closefd=False)  # noqa: SIM115
        self._opened.append(stream)
        return stream

    def write_log(self, text: str) -> None:
        self.log.write(text if text.endswith("\n") else text + "\n")
        self.log.flush()

    def restore(self) -> None:
        """Fds, streams and logging back as they were; the log file is closed."""
        if self._restored:
            return
        self._restored = True
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (AttributeError, OSError, ValueError):
                pass
        logging.getLogger().removeHandler(self._handler)
        logging.getLogger().setLevel(self._root_level)
        sys.stdout, sys.stderr = self._saved_streams
        for fd, saved in zip((1, 2), self._saved_fds, strict=True):
            os.dup2(saved, fd)
            os.close(saved)
        for stream in self._opened:
            try:
                stream.close()
            except (OSError, ValueError):
                pass
        self.log.close()
