"""``bench/serving_latency.py --smoke`` on the session's Ray: the bench runs end to end and cleans up.

The bench reuses the already-connected Ray (it would start its own head otherwise) and shuts Serve
down at the end, so no app or fixed HTTP port is left behind for the next module.
"""

import importlib.util
import json
import sys
import time

import pytest

from components.config import PROJECT_ROOT

pytestmark = pytest.mark.integration


def _load_bench():
    path = PROJECT_ROOT / "bench" / "serving_latency.py"
    spec = importlib.util.spec_from_file_location("bench_serving_latency", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_serving_bench_smoke(ray_session, tmp_path):
    import ray

    bench = _load_bench()
    out = tmp_path / "serving.json"
    started = time.monotonic()
    result = bench.main(["--smoke", "--replicas", "1", "--out", str(out)])  # one replica: its /metrics are read too
    took = time.monotonic() - started
    print(f"--smoke took {took:.0f}s (phases: {result['phases_s']})")  # no timing assert in tests
    assert set(result["phases_s"]) == {"imports", "model_and_corpus", "register", "index", "connect_ray", "deploy",
                                       "measure", "shutdown"}
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    assert result["setting"]["smoke"] is True and result["setting"]["concurrencies"] == [1, 2]
    assert result["failures"] == 0
    for concurrency in ("1", "2"):
        run = result["serving_search"][concurrency]
        assert 0 < run["p50_ms"] <= run["p99_ms"] and run["qps"] > 0
        assert run["replica_mean_ms"] > 0 and run["mean_search_batch"] >= 1
    assert set(result["baseline"]) == {"single, 1 thread", "single, 2 threads", "batched 16, 1 thread",
                                       "batched 16, 2 threads"}
    assert all(run["qps"] > 0 and run["encode_p50_ms"] > 0 for run in result["baseline"].values())
    assert result["ratio_p50_vs_target"] == round(result["serving_p50_ms_at_c1"] / bench.TARGET_P50_MS, 3)
    assert result["setting"]["corpus"]["vectors"] == 2000 and result["setting"]["corpus"]["dim"] == 160
    # 2k vectors are below index.exact_max: the version's corpus index is exact, so no recall to measure.
    assert result["setting"]["corpus"]["index"] == "Flat" and result["setting"]["corpus"]["index_recall_at_10"] is None
    assert result["setting"]["serve"]["num_replicas"] == 1
    # The session's Ray is still connected, and Serve was shut down: no app is left behind.
    assert ray.is_initialized()
    from ray.serve.context import _get_global_client

    assert _get_global_client(raise_if_no_controller_running=False) is None
