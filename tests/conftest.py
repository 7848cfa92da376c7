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
def s3_server():
    """An S3-compatible server (moto) on 127.0.0.1 for the whole session.

    Its endpoint goes into the standard AWS environment variables before the Ray head starts, so Ray
    workers, pyarrow, boto3 and MLflow all reach it the way they would reach real S3.
    """
    import subprocess
    import sys
    import time
    from pathlib import Path

    import httpx

    from components.runtime.ray_cluster import free_port

    port = free_port()
    server = Path(sys.executable).parent / "moto_server"
    process = subprocess.Popen(
        [str(server), "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.get(endpoint, timeout=1)
            break
        except httpx.HTTPError:
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                raise RuntimeError("moto S3 server did not start within 30 s")
            time.sleep(0.2)
    os.environ.update(
        {
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
    )
    yield endpoint
    process.terminate()
    process.wait(timeout=10)


@pytest.fixture(scope="session")
def ray_session(ray_home, s3_server):
    import ray

    from components.config import AlignConfig, resolve_storage
    from components.runtime.ray_cluster import connect, stop_local_head

    cfg = AlignConfig()
    cfg.storage = resolve_storage(cfg.storage.model_copy(update={"home": str(ray_home)}))
    cfg.ray.num_cpus = 4  # 2 training workers + Ray Data tasks + a serving replica on 2 cores
    cfg.ray.loopback_only = False  # tests/integration/test_multinode.py joins a second node to this head
    connect(cfg)
    yield ray
    ray.shutdown()
    stop_local_head(str(ray_home))
