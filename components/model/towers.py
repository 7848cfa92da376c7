"""The two towers of the ALIGN dual encoder.

Image: a timm backbone, globally average-pooled at its last block. For EfficientNets the paper pools
*before* the 1x1 head conv (B7 -> 640-d, L2 -> 1376-d), so that conv and its BN are removed here.
Text: a BERT encoder whose [CLS] token of the last hidden state (not the tanh pooler) is linearly
projected to the image dimension.

Either tower can start from offline pretrained weights (``components.model.pretrained``) and be
frozen LiT-style: no gradients, and kept in eval mode so a frozen image tower's BatchNorm statistics
stay those it was trained with. ``load_pretrained=False`` builds the same architecture without
touching the pretrained weights (a checkpoint's follow); given an artifact's saved ``bert_config`` it
needs no pretrained package at all, so an artifact loads on a machine that lacks them.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
from collections.abc import Sequence

import timm
import torch
from timm.models.efficientnet import EfficientNet
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import BertConfig, BertModel

from components.config import TextTowerConfig
from components.model import pretrained as pretrained_lib


class ImageTower(nn.Module):
    def __init__(
        self,
        model_name: str,
        pretrained: str = "",
        *,
        load_pretrained: bool = True,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        gradient_checkpointing: bool = False,
        frozen: bool = False,
    ):
        super().__init__()
        self.frozen = False
        if not isinstance(pretrained, str):
            # The old ``pretrained=True`` meant a timm hub download, which cannot work offline.
            raise TypeError("pretrained must be '' or an offline source name/path; hub downloads are not supported")
        if pretrained and load_pretrained:
            # Load into the full model first, so every weight is checked, then drop what ALIGN does not use.
            backbone, (norm_mean, norm_std) = pretrained_lib.load_timm_model(pretrained, model_name)
            backbone.reset_classifier(0, global_pool="")
        else:
            backbone = timm.create_model(model_name, pretrained=False, num_classes=0, global_pool="")
            norm_mean, norm_std = pretrained_lib.image_normalization(pretrained, backbone)
        if isinstance(backbone, EfficientNet):
            # ALIGN pools the last block's output; timm's forward_features would add conv_head/bn2.
            backbone.conv_head = nn.Identity()
            backbone.bn2 = nn.Identity()
            self.embed_dim = int(backbone.feature_info[-1]["num_chs"])
        else:
            self.embed_dim = int(backbone.num_features)
        # EfficientNets are checkpointed block by block here (see ``forward``); other timm models use
        # timm's own switch.
        self.gradient_checkpointing = gradient_checkpointing
        if gradient_checkpointing and not isinstance(backbone, EfficientNet):
            backbone.set_grad_checkpointing(True)
        self.backbone = backbone
        # An artifact passes the normalisation it was trained with; otherwise the weights' own.
        self.mean = tuple(float(v) for v in (mean if mean is not None else norm_mean))
        self.std = tuple(float(v) for v in (std if std is not None else norm_std))
        if frozen:
            self.freeze()

    def freeze(self) -> None:
        """LiT: fixed weights *and* fixed BatchNorm statistics (eval mode survives ``model.train()``)."""
        self.frozen = True
        self.requires_grad_(False)
        self.train(self.training)

    def train(self, mode: bool = True) -> ImageTower:
        return super().train(mode and not self.frozen)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.gradient_checkpointing and self.training and isinstance(self.backbone, EfficientNet):
            features = self._checkpointed_features(images)
        else:
            features = self.backbone.forward_features(images)
        return features.mean(dim=(2, 3))

    def _checkpointed_features(self, images: torch.Tensor) -> torch.Tensor:
        """timm's checkpointing re-runs each block's BatchNorms in train mode during backward, which
        updates their running statistics a second time per step; here the recompute leaves them as the
        forward pass set them, so checkpointing changes memory use only."""
        backbone = self.backbone
        x = backbone.bn1(backbone.conv_stem(images))
        for block in itertools.chain.from_iterable(backbone.blocks):
            keep_stats = functools.partial(_keep_batchnorm_stats, block)
            x = checkpoint(block, x, use_reentrant=False, context_fn=keep_stats)
        return backbone.bn2(backbone.conv_head(x))  # both Identity here: ALIGN pools the last block


class _RestoreBuffers:
    """Snapshot a module's buffers (BatchNorm statistics) on entry, put them back on exit, also when
    the recompute stops early: state a forward pass mutates must change once per step, not twice."""

    def __init__(self, module: nn.Module):
        self.buffers = list(module.buffers())

    def __enter__(self) -> None:
        self.saved = [b.detach().clone() for b in self.buffers]

    def __exit__(self, *exc) -> None:
        with torch.no_grad():
            for buffer, saved in zip(self.buffers, self.saved):
                buffer.copy_(saved)


def _keep_batchnorm_stats(module: nn.Module) -> tuple[contextlib.AbstractContextManager, _RestoreBuffers]:
    return contextlib.nullcontext(), _RestoreBuffers(module)


class TextTower(nn.Module):
    def __init__(
        self,
        cfg: TextTowerConfig,
        embed_dim: int,
        *,
        load_pretrained: bool = True,
        bert_config: dict | None = None,
        gradient_checkpointing: bool = False,
        frozen: bool = False,
    ):
        super().__init__()
        self.frozen = False
        if cfg.pretrained and load_pretrained:
            self.bert = pretrained_lib.load_bert(cfg.pretrained)
        elif bert_config is not None:
            # Rebuild exactly what an artifact was trained with (pretrained or not) from its saved config.
            self.bert = BertModel(BertConfig.from_dict(bert_config), add_pooling_layer=False)
        elif cfg.pretrained:
            # Architecture only (a checkpoint's weights follow): the folder's config.json, not its weights.
            self.bert = BertModel(pretrained_lib.load_bert_config(cfg.pretrained), add_pooling_layer=False)
        else:
            self.bert = BertModel(
                BertConfig(
                    vocab_size=cfg.vocab_size,
                    hidden_size=cfg.hidden_size,
                    num_hidden_layers=cfg.num_layers,
                    num_attention_heads=cfg.num_heads,
                    intermediate_size=cfg.intermediate_size,
                    max_position_embeddings=max(cfg.max_length, 64),
                ),
                add_pooling_layer=False,
            )
        if gradient_checkpointing:
            # transformers 5's name for gradient_checkpointing_enable; non-reentrant by default. An
            # encoder has no KV cache to keep, so switching it off only silences HF's warning.
            self.bert.config.use_cache = False
            self.bert.activation_checkpointing_enable()
        self.projection = nn.Linear(self.bert.config.hidden_size, embed_dim)
        if frozen:
            self.freeze()

    def freeze(self) -> None:
        """LiT: the BERT is fixed (no grad, no dropout); the projection into image space still trains."""
        self.frozen = True
        self.bert.requires_grad_(False)
        self.train(self.training)

    def train(self, mode: bool = True) -> TextTower:
        super().train(mode)
        if self.frozen:
            self.bert.eval()
        return self

    @property
    def bert_config(self) -> dict:
        return pretrained_lib.bert_config_dict(self.bert)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.projection(hidden[:, 0])
