"""Device memory of one training step, measured on CPU: does a GPU recipe fit the card it names?

Why: a per-device batch too big for its card only fails on the cluster, after nodes are up and data is
staged. What decides it is the activations autograd keeps for backward, and those are measured here,
not guessed: the recipe's own model runs one forward pass (``train.step.forward_loss``, the recipe's
precision, train mode) on a small CPU batch at the recipe's train resolution and caption length, and
``saved_tensors_hooks`` see every tensor autograd saves; each storage counts once, so views and tensors
saved by several ops are not double-counted. Weights, gradients, DDP's gradient buckets and the
optimiser's states follow from the parameter count.

With non-reentrant checkpointing the segments keep their own saved tensors behind checkpoint's inner
hook, out of sight of the outer one. What they do keep is their inputs (counted through forward
pre-hooks), and while backward recomputes a segment its saved tensors exist again: that transient is the
largest segment's own saved bytes, measured in a pass with checkpointing off in which each saved tensor
is attributed to the segment running when it was saved.

Known gaps, covered by the headroom the recipe test keeps: CUDA autocast runs layer norm in fp32 (the CPU
policy keeps bf16), so the text tower's saved bytes can be up to ~2x the CPU figure (a few % of a paper
recipe's total: the image tower dominates); the optimiser step's temporaries and the allocator's
fragmentation are not modelled, and backward's activation gradients only as two of the largest saved maps.
"""

from __future__ import annotations

import contextlib
import itertools
from collections import Counter
from dataclasses import dataclass
from unittest import mock

import torch
from timm.models.efficientnet import EfficientNet
from transformers.modeling_layers import GradientCheckpointingLayer

from components.accelerators import card
from components.config import AlignConfig, ModelConfig
from components.model import loss as loss_module
from components.model.align import AlignModel
from components.model.loss import ContrastiveLoss
from components.model.preprocess import normalize, output_size
from components.train.step import forward_loss

GIB = 2**30
MIB = 2**20
OPTIMIZER_STATES = {"lamb": 2, "adamw": 2}  # fp32 tensors per parameter: first and second moments


def build_model(cfg: ModelConfig) -> AlignModel:
    """The model the training loop builds (``train/loop.py``): the recipe's vocab size, memory format and
    checkpointing, random weights (nothing is downloaded), in train mode."""
    cfg = cfg.model_copy(deep=True)
    cfg.text.vocab_size = cfg.text.tokenizer_vocab_size  # the loop uses the trained tokenizer's length
    model = AlignModel(cfg, load_pretrained=False)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model.train()


@dataclass(frozen=True)
class Activations:
    """Bytes autograd keeps for backward: per image of the local batch, and once per step."""

    image_per_image: float  # image tower, its input batch included
    text_per_image: float  # text tower, its inputs and the embeddings' normalisation
    weight_copies: float  # once per step: autocast's bf16 copies of the weights
    recompute_per_image: float  # largest checkpointed segment's own saved bytes (0: no checkpointing)
    largest_per_image: float  # the largest single saved tensor (backward holds ~2 such gradients)
    plain_per_image: float  # the same model with checkpointing off

    @property
    def per_image(self) -> float:
        return self.image_per_image + self.text_per_image


class _SavedBytes:
    """Counts the storages one forward pass saves for backward, each once, by where they were saved."""

    def __init__(self, model: AlignModel, units: list[torch.nn.Module], count_unit_inputs: bool):
        # Parameters and buffers are counted as weights, not activations.
        self.params = {t.untyped_storage().data_ptr() for t in itertools.chain(model.parameters(), model.buffers())}
        self.seen: set[int] = set()
        self.alive: list[torch.Tensor] = []  # held for the pass, so no address is reused and miscounted
        self.bytes: Counter[str] = Counter()  # "image", "text", "weights"
        self.unit_bytes: Counter[int] = Counter()
        self.largest = 0
        self.region, self.unit = ["text"], [None]
        self.handles = []
        for region, module in (("image", model.image_tower), ("text", model.text_tower)):
            self.handles.append(module.register_forward_pre_hook(lambda m, a, r=region: self.region.append(r)))
            self.handles.append(module.register_forward_hook(lambda m, a, o: _pop(self.region)))
        for index, unit in enumerate(units):

            def enter(module, args, kwargs, index=index):
                self.unit.append(index)
                if count_unit_inputs:  # checkpoint keeps a segment's inputs alive until its backward
                    for value in itertools.chain(args, kwargs.values()):
                        if isinstance(value, torch.Tensor):
                            self.add(value)

            self.handles.append(unit.register_forward_pre_hook(enter, with_kwargs=True))
            self.handles.append(unit.register_forward_hook(lambda m, a, o: _pop(self.unit)))

    def add(self, tensor: torch.Tensor, region: str | None = None) -> None:
        storage = tensor.untyped_storage()
        key, size = storage.data_ptr(), storage.nbytes()
        if key in self.params or key in self.seen:
            return
        self.seen.add(key)
        self.alive.append(tensor)
        if _is_weight_copy(tensor):
            self.bytes["weights"] += size
            return
        self.bytes[region or self.region[-1]] += size
        self.largest = max(self.largest, size)
        if self.unit[-1] is not None:
            self.unit_bytes[self.unit[-1]] += size

    def pack(self, tensor: torch.Tensor) -> torch.Tensor:
        self.add(tensor)
        return tensor

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.alive.clear()


