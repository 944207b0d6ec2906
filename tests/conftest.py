"""Fixtures that write tiny image datasets in the MVTec AD layout on the fly (no binaries in git)."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers import build_mvtec_tree, save_image, save_mask


@pytest.fixture
def make_mvtec(tmp_path: Path) -> Callable[..., Path]:
    """Factory: ``make_mvtec(root=None, **kwargs of build_mvtec_tree)``; root defaults to tmp_path/mvtec."""

    def make(root: Path | None = None, **kwargs) -> Path:
        return build_mvtec_tree(root or tmp_path / "mvtec", **kwargs)

    return make


@pytest.fixture
def tiny_mvtec(make_mvtec: Callable[..., Path]) -> Path:
    """Root of category 'widget': 3 train/good, test/good 2, test/crack 2 with masks, 48x40 RGB PNGs."""
    return make_mvtec()


@pytest.fixture
def image_writer() -> Callable[..., Path]:
    """``save_image(path, size=(48, 40), mode='RGB', seed=0)`` for tests."""
    return save_image


@pytest.fixture
def mask_writer() -> Callable[..., Path]:
    """``save_mask(path, size, box=None, mode='L')`` for tests."""
    return save_mask
