"""Plain folders: listing (any depth, any format, non-images listed), labelled folders with
masks matched by name, output names that keep the extension, the paths a fit records."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fapm_lib.data.folders import FolderDataset, folder_samples, scan_folder
from fapm_lib.data.output_names import output_names
from fapm_lib.data.samples import sample_paths
from fapm_lib.data.transform import Transform
from fapm_lib.errors import ConfigError, DataError
from tests.helpers import save_image, save_mask

SMALL = Transform(resize=32, crop_size=32)


@pytest.fixture
def parts(tmp_path: Path) -> Path:
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


def test_scan_lists_images_of_any_depth_and_format_and_the_other_files(parts: Path) -> None:
    images, others = scan_folder(parts / "good")
    rel = [p.relative_to(parts / "good").as_posix() for p in images]
    assert rel == ["a.png", "line1/b.JPG", "line1/deep/c.bmp", "line2/d.tiff"]
    assert [p.name for p in others] == ["Thumbs.db", "notes.txt"]


def test_labelled_folders_give_labels_types_and_masks(parts: Path) -> None:
    data = FolderDataset(parts / "good", parts / "defect", parts / "masks", SMALL, split="test")
    assert [(s.path.name, s.label, s.defect_type) for s in data.samples] == [
        ("a.png", 0, "good"), ("b.JPG", 0, "good"), ("c.bmp", 0, "good"), ("d.tiff", 0, "good"),
        ("loose.png", 1, "defect"), ("s1.png", 1, "scratch"), ("s2.jpg", 1, "scratch")]
    assert [s.mask_path.name if s.mask_path else None for s in data.samples][4:] == ["loose_mask.png", "s1.png",
                                                                                       "s2_mask.png"]
    assert [why for _, why in data.skipped] == [f"{parts / 'good' / 'line1' / 'Thumbs.db'}: not an image file",
                                               f"{parts / 'good' / 'notes.txt'}: not an image file"]
    item = data[5]
    assert item["image"].shape == (3, 32, 32) and item["mask"].dtype == torch.bool and item["mask"].any()
    assert item["label"] == 1 and item["defect_type"] == "scratch"
    assert not data[0]["mask"].any() and data.has_masks


def test_a_training_folder_needs_no_defects(parts: Path) -> None:
    train = FolderDataset(good=parts / "good", transform=SMALL)
    assert len(train) == 4 and not train.has_masks and {s.label for s in train.samples} == {0}


@pytest.mark.parametrize("case", ["missing", "two", "masks_alone", "nothing", "empty", "absent"])
def test_bad_folders_are_one_line_errors(parts: Path, case: str) -> None:
    if case == "missing":
        (parts / "masks" / "loose_mask.png").unlink()
        with pytest.raises(DataError, match=r"loose.png: no mask \(looked for .*loose.png and loose_mask.png\)"):
            folder_samples(parts / "good", parts / "defect", parts / "masks")
    elif case == "two":
        save_mask(parts / "masks" / "scratch" / "s1_mask.png", (48, 40))
        with pytest.raises(DataError, match="s1.png: two masks match"):
            folder_samples(parts / "good", parts / "defect", parts / "masks")
    elif case == "masks_alone":
        with pytest.raises(ConfigError, match="--masks needs --defect"):
            folder_samples(parts / "good", None, parts / "masks")
    elif case == "nothing":
        with pytest.raises(ConfigError, match="give a folder"):
            folder_samples(None)
    elif case == "empty":
        (parts / "blank").mkdir()
        (parts / "blank" / "readme.md").write_text("x")
        with pytest.raises(DataError, match="blank: no images found"):
            folder_samples(parts / "blank")
    else:
        with pytest.raises(DataError, match="nowhere: no such folder"):
            folder_samples(parts / "nowhere")


def test_output_names_keep_the_extension_and_never_count(tmp_path: Path) -> None:
    for rel in ("line/part1.png", "line/part1.jpg", "a/good/1.png", "b/good/1.png", "batch/x/2.png"):
        save_image(tmp_path / rel)
    (tmp_path / "batch" / "log.txt").write_text("x")
    named = output_names([tmp_path / "line" / "part1.png", tmp_path / "line" / "part1.jpg",
                          tmp_path / "a" / "good" / "1.png", tmp_path / "b" / "good" / "1.png",
                          tmp_path / "batch", tmp_path / "line" / "part1.png"])
    assert [n.as_posix() for _, n in named.pairs] == ["line/part1.png", "line/part1.jpg", "a/good/1.png",
                                                     "b/good/1.png", "batch/x/2.png"]
    assert named.repeats == [tmp_path / "line" / "part1.png"]
    assert named.skipped == [tmp_path / "batch" / "log.txt"]
    assert named.pairs[0][0] == tmp_path / "line" / "part1.png"  # the path as given


def test_output_names_lengthen_only_the_clashing_names(tmp_path: Path) -> None:
    for rel in ("x/site1/good/1.png", "x/site2/good/1.png", "y/good/2.png"):
        save_image(tmp_path / rel)
    named = output_names([tmp_path / "x" / "site1" / "good" / "1.png", tmp_path / "x" / "site2" / "good" / "1.png",
                          tmp_path / "y" / "good" / "2.png"])
    assert [n.as_posix() for _, n in named.pairs] == ["site1/good/1.png", "site2/good/1.png", "good/2.png"]


def test_sample_paths_follow_datasets_subsets_and_loaders(parts: Path) -> None:
    train = FolderDataset(good=parts / "good", transform=SMALL)
    paths = [str(p.resolve()) for p, _ in ((s.path, 0) for s in train.samples)]
    assert sample_paths(train) == paths
    assert sample_paths(torch.utils.data.Subset(train, [2, 0])) == [paths[2], paths[0]]
    assert sample_paths(torch.utils.data.DataLoader(train, batch_size=2)) == paths
    assert sample_paths(torch.zeros(2, 3, 32, 32)) is None
