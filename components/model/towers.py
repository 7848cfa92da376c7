"""The two towers of the ALIGN dual encoder.

Image: a timm backbone, globally average-pooled at its last block. For EfficientNets the paper pools
*before* the 1x1 head conv (B7 -> 640-d, L2 -> 1376-d), so that conv and its BN are removed here.
Text: a BERT encoder whose [CLS] token of the last hidden state (not the tanh pooler) is linearly
projected to the image dimension.
"""

from __future__ import annotations

import timm
import torch
from timm.models.efficientnet import EfficientNet
from torch import nn
from transformers import BertConfig, BertModel

from components.config import TextTowerConfig


class ImageTower(nn.Module):
    def __init__(self, model_name: str, pretrained: bool = False):
        super().__init__()
        backbone = timm.create_model(model_name, pretrained=pretrained, num_classes=0, global_pool="")
        if isinstance(backbone, EfficientNet):
            # ALIGN pools the last block's output; timm's forward_features would add conv_head/bn2.
            backbone.conv_head = nn.Identity()
            backbone.bn2 = nn.Identity()
            self.embed_dim = int(backbone.feature_info[-1]["num_chs"])
        else:
            self.embed_dim = int(backbone.num_features)
        self.backbone = backbone
        data_config = timm.data.resolve_data_config({}, model=backbone)
        self.mean = tuple(float(v) for v in data_config["mean"])
        self.std = tuple(float(v) for v in data_config["std"])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.backbone.forward_features(images)
        return features.mean(dim=(2, 3))


class TextTower(nn.Module):
    def __init__(self, cfg: TextTowerConfig, embed_dim: int):
        super().__init__()
        bert_config = BertConfig(
            vocab_size=cfg.vocab_size,
            hidden_size=cfg.hidden_size,
            num_hidden_layers=cfg.num_layers,
            num_attention_heads=cfg.num_heads,
            intermediate_size=cfg.intermediate_size,
            max_position_embeddings=max(cfg.max_length, 64),
        )
        self.bert = BertModel(bert_config, add_pooling_layer=False)
        self.projection = nn.Linear(cfg.hidden_size, embed_dim)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.projection(hidden[:, 0])
