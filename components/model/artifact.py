"""The model artifact: safetensors weights + JSON config + tokenizer files, loadable without pickle.

Layout of an artifact directory::

    model.safetensors     weights (safetensors: no code runs on load)
    align_config.json     the ModelConfig, embed_dim, and what pretrained sources resolved to:
                          bert_config (the BERT's full HF config) and image_mean/image_std
    tokenizer/            Hugging Face tokenizer files
    index/                optional search index written by the registry (embeddings.npy, items.json)

The resolved keys let ``load_model`` rebuild a model that started from pretrained packages without
those packages (``AlignModel(..., load_pretrained=False)``); artifacts written before they existed
still load (their BERT is built from the ModelConfig sizes, their normalisation from timm).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from components.config import ModelConfig
from components.model.align import AlignModel
from components.model.preprocess import build_pipeline, normalize, to_uint8_batch
from components.model.tokenizer import load_tokenizer, save_tokenizer

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "align_config.json"
TOKENIZER_DIR = "tokenizer"


def unwrap(model: torch.nn.Module) -> AlignModel:
    """Strip DDP (or any ``.module`` wrapper) to reach the AlignModel."""
    return getattr(model, "module", model)


def save_artifact(model: torch.nn.Module, tokenizer, directory: str | Path) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    core = unwrap(model)
    state = {k: v.detach().cpu().contiguous() for k, v in core.state_dict().items()}
    save_file(state, str(directory / WEIGHTS_FILE))
    meta = {
        "model": core.cfg.model_dump(),
        "embed_dim": core.embed_dim,
        "bert_config": core.text_tower.bert_config,
        "image_mean": list(core.image_tower.mean),
        "image_std": list(core.image_tower.std),
    }
    (directory / CONFIG_FILE).write_text(json.dumps(meta, indent=2))
    save_tokenizer(tokenizer, directory / TOKENIZER_DIR)
    return directory


def load_model(directory: str | Path) -> tuple[AlignModel, object]:
    directory = Path(directory)
    meta = json.loads((directory / CONFIG_FILE).read_text())
    model = AlignModel(
        ModelConfig.model_validate(meta["model"]),
        load_pretrained=False,  # the weights file holds every tensor; the pretrained packages are not needed
        bert_config=meta.get("bert_config"),
        image_mean=meta.get("image_mean"),
        image_std=meta.get("image_std"),
    )
    if model.embed_dim != meta["embed_dim"]:
        raise ValueError(f"{directory}: rebuilt model embeds to {model.embed_dim}-d, artifact says {meta['embed_dim']}")
    model.load_state_dict(load_file(str(directory / WEIGHTS_FILE)))
    model.eval()
    return model, load_tokenizer(directory / TOKENIZER_DIR)


class AlignEncoder:
    """Inference wrapper: PIL images / strings in, L2-normalised numpy embeddings out."""

    def __init__(self, model: AlignModel, tokenizer, batch_size: int = 128, device: str | None = "cpu"):
        """``device=None``: use the model where it is and never move it (a model being trained)."""
        if device is None:
            self.device = next(model.parameters()).device
            self.model = model.eval()
        else:
            self.device = torch.device(resolve_device(device))
            self.model = model.eval().to(self.device)
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.preprocess = build_pipeline(model.cfg.eval_preprocess)
        self.mean, self.std = model.image_tower.mean, model.image_tower.std

    @property
    def embed_dim(self) -> int:
        return self.model.embed_dim

    @torch.inference_mode()
    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        out = [np.zeros((0, self.embed_dim), np.float32)]
        for start in range(0, len(images), self.batch_size):
            chunk = [self.preprocess(image) for image in images[start : start + self.batch_size]]
            # uint8 crosses to the device, which normalises it: a quarter of the bytes of a float batch.
            batch = normalize(to_uint8_batch(chunk).to(self.device), self.mean, self.std, self.model.cfg.channels_last)
            out.append(self.model.encode_image(batch).float().cpu().numpy())
        return np.concatenate(out)

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        out = [np.zeros((0, self.embed_dim), np.float32)]
        for start in range(0, len(texts), self.batch_size):
            tokens = tokenize(self.tokenizer, list(texts[start : start + self.batch_size]), self.model.cfg)
            ids, mask = tokens["input_ids"].to(self.device), tokens["attention_mask"].to(self.device)
            out.append(self.model.encode_text(ids, mask).float().cpu().numpy())
        return np.concatenate(out)


def tokenize(tokenizer, texts: list[str], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    return tokenizer(
        texts, padding="longest", truncation=True, max_length=cfg.text.max_length, return_tensors="pt"
    )


def resolve_device(device: str = "auto") -> str:
    """``auto``: the GPU when there is one; evaluating a B7/L2 model on CPU takes hours."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def load_encoder(directory: str | Path, batch_size: int = 128, device: str = "cpu") -> AlignEncoder:
    model, tokenizer = load_model(directory)
    return AlignEncoder(model, tokenizer, batch_size=batch_size, device=device)
