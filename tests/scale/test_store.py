"""The disk store of region features: written by batches (with or without the image count), read back by
region and by image, its spool and folder removed; runs of consecutive images."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fapm_lib.method.regions import split_regions
from fapm_lib.scale.store import FeatureStore, image_runs


@pytest.mark.parametrize("known_count", [True, False])
def test_store_reads_back_split_regions(tmp_path: Path, known_count: bool) -> None:
    maps = [torch.randn(5, 8, 14, 14), torch.randn(3, 8, 14, 14)]
    with FeatureStore(tmp_path) as store:
        writer = store.writer(0, 7, 8 if known_count else None)
        for m in maps:
            writer.add(m)
        layer = writer.finish()
        assert (layer.n_regions, layer.n_rows, layer.dim) == (49, 8 * 4, 8)
        whole = split_regions(torch.cat(maps), 7)
        assert torch.equal(layer.read(range(49)), whole)
        assert torch.equal(layer.read([3, 4, 10]), whole[[3, 4, 10]])
        images = torch.tensor([1, 2, 6])
        rows = (images[:, None] * 4 + torch.arange(4)).flatten()
        assert torch.equal(layer.read(range(2, 9), images), whole[2:9, rows])
        buffer = torch.empty(2 * 32 * 8 + 5)
        assert torch.equal(layer.read([0, 1], out=buffer), whole[:2])
        assert sorted(p.name for p in store.root.iterdir()) == ["layer0.f32"]  # the spool is gone
    assert list(tmp_path.iterdir()) == []  # the store's folder is removed


def test_image_runs() -> None:
    assert image_runs(torch.tensor([0, 1, 2, 5, 7, 8])) == [(0, 3), (5, 6), (7, 9)]
    with pytest.raises(ValueError, match="ascending"):
        image_runs(torch.tensor([3, 1]))
