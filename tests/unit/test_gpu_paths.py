"""GPU code paths, checked on CPU: what would strand, corrupt or pile up state the first time a GPU runs them."""

from __future__ import annotations

import io

import pytest
import torch
from PIL import Image

from components.model.align import AlignModel
from components.model.tokenizer import train_wordpiece
from components.train import checkpointing
from components.train.checkpointing import Position, restore_checkpoint, save_checkpoint
from components.train.loop import convert_sync_batchnorm
from components.train.validation import validation_metrics
from tests.unit.test_model import TINY_TEXT, tiny_config


def _tiny_model_and_tokenizer():
    tokenizer = train_wordpiece(["a red circle", "a blue square", "two green stars"] * 10, 60, 16)
    torch.manual_seed(0)
    model = AlignModel(tiny_config(text=TINY_TEXT.model_copy(update={"vocab_size": len(tokenizer)})))
    return model, tokenizer


def _pairs(count: int = 4) -> dict:
    images = []
    for index in range(count):
        buffer = io.BytesIO()
        Image.new("RGB", (40, 40), (60 * index, 20, 200 - 40 * index)).save(buffer, format="JPEG")
        images.append(buffer.getvalue())
    return {"images": images, "captions": [f"picture {i}" for i in range(count)], "caption_to_image": list(range(count))}


@pytest.mark.parametrize("training", [True, False])
def test_validation_neither_moves_the_training_model_nor_leaves_its_mode_changed(monkeypatch, training):
    """On a GPU, moving the live model to the encoder's default device (CPU) crashed the next step."""
    model, tokenizer = _tiny_model_and_tokenizer()
    model.train(training)
    moves = []
    original_to = model.to
    monkeypatch.setattr(model, "to", lambda *args, **kwargs: moves.append((args, kwargs)) or original_to(*args, **kwargs))
    metrics = validation_metrics(model, tokenizer, _pairs())
    assert moves == [], "validation moved the model being trained"
    assert model.training is training
    assert 0.0 <= metrics["val/mean_recall"] <= 1.0


def test_timms_sync_batchnorm_conversion_keeps_the_fused_activations():
    """torch's conversion turns timm's BatchNormAct2d into a bare SyncBatchNorm: the activation is lost."""
    from timm.layers import BatchNormAct2d

    torch.manual_seed(0)
    tower = AlignModel(tiny_config()).image_tower.eval()
    assert any(isinstance(m, BatchNormAct2d) for m in tower.modules())
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = tower(images)
        converted = convert_sync_batchnorm(tower).eval()
        assert any(isinstance(m, torch.nn.SyncBatchNorm) for m in converted.modules())
        assert torch.allclose(converted(images), expected, atol=1e-5)


def test_a_resume_loads_the_optimiser_state_to_the_cpu_first(tmp_path, monkeypatch):
    """Saved on cuda:0, state loaded without a map location lands on cuda:0 for every rank of a node."""
    model, tokenizer = _tiny_model_and_tokenizer()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    save_checkpoint(tmp_path, model, tokenizer, optimizer, scheduler, Position(7, 1, 3))
    seen = []
    original_load = torch.load
    monkeypatch.setattr(checkpointing.torch, "load", lambda *a, **k: seen.append(k) or original_load(*a, **k))
    assert restore_checkpoint(str(tmp_path), model, optimizer, scheduler) == Position(7, 1, 3)
    assert seen and all(k.get("map_location") == "cpu" and k.get("weights_only") for k in seen)
