"""Training checkpoints: safetensors weights + tokenizer (the model artifact) + a tensors-only state.

The state holds the optimiser, the LR schedule and the position in the data (step, epoch, batch within
the epoch). No random-generator state is stored because none is carried between steps: every random
draw of step ``s`` on rank ``r`` comes from generators seeded by ``(seed, r, s)`` (``step_seed``), so
the config's seed and the step recorded here reproduce them exactly after a resume. Loading uses
``torch.load(weights_only=True)``: resuming never unpickles arbitrary objects.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from components.model.artifact import WEIGHTS_FILE, save_artifact, unwrap

STATE_FILE = "training_state.pt"


@dataclass
class Position:
    """Where training stands: optimiser steps done, and the next batch of which epoch."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0


def step_seed(seed: int, rank: int, step: int) -> int:
    """A well-mixed 63-bit seed for (seed, rank, step): augmentation, dropout and shuffles derive from it."""
    return int(np.random.SeedSequence([seed, rank, step]).generate_state(2, np.uint64)[0] >> np.uint64(1))


def save_checkpoint(directory: Path, model, tokenizer, optimizer, scheduler, position: Position) -> None:
    save_artifact(model, tokenizer, directory)
    state = {
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "step": position.step,
        "epoch": position.epoch,
        "batch_in_epoch": position.batch_in_epoch,
    }
    torch.save(state, directory / STATE_FILE)


def restore_checkpoint(directory: str, model, optimizer, scheduler) -> Position:
    from safetensors.torch import load_file

    unwrap(model).load_state_dict(load_file(os.path.join(directory, WEIGHTS_FILE)))
    # To the CPU first: saved on cuda:0, the state would otherwise land on cuda:0 for every rank of a node
    # (Ray shares CUDA_VISIBLE_DEVICES); load_state_dict then moves it next to each parameter.
    state = torch.load(os.path.join(directory, STATE_FILE), weights_only=True, map_location="cpu")
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    return Position(int(state["step"]), int(state.get("epoch", 0)), int(state.get("batch_in_epoch", 0)))
