"""The accelerator cards GPU recipes are sized for: memory, peak bf16 compute, and how to recognise them.

A recipe names its card (``train.accelerator``), so a per-device batch that cannot fit, or an input
pipeline that cannot keep the card busy, is visible before anything runs: the recipe-memory test checks
batch x saved activations + weights + optimiser state against ``memory_gib``, and bench/input_pipeline.py
compares decode throughput with what ``bf16_tflops`` at a realistic MFU consumes. At run time the loop
checks that the card it got has at least the memory the recipe was sized for.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Card:
    memory_gib: float  # usable device memory as the driver reports it (a little under the label)
    bf16_tflops: float  # dense bf16 tensor-core peak


# Recipe names, as ``train.accelerator`` spells them.
CARDS: dict[str, Card] = {
    "A100-40GB": Card(memory_gib=39.4, bf16_tflops=312.0),
    "A100-80GB": Card(memory_gib=79.1, bf16_tflops=312.0),
    "H100-80GB": Card(memory_gib=79.1, bf16_tflops=989.4),  # SXM
    "H200-141GB": Card(memory_gib=139.8, bf16_tflops=989.4),
    "L4-24GB": Card(memory_gib=22.0, bf16_tflops=121.0),
}

# Dense bf16 peak by the name ``torch.cuda.get_device_name()`` reports: the first substring that
# matches wins (order matters: "H200" before "H20", "L40S" before "L40" before "L4").
PEAK_BF16_TFLOPS_BY_DEVICE_NAME: list[tuple[str, float]] = [
    ("GH200", 989.4),
    ("H200 NVL", 835.5),
    ("H200", 989.4),
    ("H100 PCIe", 756.5),
    ("H100 NVL", 835.5),
    ("H100", 989.4),  # SXM ("NVIDIA H100 80GB HBM3")
    ("H800", 989.4),
    ("B200", 2250.0),
    ("B100", 1750.0),
    ("A100", 312.0),
    ("A800", 312.0),
    ("L40S", 362.05),
    ("L40", 181.05),
    ("L4", 121.0),
]


def card(name: str) -> Card:
    try:
        return CARDS[name]
    except KeyError:
        raise ValueError(f"unknown accelerator {name!r}; known: {', '.join(sorted(CARDS))}") from None


def peak_tflops(device_name: str) -> float | None:
    """Dense bf16 peak of a device by its reported name; None for a card not in the table."""
    for key, value in PEAK_BF16_TFLOPS_BY_DEVICE_NAME:
        if key in device_name:
            return value
    return None


def check_card_memory(accelerator: str, device_name: str, total_bytes: int) -> None:
    """Refuse, before step 1, a card with less memory than the recipe's per-device batch was sized for.

    Otherwise the first sign is an out-of-memory error deep in the first backward pass, on every rank.
    """
    if not accelerator:
        return
    need = card(accelerator).memory_gib
    have = total_bytes / 2**30
    if have < need * 0.98:  # drivers report slightly different totals for the same card
        raise ValueError(
            f"train.accelerator is {accelerator} ({need:.0f} GiB) but this worker's GPU is {device_name} with "
            f"{have:.1f} GiB: lower the per-GPU batch (train.global_batch_size / train.num_workers) or enable "
            f"model.gradient_checkpointing, and set train.accelerator to your card (or '' to skip this check)"
        )


def prepare_cuda(device, accelerator: str) -> None:
    """Settings for a training worker's GPU: the recipe's card check, and cuDNN autotuning.

    The crops have one fixed size, so ``cudnn.benchmark`` times each convolution's algorithms once and
    keeps the fastest for the rest of the run. A no-op on other devices.
    """
    if getattr(device, "type", device) != "cuda":
        return
    import torch

    properties = torch.cuda.get_device_properties(device)
    check_card_memory(accelerator, properties.name, properties.total_memory)
    torch.backends.cudnn.benchmark = True
