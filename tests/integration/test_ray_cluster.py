"""The local head: `align down` stops our Ray instance and nobody else's."""

import time

import psutil
import pytest

from components.config import AlignConfig, resolve_storage
from components.runtime import ray_cluster
from components.runtime.ray_cluster import (
    _listening,
    ensure_local_head,
    local_head_processes,
    read_head_state,
    stop_local_head,
)

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


def _running(process) -> bool:
    """Alive and not a zombie (killed daemons are orphans; whoever adopts them may reap them late)."""
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _local_cfg(home) -> AlignConfig:
    cfg = AlignConfig()
    cfg.storage = resolve_storage(cfg.storage.model_copy(update={"home": str(home)}))
    cfg.ray.num_cpus = 1
    return cfg


def test_a_head_that_never_answers_is_stopped_and_nothing_of_it_is_left(tmp_path, monkeypatch):
    """`ray start` succeeded but the GCS never answered: its daemons must not outlive the failed start."""
    cfg = _local_cfg(tmp_path)
    seen: dict = {}

    def never(address):
        for process in local_head_processes(str(tmp_path)):  # what is running by then, recorded before the wait
            try:
                seen[process] = " ".join(process.cmdline())
            except psutil.Error:
                continue
        return False

    monkeypatch.setattr(ray_cluster, "_listening", never)
    monkeypatch.setattr(ray_cluster, "LISTEN_TIMEOUT_S", 0)
    with pytest.raises(TimeoutError, match="did not listen"):
        ensure_local_head(cfg)
    assert any("gcs_server" in cmdline for cmdline in seen.values()), "the head's daemons were found while it started"
    _, alive = psutil.wait_procs(list(seen), timeout=15)
    assert not [p for p in alive if _running(p)], [seen[p] for p in alive]
    assert read_head_state(str(tmp_path)) is None


def test_a_failed_ray_start_says_why_and_leaves_no_state(tmp_path):
    cfg = _local_cfg(tmp_path)
    cfg.ray.num_cpus = -1  # refused by `ray start` itself
    with pytest.raises(RuntimeError, match="ray start --head` failed"):
        ensure_local_head(cfg)
    assert read_head_state(str(tmp_path)) is None
    assert not stop_local_head(str(tmp_path))  # `align down` afterwards: nothing to stop
