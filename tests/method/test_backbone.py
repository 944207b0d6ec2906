"""Backbones: offline lite0 weights, feature shapes, truncation, errors for unusable backbones
(``lite0``: the shared extractor of tests/conftest.py)."""
from __future__ import annotations

import pytest
import timm
import torch

import fapm_lib.method.machinery.weights as weights
from fapm_lib.errors import BackboneError
from fapm_lib.method.backbone import FeatureExtractor, create_feature_extractor, fold_batch_norms


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
    unfolded = create_feature_extractor("tf_efficientnet_lite0", optimize=False)
    full = timm.create_model("tf_efficientnet_lite0", features_only=True, out_indices=(2, 3), pretrained=False)
    missing, _ = full.load_state_dict(unfolded.model.state_dict(), strict=False)
    assert all(k.startswith("blocks.5") or k.startswith("blocks.6") for k in missing)
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        for ours, theirs in zip(unfolded(x), full.eval()(x), strict=True):
            torch.testing.assert_close(ours, theirs)


@pytest.mark.parametrize("name", ["tf_efficientnet_lite0", "resnet18"])
def test_folded_batch_norms_give_the_same_maps(name: str, images: torch.Tensor) -> None:
    pretrained = name == "tf_efficientnet_lite0"  # resnet18: random weights, its norms given statistics
    plain = create_feature_extractor(name, pretrained=pretrained, optimize=False)
    for norm in (m for m in plain.modules() if isinstance(m, torch.nn.BatchNorm2d) and not pretrained):
        gen = torch.Generator().manual_seed(norm.num_features)
        norm.running_mean.normal_(0, 0.1, generator=gen)
        norm.running_var.uniform_(0.8, 1.25, generator=gen)
        norm.weight.data.uniform_(0.8, 1.25, generator=gen)
    folded = FeatureExtractor(fold_batch_norms(plain.model), plain.info)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in plain.modules())  # folded on a copy
    with torch.inference_mode():
        for a, b in zip(plain(images), folded(images), strict=True):
            torch.testing.assert_close(b, a, rtol=0.0, atol=1e-4 * float(a.abs().max()))


def test_a_norm_that_does_not_follow_its_convolution_is_not_folded() -> None:
    class NormFirst(torch.nn.Module):  # children conv, bn, but the forward pass runs bn first
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)
            self.bn = torch.nn.BatchNorm2d(3)
            self.bn.running_mean.fill_(0.7)
            self.bn.running_var.fill_(3.0)

        def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
            return [self.conv(self.bn(x))]

    model = NormFirst()
    assert fold_batch_norms(model) is model
    assert isinstance(model.bn, torch.nn.BatchNorm2d)


def test_channels_last_on_cpu_gives_the_same_maps_contiguous(lite0: FeatureExtractor, images: torch.Tensor) -> None:
    plain = FeatureExtractor(lite0.model, lite0.info, channels_last=False)
    with torch.inference_mode():
        fast, reference = lite0(images), plain(images)
    assert lite0.channels_last and all(f.is_contiguous() for f in fast)
    for a, b in zip(reference, fast, strict=True):
        torch.testing.assert_close(b, a, rtol=0.0, atol=1e-4 * float(a.abs().max()))


def test_extractor_is_frozen(lite0: FeatureExtractor) -> None:
    lite0.train()
    assert not lite0.training and not lite0.model.training
    assert not any(p.requires_grad for p in lite0.parameters())


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


