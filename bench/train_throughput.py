"""Training-step throughput of a recipe's dual encoder, against a bare baseline loop in the same run.

Baseline: the same towers and loss with default memory format. Candidate: the recipe's settings
(channels_last on the image tower). Prints samples/s for each and the ratio; writes JSON under
bench/results/. Single process, synthetic inputs: this isolates model compute from data loading.

    .venv/bin/python bench/train_throughput.py [--config configs/embedded.yaml] [--steps 20]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from components.config import load_config
from components.model.align import AlignModel
from components.model.loss import ContrastiveLoss
from components.model.preprocess import output_size
from components.train.schedule import build_optimizer


def samples_per_second(cfg, channels_last: bool, batch: int, steps: int, warmup: int = 3) -> float:
    torch.manual_seed(0)
    model_cfg = cfg.model.model_copy(update={"channels_last": channels_last})
    model_cfg.text.vocab_size = 2000
    model = AlignModel(model_cfg)
    size = output_size(model_cfg.eval_preprocess)
    images = torch.randn(batch, 3, size, size)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    ids = torch.randint(5, 2000, (batch, 16))
    mask = torch.ones_like(ids)
    loss_fn = ContrastiveLoss(model_cfg.label_smoothing)
    optimizer = build_optimizer(cfg.train.optimizer, model, cfg.train.lr, cfg.train.weight_decay)
    for step in range(warmup + steps):
        if step == warmup:
            start = time.perf_counter()
        loss = loss_fn(*model(images, ids, mask))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return batch * steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=None)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    cfg = load_config(args.config)
    batch = cfg.train.global_batch_size
    baseline = samples_per_second(cfg, channels_last=False, batch=batch, steps=args.steps)
    candidate = samples_per_second(cfg, channels_last=True, batch=batch, steps=args.steps)
    result = {
        "recipe": cfg.name,
        "image_tower": cfg.model.image_tower,
        "batch": batch,
        "threads": torch.get_num_threads(),
        "baseline_samples_per_s": round(baseline, 1),
        "channels_last_samples_per_s": round(candidate, 1),
        "ratio": round(candidate / baseline, 3),
    }
    print(json.dumps(result, indent=2))
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / f"train_throughput-{cfg.name}.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
