"""A small ALIGN model trained in-process on the embedded corpus' drawn shapes, for the arithmetic-query test.

The scenes are the embedded corpus' own drawings (``components.data.scenes``), reduced to one large,
centred object on a plain background. The towers are the offline pretrained ones of the shipped
recipe ``configs/real-openclipart-gimp-pretrained.yaml`` (ImageNet EfficientNet-Lite0 and MiniLM, both
frozen, as that recipe trains them); only the projections learn, which takes about a minute on 2 CPU
cores. Towers trained from scratch on 16 drawn combinations learn retrieval perfectly but keep too
little in common between one shape in two colours for ``image + text`` arithmetic; pretrained features
carry shape and colour apart, as the web-scale towers of the paper do. Captions vary like alt-texts
do: most name colour and shape, some only one of them.

Training is a bare loop over the platform's model library (towers, contrastive loss, preprocessing,
tokenizer), open_clip-style: the test is about what a trained model does in serving, not about Ray Train.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np

from components.evaluation.arithmetic import COMBINATIONS, DRAW_SIZE, draw

FULL_TEMPLATES = ("a {c} {s}", "a photo of a {c} {s}", "{c} {s}", "a drawing of a {c} {s}")
COLOUR_ONLY = ("something {c}", "a {c} shape", "{c}")
SHAPE_ONLY = ("a {s}", "a {s} shape", "{s}")
PARTIAL_SHARE = 0.15  # of captions naming only the colour, and again of those naming only the shape
PRETRAINED_RECIPE = "real-openclipart-gimp-pretrained.yaml"


def caption(colour: str, shape: str, rng: random.Random) -> str:
    u = rng.random()
    if u < PARTIAL_SHARE:
        return rng.choice(COLOUR_ONLY).format(c=colour)
    if u < 2 * PARTIAL_SHARE:
        return rng.choice(SHAPE_ONLY).format(s=shape)
    return rng.choice(FULL_TEMPLATES).format(c=colour, s=shape)


def train_shape_model(steps: int, size: int = DRAW_SIZE, seed: int = 0):
    """(AlignModel, tokenizer): the pretrained recipe's model trained on ``steps`` batches of all 16
    colour x shape combinations (each once per batch, so no batch holds a false negative)."""
    import torch

    from components.config import PROJECT_ROOT, load_config
    from components.model.align import AlignModel
    from components.model.artifact import tokenize
    from components.model.loss import ContrastiveLoss
    from components.model.preprocess import build_pipeline, to_batch
    from components.model.tokenizer import build_tokenizer

    torch.manual_seed(seed)
    model_cfg = load_config(PROJECT_ROOT / "configs" / PRETRAINED_RECIPE).model
    tokenizer = build_tokenizer(model_cfg.text)
    model = AlignModel(model_cfg, load_pretrained=True).train()
    trainable = [p for p in model.parameters() if p.requires_grad]  # the projections and the temperature
    optimizer = torch.optim.AdamW(trainable, lr=1e-3, weight_decay=1e-4)
    loss_fn = ContrastiveLoss(label_smoothing=0.0)
    preprocess = build_pipeline(model_cfg.train_preprocess)
    rng = random.Random(seed)
    for _ in range(steps):
        images = [preprocess(draw(c, s, rng, size)) for c, s in COMBINATIONS]
        tokens = tokenize(tokenizer, [caption(c, s, rng) for c, s in COMBINATIONS], model_cfg)
        batch = to_batch(images, model.image_tower.mean, model.image_tower.std)
        image_emb, text_emb, temperature = model(batch, tokens["input_ids"], tokens["attention_mask"])
        loss = loss_fn(image_emb, text_emb, temperature)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval(), tokenizer


def write_artifact_with_corpus(model, tokenizer, directory: Path, per_combination: int = 3, size: int = DRAW_SIZE,
                               seed: int = 123) -> list[tuple[str, str]]:
    """Save the model artifact with a search index over fresh drawings of every combination; returns the
    (colour, shape) of each indexed item, in index order (item ids are ``<colour>-<shape>-<n>``)."""
    import json

    from components.model.artifact import AlignEncoder, save_artifact
    from components.serving.index import EMBEDDINGS_FILE, ITEMS_FILE

    save_artifact(model, tokenizer, directory)
    rng = random.Random(seed)
    labels = [(c, s) for c, s in COMBINATIONS for _ in range(per_combination)]
    embeddings = AlignEncoder(model, tokenizer).encode_images([draw(c, s, rng, size) for c, s in labels])
    (directory / EMBEDDINGS_FILE).parent.mkdir(parents=True, exist_ok=True)
    np.save(directory / EMBEDDINGS_FILE, embeddings.astype(np.float32), allow_pickle=False)
    items = [{"id": f"{c}-{s}-{i % per_combination}", "caption": f"a {c} {s}", "uri": f"synthetic://{c}-{s}"}
             for i, (c, s) in enumerate(labels)]
    (directory / ITEMS_FILE).write_text(json.dumps(items))
    return labels
