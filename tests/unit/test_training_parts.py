"""The pieces of the training loop that make runs exact and observable, without Ray."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from components.config import AlignConfig, TrainConfig
from components.train.batches import iterate_batches, prefetch
from components.train.checkpointing import Position, step_seed
from components.train.loop import _Window, convert_sync_batchnorm, sync_batchnorm
from components.train.step import autocast, train_step


class FakeShard:
    """What ``ray.train.get_dataset_shard`` returns, reduced to ``iter_batches`` over numpy columns."""

    def __init__(self, rows: int):
        self.columns = {"image": np.array([f"img{i}".encode() for i in range(rows)], dtype=object), "text": np.array([f"t{i}" for i in range(rows)], dtype=object)}

    def iter_batches(self, batch_size, batch_format="numpy", drop_last=False, local_shuffle_buffer_size=None, local_shuffle_seed=None):
        rows = len(self.columns["text"])
        order = np.random.default_rng(local_shuffle_seed).permutation(rows) if local_shuffle_buffer_size else np.arange(rows)
        stop = rows - rows % batch_size if drop_last else rows
        for start in range(0, stop, batch_size):
            yield {k: v[order[start : start + batch_size]] for k, v in self.columns.items()}


def _texts(stream, count: int) -> list[tuple[int, int, list[str]]]:
    out = []
    for epoch, index, batch in stream:
        out.append((epoch, index, list(batch["text"])))
        if len(out) == count:
            return out
    return out


@pytest.mark.parametrize("cache_shard", [True, False])
def test_a_resumed_iterator_continues_with_the_batches_an_uninterrupted_one_would_give(cache_shard):
    cfg = AlignConfig(train=TrainConfig(cache_shard=cache_shard, shuffle_buffer=0 if cache_shard else 8))
    shard = FakeShard(rows=10)  # 2 full batches of 4 per epoch, 2 rows dropped
    straight = _texts(iterate_batches(shard, cfg, 4, rank=0, world=1, start=Position()), 7)
    assert [(e, i) for e, i, _ in straight] == [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1), (3, 0)]
    assert straight[0][2] != straight[2][2], "each epoch is reshuffled"
    resumed = _texts(iterate_batches(shard, cfg, 4, rank=0, world=1, start=Position(step=3, epoch=1, batch_in_epoch=1)), 4)
    assert resumed == straight[3:]


def test_cached_ranks_deal_the_rows_out_in_equal_disjoint_slices():
    cfg = AlignConfig(train=TrainConfig(cache_shard=True))
    seen = []
    for rank in range(3):
        stream = iterate_batches(FakeShard(rows=11), cfg, 3, rank=rank, world=3, start=Position())
        seen.append({t for _, _, texts in _texts(stream, 1) for t in texts})
    assert all(len(s) == 3 for s in seen) and not (seen[0] & seen[1] or seen[1] & seen[2] or seen[0] & seen[2])


def test_each_rank_and_step_draws_its_own_seed_and_the_same_one_every_time():
    seeds = {step_seed(0, rank, step) for rank in range(4) for step in range(100)}
    assert len(seeds) == 400 and step_seed(0, 1, 7) == step_seed(0, 1, 7)
    assert all(0 <= s < 2**63 for s in seeds)


def test_a_shard_smaller_than_one_batch_is_a_clear_error():
    cfg = AlignConfig(train=TrainConfig(cache_shard=True))
    with pytest.raises(ValueError, match="fewer than its batch"):
        next(iterate_batches(FakeShard(rows=7), cfg, 4, rank=1, world=2, start=Position()))


def test_sync_batchnorm_is_refused_on_cpu_workers_and_skipped_for_one_worker():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4))
    assert sync_batchnorm(model, True, torch.device("cpu"), world=1) is model
    assert sync_batchnorm(model, False, torch.device("cpu"), world=2) is model
    with pytest.raises(ValueError, match="needs GPU workers"):
        sync_batchnorm(model, True, torch.device("cpu"), world=2)
    converted = convert_sync_batchnorm(model)
    assert isinstance(converted[1], torch.nn.SyncBatchNorm)  # what GPU workers get


def test_bf16_autocast_runs_matmuls_in_bfloat16_and_fp32_is_untouched():
    x = torch.randn(4, 4)
    with autocast(torch.device("cpu"), "bf16"):
        assert (x @ x).dtype == torch.bfloat16
    with autocast(torch.device("cpu"), "fp32"):
        assert (x @ x).dtype == torch.float32
    with pytest.raises(ValueError, match="unknown precision"):
        autocast(torch.device("cpu"), "fp8")


def test_a_non_finite_loss_stops_training_with_the_step_named():
    class Broken(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(2))

        def forward(self, images, ids, mask):
            return self.w.expand(2, 2), self.w.expand(2, 2), torch.tensor(1.0)

    model = Broken()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    inputs = {"images": torch.zeros(2, 3, 4, 4), "input_ids": torch.zeros(2, 3, dtype=torch.long), "attention_mask": torch.ones(2, 3)}
    with pytest.raises(FloatingPointError, match="at step 41"):
        train_step(model, lambda a, b, t: a.sum() * float("nan"), optimizer, scheduler, inputs, "fp32", 41)


def test_logged_window_means_and_data_wait_fraction():
    window = _Window()
    window.add(loss=2.0, data_time=0.1, step_time=1.0)
    window.add(loss=4.0, data_time=0.3, step_time=1.0)
    metrics = window.metrics(global_batch=64)
    assert metrics["train/loss"] == 3.0 and metrics["train/samples_per_s"] == 64.0
    assert metrics["train/data_wait_fraction"] == pytest.approx(0.2)


def test_a_tokenizer_path_without_a_tokenizer_is_a_clear_error(tmp_path):
    from components.train.trainer import fit_tokenizer

    cfg = AlignConfig()
    cfg.model.text = cfg.model.text.model_copy(update={"tokenizer": "pretrained", "tokenizer_path": str(tmp_path)})
    with pytest.raises(FileNotFoundError, match="no tokenizer.json"):
        fit_tokenizer(cfg, dataset=None)


@pytest.mark.parametrize("threads", [0, 1, 3])
def test_prefetch_yields_every_item_in_order_and_builds_at_most_a_bounded_distance_ahead(threads):
    started: list[int] = []

    def build(item: int) -> int:
        started.append(item)
        return item * item

    out = []
    for item, built in prefetch(iter(range(100)), build, threads):
        out.append((item, built))
        # inline: nothing is built before it is needed; threaded: at most 2 * threads + 1 items ahead
        assert max(started) <= item + 2 * threads + 1
        if item == 9:
            break
    assert out == [(i, i * i) for i in range(10)]
    assert max(started) <= 9 + 2 * threads + 1, "an early stop does not build the rest of the stream"


def test_prefetch_passes_a_build_error_to_the_consumer_at_its_item():
    def build(item: int) -> int:
        if item == 3:
            raise ValueError("undecodable image in batch 3")
        return item

    seen = []
    with pytest.raises(ValueError, match="batch 3"):
        for item, _ in prefetch(iter(range(10)), build, threads=2):
            seen.append(item)
    assert seen == [0, 1, 2]


def test_images_decoded_in_helper_threads_equal_the_inline_ones():
    """A batch's crops and flips come from its seed alone, so prefetching cannot change a run."""
    import io

    from PIL import Image

    from components.config import ModelConfig
    from components.train.batches import BatchBuilder

    def jpeg(i: int) -> bytes:  # a diagonal ramp: every crop offset and flip gives other pixels
        ramp = (np.add.outer(np.arange(30), np.arange(40)) * 3 + 8 * i) % 256
        buffer = io.BytesIO()
        Image.fromarray(np.stack([ramp, 255 - ramp, ramp // 2], axis=-1).astype(np.uint8)).save(buffer, "JPEG")
        return buffer.getvalue()

    cfg = ModelConfig(train_preprocess="resize_short(24)|random_crop(16)|flip_lr", channels_last=False)
    builder = BatchBuilder(cfg, tokenizer=None)
    batches = [({"image": [jpeg(i + j) for j in range(4)]}, step_seed(0, 0, i)) for i in range(8)]
    inline = [builder.images(batch, seed) for batch, seed in batches]
    threaded = [images for _, images in prefetch(iter(batches), lambda item: builder.images(*item), threads=3)]
    assert all(torch.equal(a, b) for a, b in zip(inline, threaded, strict=True))
    assert not torch.equal(inline[0], builder.images(batches[0][0], step_seed(0, 0, 99))), "the seed matters"


class _Texts:
    """The slice of a Ray Dataset that fitting a tokenizer reads; counts how often it is read."""

    def __init__(self, texts: list[str]):
        self.texts, self.reads = texts, 0

    def select_columns(self, columns):
        return self

    def iter_batches(self, batch_format="numpy"):
        self.reads += 1
        yield {"text": np.array(self.texts, dtype=object)}


def test_the_first_vocab_fitted_on_a_dataset_is_kept_beside_it_and_reused(tmp_path):
    from components.train.trainer import dataset_vocab_uri, fit_tokenizer

    cfg = AlignConfig()
    cfg.model.text = cfg.model.text.model_copy(update={"tokenizer_vocab_size": 120, "max_length": 16})
    kept = str(tmp_path / "datasets" / "abc" / "kept")
    texts = _Texts([f"a {c} {s} on the {p}" for c in ("red", "blue", "green") for s in ("circle", "square") for p in ("left", "right")] * 5)
    first = fit_tokenizer(cfg, texts, kept)
    assert texts.reads == 1 and "tokenizer.json" in first
    folder = tmp_path / "datasets" / "abc" / "tokenizers" / "wordpiece-v120-len16"
    assert dataset_vocab_uri(kept, 120, 16) == str(folder) and (folder / "_COMPLETE").is_file()
    assert fit_tokenizer(cfg, texts, kept) == first and texts.reads == 1  # read back, not refitted
    other = cfg.model_copy(deep=True)
    other.model.text = other.model.text.model_copy(update={"tokenizer_vocab_size": 130})
    fit_tokenizer(other, texts, kept)
    assert texts.reads == 2, "other vocab settings get their own fit"
    (folder / "_COMPLETE").unlink()  # a fit interrupted before its marker is not trusted
    fit_tokenizer(cfg, texts, kept)
    assert texts.reads == 3
    assert dataset_vocab_uri(str(tmp_path / "somewhere"), 120, 16) == ""  # not a data-stage folder: fit only
