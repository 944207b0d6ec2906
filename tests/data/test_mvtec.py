"""The MVTec AD layout: listing, masks, unreadable files skipped or refused, EXIF-rotated and
reduced-scale images aligned with their masks, the dataset and loader, random trees, real data."""
from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from fapm_lib.data import mvtec as data
from fapm_lib.data.images import load_mask
from fapm_lib.data.mvtec import MVTecDataset, Sample, default_shared_root, list_samples, make_loader
from fapm_lib.data.transform import Transform
from fapm_lib.errors import ConfigError, DataError
from tests.helpers import REPO, box_jpeg, build_mvtec_tree, data_error, truncated_copy

SMALL = Transform(resize=64, crop_size=56)
PROTOCOL = Transform(resize=256, crop_size=224)  # the paper's


# --------------------------------------------------------------------------- listing


def test_lists_train_split(tiny_mvtec: Path) -> None:
    samples = list_samples(tiny_mvtec, "widget", "train")
    assert [s.path.name for s in samples] == ["000.png", "001.png", "002.png"]
    assert all(s.label == 0 and s.defect_type == "good" and s.mask_path is None for s in samples)


def test_lists_test_split_sorted_by_type_then_name(tiny_mvtec: Path) -> None:
    samples = list_samples(tiny_mvtec, "widget", "test")
    assert [(s.defect_type, s.path.name, s.label) for s in samples] == [
        ("crack", "000.png", 1),
        ("crack", "001.png", 1),
        ("good", "000.png", 0),
        ("good", "001.png", 0),
    ]
    gt = tiny_mvtec / "widget" / "ground_truth" / "crack"
    assert [s.mask_path for s in samples] == [gt / "000_mask.png", gt / "001_mask.png", None, None]


def test_ignores_hidden_and_non_image_files_and_reads_any_case_extension(
    tiny_mvtec: Path, image_writer
) -> None:
    good = tiny_mvtec / "widget" / "train" / "good"
    (good / "._000.png").write_bytes(b"AppleDouble junk")
    (good / "sub").mkdir()
    image_writer(good / "sub" / "nested.png")
    image_writer(good / "upper.PNG")
    image_writer(good / "photo.JPG")
    image_writer(good / "scan.Tiff")
    image_writer(good / "x.bmp")
    image_writer(tiny_mvtec / "widget" / "test" / ".ipynb_checkpoints" / "000.png")
    names = [s.path.name for s in list_samples(tiny_mvtec, "widget", "train")]
    assert names == ["000.png", "001.png", "002.png", "photo.JPG", "scan.Tiff", "upper.PNG", "x.bmp"]
    assert {s.defect_type for s in list_samples(tiny_mvtec, "widget", "test")} == {"crack", "good"}


def test_missing_root(tmp_path: Path) -> None:
    message = data_error(list_samples, tmp_path / "nowhere", "bottle", "train")
    assert str(tmp_path / "nowhere") in message and "does not exist" in message


def test_missing_category_lists_up_to_20_existing(tmp_path: Path) -> None:
    for i in range(25):
        (tmp_path / f"cat{i:02d}").mkdir()
    message = data_error(list_samples, tmp_path, "bottle", "train")
    assert "'bottle' not found" in message
    assert "cat00" in message and "cat19" in message and "cat20" not in message
    assert "and 5 more" in message


def test_missing_category_in_empty_root(tmp_path: Path) -> None:
    assert "(none)" in data_error(list_samples, tmp_path, "bottle", "test")


def test_train_good_missing(tmp_path: Path) -> None:
    (tmp_path / "widget" / "train").mkdir(parents=True)
    message = data_error(list_samples, tmp_path, "widget", "train")
    assert message == f"no training images in {tmp_path / 'widget' / 'train' / 'good'}"


def test_train_good_with_only_junk(tmp_path: Path) -> None:
    good = tmp_path / "widget" / "train" / "good"
    good.mkdir(parents=True)
    for name in ("notes.txt", ".DS_Store", "Thumbs.db", ".hidden.png"):
        (good / name).write_bytes(b"junk")
    assert "no training images in" in data_error(list_samples, tmp_path, "widget", "train")


