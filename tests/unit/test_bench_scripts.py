"""The benchmark scripts' logic on tiny models: they are not run by CI otherwise, and a GPU one never here."""

from __future__ import annotations

import importlib.util
import io
import json
import math
import sys

import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from components.config import PROJECT_ROOT
from tests.train_fixtures import TINY_MODEL_OVERRIDES


def _load(name: str):
    path = PROJECT_ROOT / "bench" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def gpu_bench():
    return _load("gpu_train_throughput")


@pytest.fixture(scope="module")
def train_bench():
    return _load("train_throughput")


def test_gpu_bench_smoke_counts_flops_and_writes_json(gpu_bench, tmp_path):
    out = tmp_path / "gpu.json"
    result = gpu_bench.main(["--smoke", "--peak-tflops", "2.5", "--out", str(out)])
    assert json.loads(out.read_text()) == result
    for key in ("device", "batch", "samples_per_s", "achieved_tflops", "mfu", "peak_memory_gib", "flops_per_step"):
        assert key in result
    assert result["device"] == "cpu" and result["batch"] == 4 and result["smoke"] is True
    assert result["samples_per_s"] > 0
    # Backward adds work, and no op's backward costs more than twice its forward: an upper bound that
    # catches torch's groups-blind conv-backward formula (27x the forward FLOPs on this model).
    assert 0 < result["flops_forward"] < result["flops_per_step"] <= 3.0 * result["flops_forward"]
    steps_per_s = result["samples_per_s"] / result["batch"]
    assert math.isclose(result["achieved_tflops"], result["flops_per_step"] * steps_per_s / 1e12, rel_tol=0.02)
    assert math.isclose(result["mfu"], result["achieved_tflops"] / 2.5, rel_tol=0.02)


def test_conv_backward_flops_respect_groups(gpu_bench):
    from torch.utils.flop_counter import FlopCounterMode

    mapping = {torch.ops.aten.convolution_backward: gpu_bench.conv_backward_flops}
    for groups in (1, 16):  # dense and depthwise
        conv = torch.nn.Conv2d(16, 16, 3, padding=1, groups=groups)
        x = torch.randn(2, 16, 10, 10, requires_grad=True)
        with FlopCounterMode(display=False) as forward:
            y = conv(x)
        with FlopCounterMode(display=False, custom_mapping=mapping) as backward:
            y.sum().backward()
        expected_forward = 2 * 10 * 10 * 16 * (16 // groups) * 9 * 2
        assert forward.get_total_flops() == expected_forward
        assert backward.get_total_flops() == 2 * expected_forward  # grad input + grad weight


def test_peak_table_matches_device_names(gpu_bench):
    assert gpu_bench.peak_tflops("NVIDIA H200") == 989.4
    assert gpu_bench.peak_tflops("NVIDIA H100 80GB HBM3") == 989.4
    assert gpu_bench.peak_tflops("NVIDIA H100 PCIe") == 756.5
    assert gpu_bench.peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert gpu_bench.peak_tflops("NVIDIA L40S") == 362.05
    assert gpu_bench.peak_tflops("NVIDIA L4") == 121.0
    assert gpu_bench.peak_tflops("NVIDIA H20") is None  # not an H200
    assert gpu_bench.peak_tflops("Some Accelerator") is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on machines without a GPU")
def test_gpu_bench_refuses_to_run_without_cuda(gpu_bench, tmp_path):
    with pytest.raises(SystemExit, match="no CUDA device"):
        gpu_bench.main(["--out", str(tmp_path / "x.json")])


TINY = ["model.image_tower=tinynet_e", *TINY_MODEL_OVERRIDES]


def test_train_bench_baselines_run_on_a_tiny_model(train_bench):
    cfg = train_bench.bench_config(batch=4, tokens=8, extra=TINY)
    assert cfg.model.image_tower == "tinynet_e" and cfg.train.global_batch_size == 4
    threads = torch.get_num_threads()
    for channels_last in (False, True):
        rate = train_bench.bare_loop(cfg, 1, 1, channels_last=channels_last, vocab=100, tokens=8, threads=threads)
        assert rate > 0 and math.isfinite(rate)
    rate = train_bench.open_clip_loop(cfg, steps=1, warmup=1, vocab=100, tokens=8, threads=threads)
    assert rate > 0 and math.isfinite(rate)


def test_train_bench_setting_is_the_issues(train_bench):
    cfg = train_bench.bench_config(batch=64, tokens=16)
    assert cfg.model.image_tower == "efficientnet_b0"
    assert train_bench.output_size(cfg.model.train_preprocess) == 128
    text = cfg.model.text
    sizes = (text.hidden_size, text.num_layers, text.num_heads, text.intermediate_size, text.max_length)
    assert sizes == (256, 4, 4, 1024, 16)
    assert cfg.model.label_smoothing == 0.1 and cfg.model.learn_temperature and cfg.train.cache_shard


def test_train_bench_dataset_is_jpeg_bytes_and_captions(train_bench, tmp_path):
    texts = train_bench.write_dataset(tmp_path / "kept", rows=8, shards=2)
    table = pq.read_table(tmp_path / "kept")
    assert table.num_rows == 8 and {"image", "text"} <= set(table.column_names)
    assert sorted(table.column("text").to_pylist()) == sorted(texts)
    for data in table.column("image").to_pylist():
        image = Image.open(io.BytesIO(data))
        assert image.format == "JPEG" and min(image.size) == train_bench.SHORT_SIDE
    assert all(5 <= len(text.split()) <= 10 for text in texts)


def test_retrieval_bench_agrees_with_its_full_sort_baseline(tmp_path):
    bench = _load("retrieval_eval")
    result = bench.main(["--images", "60", "--captions-per-image", "3", "--dim", "16", "--out", str(tmp_path / "r.json")])
    assert result["captions"] == 180 and 0.0 < result["metrics"]["mean_recall"] <= 1.0
    assert json.loads((tmp_path / "r.json").read_text())["speedup"] > 0


def test_orchestration_bench_counts_overlapping_stage_time_once():
    bench = _load("orchestration_overhead")
    assert bench.merged_seconds([]) == 0.0
    assert bench.merged_seconds([(0.0, 2.0), (1.0, 3.0), (5.0, 6.0)]) == pytest.approx(4.0)
    assert bench.merged_seconds([(0.0, 10.0), (2.0, 3.0)]) == pytest.approx(10.0)  # a nested call counts once


def test_orchestration_bench_times_every_component_call_it_names(monkeypatch):
    import importlib

    bench = _load("orchestration_overhead")
    for module_name, attribute in bench.COMPONENT_CALLS:  # each name still exists: a rename must fail here
        monkeypatch.setattr(importlib.import_module(module_name), attribute,
                            getattr(importlib.import_module(module_name), attribute))
    intervals = bench.instrument()
    from components.runtime import stage_cache  # any module: time a call through the same wrapper

    monkeypatch.setattr(stage_cache, "digest", stage_cache.digest)
    timed = bench.instrument([("components.runtime.stage_cache", "digest")])
    assert stage_cache.digest({"a": 1}) == stage_cache.digest({"a": 1})
    assert len(timed["stage_cache.digest"]) == 2 and intervals == {}
