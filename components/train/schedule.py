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


def build_optimizer(name: str, model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """LAMB is the paper's optimiser (timm ships one); AdamW for ablations.

    Biases, norms and the temperature (all <= 1-d) get no weight decay, the usual practice; in timm's
    LAMB that also exempts them from the layer-wise trust ratio, which would otherwise scale the
    scalar temperature's step by its own magnitude and make it drift.
    """
    from timm.optim import Lamb, param_groups_weight_decay

    groups = param_groups_weight_decay(model, weight_decay)
    if name == "lamb":
        return Lamb(groups, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r} (expected 'lamb' or 'adamw')")
