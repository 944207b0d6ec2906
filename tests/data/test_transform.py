"""The transform: resize 256, crop 224 and ImageNet normalisation as torchvision computes them, the
mask's geometry, bad parameters refused."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fapm_lib.data.images import load_image
from fapm_lib.data.transform import IMAGENET_MEAN, IMAGENET_STD, Transform
from fapm_lib.errors import ConfigError


def test_transform_matches_torchvision(image_writer, tmp_path: Path) -> None:
    tv = pytest.importorskip("torchvision.transforms")
    for size in [(48, 40), (300, 100), (32, 32), (257, 256), (100, 333)]:
        image = load_image(image_writer(tmp_path / "x.png", size, seed=size[0]))
        for ours, geometry in [
            (Transform(), [tv.Resize(256), tv.CenterCrop(224)]),
            (Transform(crop_size=None), [tv.Resize((256, 256))]),
        ]:
            reference = tv.Compose([*geometry, tv.ToTensor(), tv.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
            torch.testing.assert_close(ours.image(image), reference(image), atol=1e-5, rtol=0)


def test_transform_output_size_and_mask_geometry() -> None:
    assert Transform().output_size == 224 and Transform(crop_size=None).output_size == 256
    gray = np.zeros((100, 300), dtype=np.uint8)
    gray[:, 150:] = 255  # right half of a wide image
    mask = Transform().mask(Image.fromarray(gray))
    assert mask.shape == (224, 224) and mask.dtype == torch.bool
    # resized to 768x256, cropped at x in [272, 496): boundary 384 -> column 112
    assert not mask[:, :111].any() and mask[:, 113:].all()


@pytest.mark.parametrize(
    "kwargs",
    [{"resize": 0}, {"crop_size": 300}, {"crop_size": 0}, {"std": (0.2, 0.0, 0.2)}, {"mean": (0.5, 0.5)}],
)
def test_transform_rejects_bad_parameters(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        Transform(**kwargs)
