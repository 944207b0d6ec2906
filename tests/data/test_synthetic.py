"""Tests for fapm_lib.data.synthetic: MVTec layout, exact masks, determinism, atomic writes."""
from __future__ import annotations

import hashlib
import inspect
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fapm_lib.data import synthetic
from fapm_lib.data.synthetic import (
    CATEGORIES,
    ensure_dataset,
    generate_category,
    generate_dataset,
    plot_overview,
    render,
    render_sample,
    writer,
)
from fapm_lib.errors import DataError

MVTEC_NAMES = {"bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather", "metal_nut",
               "pill", "screw", "tile", "toothbrush", "transistor", "wood", "zipper"}
SMALL = 96
COUNTS = {"n_train": 2, "n_test_good": 2, "n_per_defect": 2}


def tree_hashes(root: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under ``root``."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def names(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


@pytest.fixture(scope="module")
def small_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every category at 96 px with 2 images per folder."""
    root = tmp_path_factory.mktemp("synth_small")
    for category in CATEGORIES:
        generate_category(root, category, seed=3, size=SMALL, **COUNTS)
    return root


# ---------------------------------------------------------------------------- catalogue


def test_catalogue_has_textures_and_objects_with_distinct_names() -> None:
    kinds = [spec.kind for spec in CATEGORIES.values()]
    assert len(CATEGORIES) >= 6
    assert kinds.count("texture") >= 3 and kinds.count("object") >= 3
    assert set(kinds) <= {"texture", "object"}
    assert not set(CATEGORIES) & MVTEC_NAMES
    for name, spec in CATEGORIES.items():
        assert spec.name == name and spec.description
        assert len(spec.defects) >= 3 and "good" not in spec.defects
        assert set(spec.defect_notes) == set(spec.defects)
        assert set(render.PAINTERS[name][1]) == set(spec.defects)


# ---------------------------------------------------------------------------- layout


def test_layout_matches_mvtec(small_root: Path) -> None:
    assert names(small_root) == set(CATEGORIES)          # no hidden work directories left
    for category, spec in CATEGORIES.items():
        cat = small_root / category
        assert names(cat) == {"train", "test", "ground_truth"}
        assert names(cat / "train") == {"good"}
        assert names(cat / "test") == {"good", *spec.defects}
        assert names(cat / "ground_truth") == set(spec.defects)
        assert names(cat / "train" / "good") == {"000.png", "001.png"}
        for split_dir in (cat / "train" / "good", cat / "test" / "good"):
            for path in split_dir.iterdir():
                with Image.open(path) as im:
                    assert (im.mode, im.size, im.format) == ("RGB", (SMALL, SMALL), "PNG")
        for defect in spec.defects:
            images = sorted((cat / "test" / defect).iterdir())
            masks = sorted((cat / "ground_truth" / defect).iterdir())
            assert [p.name for p in images] == ["000.png", "001.png"]
            assert [p.name for p in masks] == ["000_mask.png", "001_mask.png"]
            for image, mask in zip(images, masks):
                with Image.open(image) as im, Image.open(mask) as mk:
                    assert (im.mode, im.size) == ("RGB", (SMALL, SMALL))
                    assert (mk.mode, mk.size) == ("L", im.size)
                    values = np.asarray(mk)
                assert set(np.unique(values)) <= {0, 255} and values.any()


def test_png_files_carry_no_metadata_chunks(small_root: Path) -> None:
    data = (small_root / "tablet" / "test" / "crack" / "000.png").read_bytes()
    chunks, pos = [], 8
    while pos < len(data):
        length = int.from_bytes(data[pos:pos + 4], "big")
        chunks.append(data[pos + 4:pos + 8].decode())
        pos += 12 + length
    assert set(chunks) <= {"IHDR", "IDAT", "IEND"}


def test_files_equal_render_sample(small_root: Path) -> None:
    for category in ("fabric", "washer"):
        defect = CATEGORIES[category].defects[0]
        sample = render_sample(category, "test", defect, 1, seed=3, size=SMALL)
        image = np.asarray(Image.open(small_root / category / "test" / defect / "001.png"))
        mask = np.asarray(Image.open(small_root / category / "ground_truth" / defect / "001_mask.png"))
        np.testing.assert_array_equal(image, sample.image)
        np.testing.assert_array_equal(mask, sample.mask)
        good = render_sample(category, "train", "good", 0, seed=3, size=SMALL)
        assert good.mask is None
        np.testing.assert_array_equal(np.asarray(Image.open(small_root / category / "train/good/000.png")),
                                      good.image)


# ---------------------------------------------------------------------------- masks


@pytest.mark.parametrize("category", sorted(CATEGORIES))
def test_mask_covers_exactly_the_changed_pixels(category: str) -> None:
    for defect in CATEGORIES[category].defects:
        areas = []
        for index in range(6):
            sample = render_sample(category, "test", defect, index, seed=0, size=128)
            assert sample.image.shape == (128, 128, 3) and sample.image.dtype == np.uint8
            assert sample.mask is not None and sample.mask.shape == (128, 128)
            inside = sample.mask > 0
            changed = (sample.image != sample.clean).any(axis=-1)
            assert inside.any(), (category, defect, index)
            assert not changed[~inside].any(), (category, defect, index)   # outside: byte-identical
            assert changed[inside].mean() > 0.5, (category, defect, index)
            areas.append(int(inside.sum()))
        # mixed difficulty: not every defect of a type has the same size
        assert max(areas) >= 1.5 * min(areas), (category, defect, areas)


def test_clean_rendering_is_the_good_draw_of_the_same_key() -> None:
    first = render_sample("vial", "test", "crack", 4, size=SMALL)
    again = render_sample("vial", "test", "crack", 4, size=SMALL)
    np.testing.assert_array_equal(first.clean, again.clean)
    np.testing.assert_array_equal(first.image, again.image)
    assert (first.image != first.clean).any()


# ---------------------------------------------------------------------------- determinism


def test_same_seed_gives_byte_identical_files(tmp_path: Path) -> None:
    for out in ("a", "b"):
        for category in ("woodgrain", "tablet"):
            generate_category(tmp_path / out, category, seed=7, size=SMALL, **COUNTS)
    first, second = tree_hashes(tmp_path / "a"), tree_hashes(tmp_path / "b")
    assert first and first == second


def test_images_do_not_depend_on_counts_or_order(tmp_path: Path) -> None:
    generate_category(tmp_path / "few", "ceramic", seed=1, size=SMALL, n_train=1, n_test_good=1, n_per_defect=1)
    generate_category(tmp_path / "more", "ceramic", seed=1, size=SMALL, n_train=3, n_test_good=2, n_per_defect=2)
    few, more = tree_hashes(tmp_path / "few"), tree_hashes(tmp_path / "more")
    assert few and all(more[name] == digest for name, digest in few.items())


def test_different_seeds_differ() -> None:
    for category in CATEGORIES:
        a = render_sample(category, "train", "good", 0, seed=0, size=SMALL).image
        b = render_sample(category, "train", "good", 0, seed=1, size=SMALL).image
        assert (a != b).mean() > 0.5
    a = render_sample("fabric", "test", "hole", 0, seed=0, size=SMALL)
    b = render_sample("fabric", "test", "hole", 0, seed=1, size=SMALL)
    assert not np.array_equal(a.mask, b.mask)


def test_splits_and_indices_differ() -> None:
    images = [render_sample("washer", split, "good", i, size=SMALL).image
              for split in ("train", "test") for i in range(2)]
    for i in range(len(images)):
        for j in range(i):
            assert not np.array_equal(images[i], images[j])


# ---------------------------------------------------------------------------- validation


def test_unknown_category_is_a_one_line_data_error(tmp_path: Path) -> None:
    for call in (lambda: generate_category(tmp_path, "bottle"),
                 lambda: generate_dataset(tmp_path / "x", categories=["fabric", "nope"]),
                 lambda: render_sample("nope")):
        with pytest.raises(DataError) as info:
            call()
        message = str(info.value)
        assert "\n" not in message and ("'bottle'" in message or "'nope'" in message)
        assert all(name in message for name in CATEGORIES)
    assert not (tmp_path / "x").exists() and not (tmp_path / "bottle").exists()


@pytest.mark.parametrize("size", [0, 32, 63, 64.0, True])
def test_bad_size_is_a_data_error(tmp_path: Path, size: object) -> None:
    with pytest.raises(DataError):
        generate_category(tmp_path, "fabric", size=size, **COUNTS)  # type: ignore[arg-type]
    with pytest.raises(DataError):
        ensure_dataset(tmp_path, size=size)  # type: ignore[arg-type]


def test_other_bad_arguments_are_data_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError):
        generate_category(tmp_path, "fabric", seed=-1, size=SMALL, **COUNTS)
    with pytest.raises(DataError):
        generate_category(tmp_path, "fabric", size=SMALL, n_train=0)
    with pytest.raises(DataError):
        render_sample("fabric", "train", "hole")          # defects live in test/ only
    with pytest.raises(DataError):
        render_sample("fabric", "test", "scratch")        # not a fabric defect
    assert not (tmp_path / "fabric").exists()


def test_minimum_size_works() -> None:
    for category, spec in CATEGORIES.items():
        for defect in spec.defects:
            sample = render_sample(category, "test", defect, 0, size=synthetic.MIN_SIZE)
            assert sample.mask is not None and sample.mask.any()


# ---------------------------------------------------------------------------- atomic writing


def test_interrupted_category_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = synthetic.render_sample
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(writer, "render_sample", flaky)  # what generate_category calls
    with pytest.raises(KeyboardInterrupt):
        generate_category(tmp_path, "fabric", size=SMALL, **COUNTS)
    assert list(tmp_path.iterdir()) == []


def test_regeneration_replaces_a_category_whole(tmp_path: Path) -> None:
    generate_category(tmp_path / "a", "vial", seed=1, size=SMALL, n_train=3, n_test_good=1, n_per_defect=1)
    generate_category(tmp_path / "a", "vial", seed=2, size=SMALL, **COUNTS)
    generate_category(tmp_path / "b", "vial", seed=2, size=SMALL, **COUNTS)
    assert tree_hashes(tmp_path / "a") == tree_hashes(tmp_path / "b")
    assert names(tmp_path / "a") == {"vial"}


def test_leftovers_of_killed_runs_are_removed(tmp_path: Path) -> None:
    stale = tmp_path / ".vial.tmp-999999999-deadbeef"
    (stale / "train" / "good").mkdir(parents=True)
    generate_category(tmp_path, "vial", size=SMALL, **COUNTS)
    assert names(tmp_path) == {"vial"}


# ---------------------------------------------------------------------------- dataset + marker


@pytest.fixture
def tiny_counts(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make generate_dataset write 1 image per folder; returns the categories it generated."""
    seen: list[str] = []
    real = synthetic.generate_category

    def small(output, category, **kwargs):
        seen.append(category)
        return real(output, category, n_train=1, n_test_good=1, n_per_defect=1, **kwargs)

    monkeypatch.setattr(writer, "generate_category", small)  # what generate_dataset calls
    return seen


def test_ensure_dataset_generates_once(tmp_path: Path, tiny_counts: list[str]) -> None:
    root = tmp_path / "builtin"
    assert ensure_dataset(root, seed=0, size=64) == root
    assert sorted(tiny_counts) == sorted(CATEGORIES)
    marker = json.loads((root / synthetic.MARKER).read_text())
    assert (marker["seed"], marker["size"], marker["version"]) == (0, 64, synthetic.VERSION)
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    tiny_counts.clear()
    ensure_dataset(root, seed=0, size=64)
    assert tiny_counts == []
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == before
    # incomplete -> regenerated
    (root / synthetic.MARKER).unlink()
    ensure_dataset(root, seed=0, size=64)
    assert sorted(tiny_counts) == sorted(CATEGORIES)
    # another seed -> regenerated
    tiny_counts.clear()
    ensure_dataset(root, seed=1, size=64)
    assert sorted(tiny_counts) == sorted(CATEGORIES)
    assert json.loads((root / synthetic.MARKER).read_text())["seed"] == 1


def test_ensure_dataset_regenerates_a_missing_category(tmp_path: Path, tiny_counts: list[str]) -> None:
    import shutil

    ensure_dataset(tmp_path, size=64)
    shutil.rmtree(tmp_path / "washer")
    tiny_counts.clear()
    ensure_dataset(tmp_path, size=64)
    assert (tmp_path / "washer" / "train" / "good" / "000.png").exists()
    assert tiny_counts


def test_subset_then_rest_completes_the_marker(tmp_path: Path, tiny_counts: list[str],
                                               capsys: pytest.CaptureFixture[str]) -> None:
    generate_dataset(tmp_path, size=64, categories=["tablet", "fabric"], progress=True)
    assert "tablet" in capsys.readouterr().err
    assert json.loads((tmp_path / synthetic.MARKER).read_text())["categories"] == ["fabric", "tablet"]
    rest = [c for c in CATEGORIES if c not in ("tablet", "fabric")]
    generate_dataset(tmp_path, size=64, categories=rest)
    tiny_counts.clear()
    ensure_dataset(tmp_path, size=64)
    assert tiny_counts == []


# ---------------------------------------------------------------------------- full size + figure


def test_one_full_size_category(tmp_path: Path) -> None:
    out = generate_category(tmp_path, "tablet")
    spec = CATEGORIES["tablet"]
    assert len(list((out / "train" / "good").iterdir())) == 60
    assert len(list((out / "test" / "good").iterdir())) == 20
    for defect in spec.defects:
        assert len(list((out / "test" / defect).iterdir())) == 10
        assert len(list((out / "ground_truth" / defect).iterdir())) == 10
    with Image.open(out / "test" / spec.defects[0] / "009.png") as im:
        assert im.size == (256, 256)


def test_plot_overview(small_root: Path, tmp_path: Path) -> None:
    out = plot_overview(small_root, tmp_path / "fig" / "overview.png")
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size[0] > 300
    with pytest.raises(DataError):
        plot_overview(tmp_path / "empty", tmp_path / "none.png")


def test_default_counts_and_size() -> None:
    params = inspect.signature(generate_category).parameters
    assert (params["n_train"].default, params["n_test_good"].default, params["n_per_defect"].default) == (60, 20, 10)
    assert inspect.signature(generate_dataset).parameters["size"].default == 256
