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
        monkeypatch.setattr(features, "CPU_PIXELS_PER_CALL", 2 * 64 * 96)
        split = features.embed(extractor, images)
        assert calls == [2, 2, 1]
        calls.clear()
        split_tiles = features.embed(extractor, images, tiles=tile_layout((64, 96), 64, 32))
        assert calls == [3, 2, 3, 2]  # two tile positions of 64 x 64, each in slices of the batch
    for a, b in zip(whole + tiled, split + split_tiles):
        assert torch.allclose(a, b, atol=1e-5)


def test_tile_calls_cover_every_crop_once_within_the_bound() -> None:
    from fapm_lib.method.features import tile_calls

    for positions, batch, per_call in [(9, 1, 1), (9, 1, 4), (6, 16, 5), (6, 2, 5), (3, 5, 1), (1, 1, 0)]:
        calls = tile_calls(positions, batch, per_call)
        crops = [(p, b) for chunk, rows in calls for p in chunk for b in range(rows.start, rows.stop)]
        assert sorted(crops) == [(p, b) for p in range(positions) for b in range(batch)]
        assert max(len(chunk) * (rows.stop - rows.start) for chunk, rows in calls) <= max(1, per_call)
    assert tile_calls(9, 1, 4)[0] == (range(0, 4), slice(0, 1))  # several whole positions per call
    assert tile_calls(2, 16, 5)[:2] == [(range(0, 1), slice(0, 5)), (range(0, 1), slice(5, 10))]


def test_a_cpu_call_holds_one_512_image_and_other_devices_sixteen_of_224() -> None:
    from fapm_lib.method.features import pixels_per_call

    assert pixels_per_call(torch.device("cpu")) == 512 * 512
    assert pixels_per_call(torch.device("cuda")) == 16 * 224 * 224
