"""The global-batch loss: exact against a single process, and well-behaved on its own."""

from __future__ import annotations

import math
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from components.model.loss import ContrastiveLoss
from components.runtime.ray_cluster import free_port

WORLD = 2
LOCAL_BATCH = 4
IN_DIM, EMB_DIM = 6, 5


def _toy_towers(seed: int = 0) -> tuple[torch.nn.Linear, torch.nn.Linear, torch.nn.Parameter]:
    torch.manual_seed(seed)
    return torch.nn.Linear(IN_DIM, EMB_DIM), torch.nn.Linear(IN_DIM, EMB_DIM), torch.nn.Parameter(torch.tensor(0.7))


def _toy_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return torch.randn(WORLD * LOCAL_BATCH, IN_DIM, generator=gen), torch.randn(WORLD * LOCAL_BATCH, IN_DIM, generator=gen)


def _loss_and_grads(image_tower, text_tower, temperature, images, texts, rank, world):
    loss_fn = ContrastiveLoss(label_smoothing=0.1, rank=rank, world_size=world)
    loss = loss_fn(F.normalize(image_tower(images), dim=-1), F.normalize(text_tower(texts), dim=-1), temperature)
    loss.backward()
    params = [*image_tower.parameters(), *text_tower.parameters(), temperature]
    return loss.detach(), [p.grad.clone() for p in params]


def _worker(rank: int, port: int, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        image_tower, text_tower, temperature = _toy_towers()
        images, texts = _toy_inputs()
        rows = slice(rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH)
        loss, grads = _loss_and_grads(image_tower, text_tower, temperature, images[rows], texts[rows], rank, WORLD)
        # What DDP does: average the loss (for reporting) and the gradients over workers.
        dist.all_reduce(loss)
        for grad in grads:
            dist.all_reduce(grad)
        if rank == 0:
            # Plain numpy crosses the process boundary by value (shared tensors die with this worker).
            queue.put(((loss / WORLD).numpy(), [(g / WORLD).numpy() for g in grads]))
    finally:
        dist.destroy_process_group()


def test_two_worker_global_loss_matches_single_process():
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_worker, args=(rank, port, queue)) for rank in range(WORLD)]
    for proc in procs:
        proc.start()
    dist_loss, dist_grads = queue.get(timeout=120)
    for proc in procs:
        proc.join(timeout=60)
        assert proc.exitcode == 0

    image_tower, text_tower, temperature = _toy_towers()
    images, texts = _toy_inputs()
    loss, grads = _loss_and_grads(image_tower, text_tower, temperature, images, texts, rank=0, world=1)

    assert torch.allclose(torch.from_numpy(dist_loss), loss, atol=1e-5), (dist_loss, loss)
    for got, want in zip(dist_grads, grads, strict=True):
        assert torch.allclose(torch.from_numpy(got), want, atol=1e-5), (torch.from_numpy(got) - want).abs().max()


def test_loss_is_sum_of_both_directions_with_label_smoothing():
    image = F.normalize(torch.randn(3, 4), dim=-1)
    text = F.normalize(torch.randn(3, 4), dim=-1)
    t = torch.tensor(0.5)
    labels = torch.arange(3)
    want = F.cross_entropy(image @ text.T / t, labels, label_smoothing=0.1) + F.cross_entropy(
        text @ image.T / t, labels, label_smoothing=0.1
    )
    assert torch.allclose(ContrastiveLoss(0.1)(image, text, t), want)


def test_perfectly_aligned_pairs_score_lower_than_shuffled():
    emb = F.normalize(torch.randn(8, 16), dim=-1)
    loss_fn = ContrastiveLoss(label_smoothing=0.0)
    t = torch.tensor(0.05)
    assert loss_fn(emb, emb, t) < loss_fn(emb, emb.roll(1, dims=0), t)
    # Uniform scores give log(batch) per direction.
    zeros = torch.zeros(8, 16)
    assert math.isclose(loss_fn(zeros, zeros, t).item(), 2 * math.log(8), rel_tol=1e-6)


def test_world_size_above_one_needs_a_process_group():
    with pytest.raises(RuntimeError, match="process group"):
        ContrastiveLoss(rank=0, world_size=2)(torch.ones(2, 3), torch.ones(2, 3), torch.tensor(1.0))
