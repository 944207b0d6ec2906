"""Plain folders: listing (any depth, any format, non-images listed), labelled folders with masks matched
by name, a training folder without defects, bad folders refused with one line."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fapm_lib.data.folders import FolderDataset, folder_samples, scan_folder
from fapm_lib.data.transform import Transform
from fapm_lib.errors import ConfigError, DataError
from tests.helpers import save_mask

SMALL = Transform(resize=32, crop_size=32)


def test_scan_lists_images_of_any_depth_and_format_and_the_other_files(folder_tree: Path) -> None:
    images, others = scan_folder(folder_tree / "good")
    rel = [p.relative_to(folder_tree / "good").as_posix() for p in images]
    assert rel == ["a.png", "line1/b.JPG", "line1/deep/c.bmp", "line2/d.tiff"]
    assert [p.name for p in others] == ["Thumbs.db", "notes.txt"]


def test_labelled_folders_give_labels_types_and_masks(folder_tree: Path) -> None:
    data = FolderDataset(folder_tree / "good", folder_tree / "defect", folder_tree / "masks", SMALL, split="test")
    assert [(s.path.name, s.label, s.defect_type) for s in data.samples] == [
        ("a.png", 0, "good"), ("b.JPG", 0, "good"), ("c.bmp", 0, "good"), ("d.tiff", 0, "good"),
        ("loose.png", 1, "defect"), ("s1.png", 1, "scratch"), ("s2.jpg", 1, "scratch")]
    assert [s.mask_path.name if s.mask_path else None for s in data.samples][4:] == ["loose_mask.png", "s1.png",
                                                                                       "s2_mask.png"]
    assert [why for _, why in data.skipped] == [f"{folder_tree / 'good' / 'line1' / 'Thumbs.db'}: not an image file",
                                               f"{folder_tree / 'good' / 'notes.txt'}: not an image file"]
    item = data[5]
    assert item["image"].shape == (3, 32, 32) and item["mask"].dtype == torch.bool and item["mask"].any()
    assert item["label"] == 1 and item["defect_type"] == "scratch"
    assert not data[0]["mask"].any() and data.has_masks


def test_a_training_folder_needs_no_defects(folder_tree: Path) -> None:
    train = FolderDataset(good=folder_tree / "good", transform=SMALL)
    assert len(train) == 4 and not train.has_masks and {s.label for s in train.samples} == {0}


@pytest.mark.parametrize("case", ["missing", "two", "masks_alone", "nothing", "empty", "absent"])
def test_bad_folders_are_one_line_errors(folder_tree: Path, case: str) -> None:
    if case == "missing":
        (folder_tree / "masks" / "loose_mask.png").unlink()
        with pytest.raises(DataError, match=r"loose.png: no mask \(looked for .*loose.png and loose_mask.png\)"):
            folder_samples(folder_tree / "good", folder_tree / "defect", folder_tree / "masks")
    elif case == "two":
        save_mask(folder_tree / "masks" / "scratch" / "s1_mask.png", (48, 40))
        with pytest.raises(DataError, match="s1.png: two masks match"):
            folder_samples(folder_tree / "good", folder_tree / "defect", folder_tree / "masks")
    elif case == "masks_alone":
        with pytest.raises(ConfigError, match="--masks needs --defect"):
            folder_samples(folder_tree / "good", None, folder_tree / "masks")
    elif case == "nothing":
        with pytest.raises(ConfigError, match="give a folder"):
            folder_samples(None)
    elif case == "empty":
        (folder_tree / "blank").mkdir()
        (folder_tree / "blank" / "readme.md").write_text("x")
        with pytest.raises(DataError, match="blank: no images found"):
            folder_samples(folder_tree / "blank")
    else:
        with pytest.raises(DataError, match="nowhere: no such folder"):
            folder_samples(folder_tree / "nowhere")
