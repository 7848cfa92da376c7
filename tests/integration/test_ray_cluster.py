"""The local head: `align down` stops our Ray instance and nobody else's."""

import time

import psutil
import pytest

from components.config import AlignConfig, resolve_storage
from components.runtime.ray_cluster import _listening, ensure_local_head, local_head_processes, stop_local_head

pytestmark = pytest.mark.integration


def test_stopping_our_head_leaves_other_ray_instances_running(ray_session, tmp_path):
    cfg = AlignConfig()
    cfg.storage = resolve_storage(cfg.storage.model_copy(update={"home": str(tmp_path)}))
    cfg.ray.num_cpus = 1
    ours = ensure_local_head(cfg)
    other = ray_session.get_runtime_context().gcs_address
    assert ours != other and _listening(ours)
    processes = local_head_processes(str(tmp_path))
    assert any("Agent" in " ".join(p.cmdline()) for p in processes), "the head's agents are found through the raylet"
    assert stop_local_head(str(tmp_path))
    deadline = time.monotonic() + 30
    while _listening(ours) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _listening(ours)
    _, alive = psutil.wait_procs(processes, timeout=15)
    assert not alive, [p.pid for p in alive]  # agents included, nothing of our head is left
    assert _listening(other) and ray_session.cluster_resources().get("CPU", 0) > 0
    assert not stop_local_head(str(tmp_path))  # already stopped: nothing to do
