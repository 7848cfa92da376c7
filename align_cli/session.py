"""One staged verb under the console: the libraries' output to the run's log, the story on the terminal,
and a failure explained (stage, reason, what to try, where the log is) instead of a traceback."""

from __future__ import annotations

import logging
import sys
import time
import traceback
from collections.abc import Callable

from align_cli.console import Console, duration, make_console
from align_cli.failures import explain
from align_cli.output import RedirectedOutput, configure_logging, log_path
from components.secrets import redact_text

INTERRUPTED = 130  # the shell's code for Ctrl-C


def run_staged(
    verb: str,
    home: str,
    body: Callable[[Console], int],
    *,
    verbose: bool = False,
    tracking_uri: str = "",
    command: list[str] | None = None,
    keep_redirect: bool = False,
    announce_log: bool = True,
) -> int:
    """Run ``body(console)``; returns its exit code, or non-zero after explaining what went wrong.

    ``keep_redirect`` leaves fds 1/2 on the log afterwards (for a process about to exit, whose
    background threads and exit hooks still print). ``announce_log``: end with the log's path on
    stderr (off when the body's own result names it).
    """
    from components.runtime import progress

    started = time.monotonic()
    redirected = handler = None
    if verbose:
        handler = configure_logging()
        console = make_console(sys.stdout, sys.stderr, verbose=True)
    else:
        try:
            redirected = RedirectedOutput(log_path(home, verb))
        except OSError as error:  # no log file (a read-only state folder): show everything instead
            sys.stderr.write(f"align: cannot write a log file under {home} ({error}); showing everything\n")
            return run_staged(verb, home, body, verbose=True, tracking_uri=tracking_uri, command=command)
        started_at = time.strftime("%Y-%m-%d %H:%M:%S")
        redirected.write_log(redact_text(f"=== align {' '.join(command or [verb])} ({started_at}) ==="))
        console = make_console(redirected.console_out, redirected.console_err)
        console.log_path = str(redirected.path)
    try:
        with progress.installed(console):
            code = body(console)
        if redirected is not None and announce_log:
            console.note(f"log: {redirected.path}")
        return code
    except KeyboardInterrupt:
        _record_traceback(redirected)
        console.failure(f"align {verb} interrupted after {duration(time.monotonic() - started)}.",
                        "Stopped by Ctrl-C.", "Rerun the same command: finished stages are reused and training "
                        "resumes from its last checkpoint.", _log_note(redirected))
        return INTERRUPTED
    except Exception as error:  # noqa: BLE001 -- every failure is explained, then the exit code says so
        _record_traceback(redirected)
        stage = progress.failed_stage(error)
        where = f" in stage {stage}" if stage else ""
        found = explain(error, tracking_uri)
        console.failure(f"align {verb} failed{where} after {duration(time.monotonic() - started)}.",
                        found.reason, found.hint, _log_note(redirected))
        return 1
    finally:
        console.close()
        if handler is not None:
            logging.getLogger().removeHandler(handler)
        if redirected is not None and not keep_redirect:
            redirected.restore()


def _record_traceback(redirected: RedirectedOutput | None) -> None:
    text = redact_text(traceback.format_exc())  # a message may quote a store URI
    if redirected is not None:
        redirected.write_log(text)
    else:  # verbose: everything is on the terminal already, the traceback too
        sys.stderr.write(text)


def _log_note(redirected: RedirectedOutput | None) -> str:
    return f"{redirected.path} (the full traceback and everything Ray, Prefect and MLflow printed)" if redirected else ""


def config_failure(verb: str, error: Exception, verbose: bool = False) -> int:
    """A recipe or override that does not load: explained before anything starts (there is no log yet)."""
    if verbose:
        traceback.print_exception(error)
    found = explain(error)
    make_console(sys.stdout, sys.stderr, verbose=True).failure(
        f"align {verb} did not start: its configuration could not be loaded.", found.reason, found.hint, ""
    )
    return 2