def test_test_split_missing(make_mvtec) -> None:
    root = make_mvtec(test_counts={})
    assert "no test images in" in data_error(list_samples, root, "widget", "test")


def test_test_split_with_empty_type_folders(make_mvtec) -> None:
    root = make_mvtec(test_counts={"good": 0, "crack": 0})
    message = data_error(list_samples, root, "widget", "test")
    assert message == f"no test images in {root / 'widget' / 'test'}"


def test_train_split_does_not_need_test_folder(make_mvtec) -> None:
    root = make_mvtec(test_counts={})
    assert len(list_samples(root, "widget", "train")) == 3


def test_bad_split_name(tiny_mvtec: Path) -> None:
    with pytest.raises(ConfigError, match="split"):
        list_samples(tiny_mvtec, "widget", "val")  # type: ignore[arg-type]


def test_paths_with_spaces_and_non_ascii(tmp_path: Path, make_mvtec) -> None:
    root = make_mvtec(
        root=tmp_path / "mvtec données", category="bottle é", test_counts={"good": 1, "cassé ü": 1}
    )
    dataset = MVTecDataset(root, "bottle é", "test", transform=SMALL)
    assert [item["defect_type"] for item in dataset] == ["cassé ü", "good"]
    assert dataset[0]["mask"].any() and "mvtec données/bottle é/test/cassé ü/000.png" in dataset[0]["path"]


# --------------------------------------------------------------------------- masks


def test_no_ground_truth_folder_means_no_masks(make_mvtec) -> None:
    root = make_mvtec(masks=False)
    dataset = MVTecDataset(root, "widget", "test", transform=SMALL)
    assert dataset.has_masks is False
    assert all(s.mask_path is None for s in dataset.samples)
    assert [item["label"] for item in dataset] == [1, 1, 0, 0]
    assert not any(item["mask"].any() for item in dataset)


def test_masks_mark_defects_only(tiny_mvtec: Path) -> None:
    dataset = MVTecDataset(tiny_mvtec, "widget", "test", transform=SMALL)
    assert dataset.has_masks is True
    assert [bool(item["mask"].any()) for item in dataset] == [True, True, False, False]


def test_missing_single_mask_names_expected_path(tiny_mvtec: Path) -> None:
    missing = tiny_mvtec / "widget" / "ground_truth" / "crack" / "001_mask.png"
    missing.unlink()
    message = data_error(list_samples, tiny_mvtec, "widget", "test")
    assert message.startswith(f"{missing}: missing mask")


def test_defect_type_without_masks_while_others_have_them(make_mvtec) -> None:
    root = make_mvtec(test_counts={"good": 1, "crack": 1, "scratch": 2})
    for mask in (root / "widget" / "ground_truth" / "scratch").iterdir():
        mask.unlink()
    message = data_error(list_samples, root, "widget", "test")
    assert "no masks for defect type 'scratch'" in message and "000_mask.png" in message


def test_empty_ground_truth_folder_is_an_error(make_mvtec) -> None:
    root = make_mvtec(masks=False)
    (root / "widget" / "ground_truth").mkdir()
    assert "no masks for defect type 'crack'" in data_error(list_samples, root, "widget", "test")


def test_mask_size_mismatch(tiny_mvtec: Path, mask_writer) -> None:
    mask = mask_writer(tiny_mvtec / "widget" / "ground_truth" / "crack" / "001_mask.png", (40, 40))
    dataset = MVTecDataset(tiny_mvtec, "widget", "test", transform=SMALL)
    message = data_error(dataset.__getitem__, 1)
    assert str(mask) in message and "40x40" in message and "48x40" in message
    assert str(mask) in data_error(load_mask, mask, (48, 40))


# --------------------------------------------------------------------------- robust reading


