"""Feature aggregation: the 3x3 average pooling of the backbone's maps."""
from __future__ import annotations

import torch

from fapm_lib.method.features import aggregate


def test_aggregate_is_the_plain_3x3_mean_in_standard_layout() -> None:
    """Pooling in channels-last (faster on CPU) gives exactly NCHW ``avg_pool2d``'s values."""
    x = torch.randn(2, 5, 9, 7, generator=torch.Generator().manual_seed(1))
    out = aggregate(x, 3)
    assert out.shape == x.shape and out.is_contiguous()
    assert torch.equal(out, torch.nn.functional.avg_pool2d(x, 3, stride=1, padding=1))
    mean = torch.nn.functional.conv2d(x, torch.full((5, 1, 3, 3), 1 / 9), padding=1, groups=5)
    torch.testing.assert_close(out, mean)  # zero padding, divided by 9 everywhere
    assert aggregate(x, 1) is x


def test_large_inputs_run_a_few_at_a_time_with_the_same_maps(monkeypatch) -> None:
    """A batch over the pixel budget per backbone call is split (whole images and tiles alike);
    the maps are those of one call."""
    from fapm_lib.method import features
    from fapm_lib.method.backbone import create_feature_extractor
    from fapm_lib.method.geometry import tile_layout

    torch.manual_seed(0)
    extractor = create_feature_extractor("tf_efficientnet_lite0", pretrained=False).eval()
    images = torch.randn(5, 3, 64, 96)
    calls: list[int] = []
    original = extractor.forward
    monkeypatch.setattr(extractor, "forward", lambda x: calls.append(x.shape[0]) or original(x))
    with torch.inference_mode():
        whole = features.embed(extractor, images)
        tiled = features.embed(extractor, images, tiles=tile_layout((64, 96), 64, 32))
        calls.clear()
        monkeypatch.setattr(features, "PIXELS_PER_CALL", 2 * 64 * 96)
        split = features.embed(extractor, images)
        assert calls == [2, 2, 1]
        calls.clear()
        split_tiles = features.embed(extractor, images, tiles=tile_layout((64, 96), 64, 32))
        assert max(calls) <= 5 and len(calls) == 2  # one tile position (x 5 images) per call
    for a, b in zip(whole + tiled, split + split_tiles):
        assert torch.allclose(a, b, atol=1e-5)
