"""``FAPM.add_good``: false alarms fed back without a refit. A normal variant the training set lacks (a
label on the part) is flagged NG; once two such parts are added, they and a third, unseen one are OK, a real
defect stays NG, the memory grew by the rule's count and explanations point at the added images; each added
image is scored without its own fold. Tiny 64 px parts, grid 2."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from fapm_lib import FAPM
from fapm_lib.data.folders import FolderDataset
from tests.parts_support import CATEGORY

pytestmark = pytest.mark.usefixtures("cached_extractors")


def test_marked_false_alarms_become_ok_without_a_refit(labelled_root: Path, labelled_model_file: Path) -> None:
    model = FAPM.load(labelled_model_file)
    unseen, defect = labelled_root / "unseen" / "label_2.png", labelled_root / CATEGORY / "test" / "crack" / "000.png"
    assert model.predict_image(unseen).decision == "NG" and model.predict_image(defect).decision == "NG"
    before = model.memories
    sizes = [m.bank_sizes() for m in before]
    report = model.add_good(FolderDataset(good=labelled_root / "marked", transform=model.transform))
    assert [d for _, d in report.before] == ["NG", "NG"] and [d for _, d in report.after] == ["OK", "OK"]
    assert model.predict_image(unseen).decision == "OK"
    assert model.predict_image(defect).decision == "NG"
    for layer, (memory, old, rows) in enumerate(zip(model.memories, sizes, (16, 4))):  # 2 images x s*s rows
        far = memory.far
        expected = old + torch.where(far, math.ceil(2 * rows * 0.5 * 2), math.ceil(2 * rows * 0.5)).clamp(max=2 * rows)
        assert torch.equal(memory.bank_sizes(), expected), layer
    assert model.train_images[-2:] == [str(p.resolve()) for p in sorted((labelled_root / "marked").glob("*.png"))]
    cal = model.calibration
    assert cal.summary["n_images"] == 12 and cal.summary["updates"][0]["n_added"] == 2
    assert report.threshold_after == cal.image_threshold != report.threshold_before
    # the added label now explains itself: its nearest normal patch is in an added image
    why = model.predict_image(labelled_root / "marked" / "label_0.png").explain()
    assert why.layers[0].train_index >= 10 and Path(why.layers[0].train_image).parent.name == "marked"


def test_the_updated_model_file_loads_and_updates_compose(labelled_root: Path, labelled_model_file: Path,
                                                          tmp_path: Path) -> None:
    model = FAPM.load(labelled_model_file)
    model.add_good(FolderDataset(good=labelled_root / "marked", transform=model.transform))
    reloaded = FAPM.load(model.save(tmp_path / "updated.safetensors"))
    image = labelled_root / "unseen" / "label_2.png"
    assert reloaded.predict_image(image).raw_score == pytest.approx(model.predict_image(image).raw_score)
    assert reloaded.fit_stats["updates"][0]["n_added"] == 2 and len(reloaded.train_images) == 12
    reloaded.add_good(FolderDataset(good=labelled_root / "unseen", transform=reloaded.transform))
    assert reloaded.calibration.summary["n_images"] == 13 and len(reloaded.calibration.summary["updates"]) == 2
    assert len(reloaded.train_images) == 13 and len(reloaded.calibration.summary["image"]["values"]) == 13


def test_each_added_image_is_scored_without_its_own_fold(labelled_root: Path, labelled_model_file: Path) -> None:
    from fapm_lib.detectors.add_good import extend_memories, heldout_added, score_cached_maps
    from fapm_lib.method.fapm_model import FAPMModel
    from fapm_lib.method.regions import split_regions

    model = FAPM.load(labelled_model_file)
    config, fapm = model.config, model.model
    maps = model.extract(FolderDataset(good=labelled_root / "marked", transform=model.transform), progress=False)
    regions = [split_regions(m, config.grid) for m in maps]
    cells = [16, 4]
    neighbours, amaps = heldout_added(fapm, regions, maps, cells, config, model.feature_sizes)
    old = score_cached_maps(fapm, maps, config.batch_size, config.search_k)
    # image 0 against the old memory plus image 1 only, built by hand
    with_other = extend_memories(list(fapm.memories), [r[:, c:] for r, c in zip(regions, cells)], [0, 0], config)[0]
    by_hand = score_cached_maps(FAPMModel.from_config(config, None, with_other, model.feature_sizes),
                           [m[:1] for m in maps], config.batch_size, config.search_k)
    assert torch.allclose(neighbours[0], by_hand[0][0, : neighbours.shape[1]])
    assert torch.allclose(amaps[0], by_hand[1][0])
    assert neighbours[0, 0] < old[0][0, 0]  # the other label is in memory: lower than by the old memory alone
    alone, _ = heldout_added(fapm, [r[:, :c] for r, c in zip(regions, cells)], [m[:1] for m in maps],
                                      cells, config, model.feature_sizes)
    assert torch.allclose(alone[0], old[0][0, : alone.shape[1]])  # one image alone: the old memory
