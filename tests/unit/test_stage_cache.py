"""Stage-cache keys and records, the data stage's source fingerprint, and typed flow parameters."""

import os

import pytest

from components.config import load_config
from components.runtime.stage_cache import StageCache, StageKey, run_cached, tree_fingerprint


def test_a_key_depends_on_every_input_and_on_nothing_else():
    key = StageKey("train", {"model": "a", "dataset": "d1"})
    assert key.digest == StageKey("train", {"dataset": "d1", "model": "a"}).digest  # order does not matter
    assert key.digest != StageKey("train", {"model": "a", "dataset": "d2"}).digest
    assert key.digest != StageKey("evaluate", {"model": "a", "dataset": "d1"}).digest


def test_records_go_from_started_to_complete(tmp_path):
    cache, key = StageCache(str(tmp_path)), StageKey("train", {"dataset": "d1"})
    assert cache.lookup(key) is None and cache.started(key) is None
    cache.mark_started(key, {"run_id": "r1"})
    assert cache.lookup(key) is None and cache.started(key) == {"run_id": "r1"}
    cache.mark_complete(key, {"run_id": "r1", "artifact_hash": "h"})
    assert cache.lookup(key) == {"run_id": "r1", "artifact_hash": "h"} and cache.started(key) is None
    (record,) = cache.records("train")
    assert record["inputs"] == {"dataset": "d1"} and record["status"] == "complete"


def test_run_cached_computes_once_and_again_when_the_output_is_gone(tmp_path):
    cache, key, calls = StageCache(str(tmp_path)), StageKey("register", {"run": "r"}), []

    def compute():
        calls.append(1)
        return {"version": str(len(calls))}

    assert run_cached(cache, key, compute) == ({"version": "1"}, False)
    assert run_cached(cache, key, compute) == ({"version": "1"}, True)
    assert run_cached(cache, key, compute, still_valid=lambda found: False) == ({"version": "2"}, False)
    assert len(calls) == 2


def test_a_disabled_cache_always_computes_and_writes_nothing(tmp_path):
    cache, key = StageCache(str(tmp_path / "c"), enabled=False), StageKey("train", {})
    cache.mark_complete(key, {"x": 1})
    assert cache.lookup(key) is None and not (tmp_path / "c").exists()
    assert run_cached(cache, key, lambda: {"x": 2}) == ({"x": 2}, False)


def test_a_torn_record_is_a_miss_not_a_crash(tmp_path):
    cache, key = StageCache(str(tmp_path)), StageKey("evaluate", {"w": "h"})
    cache.mark_complete(key, {"ok": True})
    (tmp_path / "evaluate" / f"{key.digest}.json").write_text('{"stage": "evaluate", "outp')
    assert cache.lookup(key) is None
    assert run_cached(cache, key, lambda: {"ok": 2}) == ({"ok": 2}, False)


def test_the_source_fingerprint_sees_added_rewritten_and_removed_files(tmp_path):
    (tmp_path / "a.txt").write_text("a red circle")
    first = tree_fingerprint(str(tmp_path))
    assert tree_fingerprint(str(tmp_path)) == first
    (tmp_path / "b.txt").write_text("a blue square")
    added = tree_fingerprint(str(tmp_path))
    assert added != first
    (tmp_path / "b.txt").write_text("a blue squarE")
    os.utime(tmp_path / "b.txt", ns=(1, 1))
    assert tree_fingerprint(str(tmp_path)) != added
    (tmp_path / "b.txt").unlink()
    assert tree_fingerprint(str(tmp_path)) == first
    assert tree_fingerprint(str(tmp_path / "a.txt")) != first  # a single file works too
    with pytest.raises(FileNotFoundError, match="does not exist"):
        tree_fingerprint(str(tmp_path / "missing"))


def test_the_dataset_key_follows_the_sources_content_and_the_filter(tmp_path):
    from components.data.ingest import CorpusPaths, dataset_key
    from components.config import SourceConfig

    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "0.txt").write_text("a red circle")
    (tmp_path / "eval.json").write_text("{}")
    corpus = CorpusPaths([SourceConfig(name="s", format="sidecar", path=str(tmp_path / "src"))],
                         str(tmp_path / "eval.json"), "")
    cfg = load_config(None, [f"storage.home={tmp_path}"])
    key = dataset_key(cfg, corpus)
    assert dataset_key(cfg, corpus) == key
    assert dataset_key(load_config(None, [f"storage.home={tmp_path}", "filter.min_words=2"]), corpus) != key
    assert dataset_key(load_config(None, [f"storage.home={tmp_path / 'elsewhere'}"]), corpus) == key  # not a location
    (tmp_path / "src" / "1.txt").write_text("a new pair")
    assert dataset_key(cfg, corpus) != key


def test_a_bad_flow_parameter_fails_before_any_stage_runs(tmp_path, monkeypatch):
    from prefect.exceptions import ParameterTypeError

    from flows.lifecycle import RetrainRequest, lifecycle

    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect"))
    config = load_config(None, [f"storage.home={tmp_path / 'home'}"]).model_dump()
    config["train"]["stpes"] = 10
    with pytest.raises(ParameterTypeError, match="stpes"):
        lifecycle(config)
    assert not (tmp_path / "home").exists()  # nothing ran: no corpus, dataset or cache record
    with pytest.raises(ValueError, match="trian"):
        RetrainRequest(overrides=["trian.steps=3"])
    with pytest.raises(ValueError, match="schedule_cron"):
        load_config(None, ['orchestration.schedule_cron="0 2 * *"'])
