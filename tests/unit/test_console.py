"""The CLI's console: a short story on the terminal, everything the libraries print in the run's log,
and failures explained in plain words (no Ray here: stand-in verbs)."""

import errno
import io
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from align_cli.console import LiveConsole, PlainConsole, duration, make_console
from align_cli.failures import GENERIC_HINT, explain
from align_cli.main import _parser, _summary, main
from align_cli.session import run_staged
from components.runtime import progress


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def _plain(clock=None):
    out, err = io.StringIO(), io.StringIO()
    return PlainConsole(out, err, clock=clock or Clock()), out, err


def test_each_stage_is_one_line_as_it_starts_and_one_with_its_duration_and_headline():
    console, out, err = _plain()
    with progress.installed(console):
        with progress.stage("ingest") as stage:
            stage.headline = "1,200 pairs in, 1,050 kept, 150 rejected"
        with progress.stage("gate"), progress.stage("index") as index:
            index.headline = "1,050 images"
    assert out.getvalue() == ""  # stdout is for results: `align ingest | jq` reads only the JSON
    assert err.getvalue().splitlines() == [
        "ingest     started",
        "ingest     done in 0 s: 1,200 pairs in, 1,050 kept, 150 rejected",
        "gate       started",
        "  index    started",
        "  index    done in 0 s: 1,050 images",
        "gate       done in 0 s",
    ]


def test_without_a_terminal_progress_is_a_plain_line_every_25_percent_and_10_s_whichever_is_rarer():
    clock = Clock()
    console, _, err = _plain(clock)
    with progress.installed(console), progress.stage("train"), progress.task("train", total=600, unit="steps") as bar:
        clock.now += 20
        bar.update(10, loss=9.9)  # the workers are up: the rate counts from here
        clock.now += 5
        bar.update(160, loss=9.0)  # 25 s since the bar appeared, 27% done: a line
        clock.now += 3
        bar.update(320, loss=8.0)  # 27% further, but 3 s later: nothing
        clock.now += 8
        bar.update(400, loss=7.5)  # 11 s and 40% further: a line
        clock.now += 30
        bar.update(600, loss=6.0)  # done: the stage's own line says so
    lines = err.getvalue().splitlines()
    assert lines[1:3] == ["  train: 160/600 steps (27%), loss 9.00, about 15 s left",
                          "  train: 400/600 steps (67%), loss 7.50, about 8 s left"]
    assert len(lines) == 4 and lines[3].startswith("train      done in")
    assert "\x1b" not in err.getvalue()  # no escape codes in a file


def test_progress_without_a_total_prints_every_30_s():
    clock = Clock()
    console, _, err = _plain(clock)
    with progress.installed(console), progress.task("decode", unit="pairs") as bar:
        clock.now += 15
        bar.advance(1000)
        clock.now += 20
        bar.advance(1000, **{"pairs/s": 57.1})
    assert err.getvalue().splitlines() == ["decode: 2,000 pairs, 57 pairs/s"]


def test_a_terminal_gets_live_bars_and_a_file_gets_plain_lines():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    terminal = Terminal()
    console = make_console(io.StringIO(), terminal)  # the story goes to stderr: its being a terminal decides
    assert isinstance(console, LiveConsole)
    assert isinstance(make_console(io.StringIO(), io.StringIO()), PlainConsole)
    assert isinstance(make_console(io.StringIO(), terminal, verbose=True), PlainConsole)  # bars would drown
    with progress.installed(console), progress.stage("train") as stage:
        with progress.task("train", total=10, unit="steps") as bar:
            bar.advance(5, loss=2.0)
        stage.headline = "10 steps"
    console.close()
    assert "train      started" in terminal.getvalue() and "done in 0 s: 10 steps" in terminal.getvalue()


def test_durations_read_naturally():
    assert [duration(s) for s in (0.4, 41, 99, 100, 125.6)] == ["0 s", "41 s", "99 s", "1 min 40 s", "2 min 06 s"]


