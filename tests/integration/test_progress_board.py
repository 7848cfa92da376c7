"""Progress from Ray workers reaches the driver's sink through the board actor (a real Ray head)."""

import time

import pytest

from components.runtime import progress
from tests.progress_fakes import RecordingSink

pytestmark = pytest.mark.integration


def test_ray_workers_report_through_the_board_actor_to_the_drivers_sink(ray_session):
    ray = ray_session

    @ray.remote(num_cpus=0)
    def work(reporter, rows):
        for _ in range(rows // 10):
            reporter.advance(10)
        return rows

    sink = RecordingSink()
    with progress.installed(sink):
        with progress.worker_task("decode", total=60, unit="pairs") as reporter:
            assert reporter.enabled
            assert sum(ray.get([work.remote(reporter, 30), work.remote(reporter, 30)])) == 60
            deadline = time.monotonic() + 10  # the driver's poller forwards within a poll interval or two
            while not any(event[:2] == ("progress", 60) for event in sink.events) and time.monotonic() < deadline:
                time.sleep(0.1)
        assert progress._board is not None
    assert progress._board is None  # the actor goes with the sink
    moves = [event[1] for event in sink.events if event[0] == "progress"]
    assert moves and moves[-1] == 60 and moves == sorted(moves)
    assert sink.events[0] == ("task", "decode", 60, "pairs") and sink.events[-1] == ("task done",)
