"""The training image paths a fit records: from datasets, subsets and loaders; none from tensors."""
from __future__ import annotations

from pathlib import Path

import torch

from fapm_lib.data.folders import FolderDataset
from fapm_lib.data.samples import sample_paths
from fapm_lib.data.transform import Transform

SMALL = Transform(resize=32, crop_size=32)


def test_sample_paths_follow_datasets_subsets_and_loaders(folder_tree: Path) -> None:
    train = FolderDataset(good=folder_tree / "good", transform=SMALL)
    paths = [str(p.resolve()) for p, _ in ((s.path, 0) for s in train.samples)]
    assert sample_paths(train) == paths
    assert sample_paths(torch.utils.data.Subset(train, [2, 0])) == [paths[2], paths[0]]
    assert sample_paths(torch.utils.data.DataLoader(train, batch_size=2)) == paths
    assert sample_paths(torch.zeros(2, 3, 32, 32)) is None
