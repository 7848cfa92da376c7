"""The ALIGN dual encoder: two towers, L2-normalised embeddings and one learnable temperature."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from components.config import ModelConfig
from components.model.towers import ImageTower, TextTower


class AlignModel(nn.Module):
    """Built from a ``ModelConfig``; pretrained sources in it are loaded unless ``load_pretrained=False``.

    ``load_pretrained=False`` builds the identical architecture without the pretrained weights, for a
    checkpoint or artifact to fill. With the ``bert_config`` and image mean/std an artifact saved it
    does not touch the pretrained packages at all, so an artifact loads on any machine.
    """

    def __init__(
        self,
        cfg: ModelConfig,
        *,
        load_pretrained: bool = True,
        bert_config: dict | None = None,
        image_mean: Sequence[float] | None = None,
        image_std: Sequence[float] | None = None,
    ):
        super().__init__()
        self.cfg = cfg
        self.image_tower = ImageTower(
            cfg.image_tower,
            cfg.image_pretrained,
            load_pretrained=load_pretrained,
            mean=image_mean,
            std=image_std,
            gradient_checkpointing=cfg.gradient_checkpointing,
            frozen=cfg.freeze_image_tower,
        )
        self.embed_dim = self.image_tower.embed_dim
        self.text_tower = TextTower(
            cfg.text,
            self.embed_dim,
            load_pretrained=load_pretrained,
            bert_config=bert_config,
            gradient_checkpointing=cfg.gradient_checkpointing,
            frozen=cfg.freeze_text_tower,
        )
        # Learnt in log space so it stays positive; clamped in ``temperature`` so it cannot run to
        # zero (logits -> inf -> NaN), a failure open_clip users report.
        log_t = torch.tensor(math.log(cfg.init_temperature))
        if cfg.learn_temperature:
            self.log_temperature = nn.Parameter(log_t)
        else:
            self.register_buffer("log_temperature", log_t)

    def temperature(self) -> torch.Tensor:
        return self.log_temperature.exp().clamp(self.cfg.min_temperature, self.cfg.max_temperature)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.image_tower(images), dim=-1)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text_tower(input_ids, attention_mask), dim=-1)

    def forward(
        self, images: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # The temperature is returned from forward so DDP sees it used inside the wrapped call.
        return self.encode_image(images), self.encode_text(input_ids, attention_mask), self.temperature()
