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


def _jpegs(count: int, size=(40, 30)) -> list[bytes]:
    out = []
    for index in range(count):
        buffer = io.BytesIO()
        Image.new("RGB", size, (30 * index % 256, 90, 255 - 20 * index % 256)).save(buffer, format="JPEG")
        out.append(buffer.getvalue())
    return out


def test_batches_cross_to_the_device_as_uint8_nhwc_and_are_normalised_there():
    """A float batch is 4x the bytes of the stored pixels; the device converts them instead."""
    import numpy as np

    from components.config import ModelConfig
    from components.model.preprocess import build_pipeline, normalize
    from components.train.batches import BatchBuilder

    cfg = ModelConfig(train_preprocess="resize_short(24)|center_crop(16)", channels_last=True)
    _, tokenizer = _tiny_model_and_tokenizer()
    built = BatchBuilder(cfg, tokenizer)({"image": _jpegs(3), "text": ["a red circle"] * 3}, seed=0)
    images = built["images"]
    assert images.dtype == torch.uint8 and images.shape == (3, 16, 16, 3)
    mean, std = (0.48, 0.46, 0.41), (0.27, 0.26, 0.28)
    normalised = normalize(images, mean, std, channels_last=True)
    assert normalised.dtype == torch.float32 and normalised.shape == (3, 3, 16, 16)
    assert normalised.is_contiguous(memory_format=torch.channels_last)
    crop = build_pipeline(cfg.train_preprocess)
    pixels = np.stack([np.asarray(crop(Image.open(io.BytesIO(data))), np.float32) for data in _jpegs(3)]) / 255.0
    expected = (pixels - np.array(mean, np.float32)) / np.array(std, np.float32)
    assert np.allclose(normalised.permute(0, 2, 3, 1).numpy(), expected, atol=1e-6)


def test_a_gpu_worker_pins_its_batches_and_a_cpu_worker_does_not(monkeypatch):
    from components.config import ModelConfig
    from components.train.batches import BatchBuilder

    pinned = []
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self: pinned.append(self.dtype) or self)
    cfg = ModelConfig(train_preprocess="resize_short(24)|center_crop(16)")
    _, tokenizer = _tiny_model_and_tokenizer()
    batch = {"image": _jpegs(2), "text": ["a red circle", "a blue square"]}
    BatchBuilder(cfg, tokenizer)(batch, seed=0)
    assert pinned == []
    BatchBuilder(cfg, tokenizer, pin_memory=True)(batch, seed=0)
    assert sorted(map(str, pinned)) == sorted(map(str, [torch.uint8, torch.int64, torch.int64]))


def test_tokenising_runs_ahead_in_the_decode_threads_with_a_tokenizer_per_thread():
    """A Hugging Face fast tokenizer shared between threads fails ("Already borrowed")."""
    import threading

    from components.config import ModelConfig
    from components.train.batches import BatchBuilder, prefetch

    _, tokenizer = _tiny_model_and_tokenizer()
    used_from = set()

    class _Spy:
        def __init__(self):
            self.owner = None

        def __call__(self, *args, **kwargs):
            if self.owner is None:
                self.owner = threading.get_ident()
            assert self.owner == threading.get_ident(), "a tokenizer used from two threads"
            used_from.add(self.owner)
            return tokenizer(*args, **kwargs)

        def __deepcopy__(self, memo):
            return _Spy()

    cfg = ModelConfig(train_preprocess="resize_short(24)|center_crop(16)")
    texts = ["a red circle", "two green stars", "a blue square"]
    batches = [({"image": _jpegs(2), "text": [texts[i % 3], texts[(i + 1) % 3]]}, i) for i in range(12)]
    builder = BatchBuilder(cfg, _Spy())
    threaded = [built for _, built in prefetch(iter(batches), lambda item: builder(*item), threads=3)]
    assert threading.get_ident() not in used_from and 1 <= len(used_from) <= 3
    inline = [BatchBuilder(cfg, tokenizer)(*item) for item in batches]
    for a, b in zip(threaded, inline, strict=True):
        assert all(torch.equal(a[key], b[key]) for key in ("images", "input_ids", "attention_mask"))


def test_the_next_batch_is_copied_before_the_current_step_runs():
    """The copy of batch k+1 is issued (non-blocking) before step k, not after step k's loss syncs."""
    from components.train.batches import to_device_ahead

    events = []

    class _Tensor:
        def __init__(self, name):
            self.name = name

        def to(self, device, non_blocking=False):
            events.append(("copy", self.name, non_blocking))
            return self

    def produced():
        for k in range(3):
            events.append(("built", k))
            yield k, {"images": _Tensor(k)}

    for k, tensors in to_device_ahead(produced(), torch.device("cpu")):
        assert tensors["images"].name == k
        events.append(("step", k))
    assert events == [
        ("built", 0), ("copy", 0, True), ("built", 1), ("copy", 1, True), ("step", 0),
        ("built", 2), ("copy", 2, True), ("step", 1), ("step", 2),
    ]


def test_a_gpu_worker_autotunes_convolutions_and_refuses_a_card_smaller_than_its_recipe(monkeypatch):
    from types import SimpleNamespace

    from components.accelerators import prepare_cuda

    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    card = SimpleNamespace(name="NVIDIA H100 80GB HBM3", total_memory=int(79.6 * 2**30))
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: card)
    prepare_cuda(torch.device("cpu"), "H100-80GB")
    assert torch.backends.cudnn.benchmark is False  # CPU workers: nothing to tune
    prepare_cuda(torch.device("cuda", 0), "H100-80GB")
    assert torch.backends.cudnn.benchmark is True
    card.name, card.total_memory = "NVIDIA A100-SXM4-40GB", int(39.5 * 2**30)
    with pytest.raises(ValueError, match="H100-80GB.*A100-SXM4-40GB with 39.5 GiB"):
        prepare_cuda(torch.device("cuda", 0), "H100-80GB")
    prepare_cuda(torch.device("cuda", 0), "")  # no card named: no check


@pytest.mark.parametrize(
    ("resources", "expected"),
    [
        ({"CPU": 2.0}, ({"num_cpus": 1}, 3, "cpu")),
        ({"CPU": 16.0, "GPU": 1.0}, ({"num_cpus": 1, "num_gpus": 1}, 1, "cuda")),
        ({"CPU": 96.0, "GPU": 8.0}, ({"num_cpus": 1, "num_gpus": 1}, 3, "cuda")),
    ],
)
def test_corpus_index_embedders_use_a_gpu_only_when_ray_grants_them_one(resources, expected):
    from components.serving.corpus_index import embedder_placement

    assert embedder_placement(resources, concurrency=3) == expected


def test_an_embedding_actor_loads_its_encoder_on_the_device_it_was_given(monkeypatch):
    """``device="auto"`` in an actor that asked Ray for no GPU took GPU 0 outside Ray's accounting."""
    from components.model import artifact
    from components.registry import store
    from components.serving import corpus_index

    loaded = []
    monkeypatch.setattr(store, "download_model", lambda uri, model_uri, dst: (None, dst))
    monkeypatch.setattr(artifact, "load_encoder", lambda directory, batch_size, device: loaded.append(device))
    corpus_index._ImageEmbedder("file:///unused", "align", "1", batch_size=4, device="cpu")
    corpus_index._ImageEmbedder("file:///unused", "align", "1", batch_size=4, device="cuda")
    assert loaded == ["cpu", "cuda"]
