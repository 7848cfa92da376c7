"""Training samples/s and MFU of the paper's B7-class dual encoder on ONE accelerator.

The model section of configs/paper-b7-bert-base.yaml (EfficientNet-B7 at 289 px + BERT-base, 64-token
texts, the recipe's optimizer), bf16 autocast, channels_last, synthetic inputs, a single process and a
configurable per-device batch. Each step is the platform's own ``components.train.step.train_step``
(what the Ray Train loop runs). This says what one GPU of a cluster run delivers, without Ray or data.

MFU = model FLOPs per step x steps/s / peak dense bf16 FLOP/s. Model FLOPs of one full training step
(forward + loss + backward) are counted with ``torch.utils.flop_counter.FlopCounterMode`` on the real
device, once, untimed, on a model built *without* gradient checkpointing: recomputed activations are
work the hardware does but not model FLOPs (PaLM's MFU convention). torch's formula for
``convolution_backward`` ignores ``groups`` and counts a depthwise conv's weight gradient C times over
(27x the forward FLOPs for tinynet_e), and EfficientNets are mostly depthwise, so that op is counted
here with a groups-correct formula: each requested gradient costs what the forward conv costs. If
that count runs out of memory it is taken at a smaller batch and scaled linearly (only the B x B
logits are not linear: negligible). The optimizer's elementwise update is not counted (as usual).
The peak comes from a small table by device name, or ``--peak-tflops``.

    .venv/bin/python bench/gpu_train_throughput.py [--batch 64] [--steps 20] [--warmup 5] [--gradient-checkpointing]
    .venv/bin/python bench/gpu_train_throughput.py --smoke   # tiny model on CPU: checks the logic, not a speed

Writes bench/results/gpu_train_throughput.json (``--smoke``: gpu_train_throughput-smoke.json).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from components.accelerators import peak_tflops
from components.config import PROJECT_ROOT, AlignConfig, ModelConfig, load_config
from components.model.align import AlignModel
from components.model.loss import ContrastiveLoss
from components.model.preprocess import output_size
from components.train.schedule import build_optimizer, build_scheduler
from components.train.step import forward_loss, train_step

RECIPE = PROJECT_ROOT / "configs" / "paper-b7-bert-base.yaml"
RESULTS = Path(__file__).parent / "results"
PRECISION = "bf16"  # components.train.step: bf16 autocast for the towers, fp32 similarities and loss
# --smoke: tinynet_e + a 2-layer BERT at 64 px, batch 4, 2 steps on CPU (bf16 autocast on CPU too).
SMOKE_OVERRIDES = [
    "model.image_tower=tinynet_e",
    "model.train_preprocess=resize_short(72)|random_crop(64)|flip_lr",
    "model.eval_preprocess=resize_short(72)|center_crop(64)",
    "model.text.hidden_size=64",
    "model.text.num_layers=2",
    "model.text.num_heads=2",
    "model.text.intermediate_size=128",
    "model.text.max_length=16",
    "model.text.tokenizer_vocab_size=1000",
]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build(model_cfg: ModelConfig, device: torch.device) -> AlignModel:
    torch.manual_seed(0)
    model = AlignModel(model_cfg).to(device=device, memory_format=torch.channels_last)
    return model.train()


def synthetic_inputs(model_cfg: ModelConfig, batch: int, device: torch.device) -> dict[str, torch.Tensor]:
    size, tokens = output_size(model_cfg.train_preprocess), model_cfg.text.max_length
    images = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)
    ids = torch.randint(5, model_cfg.text.vocab_size, (batch, tokens), device=device)
    return {"images": images, "input_ids": ids, "attention_mask": torch.ones_like(ids)}


def conv_backward_flops(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation, transposed,
                        _output_padding, _groups, output_mask, out_shape=None, **kwargs) -> int:
    """FLOPs of ``aten.convolution_backward``, right for grouped/depthwise convs too.

    The input gradient is a (transposed) conv of grad_out with the same weight, and the weight
    gradient multiplies every weight with every output position of every sample once: each costs
    exactly the forward conv's FLOPs, which ``conv_flop_count`` gets right (w_shape[1] is per group).
    """
    from torch.utils.flop_counter import conv_flop_count

    forward = conv_flop_count(list(x_shape), list(w_shape), list(grad_out_shape), transposed)
    return forward * (int(bool(output_mask[0])) + int(bool(output_mask[1])))


def _count_once(model_cfg: ModelConfig, batch: int, device: torch.device) -> tuple[int, int]:
    from torch.utils.flop_counter import FlopCounterMode

    model = build(model_cfg, device)
    inputs = synthetic_inputs(model_cfg, batch, device)
    loss_fn = ContrastiveLoss(model_cfg.label_smoothing)
    mapping = {torch.ops.aten.convolution_backward: conv_backward_flops}
    with FlopCounterMode(display=False, custom_mapping=mapping) as forward:
        loss, _ = forward_loss(model, loss_fn, inputs, PRECISION)
    with FlopCounterMode(display=False, custom_mapping=mapping) as backward:
        loss.backward()
    _sync(device)
    return forward.get_total_flops(), backward.get_total_flops()


def count_flops(model_cfg: ModelConfig, batch: int, device: torch.device) -> dict:
    """Forward and full-step (forward + backward) model FLOPs at ``batch``, gradient checkpointing off."""
    plain_cfg = model_cfg.model_copy(update={"gradient_checkpointing": False})
    counted_at = batch
    while True:
        try:
            fwd, bwd = _count_once(plain_cfg, counted_at, device)
            break
        except torch.OutOfMemoryError:
            if counted_at == 1:
                raise
            counted_at //= 2
        finally:
            if device.type == "cuda":
                torch.cuda.empty_cache()
    scale = batch / counted_at
    return {"forward": fwd * scale, "step": (fwd + bwd) * scale, "counted_at_batch": counted_at}


def measure(
    cfg: AlignConfig, model_cfg: ModelConfig, batch: int, steps: int, warmup: int, device: torch.device
) -> dict:
    """Timed steps of the platform's own ``train_step`` (the recipe's optimizer and schedule); warm-up excluded."""
    model = build(model_cfg, device)
    inputs = synthetic_inputs(model_cfg, batch, device)
    loss_fn = ContrastiveLoss(model_cfg.label_smoothing)
    optimizer = build_optimizer(cfg.train.optimizer, model, cfg.train.lr, cfg.train.weight_decay)
    scheduler = build_scheduler(optimizer, cfg.train.warmup_steps, cfg.train.steps)

    for step in range(warmup):
        train_step(model, loss_fn, optimizer, scheduler, inputs, PRECISION, step)
    _sync(device)
    start = time.perf_counter()
    for step in range(warmup, warmup + steps):  # train_step raises on a non-finite loss
        train_step(model, loss_fn, optimizer, scheduler, inputs, PRECISION, step)
    _sync(device)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "steps_per_s": steps / seconds, "samples_per_s": batch * steps / seconds}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(RECIPE), help="recipe whose model section is measured")
    parser.add_argument("--batch", type=int, default=None, help="per-device batch (default 64; smoke 4)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 20; smoke 2)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 5; smoke 1)")
    parser.add_argument("--gradient-checkpointing", action="store_true", help="sets model.gradient_checkpointing")
    parser.add_argument("--device", default=None, help="cuda (default), cuda:N, or cpu")
    parser.add_argument("--peak-tflops", type=float, default=None, help="peak dense bf16 TFLOP/s (default: by name)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra recipe override")
    parser.add_argument("--smoke", action="store_true", help="tiny model on CPU, to test the script's logic")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    defaults = {"batch": 4, "steps": 2, "warmup": 1, "device": "cpu"} if args.smoke else {
        "batch": 64, "steps": 20, "warmup": 5, "device": "cuda"}
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    name = "gpu_train_throughput-smoke.json" if args.smoke else "gpu_train_throughput.json"
    args.out = args.out or str(RESULTS / name)
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("no CUDA device found: this benchmark needs one GPU (use --smoke for a CPU check of the script)")
    if args.gradient_checkpointing and "gradient_checkpointing" not in ModelConfig.model_fields:
        sys.exit("this checkout's ModelConfig has no gradient_checkpointing field")

    overrides = (SMOKE_OVERRIDES if args.smoke else []) + list(args.set)
    if args.gradient_checkpointing:
        overrides.append("model.gradient_checkpointing=true")
    cfg = load_config(args.config, overrides=overrides)
    model_cfg = cfg.model.model_copy(deep=True)
    model_cfg.channels_last = True
    model_cfg.text.vocab_size = model_cfg.text.tokenizer_vocab_size  # the size the trained WordPiece will have
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: pick the fastest conv algorithms once

    flops = count_flops(model_cfg, args.batch, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    timing = measure(cfg, model_cfg, args.batch, args.steps, args.warmup, device)

    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak = args.peak_tflops or peak_tflops(device_name)
    achieved = flops["step"] * timing["steps_per_s"] / 1e12
    result = {
        "device": device_name,
        "recipe": cfg.name,
        "image_tower": model_cfg.image_tower,
        "image_size": output_size(model_cfg.train_preprocess),
        "text_layers": model_cfg.text.num_layers,
        "text_hidden": model_cfg.text.hidden_size,
        "tokens": model_cfg.text.max_length,
        "batch": args.batch,
        "precision": "bf16-autocast",
        "channels_last": True,
        "gradient_checkpointing": bool(getattr(cfg.model, "gradient_checkpointing", False)),
        "optimizer": cfg.train.optimizer,
        "timed_steps": args.steps,
        "warmup_steps": args.warmup,
        "samples_per_s": round(timing["samples_per_s"], 2),
        "step_time_s": round(1 / timing["steps_per_s"], 4),
        "flops_forward": flops["forward"],
        "flops_per_step": flops["step"],
        "flops_counted_at_batch": flops["counted_at_batch"],
        "achieved_tflops": float(f"{achieved:.4g}"),
        "peak_tflops": peak,
        "mfu": float(f"{achieved / peak:.4g}") if peak else None,
        "peak_memory_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None,
        "torch": torch.__version__,
        "smoke": args.smoke,
    }
    print(json.dumps(result, indent=2))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
