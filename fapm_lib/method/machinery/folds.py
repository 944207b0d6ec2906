"""Which training images each k-fold calibration fold leaves out and which of them it scores.

Image ``i`` is in fold ``i % folds``; fold ``f``'s memory is built from the other folds' images.
A fit scores at most ``calibration_images`` of its images (a seeded sample, in image order):
a threshold's precision depends on how many held-out images it reads, not on how many trained
the memory, and scoring every image of a large fit would cost ``N^2 r`` distances.
"""
from __future__ import annotations

import torch
from torch import Tensor


def fold_count(n_images: int, folds: int) -> int:
    """Folds a fit of ``n_images`` uses: ``folds``, at most one per image."""
    return min(folds, n_images)


def kept_images(n_images: int, folds: int, fold: int) -> Tensor:
    """The images fold ``fold``'s memory is built from (those outside it), ``[N - N/folds]``."""
    everyone = torch.arange(n_images)
    return everyone[everyone % folds != fold]


def scored_images(n_images: int, most: int | None, seed: int) -> Tensor:
    """The images the calibration scores, ascending: every one, or ``most`` of them drawn with
    ``seed`` when there are more."""
    if most is None or n_images <= most:
        return torch.arange(n_images)
    return torch.randperm(n_images, generator=torch.Generator().manual_seed(seed))[:most].sort().values


def heldout_images(scored: Tensor, folds: int) -> list[tuple[Tensor, Tensor]]:
    """Per fold, its scored images (image ids, ascending) and their places among ``scored``:
    ``[(images [n_f], slots [n_f])] * folds``."""
    slots = torch.arange(len(scored))
    return [(scored[scored % folds == f], slots[scored % folds == f]) for f in range(folds)]
