"""Model inputs from the stored pairs (JPEG bytes + text), inside each train worker, in a resumable order.

Decoding, augmentation and tokenisation run in the worker that consumes the batch (ahead of the step,
in ``train.decode_threads`` helper threads, when set), so the data path scales with the number of
workers and its cost shows up in the logged data-wait time; ``to_device_ahead`` copies the next batch
to the accelerator while the current step runs. The order of batches is a pure
function of (seed, rank, epoch), so a resumed run continues with exactly the batches the interrupted
one would have seen next.
"""

from __future__ import annotations

import copy
import hashlib
import io
import random
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

import numpy as np
import torch
from PIL import Image

from components.config import AlignConfig, ModelConfig
from components.model.artifact import tokenize
from components.model.preprocess import build_pipeline, to_uint8_batch
from components.train.checkpointing import Position

T = TypeVar("T")
R = TypeVar("R")


class BatchBuilder:
    """Decode, augment and tokenize one batch into what crosses to the device; crops and flips depend
    only on the seed it is given.

    Images leave as uint8 NHWC (a quarter of the bytes of a float batch; ``normalize`` converts them on
    the device) and, for a GPU, in pinned memory so the copy can run asynchronously. Safe to call from
    the ``prefetch`` threads: each thread tokenizes with its own copy of the tokenizer, because a
    Hugging Face fast tokenizer shared between threads fails ("Already borrowed").
    """

    def __init__(self, cfg: ModelConfig, tokenizer, pin_memory: bool = False):
        self.cfg = cfg
        self.pin_memory = pin_memory
        self._tokenizer = tokenizer
        self._local = threading.local()

    def images(self, batch: dict, seed: int) -> torch.Tensor:
        # A generator of its own per batch: safe from any thread, and the same crops wherever it runs.
        augment = build_pipeline(self.cfg.train_preprocess, rng=random.Random(seed))
        return to_uint8_batch([augment(Image.open(io.BytesIO(data))) for data in batch["image"]])

    def texts(self, batch: dict) -> dict[str, torch.Tensor]:
        tokens = tokenize(self._thread_tokenizer(), [str(t) for t in batch["text"]], self.cfg)
        return {"input_ids": tokens["input_ids"], "attention_mask": tokens["attention_mask"]}

    def __call__(self, batch: dict, seed: int) -> dict[str, torch.Tensor]:
        built = {"images": self.images(batch, seed)} | self.texts(batch)
        return {k: v.pin_memory() for k, v in built.items()} if self.pin_memory else built

    def _thread_tokenizer(self):
        tokenizer = getattr(self._local, "tokenizer", None)
        if tokenizer is None:
            tokenizer = self._local.tokenizer = copy.deepcopy(self._tokenizer)
        return tokenizer


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


def to_device_ahead(
    items: Iterable[tuple[T, dict[str, torch.Tensor]]], device: torch.device
) -> Iterator[tuple[T, dict[str, torch.Tensor]]]:
    """``(item, its tensors on device)`` in order; when one is yielded, the next one's copy is already issued.

    Why: otherwise batch k+1 is copied only after step k's loss has synchronised, and the accelerator
    waits for its input. Here the copy (from pinned memory, ``non_blocking``) runs on a side CUDA stream
    while step k computes, and each batch's consumer waits for its own copy only (an event), not for
    copies issued after it. On a CPU the same order holds and the copy is a no-op.
    """
    cuda = device.type == "cuda"
    copy_stream = torch.cuda.Stream(device) if cuda else None

    def issue(tensors: dict[str, torch.Tensor]):
        if not cuda:
            return {k: v.to(device, non_blocking=True) for k, v in tensors.items()}, None
        with torch.cuda.stream(copy_stream):
            moved = {k: v.to(device, non_blocking=True) for k, v in tensors.items()}
            done = torch.cuda.Event()
            done.record(copy_stream)
        return moved, done

    def ready(moved: dict[str, torch.Tensor], done) -> dict[str, torch.Tensor]:
        if done is not None:
            compute = torch.cuda.current_stream(device)
            compute.wait_event(done)
            for tensor in moved.values():  # the caching allocator must not reuse them before compute is done
                tensor.record_stream(compute)
        return moved

    pending = None
    for item, tensors in items:
        issued = (item, *issue(tensors))
        if pending is not None:
            yield pending[0], ready(*pending[1:])
        pending = issued
    if pending is not None:
        yield pending[0], ready(*pending[1:])
