"""bench/input_pipeline.py's smoke mode: supply, demand, ratio and verdict agree, per GPU recipe.

Rates measured on a shared CI box say nothing here; only their relations are checked (no timings).
"""

from __future__ import annotations

import json
import math

import pytest

from components.accelerators import card
from components.config import PROJECT_ROOT, load_config
from tests.unit.test_bench_scripts import _load


@pytest.fixture(scope="module")
def bench():
    return _load("input_pipeline")


@pytest.fixture(scope="module")
def smoke(bench, tmp_path_factory):
    out = tmp_path_factory.mktemp("input_pipeline") / "input_pipeline.json"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TOKENIZERS_PARALLELISM", "false")
        result = bench.main(["--smoke", "--mfu", "0.4", "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    return result


def test_smoke_covers_every_gpu_recipe(smoke):
    configs = [load_config(p) for p in (PROJECT_ROOT / "configs").glob("*.yaml")]
    expected = {cfg.name for cfg in configs if cfg.train.use_gpu}
    assert {row["recipe"] for row in smoke["recipes"]} == expected
    assert expected >= {"embedded-1gpu", "paper-b7-bert-base", "paper-l2-bert-large"}
    assert smoke["setting"]["smoke"] is True


def test_supply_demand_ratio_and_verdict_agree(smoke):
    for row in smoke["recipes"]:
        per_thread = row["per_thread_images_per_s"]
        assert per_thread > 0 and row["worker_threads"] >= 1 and row["flops_per_image_step"] > 0
        assert row["bf16_tflops"] == card(row["accelerator"]).bf16_tflops
        assert math.isclose(row["supply_images_per_s"], per_thread * row["worker_threads"], rel_tol=1e-9)
        demand = row["mfu"] * row["bf16_tflops"] * 1e12 / row["flops_per_image_step"]
        assert math.isclose(row["demand_images_per_s"], demand, rel_tol=1e-9)
        assert math.isclose(row["ratio"], row["supply_images_per_s"] / row["demand_images_per_s"], rel_tol=1e-9)
        assert row["verdict"] == ("STARVED" if row["ratio"] < 1 else "OK")
        assert row["cpus_per_gpu_needed"] == math.ceil(demand / per_thread)
        # Enough threads at the measured rate meet the demand; one fewer does not.
        assert per_thread * row["cpus_per_gpu_needed"] >= demand > per_thread * (row["cpus_per_gpu_needed"] - 1)
        assert all(rate > 0 for rate in row["prefetch_wall_images_per_s"].values())
        assert row["inline_wall_images_per_s"] > 0 and len(row["rounds"]["per_cpu_second"]["inline"]) == 1
        assert math.isclose(row["max_mfu_fed"], row["mfu"] * row["ratio"], rel_tol=1e-9)
        ratio = row["ratio"]
        busy = min(1.0, ratio) if row["decode_overlaps_step"] else ratio / (1 + ratio)
        assert math.isclose(row["gpu_busy_at_most"], busy, rel_tol=1e-9)


def test_worker_threads_follow_the_recipe(smoke):
    for row in smoke["recipes"]:
        cfg = load_config(PROJECT_ROOT / row["config"])
        if cfg.train.decode_threads:
            assert row["decode_overlaps_step"]
            assert row["worker_threads"] == min(cfg.train.decode_threads, max(1, int(cfg.train.cpus_per_worker)))
        else:  # the step's own thread decodes, between steps
            assert row["worker_threads"] == 1 and not row["decode_overlaps_step"]


def test_batches_are_what_the_model_takes(smoke):
    for row in smoke["recipes"]:
        size, batch = row["image_size"], row["measured_batch"]
        assert row["output_shapes"]["images"] == [batch, size, size, 3]  # uint8 NHWC crops
        assert row["output_shapes"]["input_ids"][0] == batch
        assert row["output_shapes"]["input_ids"][1] <= row["text_max_length"]
        assert min(row["stored_size"]) == int(row["train_preprocess"].split("resize_short(")[1].split(")")[0])
        assert row["timed_images"] >= 2 * batch


def test_flops_per_image_grow_with_resolution(smoke):
    rows = sorted(smoke["recipes"], key=lambda row: row["image_size"])
    assert len({row["image_tower"] for row in rows}) == 1  # smoke: the same tiny towers for every recipe
    assert rows[0]["image_size"] < rows[-1]["image_size"]
    for smaller, larger in zip(rows, rows[1:]):
        if larger["image_size"] > smaller["image_size"]:
            assert larger["flops_per_image_step"] > smaller["flops_per_image_step"]
        # A full step is forward plus a backward of at most twice the forward.
        forward = larger["flops_per_image_forward"]
        assert forward < larger["flops_per_image_step"] <= 3 * forward


def test_card_comes_from_the_recipe_or_the_fallback(bench):
    recipe = PROJECT_ROOT / "configs" / "embedded-1gpu.yaml"
    assert bench.accelerator(load_config(recipe, ["train.accelerator=A100-80GB"])) == ("A100-80GB", "train.accelerator")
    name, source = bench.accelerator(load_config(recipe, ["train.accelerator="]))
    assert name == bench.DEFAULT_ACCELERATOR and source.startswith("fallback")


def test_assess_flags_a_starved_recipe(bench):
    starved = bench.assess(per_thread=100.0, threads=4, flops=1e12, peak_tflops=1000.0, mfu=0.5)
    assert starved["demand_images_per_s"] == pytest.approx(500.0) and starved["supply_images_per_s"] == 400.0
    assert starved["verdict"] == "STARVED" and starved["cpus_per_gpu_needed"] == 5
    assert starved["max_mfu_fed"] == pytest.approx(0.4) and starved["gpu_busy_at_most"] == pytest.approx(0.8)
    enough = bench.assess(100.0, 5, 1e12, 1000.0, 0.5)
    assert enough["verdict"] == "OK" and enough["gpu_busy_at_most"] == pytest.approx(1.0)
    serial = bench.assess(100.0, 5, 1e12, 1000.0, 0.5, overlapped=False)  # decode and step times add up
    assert serial["verdict"] == "OK" and serial["gpu_busy_at_most"] == pytest.approx(0.5)