def _log_of(tmp_path):
    [log] = (tmp_path / "logs").glob("*.log")
    return log


def _noisy_verb(console):
    """What the libraries do during a stage: print, write to the fds, log, run subprocesses."""
    with progress.stage("ingest") as stage:
        print("print() from a library")
        os.write(1, b"C-level write to fd 1\n")
        os.write(2, b"C-level write to fd 2\n")
        logging.getLogger("a_library").warning("WARNING from a library logger")  # not ray.data: Ray reconfigures it once imported
        logging.getLogger("components.data.pipeline").info("INFO from the platform's own logger")
        subprocess.run([sys.executable, "-c", "import sys; print('subprocess stdout'); print('subprocess stderr', file=sys.stderr)"],
                       check=True)
        stage.headline = "3 pairs in"
    console.result('{"rows_in": 3}')
    return 0


def test_results_reach_stdout_and_everything_the_libraries_print_goes_to_the_log(tmp_path, capfd):
    assert run_staged("ingest", str(tmp_path), _noisy_verb, command=["ingest"]) == 0
    out, err = capfd.readouterr()
    assert out.splitlines() == ['{"rows_in": 3}']
    log = _log_of(tmp_path)
    assert err.splitlines() == ["ingest     started", "ingest     done in 0 s: 3 pairs in", f"log: {log}"]
    text = log.read_text()
    for noise in ("print() from a library", "C-level write to fd 1", "C-level write to fd 2", "WARNING from a library logger",
                  "INFO from the platform's own logger", "subprocess stdout", "subprocess stderr", "ingest done in"):
        assert noise in text
    os.write(1, b"after the verb\n")  # fds, streams and logging are back as they were
    print("print after the verb")
    assert capfd.readouterr().out == "after the verb\nprint after the verb\n"


def test_a_failure_names_the_stage_a_reason_what_to_try_and_the_log_and_keeps_the_traceback_in_the_log(tmp_path, capfd):
    def failing(console):
        with progress.stage("ingest"):
            pass
        with progress.stage("train"):
            raise FileNotFoundError("corpus source /data/photos does not exist")

    assert run_staged("run", str(tmp_path), failing) == 1
    out, err = capfd.readouterr()
    log = _log_of(tmp_path)
    assert out == ""
    assert err.splitlines()[2:] == [
        "train      started",
        "train      failed after 0 s",
        "align run failed in stage train after 0 s.",
        "  Why: A file or folder it needs does not exist: corpus source /data/photos does not exist",
        ("  Try: Check the paths in the recipe and overrides (corpus sources, eval suites, --config); relative paths "
         "are read from the current directory."),
        f"  Log: {log} (the full traceback and everything Ray, Prefect and MLflow printed)",
    ]
    assert "Traceback" not in out + err
    assert "Traceback (most recent call last)" in log.read_text() and 'raise FileNotFoundError("corpus source' in log.read_text()


def test_verbose_shows_everything_live_and_still_tells_the_story(tmp_path, capfd):
    assert run_staged("ingest", str(tmp_path), _noisy_verb, verbose=True) == 0
    out, err = capfd.readouterr()
    assert "print() from a library" in out and "C-level write to fd 2" in err and "WARNING from a library logger" in err
    assert "ingest     done in 0 s: 3 pairs in" in err and '{"rows_in": 3}' in out
    assert not (tmp_path / "logs").exists()


