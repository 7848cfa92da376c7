"""Steps that talk to S3 or the tracking server retry with exponential back-off; a bad config does not."""

import pytest

from components.config import load_config


def test_an_external_step_survives_a_transient_failure(tmp_path, monkeypatch):
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect"))
    from prefect import flow, task

    from flows.tasks import with_retries

    calls = []

    @task
    def talk_to_tracking_server() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError("tracking server blip")
        return "logged"

    cfg = load_config(None, ["orchestration.retries=3", "orchestration.retry_delay_s=0.05"])
    retried = with_retries(talk_to_tracking_server, cfg)
    assert retried.retries == 3 and retried.retry_delay_seconds == pytest.approx([0.05, 0.1, 0.2])  # doubling

    @flow
    def stage() -> str:
        return retried()

    assert stage() == "logged" and len(calls) == 3

    calls.clear()
    once = with_retries(talk_to_tracking_server, load_config(None, ["orchestration.retries=0"]))

    @flow
    def stage_without_retries() -> str:
        return once()

    with pytest.raises(ConnectionError, match="blip"):
        stage_without_retries()
    assert len(calls) == 1
