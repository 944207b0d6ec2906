"""Explanations (the nearest normal patch): at a flagged image's most anomalous place, the nearest normal
patch per layer, checked against an independent recomputation (the recorded training image is run through
the backbone again); refused with one line where the model cannot explain. Tiny 64 px parts, grid 2."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from fapm_lib import FAPM, MVTecDataset, PatchCore
from fapm_lib.detectors import model_file
from fapm_lib.errors import ConfigError
from fapm_lib.method.memory import BankGroup, LayerMemory
from tests.parts_support import CATEGORY, SIZE, TINY, write_tree

pytestmark = pytest.mark.usefixtures("cached_extractors")


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tree(tmp_path_factory.mktemp("explain") / "data", n_train=10, n_good=2, n_bad=3)


@pytest.fixture(scope="module")
def model(root: Path) -> FAPM:
    model = FAPM(TINY)
    return model.fit(MVTecDataset(root, CATEGORY, "train", model.transform), progress=False)


def defects(root: Path) -> list[Path]:
    return sorted((root / CATEGORY / "test" / "crack").glob("*.png"))


def features_at(model: FAPM, path: str | Path, layer: int, cell: tuple[int, int]) -> torch.Tensor:
    maps = model.embed(model.transform.image(Image.open(path).convert("RGB"))[None])
    return maps[layer][0, :, cell[0], cell[1]]


def test_a_defect_is_explained_by_the_nearest_normal_patch_of_its_own_region(model: FAPM, root: Path) -> None:
    assert model.train_images == [str(p.resolve()) for p in sorted((root / CATEGORY / "train" / "good").glob("*.png"))]
    for path in defects(root):
        result = model.predict_image(path)
        why = result.explain()
        assert why.path == str(path) and len(why.layers) == 2
        assert why.raw_score == pytest.approx(result.raw_score, rel=1e-5)
        assert why.patch_score == pytest.approx(result.raw_score, rel=1e-5)  # the max score is read here
        assert sum(m.distance for m in why.layers) == pytest.approx(why.patch_score, rel=1e-4)
        mask = np.asarray(Image.open(root / CATEGORY / "ground_truth" / "crack" / f"{path.stem}_mask.png")) > 0
        left, top, right, bottom = (int(v) for v in why.layers[1].test_box_input)
        assert mask[top:bottom, left:right].any()  # the explained place is on the defect
        for match in why.layers:
            side = (8, 4)[match.layer] // TINY.grid  # cells per region: 8x8 and 4x4 maps
            assert ([c // side for c in match.test_cell] == [c // side for c in match.train_cell]
                    == list(match.region_yx))
            assert match.region == match.region_yx[0] * TINY.grid + match.region_yx[1]
            assert match.train_image == model.train_images[match.train_index]
            # independent of the memory's bookkeeping: the recorded training image, run again
            recomputed = (features_at(model, path, match.layer, match.test_cell)
                          - features_at(model, match.train_image, match.layer, match.train_cell)).norm()
            assert float(recomputed) == pytest.approx(match.distance, rel=1e-3, abs=1e-3)
            assert match.test_crop.shape == match.train_crop.shape == (3 * match.stride, 3 * match.stride, 3)
            assert match.train_view.shape == why.test_view.shape == (SIZE, SIZE, 3)
        json.dumps(why.to_dict())  # JSON-ready, without pictures


def test_explanations_survive_the_model_file(model: FAPM, root: Path, tmp_path: Path) -> None:
    path = model.save(tmp_path / "m.safetensors")
    reloaded = FAPM.load(path)
    assert reloaded.train_images == model.train_images
    a = model.predict_image(defects(root)[0]).explain().to_dict()
    b = reloaded.predict_image(defects(root)[0]).explain().to_dict()
    assert a == b


def one_line_refusal(model, image: Path) -> str:
    with pytest.raises(ConfigError) as caught:
        model.predict_image(image).explain()
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_models_that_cannot_explain_say_why(model: FAPM, root: Path) -> None:
    image = defects(root)[0]
    from_tensors = FAPM(TINY).fit(torch.stack([MVTecDataset(root, CATEGORY, "train", model.transform)[i]["image"]
                                               for i in range(10)]), progress=False)
    assert "training image paths" in one_line_refusal(from_tensors, image)
    no_sources = FAPM(TINY).fit(MVTecDataset(root, CATEGORY, "train", model.transform), progress=False)
    memories = [LayerMemory([BankGroup(g.regions, g.bank) for g in m.groups], m.radii, m.far)
                for m in no_sources.memories]
    no_sources.model.memories = torch.nn.ModuleList(memories)
    assert "format version 1" in one_line_refusal(no_sources, image)
    patchcore = PatchCore(TINY).fit(MVTecDataset(root, CATEGORY, "train", model.transform), progress=False)
    assert "FAPM" in one_line_refusal(patchcore, image)


def test_a_version_2_file_loads_without_paths_and_refuses_to_explain(model: FAPM, root: Path, tmp_path: Path) -> None:
    saved = model.save(tmp_path / "v3.safetensors")
    from safetensors import safe_open

    with safe_open(str(saved), framework="pt") as fh:
        header = json.loads(fh.metadata()["header"])
    assert header["train_images"] == model.train_images
    del header["train_images"]
    header_json = json.dumps(header, sort_keys=True)
    tensors = load_file(str(saved))
    old = tmp_path / "v2.safetensors"
    save_file(tensors, str(old), metadata={
        "format": "fapm_lib", "format_version": "2", "kind": "fapm", "header": header_json,
        "sha256": model_file.tensors_digest(tensors, model_file._preamble("fapm", header_json, 2))})
    v2 = FAPM.load(old)
    assert v2.train_images is None
    assert v2.predict_image(defects(root)[0]).score == pytest.approx(model.predict_image(defects(root)[0]).score)
    assert "format version 1 or 2" in one_line_refusal(v2, defects(root)[0])