def _pop(stack: list) -> None:
    stack.pop()  # a forward hook's return value would replace the module's output


def _is_weight_copy(tensor: torch.Tensor) -> bool:
    """A cast of a parameter (autocast caches one bf16 copy per weight and step): its size does not grow
    with the batch, so it must not be divided among the images."""
    base = tensor if tensor._base is None else tensor._base
    fn = base.grad_fn
    return (
        fn is not None
        and type(fn).__name__ == "ToCopyBackward0"
        and all(type(n).__name__ == "AccumulateGrad" for n, _ in fn.next_functions if n is not None)
    )


def _text_layers(model: AlignModel) -> list[torch.nn.Module]:
    return [m for m in model.text_tower.modules() if isinstance(m, GradientCheckpointingLayer)]


def _units(model: AlignModel) -> list[torch.nn.Module]:
    """The segments checkpointing recomputes: EfficientNet blocks (towers.py) and BERT layers."""
    backbone = model.image_tower.backbone
    if not isinstance(backbone, EfficientNet):
        if model.image_tower.gradient_checkpointing:
            raise NotImplementedError("only EfficientNet image towers' checkpointing is modelled")
        return _text_layers(model)
    return [*itertools.chain.from_iterable(backbone.blocks), *_text_layers(model)]


@contextlib.contextmanager
def _checkpointing_off(model: AlignModel):
    switches = [model.image_tower, *_text_layers(model)]
    before = [m.gradient_checkpointing for m in switches]
    for module in switches:
        module.gradient_checkpointing = False
    try:
        yield
    finally:
        for module, value in zip(switches, before):
            module.gradient_checkpointing = value


