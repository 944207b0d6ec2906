"""Fixtures of the data tests."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import save_image, save_mask


@pytest.fixture
def folder_tree(tmp_path: Path) -> Path:
    """good/ (png, JPG, bmp, tiff at several depths, a text file, hidden files), defect/ (a
    scratch sub-folder and a loose file), masks/ (both naming rules)."""
    root = tmp_path / "parts"
    for rel in ("good/a.png", "good/line1/b.JPG", "good/line1/deep/c.bmp", "good/line2/d.tiff", "good/.hidden.png",
                "good/.cache/e.png", "defect/scratch/s1.png", "defect/scratch/s2.jpg", "defect/loose.png"):
        save_image(root / rel, seed=len(rel))
    (root / "good" / "notes.txt").write_text("not an image")
    (root / "good" / "line1" / "Thumbs.db").write_bytes(b"\0")
    save_mask(root / "masks" / "scratch" / "s1.png", (48, 40))
    save_mask(root / "masks" / "scratch" / "s2_mask.png", (48, 40))
    save_mask(root / "masks" / "loose_mask.png", (48, 40))
    return root