def test_a_bad_setting_is_explained_before_anything_starts(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ALIGN_HOME", str(tmp_path))
    assert main(["ingest", "train.stepz=3"]) == 2
    err = capsys.readouterr().err
    assert "align ingest did not start" in err and "train.stepz is not a known setting" in err
    assert "Traceback" not in err


def test_verbose_is_a_global_flag_and_a_flag_of_every_verb():
    parser = _parser()
    assert parser.parse_args(["-v", "run"]).verbose and parser.parse_args(["run", "--verbose"]).verbose
    assert parser.parse_args(["experiment", "spec.yaml", "-v"]).verbose
    assert not parser.parse_args(["train"]).verbose


def test_the_lifecycle_summary_names_the_log():
    result = {"data_report": {"rows_in": 3, "rows_kept": 2, "rows_rejected": 1}, "metrics": {"retrieval/mean_recall": 0.5},
              "gate": {"passed": True, "reasons": [], "champion_version": "1"}, "model_name": "align",
              "model_version": "1", "run_id": "r1", "serving_url": "http://127.0.0.1:8000"}
    text = _summary(result, 61, "/state/logs/run-1.log")
    assert "=== ALIGN lifecycle finished in 61 s ===" in text and text.endswith("log:     /state/logs/run-1.log")


# --- the failure explainer ------------------------------------------------------------------------------


def test_a_config_error_names_the_bad_key():
    from components.config import load_config

    with pytest.raises(Exception) as raised:
        load_config(None, ["train.steps=lots"])
    found = explain(raised.value)
    assert "train.steps" in found.reason and "'lots'" in found.reason and "align config" in found.hint


def test_ray_start_failing_and_a_missing_auth_token_get_their_own_advice():
    started = explain(RuntimeError("`ray start --head` failed (1):\nsome output\nValueError: bad --num-cpus"))
    assert "local Ray head could not be started: ValueError: bad --num-cpus" in started.reason
    assert "align down" in started.hint
    token = explain(RuntimeError("`ray start --head` failed (1):\nray.exceptions.AuthenticationError: RAY_AUTH_TOKEN_PATH "
                                 "is set but file cannot be opened or is empty: /no/tok. Ensure that the token ..."))
    assert token.reason.endswith("(Ray says: RAY_AUTH_TOKEN_PATH is set but file cannot be opened or is empty: /no/tok).")
    assert "RAY_AUTH_TOKEN_PATH" in token.hint


def test_a_port_in_use_and_an_unreachable_tracking_server_say_which():
    port = explain(OSError(errno.EADDRINUSE, "Address already in use"))
    assert "already taken" in port.reason and "serve.port" in port.hint
    port_in_message = explain(RuntimeError("Failed to start the HTTP proxy: [Errno 98] address already in use"))
    assert "serve.port" in port_in_message.hint
    try:
        try:
            raise ConnectionRefusedError(111, "Connection refused")
        except ConnectionRefusedError as refused:
            raise RuntimeError("API request to http://mlflow:5000/api/2.0/mlflow/runs/create failed") from refused
    except RuntimeError as error:
        server = explain(error, "http://mlflow:5000")
    assert "http://mlflow:5000 could not be reached" in server.reason and "storage.tracking_uri" in server.hint


def test_a_missing_file_is_named_even_when_wrapped():
    try:
        try:
            Path("/nonexistent/align/recipe.yaml").read_text()
        except FileNotFoundError as missing:
            raise RuntimeError("ingest failed") from missing
    except RuntimeError as error:
        found = explain(error)
    assert "/nonexistent/align/recipe.yaml" in found.reason and "paths" in found.hint


def test_anything_else_gets_its_message_and_the_generic_advice():
    found = explain(ZeroDivisionError("division by zero"))
    assert found.reason == "ZeroDivisionError: division by zero" and found.hint == GENERIC_HINT
    worker = explain(RuntimeError("Training failed due to worker errors:\n[Rank 0]:\nTraceback (most recent call last):\n"
                                  '  File "loop.py", line 3\nValueError: global_batch_size 10 is not divisible by 3 workers'))
    assert worker.reason == ("RuntimeError: Training failed due to worker errors: ... ValueError: global_batch_size 10 "
                             "is not divisible by 3 workers")
    assert len(explain(ValueError("x" * 5000)).reason) <= 600
