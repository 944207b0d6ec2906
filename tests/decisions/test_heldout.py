"""The k-fold calibration's held-out scores: each image is scored by a memory built without it."""
from __future__ import annotations

import torch

from fapm_lib.decisions.heldout import fold_model, image_rows, regions_to_maps
from fapm_lib.method.regions import split_regions
from tests.parts_support import TINY


def test_heldout_images_are_scored_by_memories_that_never_saw_them() -> None:
    """With ratio 1 the fold memory holds every row of the other folds: the held-out 1-NN
    distance of each position equals brute force over the same region of the other images."""
    torch.manual_seed(0)
    n, grid = 6, 2
    maps = [torch.randn(n, 5, 4, 4), torch.randn(n, 7, 2, 2)]
    regions = [split_regions(m, grid) for m in maps]
    config = TINY.replace(coreset_ratio=1.0, sampling="fixed")
    train, heldout = torch.tensor([0, 2, 3, 5]), torch.tensor([1, 4])
    model = fold_model(regions, [(4, 4), (2, 2)], config, train)
    knn = model.search([regions_to_maps(r, heldout, grid, size) for r, size in zip(regions, [(4, 4), (2, 2)])], 2)
    expected = torch.zeros(len(heldout), 4, 4)
    for m in maps:
        factor = 4 // m.shape[-1]
        s = m.shape[-1] // grid
        for a, img in enumerate(heldout.tolist()):
            for y in range(m.shape[-2]):
                for x in range(m.shape[-1]):
                    gy, gx = y // s, x // s
                    block = m[train][:, :, gy * s : (gy + 1) * s, gx * s : (gx + 1) * s]
                    bank = block.permute(0, 2, 3, 1).reshape(-1, m.shape[1])
                    d = (bank - m[img, :, y, x]).norm(dim=1).min()
                    expected[a, y * factor : (y + 1) * factor, x * factor : (x + 1) * factor] += d
    assert torch.allclose(knn[..., 0], expected, atol=1e-4)
    assert image_rows(torch.tensor([1]), 4).tolist() == [4, 5, 6, 7]
