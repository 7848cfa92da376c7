"""`align schedule` against a real Prefect server process: the deployment is registered with its cron, and
one on-demand run of it executes the whole lifecycle through the served runner.

The server (``prefect server start`` on 127.0.0.1) is started and stopped by the fixture. The run uses
the e2e lifecycle's tiny recipe and state folder, so its finished stages are usually cached.
"""

import asyncio
import os
import signal
import subprocess
import sys
import time

import pytest

from components.runtime.ray_cluster import free_port
from tests.train_fixtures import TINY_LIFECYCLE

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

DEPLOYMENT = "align-retrain/align-retrain-test"
RUN_TIMEOUT_S = 480


@pytest.fixture(scope="module")
def prefect_api(tmp_path_factory):
    from components.runtime.prefect_server import local_prefect_server

    home = tmp_path_factory.mktemp("prefect-server")
    with local_prefect_server(str(home), free_port(), str(home / "server.log")) as api_url:
        yield api_url


def _wait_for_deployment(client, process, log):
    from prefect.exceptions import ObjectNotFound

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            return asyncio.run(client(DEPLOYMENT))
        except ObjectNotFound:
            if process.poll() is not None:
                raise AssertionError(f"align schedule exited (rc {process.returncode}):\n{log.read_text()[-4000:]}")
            time.sleep(1)
    raise AssertionError(f"{DEPLOYMENT} was not registered within 120 s:\n{log.read_text()[-4000:]}")


def test_the_served_deployment_runs_the_lifecycle_on_demand(prefect_api, ray_session, ray_home, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    overrides = [f"storage.home={ray_home}", f"serve.port={free_port()}", "serve.num_replicas=1", *TINY_LIFECYCLE,
                 "orchestration.deployment_name=align-retrain-test", 'orchestration.schedule_cron="30 4 * * 1"']
    log = tmp_path / "align-schedule.log"
    env = dict(os.environ, PREFECT_API_URL=prefect_api, PREFECT_HOME=str(tmp_path / "prefect-client"))
    with log.open("wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "align_cli.main", "schedule", *overrides], env=env,
                                   stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        with temporary_settings(updates={PREFECT_API_URL: prefect_api}):
            async def read(name):
                async with get_client() as client:
                    return await client.read_deployment_by_name(name)

            deployment = _wait_for_deployment(read, process, log)
            (schedule,) = deployment.schedules
            assert schedule.active and schedule.schedule.cron == "30 4 * * 1" and schedule.schedule.timezone == "UTC"
            assert deployment.parameters["request"]["overrides"] == overrides

            flow_run = run_deployment(DEPLOYMENT, timeout=RUN_TIMEOUT_S)
            assert flow_run.state.is_completed(), f"{flow_run.state}\n{log.read_text()[-6000:]}"

            async def runs_and_artifacts():
                from prefect.client.schemas.filters import FlowRunFilter

                async with get_client() as client:
                    runs = await client.read_flow_runs()
                    ids = FlowRunFilter(id={"any_": [r.id for r in runs]})
                    return runs, await client.read_artifacts(flow_run_filter=ids)

            runs, artifacts = asyncio.run(runs_and_artifacts())
            # The server's scheduler may already have queued the next cron slots: Mondays at 04:30 UTC.
            upcoming = [r for r in runs if r.state.is_scheduled()]
            assert all((t.weekday(), t.hour, t.minute) == (0, 4, 30) for t in (r.expected_start_time for r in upcoming))
            executed = [r for r in runs if not r.state.is_scheduled()]
            # retrain -> lifecycle -> ingest, train, evaluate, register, promote: one flow each
            assert len({r.flow_id for r in executed}) >= 7, sorted(r.name for r in executed)
            assert all(r.state.is_completed() for r in executed), [(r.name, r.state.name) for r in executed]
            assert {a.key for a in artifacts} >= {"data-report", "training-summary", "evaluation", "gate-decision"}
    finally:
        os.killpg(process.pid, signal.SIGINT)  # Ctrl-C: the runner pauses the schedule and exits
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        from ray import serve

        serve.shutdown()