def test_skip_bad_drops_and_lists_unreadable_files(tiny_mvtec: Path, mask_writer) -> None:
    good = tiny_mvtec / "widget" / "train" / "good"
    truncated_copy(good / "001.png", good / "001.png.tmp").replace(good / "001.png")
    (good / "003.png").touch()
    train = MVTecDataset(tiny_mvtec, "widget", "train", transform=SMALL, skip_bad=True)
    assert [s.path.name for s in train.samples] == ["000.png", "002.png"]
    assert [(path.name, "cannot read image" in why) for path, why in train.skipped] == [
        ("001.png", True),
        ("003.png", True),
    ]
    assert len(train) == 2 and train[1]["path"].endswith("002.png")

    mask_writer(tiny_mvtec / "widget" / "ground_truth" / "crack" / "000_mask.png", (10, 10))
    test = MVTecDataset(tiny_mvtec, "widget", "test", transform=SMALL, skip_bad=True)
    assert len(test) == 3 and "mask size 10x10" in test.skipped[0][1]


def test_skip_bad_with_nothing_left(tiny_mvtec: Path) -> None:
    for path in (tiny_mvtec / "widget" / "train" / "good").glob("*.png"):
        path.write_bytes(b"")
    message = data_error(MVTecDataset, tiny_mvtec, "widget", "train", skip_bad=True)
    assert "no readable train images (3 skipped)" in message


def test_without_skip_bad_errors_surface_on_access(tiny_mvtec: Path) -> None:
    bad = tiny_mvtec / "widget" / "train" / "good" / "002.png"
    bad.write_text("oops")
    dataset = MVTecDataset(tiny_mvtec, "widget", "train", transform=SMALL)
    assert len(dataset) == 3 and dataset.skipped == []
    assert data_error(dataset.__getitem__, 2).startswith(f"{bad}: ")


def test_exif_rotated_defect_accepts_upright_mask(make_mvtec, mask_writer) -> None:
    root = make_mvtec(test_counts={"good": 1, "crack": 1})
    exif = Image.Exif()
    exif[0x0112] = 6
    image = root / "widget" / "test" / "crack" / "000.png"
    image.unlink()
    Image.new("RGB", (48, 40), "gray").save(image.with_suffix(".jpg"), exif=exif.tobytes())
    mask_writer(root / "widget" / "ground_truth" / "crack" / "000_mask.png", (40, 48))
    assert MVTecDataset(root, "widget", "test", transform=SMALL)[0]["mask"].any()


def test_reduced_scale_jpeg_stays_aligned_with_its_full_size_mask(make_mvtec, mask_writer) -> None:
    root = make_mvtec(test_counts={"good": 1})
    box = (800, 600, 1700, 1300)
    box_jpeg(root / "widget" / "test" / "crack" / "000.jpg", (2400, 1800), box)
    mask_writer(root / "widget" / "ground_truth" / "crack" / "000_mask.png", (2400, 1800), box)
    item = MVTecDataset(root, "widget", "test", transform=PROTOCOL)[0]
    bright = item["image"].mean(dim=0) > 0.5
    overlap = (bright & item["mask"]).sum() / (bright | item["mask"]).sum()
    assert overlap > 0.97


# --------------------------------------------------------------------------- dataset and loader


def test_dataset_items(tiny_mvtec: Path) -> None:
    native = MVTecDataset(tiny_mvtec, "widget", "test")[0]  # the default: the image's own pixels
    with Image.open(native["path"]) as pil:
        assert native["image"].shape[-2:] == native["mask"].shape == (pil.height, pil.width)
    dataset = MVTecDataset(tiny_mvtec, "widget", "test", transform=PROTOCOL)
    item = dataset[0]
    assert set(item) == {"image", "mask", "label", "defect_type", "path"}
    assert item["image"].shape == (3, 224, 224) and item["image"].dtype == torch.float32
    assert item["mask"].shape == (224, 224) and item["mask"].dtype == torch.bool
    assert (item["label"], item["defect_type"]) == (1, "crack")
    assert isinstance(item["path"], str) and Path(item["path"]) == dataset.samples[0].path
    assert isinstance(dataset.samples[0], Sample)


