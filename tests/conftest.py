"""Test-wide settings and the one Ray instance a test session shares.

Telemetry is off and hubs are offline; Ray's token authentication stays on, as in production. The
Ray instance is the same kind of local head that ``align run`` starts (``ray start --head`` on
127.0.0.1, via ``components.runtime.ray_cluster``), so tests exercise the production path.
"""

import os

import pytest

for _key, _value in {
    "RAY_USAGE_STATS_ENABLED": "0",
    "DO_NOT_TRACK": "true",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "HF_HUB_OFFLINE": "1",
    "RAY_AUTH_MODE": "token",
    "TOKENIZERS_PARALLELISM": "false",
    # Prefect logs "stopping temporary server" at interpreter exit, after pytest closed its streams.
    "PREFECT_LOGGING_LEVEL": "WARNING",
}.items():
    os.environ.setdefault(_key, _value)


@pytest.fixture(scope="session")
def ray_home(tmp_path_factory):
    """The state folder of the session's Ray head (and of the e2e lifecycle, which reuses it)."""
    return tmp_path_factory.mktemp("align-home")


@pytest.fixture(scope="session")
def ray_session(ray_home):
    import ray

    from components.config import AlignConfig, resolve_storage
    from components.runtime.ray_cluster import connect, stop_local_head

    cfg = AlignConfig()
    cfg.storage = resolve_storage(cfg.storage.model_copy(update={"home": str(ray_home)}))
    cfg.ray.num_cpus = 4  # 2 training workers + Ray Data tasks + a serving replica on 2 cores
    connect(cfg)
    yield ray
    ray.shutdown()
    stop_local_head(str(ray_home))
