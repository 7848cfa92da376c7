"""The progress API the library reports through: quiet by default, a sink's when one is installed."""

import logging
import pickle

import pytest

from components.runtime import progress
from tests.progress_fakes import RecordingSink


def test_without_a_sink_stages_only_log_and_worker_reporters_do_nothing(caplog):
    assert not progress.live()
    with caplog.at_level(logging.INFO, logger="align.progress"), progress.stage("ingest") as stage:
        stage.headline = "10 pairs in"
        with progress.task("decode", total=10) as bar:
            bar.advance(10)
    assert caplog.records[0].getMessage() == "ingest started"
    assert caplog.records[-1].getMessage().endswith(": 10 pairs in")
    with progress.worker_task("train", total=5) as reporter:  # no sink that wants it: no actor
        assert not reporter.enabled
        reporter.advance(3)
        reporter.update(4, loss=1.0)
    assert progress._board is None


def test_a_stage_reports_its_headline_and_nesting_to_the_installed_sink():
    sink = RecordingSink()
    with progress.installed(sink), progress.stage("gate") as gate:
        with progress.stage("index") as index:
            index.headline = "5 images"
        gate.headline = "passed"
    assert sink.events == [("started", "gate", 0), ("started", "index", 1), ("finished", "index", "5 images", 1),
                           ("finished", "gate", "passed", 0)]
    assert progress.current_sink() is not sink  # uninstalled again


def test_a_failure_is_reported_once_by_the_innermost_stage_and_remembered_on_the_exception():
    sink = RecordingSink()
    with progress.installed(sink), pytest.raises(ValueError) as raised, progress.stage("gate"), progress.stage("index"):
        raise ValueError("no images")
    assert [e for e in sink.events if e[0] == "failed"] == [("failed", "index", "ValueError", 1)]
    assert progress.failed_stage(raised.value) == "index"
    try:  # a later exception raised from it still names the stage
        raise RuntimeError("wrapped") from raised.value
    except RuntimeError as wrapped:
        assert progress.failed_stage(wrapped) == "index"
    assert progress.failed_stage(KeyError("elsewhere")) is None


def test_driver_tasks_count_up_with_their_fields():
    sink = RecordingSink()
    with progress.installed(sink), progress.task("retrieval", total=500, unit="images") as bar:
        bar.advance(250)
        bar.advance(250, loss=0.5)
    assert sink.events == [("task", "retrieval", 500, "images"), ("progress", 250, {}), ("progress", 500, {"loss": 0.5}),
                           ("task done",)]


class _FakeMethod:
    def __init__(self, calls, name):
        self.calls, self.name = calls, name

    def remote(self, *args):
        self.calls.append((self.name, *args))


class _FakeBoard:
    def __init__(self):
        self.calls = []
        self.advance, self.update = _FakeMethod(self.calls, "advance"), _FakeMethod(self.calls, "update")


def test_a_worker_reporter_sends_every_count_but_thins_out_positions():
    board = _FakeBoard()
    reporter = progress.WorkerProgress(board, "train#1", min_interval_s=3600)
    reporter.advance(64)
    reporter.advance(64)
    reporter.update(1, loss=9.0)  # the first position goes out
    reporter.update(2, loss=8.0)  # thinned out
    reporter.update(600, final=True, loss=5.0)  # the last one always goes out
    assert board.calls == [("advance", "train#1", 64.0, {}), ("advance", "train#1", 64.0, {}),
                           ("update", "train#1", 1.0, {"loss": 9.0}), ("update", "train#1", 600.0, {"loss": 5.0})]


def test_a_worker_reporter_pickles_and_never_raises():
    class Broken:
        class advance:
            @staticmethod
            def remote(*args):
                raise ConnectionError("actor gone")

    copy = pickle.loads(pickle.dumps(progress.WorkerProgress(None, "decode#2")))
    assert copy.task == "decode#2" and not copy.enabled
    progress.WorkerProgress(Broken(), "decode#3").advance(1)  # progress never breaks the work