def _forward_pass(model: AlignModel, cfg: ModelConfig, precision: str, batch: int, checkpointed: bool) -> _SavedBytes:
    torch.manual_seed(0)
    resolution = output_size(cfg.train_preprocess)
    images = normalize(  # as the loop feeds the model: uint8 NHWC, normalised on the device
        torch.randint(0, 256, (batch, resolution, resolution, 3), dtype=torch.uint8),
        model.image_tower.mean, model.image_tower.std, cfg.channels_last,
    )
    input_ids = torch.randint(0, model.text_tower.bert.config.vocab_size, (batch, cfg.text.max_length))
    inputs = {"images": images, "input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}
    counter = _SavedBytes(model, _units(model), count_unit_inputs=checkpointed)
    try:
        counter.add(images, "image")  # the batch is alive for the whole step
        counter.add(input_ids, "text")  # every caption at max_length: the worst case
        counter.add(inputs["attention_mask"], "text")
        with torch.autograd.graph.saved_tensors_hooks(counter.pack, lambda t: t):
            # No loss here: its similarity matrices grow with the global batch (``loss_saved_bytes``).
            forward_loss(model, lambda i, t, temperature: i.sum() + t.sum() + temperature, inputs, precision)
        return counter
    finally:
        counter.close()


def measure_activations(model: AlignModel, cfg: ModelConfig, precision: str, *, batch: int = 2) -> Activations:
    """Saved-for-backward bytes of ``model`` (built by ``build_model(cfg)``) per image, at the train
    resolution; with checkpointing, also a pass without it for the segments' own bytes."""
    configured = _forward_pass(model, cfg, precision, batch, cfg.gradient_checkpointing)
    plain = configured
    if cfg.gradient_checkpointing:
        with _checkpointing_off(model):
            plain = _forward_pass(model, cfg, precision, batch, checkpointed=False)
    return Activations(
        image_per_image=configured.bytes["image"] / batch,
        text_per_image=configured.bytes["text"] / batch,
        weight_copies=float(plain.bytes["weights"]),  # inside segments the outer hook does not see them
        recompute_per_image=max(plain.unit_bytes.values()) / batch if cfg.gradient_checkpointing else 0.0,
        largest_per_image=plain.largest / batch,
        plain_per_image=(plain.bytes["image"] + plain.bytes["text"]) / batch,
    )


def loss_saved_bytes(embed_dim: int, local_batch: int, world: int, label_smoothing: float = 0.1) -> int:
    """What the contrastive loss saves: fp32 similarity rows of the local batch against the global one.

    Measured by running the loss at the real sizes; the all-gather is stood in for by a repeat, which has
    the same output shape and autograd, so no process group is needed.
    """
    torch.manual_seed(0)
    image_emb = torch.randn(local_batch, embed_dim, requires_grad=True)
    text_emb = torch.randn(local_batch, embed_dim, requires_grad=True)
    seen: dict[int, int] = {}

    def pack(tensor):
        seen.setdefault(tensor.untyped_storage().data_ptr(), tensor.untyped_storage().nbytes())
        return tensor

    loss_fn = ContrastiveLoss(label_smoothing, rank=0, world_size=world)
    with mock.patch.object(loss_module, "gather_with_grad", lambda t, w: t.repeat(w, 1) if w > 1 else t):
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss_fn(image_emb, text_emb, torch.ones((), requires_grad=True))
    return sum(seen.values())


@dataclass(frozen=True)
class Estimate:
    """Peak device memory of a recipe's training step, in bytes, against its card."""

    card: str
    card_bytes: float
    local_batch: int
    activations: Activations
    parts: dict[str, float]

    @property
    def total(self) -> float:
        return sum(self.parts.values())

    @property
    def fraction(self) -> float:
        return self.total / self.card_bytes

    def summary(self) -> str:
        a = self.activations
        parts = ", ".join(f"{name} {value / GIB:.1f}" for name, value in self.parts.items())
        return (
            f"{self.local_batch}/device x {a.per_image / MIB:.1f} MiB/image saved "
            f"(image {a.image_per_image / MIB:.1f}, text {a.text_per_image / MIB:.1f}; "
            f"{a.plain_per_image / MIB:.0f} without checkpointing): "
            f"{self.total / GIB:.1f} GiB = {100 * self.fraction:.0f}% of {self.card} ({parts} GiB)"
        )


def estimate_recipe(cfg: AlignConfig, *, model: AlignModel | None = None, batch: int = 2) -> Estimate:
    """The recipe's per-device peak: local batch x measured activations + weights + gradients + DDP's
    gradient buckets + optimiser states (+ the recompute of the largest checkpointed segment). Transients
    that never coexist (the forward's weight copies, backward's recompute, the optimiser's step) are
    summed all the same: an upper bound, not a prediction of ``max_memory_allocated``."""
    train = cfg.train
    if not train.accelerator:
        raise ValueError(f"recipe {cfg.name!r} names no train.accelerator to check against")
    if train.global_batch_size % train.num_workers:
        raise ValueError("train.global_batch_size must divide evenly across train.num_workers")
    local_batch = train.global_batch_size // train.num_workers
    model = model if model is not None else build_model(cfg.model)
    acts = measure_activations(model, cfg.model, train.precision, batch=batch)
    params = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    parts = {
        "activations": local_batch * acts.per_image,
        "weight copies": acts.weight_copies,
        "recompute": local_batch * acts.recompute_per_image,
        "activation grads": 2 * local_batch * acts.largest_per_image,
        "loss": float(loss_saved_bytes(model.embed_dim, local_batch, train.num_workers, cfg.model.label_smoothing)),
        "weights": 4.0 * params + buffers,  # fp32 master weights (autocast computes in bf16)
        "grads": 4.0 * trainable,
        # DDP copies gradients into flat buckets of the same size (gradient_as_bucket_view is off).
        "ddp buckets": 4.0 * trainable if train.num_workers > 1 else 0.0,
        "optimizer": 4.0 * OPTIMIZER_STATES[train.optimizer] * trainable,
    }
    return Estimate(train.accelerator, card(train.accelerator).memory_gib * GIB, local_batch, acts, parts)