@pytest.mark.parametrize("num_workers", [0, 1])
def test_loader_batches_in_order(tiny_mvtec: Path, num_workers: int) -> None:
    dataset = MVTecDataset(tiny_mvtec, "widget", "test", transform=SMALL)
    loader = make_loader(dataset, batch_size=3, num_workers=num_workers)
    batches = list(loader)
    assert [b["image"].shape for b in batches] == [(3, 3, 56, 56), (1, 3, 56, 56)]
    assert batches[0]["mask"].dtype == torch.bool and batches[0]["label"].tolist() == [1, 1, 0]
    assert [p for b in batches for p in b["path"]] == [str(s.path) for s in dataset.samples]
    again = next(iter(loader))
    assert torch.equal(again["image"], batches[0]["image"])


def test_loader_rejects_bad_arguments(tiny_mvtec: Path) -> None:
    dataset = MVTecDataset(tiny_mvtec, "widget", "train")
    with pytest.raises(ConfigError):
        make_loader(dataset, batch_size=0)


def test_default_shared_root_env_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(data.SHARED_DATA_ENV, str(tmp_path))
    assert default_shared_root() == tmp_path
    monkeypatch.setenv(data.SHARED_DATA_ENV, str(tmp_path / "absent"))
    assert default_shared_root() is None
    monkeypatch.delenv(data.SHARED_DATA_ENV)
    expected = REPO.parent / "shared" / "data" / "mvtec_ad_256"
    assert default_shared_root() == (expected if expected.is_dir() else None)


# --------------------------------------------------------------------------- property-based

NAME_CHARS = "abcxyz019 _-éüñøßжΩ"
MODE_EXTENSIONS = {
    "L": ("png", "jpg", "bmp", "tif"),
    "RGB": ("png", "jpeg", "bmp", "tiff"),
    "RGBA": ("png", "tif"),
    "P": ("png", "bmp"),
    "I;16": ("png", "tif"),
}
JUNK = ("notes.txt", ".DS_Store", "Thumbs.db", "._000.png", "readme.md")
names = st.text(NAME_CHARS, min_size=1, max_size=8)


@st.composite
def image_specs(draw) -> tuple[str, str, tuple[int, int]]:
    """(mode, extension in random case, (width, height))."""
    mode = draw(st.sampled_from(sorted(MODE_EXTENSIONS)))
    extension = draw(st.sampled_from(MODE_EXTENSIONS[mode]))
    extension = draw(st.sampled_from([extension, extension.upper()]))
    return mode, extension, (draw(st.integers(32, 96)), draw(st.integers(32, 96)))


@st.composite
def tree_specs(draw) -> dict:
    """A random category: train images, test images per type, mask choice, junk files."""
    defect_types = draw(st.lists(names.filter(lambda n: n != "good"), unique=True, max_size=2))
    return {
        "category": draw(names),
        "train": draw(st.lists(image_specs(), min_size=1, max_size=3)),
        "test": {
            "good": draw(st.lists(image_specs(), min_size=1, max_size=2)),
            **{t: draw(st.lists(image_specs(), min_size=1, max_size=2)) for t in defect_types},
        },
        "masks": draw(st.booleans()),
        "mask_mode": draw(st.sampled_from(["L", "1", "RGB", "P"])),
        "junk": draw(st.lists(st.sampled_from(JUNK), unique=True, max_size=3)),
    }


