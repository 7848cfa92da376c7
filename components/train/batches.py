"""Model inputs from the stored pairs (JPEG bytes + text), inside each train worker, in a resumable order.

Decoding and augmentation run in the worker that consumes the batch (ahead of the step, in
``train.decode_threads`` helper threads, when set), so the data path scales with the number of workers
and its cost shows up in the logged data-wait time. The order of batches is a pure
function of (seed, rank, epoch), so a resumed run continues with exactly the batches the interrupted
one would have seen next.
"""

from __future__ import annotations

import hashlib
import io
import random
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

import numpy as np
import torch
from PIL import Image

from components.config import AlignConfig, ModelConfig
from components.model.artifact import tokenize
from components.model.preprocess import build_pipeline, to_batch
from components.train.checkpointing import Position

T = TypeVar("T")
R = TypeVar("R")


class BatchBuilder:
    """Decode, augment and tokenize one batch; its crops and flips depend only on the seed it is given.

    Images and texts are built separately so images can be decoded in helper threads (``prefetch``)
    while the tokenizer, which must not be shared between threads, stays in the training thread.
    """

    def __init__(self, cfg: ModelConfig, tokenizer, mean, std):
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.mean, self.std = mean, std

    def images(self, batch: dict, seed: int) -> torch.Tensor:
        # A generator of its own per batch: safe from any thread, and the same crops wherever it runs.
        augment = build_pipeline(self.cfg.train_preprocess, rng=random.Random(seed))
        images = [augment(Image.open(io.BytesIO(data))) for data in batch["image"]]
        return to_batch(images, self.mean, self.std, self.cfg.channels_last)

    def texts(self, batch: dict) -> dict[str, torch.Tensor]:
        tokens = tokenize(self.tokenizer, [str(t) for t in batch["text"]], self.cfg)
        return {"input_ids": tokens["input_ids"], "attention_mask": tokens["attention_mask"]}

    def __call__(self, batch: dict, seed: int) -> dict[str, torch.Tensor]:
        return {"images": self.images(batch, seed)} | self.texts(batch)


def prefetch(items: Iterable[T], build: Callable[[T], R], threads: int) -> Iterator[tuple[T, R]]:
    """``(item, build(item))`` in order, with up to ``2 * threads`` items built ahead in a thread pool.

    Why: decoding JPEGs in the training thread leaves an accelerator waiting on every step. Pillow
    releases the GIL while it decodes and resizes, so decoding overlaps the step (bench/decode_threads.py:
    x1.7 images/s beside a simulated 75 ms step on 2 cores; decoding alone gains less, x1.2). ``items``
    is still advanced in the calling thread (a Ray Data iterator stays where it was made). With
    ``threads`` 0 every item is built inline, when it is needed.
    """
    if threads <= 0:
        for item in items:
            yield item, build(item)
        return
    pending: deque[tuple[T, Future]] = deque()
    with ThreadPoolExecutor(threads, thread_name_prefix="align-decode") as pool:
        try:
            for item in items:
                pending.append((item, pool.submit(build, item)))
                if len(pending) > 2 * threads:
                    head, future = pending.popleft()
                    yield head, future.result()
            while pending:
                head, future = pending.popleft()
                yield head, future.result()
        finally:  # the consumer stopped early (last step, error): do not build what nobody will use
            for _, future in pending:
                future.cancel()


def iterate_batches(
    shard, cfg: AlignConfig, local_batch: int, rank: int, world: int, start: Position
) -> Iterator[tuple[int, int, dict]]:
    """Yield ``(epoch, batch_in_epoch, batch)`` forever from ``start`` on (epochs count from 0).

    Cached (``train.cache_shard``): ``shard`` is the whole dataset; it is read into memory once,
    ordered by content, and this rank keeps every ``world``-th row, so the split and the per-epoch
    permutation are the same on every run and jumping to the resume position is free. Streamed:
    ``shard`` is this rank's split, re-read each epoch with a per-epoch local shuffle seed; on resume
    the batches already trained in the current epoch are read and skipped (which rows Ray's dynamic
    split hands to a rank can differ between runs; the position in the epoch does not).
    """
    if cfg.train.cache_shard:
        yield from _cached(shard, cfg, local_batch, rank, world, start)
        return
    epoch, skip = start.epoch, start.batch_in_epoch
    while True:
        shuffle = cfg.train.shuffle_buffer
        batches = shard.iter_batches(
            batch_size=local_batch,
            batch_format="numpy",
            drop_last=True,
            local_shuffle_buffer_size=shuffle or None,
            local_shuffle_seed=_epoch_seed(cfg.seed, rank, epoch) % (2**32) if shuffle else None,
        )
        index = -1
        for index, batch in enumerate(batches):
            if index >= skip:
                yield epoch, index, batch
        if index < 0:
            raise ValueError(f"worker {rank}'s shard holds fewer rows than its batch of {local_batch}")
        epoch, skip = epoch + 1, 0


def _cached(dataset, cfg: AlignConfig, local_batch: int, rank: int, world: int, start: Position):
    cached = list(dataset.iter_batches(batch_size=4096, batch_format="numpy"))
    columns = {k: np.concatenate([b[k] for b in cached]) for k in cached[0]} if cached else {}
    # Rows arrive in whatever order the read produced; order them by content, then deal them out.
    # Every rank gets the same number of rows (the remainder of the division is left out).
    total = len(next(iter(columns.values()))) if columns else 0
    columns = {k: v[rank : total - total % world : world] for k, v in _sorted_by_content(columns).items()} if total else {}
    rows = total // world
    if rows < local_batch:
        raise ValueError(f"worker {rank} holds {rows} rows, fewer than its batch of {local_batch}")
    per_epoch = rows // local_batch
    epoch, skip = start.epoch, start.batch_in_epoch
    while True:
        order = np.random.default_rng(_epoch_seed(cfg.seed, rank, epoch)).permutation(rows)
        for index in range(skip, per_epoch):
            rows_of_batch = order[index * local_batch : (index + 1) * local_batch]
            yield epoch, index, {k: v[rows_of_batch] for k, v in columns.items()}
        epoch, skip = epoch + 1, 0


def _epoch_seed(seed: int, rank: int, epoch: int) -> int:
    return int(np.random.SeedSequence([seed, rank, epoch, 0x5EED]).generate_state(1, np.uint64)[0])


def _sorted_by_content(columns: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    keys = [hashlib.sha1(bytes(image) + str(text).encode()).digest() for image, text in zip(columns["image"], columns["text"], strict=True)]
    order = np.argsort(np.array(keys, dtype=object), kind="stable")
    return {k: v[order] for k, v in columns.items()}
