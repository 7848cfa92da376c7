"""The paper's learning-rate schedule: linear warm-up, then linear decay to zero."""

from __future__ import annotations

import torch


def warmup_linear_decay(step: int, warmup_steps: int, total_steps: int) -> float:
    """Multiplier on the base learning rate at ``step`` (0-based)."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    remaining = max(total_steps - warmup_steps, 1)
    return max(0.0, (total_steps - step) / remaining)


def build_scheduler(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int):
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_linear_decay(step, warmup_steps, total_steps)
    )


def build_optimizer(name: str, params, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """LAMB is the paper's optimiser (timm ships one); AdamW for ablations and tiny CPU runs."""
    if name == "lamb":
        from timm.optim import Lamb

        return Lamb(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r} (expected 'lamb' or 'adamw')")
