"""The dual encoder: paper dimensions, [CLS] projection, normalisation, temperature, artifacts, preprocessing."""

import json
import random

import pytest
import torch
from PIL import Image

from components.config import ModelConfig, TextTowerConfig
from components.model.align import AlignModel
from components.model.artifact import AlignEncoder, load_encoder, save_artifact
from components.model.preprocess import build_pipeline, output_size, parse_pipeline, to_batch
from components.model.tokenizer import load_tokenizer, save_tokenizer, train_wordpiece
from components.model.towers import ImageTower

TINY_TEXT = TextTowerConfig(vocab_size=64, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, max_length=16)


def tiny_config(**update) -> ModelConfig:
    base = dict(
        image_tower="tinynet_e",
        train_preprocess="resize_short(40)|random_crop(32)|flip_lr",
        eval_preprocess="resize_short(40)|center_crop(32)",
        text=TINY_TEXT,
        init_temperature=0.07,
    )
    return ModelConfig(**(base | update))


@pytest.mark.parametrize(("name", "dim"), [("efficientnet_b7", 640), ("efficientnet_l2", 1376), ("tinynet_e", 160)])
def test_efficientnet_is_pooled_before_the_head_conv(name, dim):
    """Paper: B7 -> 640-d, L2 -> 1376-d (the last block's channels, not the 1x1 head conv's)."""
    if name == "tinynet_e":
        tower = ImageTower(name)
        assert tower(torch.randn(2, 3, 32, 32)).shape == (2, dim)
    else:  # the big ones are built on the meta device (no memory, no init); test_paper_models runs them
        with torch.device("meta"):
            tower = ImageTower(name)
    assert tower.embed_dim == dim
    assert not any(k.startswith(("conv_head", "bn2", "classifier")) for k in tower.backbone.state_dict())


def test_text_tower_uses_cls_of_last_hidden_state_not_the_pooler():
    model = AlignModel(tiny_config()).eval()  # no dropout, so both paths are deterministic
    assert model.text_tower.bert.pooler is None
    ids = torch.tensor([[2, 5, 6, 3], [2, 7, 3, 0]])
    mask = (ids != 0).long()
    hidden = model.text_tower.bert(input_ids=ids, attention_mask=mask).last_hidden_state
    expected = model.text_tower.projection(hidden[:, 0])
    assert torch.allclose(model.text_tower(ids, mask), expected)


def test_embeddings_are_unit_norm_and_temperature_is_learnable_and_clamped():
    model = AlignModel(tiny_config())
    image, text, temperature = model(torch.randn(3, 3, 32, 32), torch.tensor([[2, 5, 3]] * 3), torch.ones(3, 3, dtype=torch.long))
    assert torch.allclose(image.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert torch.allclose(text.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert image.shape[1] == text.shape[1] == model.embed_dim
    assert temperature.requires_grad and abs(temperature.item() - 0.07) < 1e-6
    with torch.no_grad():
        model.log_temperature.fill_(-50.0)
    assert model.temperature().item() == pytest.approx(model.cfg.min_temperature)
    fixed = AlignModel(tiny_config(learn_temperature=False))
    assert "log_temperature" not in dict(fixed.named_parameters())


def test_wordpiece_tokenizer_round_trips_through_files(tmp_path):
    tokenizer = train_wordpiece(["a red circle on the left", "two blue squares"] * 20, 100, 16)
    save_tokenizer(tokenizer, tmp_path)
    loaded = load_tokenizer(tmp_path)
    ids = loaded(["a red circle"])["input_ids"][0]
    assert ids[0] == loaded.cls_token_id and ids[-1] == loaded.sep_token_id
    assert loaded.unk_token_id not in ids


def test_artifact_round_trip_gives_identical_embeddings(tmp_path):
    tokenizer = train_wordpiece(["a red circle", "a blue square"] * 10, 60, 16)
    cfg = tiny_config(text=TINY_TEXT.model_copy(update={"vocab_size": len(tokenizer)}))
    torch.manual_seed(0)
    model = AlignModel(cfg).eval()
    save_artifact(model, tokenizer, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["align_config.json", "model.safetensors", "tokenizer"]
    meta = json.loads((tmp_path / "align_config.json").read_text())
    assert meta["bert_config"]["hidden_size"] == 32 and meta["image_mean"] == list(model.image_tower.mean)
    images = [Image.new("RGB", (50, 40), "red"), Image.new("RGB", (40, 60), "blue")]
    before = AlignEncoder(model, tokenizer)
    after = load_encoder(tmp_path)
    assert (after.encode_images(images) == before.encode_images(images)).all()
    assert (after.encode_texts(["a red circle"]) == before.encode_texts(["a red circle"])).all()
    assert after.encode_texts([]).shape == (0, model.embed_dim)


def test_preprocessing_steps_are_registered_and_deterministic():
    assert [name for name, _ in parse_pipeline("resize_short(40)|random_crop(32)|flip_lr")] == [
        "resize_short",
        "random_crop",
        "flip_lr",
    ]
    assert output_size("resize_short(40)|center_crop(32)") == 32
    with pytest.raises(ValueError, match="unknown preprocessing step"):
        parse_pipeline("resize_short(40)|sharpen")
    image = Image.new("RGB", (80, 50))
    a = build_pipeline("resize_short(40)|random_crop(32)|flip_lr", random.Random(1))(image)
    assert a.size == (32, 32)
    batch = to_batch([a, a], (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), channels_last=True)
    assert batch.shape == (2, 3, 32, 32) and batch.is_contiguous(memory_format=torch.channels_last)
