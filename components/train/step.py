"""One optimisation step of the dual encoder, shared by the Ray Train loop, tests and benchmarks.

Kept apart from the loop so the exact computation that trains models is the one the gradient
equivalence test and the throughput benchmark measure.
"""

from __future__ import annotations

import contextlib

import torch


def autocast(device: torch.device, precision: str):
    """bf16 autocast for the forward pass and the loss; a no-op context for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision != "bf16":
        raise ValueError(f"unknown precision {precision!r} (expected 'fp32' or 'bf16')")
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise RuntimeError(f"train.precision=bf16 but {torch.cuda.get_device_name(device)} has no bfloat16 support")
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def forward_loss(model, loss_fn, inputs: dict[str, torch.Tensor], precision: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Loss of one local batch against the global batch, and the temperature it used.

    The embeddings are cast back to fp32 before the similarity matrix: its softmax over thousands of
    columns is where bf16's 8-bit mantissa would cost accuracy.
    """
    device = inputs["images"].device
    with autocast(device, precision):
        image_emb, text_emb, temperature = model(inputs["images"], inputs["input_ids"], inputs["attention_mask"])
    if precision != "fp32":
        image_emb, text_emb, temperature = image_emb.float(), text_emb.float(), temperature.float()
    return loss_fn(image_emb, text_emb, temperature), temperature


def train_step(model, loss_fn, optimizer, scheduler, inputs: dict[str, torch.Tensor], precision: str, step: int):
    """Forward, backward, optimiser and schedule step; returns (loss, temperature), both detached."""
    loss, temperature = forward_loss(model, loss_fn, inputs, precision)
    if not torch.isfinite(loss):
        raise FloatingPointError(f"non-finite loss {loss.item()} at step {step}")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    scheduler.step()
    return loss.detach(), temperature.detach()
