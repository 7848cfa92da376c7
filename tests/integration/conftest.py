"""Shared fixtures for integration tests: one small local Ray instance per test session."""

import os

import pytest

# Telemetry off before Ray (or anything else) is imported by a test module.
for _name, _value in {
    "RAY_USAGE_STATS_ENABLED": "0",
    "DO_NOT_TRACK": "true",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "HF_HUB_OFFLINE": "1",
}.items():
    os.environ.setdefault(_name, _value)


def pytest_configure(config):
    config.addinivalue_line("markers", "integration: needs a local Ray instance (slower)")


@pytest.fixture(scope="session")
def ray_session():
    """A local Ray with 2 CPUs and no dashboard, shared by the whole session.

    Reuses an instance this process already connected to; only shuts down one it started. Token
    authentication stays at Ray's default (on). Workers import project code from the working
    directory, so run pytest from the project root.
    """
    import ray

    started = False
    if not ray.is_initialized():
        # address="local": always a private instance; a bare ray.init() would attach to any
        # cluster another process started on this machine (/tmp/ray/ray_current_cluster).
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
        started = True
    yield ray
    if started:
        ray.shutdown()