def _write_folder(folder: Path, specs: list, spec_junk: list[str], image_writer) -> list[Path]:
    """Write one image per spec (named 000, 001, ...) plus junk; return the image paths."""
    paths = [
        image_writer(folder / f"{i:03d}.{extension}", size, mode, seed=i)
        for i, (mode, extension, size) in enumerate(specs)
    ]
    for name in spec_junk:
        (folder / name).write_bytes(b"junk")
    return paths


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(spec=tree_specs())
def test_random_trees_round_trip(spec: dict, image_writer, mask_writer) -> None:
    # image_writer / mask_writer are stateless functions, safe to share between examples.
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        category_dir = root / spec["category"]
        train = _write_folder(category_dir / "train" / "good", spec["train"], spec["junk"], image_writer)
        expected_test, expected_masks = [], []
        for defect_type in sorted(spec["test"]):
            folder = category_dir / "test" / defect_type
            written = _write_folder(folder, spec["test"][defect_type], spec["junk"], image_writer)
            for path, (_, _, size) in zip(written, spec["test"][defect_type]):
                mask = None
                if spec["masks"] and defect_type != "good":
                    mask_path = category_dir / "ground_truth" / defect_type / f"{path.stem}_mask.png"
                    mask = mask_writer(mask_path, size, mode=spec["mask_mode"])
                expected_test.append((path, int(defect_type != "good"), defect_type))
                expected_masks.append(mask)
        image_writer(category_dir / "test" / ".ipynb_checkpoints" / "000.png")

        assert [s.path for s in list_samples(root, spec["category"], "train")] == train
        test_samples = list_samples(root, spec["category"], "test")
        assert [(s.path, s.label, s.defect_type) for s in test_samples] == expected_test
        assert [s.mask_path for s in test_samples] == expected_masks

        dataset = MVTecDataset(root, spec["category"], "test", transform=SMALL)
        assert dataset.has_masks == (spec["masks"] and len(spec["test"]) > 1)
        for item, (_, label, _), mask in zip(dataset, expected_test, expected_masks, strict=True):
            assert item["image"].shape == (dataset.transform.channels, 56, 56)  # a gray set stays gray
            assert item["image"].dtype == torch.float32
            assert item["mask"].shape == (56, 56) and item["mask"].dtype == torch.bool
            assert item["label"] == label and bool(item["mask"].any()) == (mask is not None)


# --------------------------------------------------------------------------- real data

SHARED_ROOT = default_shared_root()
needs_bottle = pytest.mark.skipif(
    SHARED_ROOT is None or not (SHARED_ROOT / "bottle").is_dir(),
    reason="shared MVTec AD bottle data not found (set FAPM_SHARED_DATA)",
)


@needs_bottle
def test_real_bottle_counts() -> None:
    train = MVTecDataset(SHARED_ROOT, "bottle", "train")
    test = MVTecDataset(SHARED_ROOT, "bottle", "test", transform=PROTOCOL)
    assert len(train) == 209 and train.has_masks
    assert len(test) == 83 and test.has_masks
    assert sum(s.label == 0 for s in test.samples) == 20
    assert sum(s.label == 1 for s in test.samples) == 63
    assert {s.defect_type for s in test.samples} == {"good", "broken_large", "broken_small", "contamination"}
    assert train[0]["image"].shape == (3, 256, 256)  # native: the files' own size
    assert test[0]["image"].shape == (3, 224, 224)


@needs_bottle
def test_real_bottle_masks_after_transform() -> None:
    test = MVTecDataset(SHARED_ROOT, "bottle", "test")
    for batch in make_loader(test, batch_size=16):
        has_defect = batch["mask"].flatten(1).any(dim=1)
        assert has_defect.tolist() == [label == 1 for label in batch["label"].tolist()], batch["path"]


def test_a_batch_holds_at_most_max_batch_pixels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Large images load a few at a time whatever batch_size (a bounded fit needs it); at least one."""
    root = build_mvtec_tree(tmp_path, n_train=5, test_counts={"good": 1})
    train = MVTecDataset(root, "widget", "train", Transform(resize=64, crop_size=64))
    assert make_loader(train, batch_size=4).batch_size == 4
    monkeypatch.setattr(data, "MAX_BATCH_PIXELS", 2 * 64 * 64 + 1)
    assert [len(b["image"]) for b in make_loader(train, batch_size=4)] == [2, 2, 1]
    monkeypatch.setattr(data, "MAX_BATCH_PIXELS", 10)
    assert make_loader(train, batch_size=4).batch_size == 1
    assert make_loader([], batch_size=4).batch_size == 4  # nothing to size: batch_size acts


def test_a_first_image_that_fails_to_load_fails_where_the_loader_reaches_it(tmp_path: Path) -> None:
    root = build_mvtec_tree(tmp_path, n_train=3, test_counts={"good": 1})
    first = sorted((root / "widget" / "train" / "good").glob("*.png"))[0]
    truncated_copy(first, first)
    train = MVTecDataset(root, "widget", "train", Transform(resize=64, crop_size=64))
    loader = make_loader(train, batch_size=2)  # sizing the batches does not raise
    with pytest.raises(DataError, match=first.name):
        next(iter(loader))
