"""ALIGN's normalized-softmax contrastive loss over the *global* batch.

Every worker all-gathers all embeddings **with gradient** and scores its local rows against all global
columns; labels are offset by ``rank * local_batch``. With DDP averaging gradients over workers this is
exactly the loss (and gradient) of one process on the concatenated batch. A no-grad gather that puts
back only the local slice gives wrong gradients. Rank and world size are explicit (open_clip style), so
the loss is testable without a process group when ``world_size == 1``.
"""

from __future__ import annotations

import warnings

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
import torch.nn.functional as F
from torch import nn


def gather_with_grad(tensor: torch.Tensor, world_size: int) -> torch.Tensor:
    if world_size == 1:
        return tensor
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("world_size > 1 needs an initialised torch.distributed process group")
    with warnings.catch_warnings():
        # torch marks this autograd all_gather deprecated in favour of a private API; it is still the
        # public, tested path whose backward sums gradients from every rank (what we need).
        warnings.simplefilter("ignore", FutureWarning)
        return torch.cat(dist_fn.all_gather(tensor), dim=0)


class ContrastiveLoss(nn.Module):
    def __init__(self, label_smoothing: float = 0.1, rank: int = 0, world_size: int = 1):
        super().__init__()
        self.label_smoothing = label_smoothing
        self.rank = rank
        self.world_size = world_size

    def forward(
        self, image_emb: torch.Tensor, text_emb: torch.Tensor, temperature: torch.Tensor
    ) -> torch.Tensor:
        """Sum of the image->text and text->image cross-entropies, as in the paper."""
        local_batch = image_emb.shape[0]
        all_images = gather_with_grad(image_emb, self.world_size)
        all_texts = gather_with_grad(text_emb, self.world_size)
        logits_i2t = image_emb @ all_texts.T / temperature
        logits_t2i = text_emb @ all_images.T / temperature
        labels = torch.arange(local_batch, device=image_emb.device) + self.rank * local_batch
        smoothing = self.label_smoothing
        return F.cross_entropy(logits_i2t, labels, label_smoothing=smoothing) + F.cross_entropy(
            logits_t2i, labels, label_smoothing=smoothing
        )
