"""Same seed, same data -> bit-identical memories, anomaly maps, scores and file contents on the
CPU (fresh model and backbone objects each time, real offline backbone)."""
from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch

from fapm_lib import FAPM, FAPMConfig, MVTecDataset, PatchCore
from tests.helpers import build_mvtec_tree

TINY = FAPMConfig(resize=64, crop_size=64, grid=2, batch_size=4, coreset_ratio=0.5, k=2)
CONFIGS = {
    "adaptive": TINY,
    "fixed-projected": TINY.replace(sampling="fixed", coreset_ratio=0.3, coreset_projection=16, seed=3),
}


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_mvtec_tree(tmp_path_factory.mktemp("det") / "data", "widget", n_train=6,
                            test_counts={"good": 2, "crack": 2}, size=(64, 64))


def fit_fresh(cls, config: FAPMConfig, root: Path):
    """A new model (with its own new backbone) fitted on the tiny train split."""
    model = cls(config)
    return model.fit(MVTecDataset(root, "widget", "train", model.transform), progress=False)


@pytest.fixture(scope="module")
def pair(root: Path):
    """``pair(cls, name)``: two models fitted one after the other with ``CONFIGS[name]`` (cached)."""
    cache: dict[tuple, tuple] = {}

    def get(cls, name: str) -> tuple:
        if (cls, name) not in cache:
            cache[cls, name] = (fit_fresh(cls, CONFIGS[name], root), fit_fresh(cls, CONFIGS[name], root))
        return cache[cls, name]

    return get


def eval_images(model, root: Path) -> torch.Tensor:
    dataset = MVTecDataset(root, "widget", "test", model.transform)
    return torch.stack([dataset[i]["image"] for i in range(len(dataset))])


def assert_same_memories(a: FAPM, b: FAPM) -> None:
    assert len(a.memories) == len(b.memories) == 2
    for ma, mb in zip(a.memories, b.memories):
        assert torch.equal(ma.radii, mb.radii) and torch.equal(ma.far, mb.far)
        assert len(ma.groups) == len(mb.groups)
        for ga, gb in zip(ma.groups, mb.groups):
            assert torch.equal(ga.regions, gb.regions) and torch.equal(ga.bank, gb.bank)


def assert_same_predictions(a, b, images: torch.Tensor) -> None:
    pa, pb = a.predict(images), b.predict(images)
    assert torch.equal(pa.anomaly_map, pb.anomaly_map)
    assert torch.equal(pa.pred_score, pb.pred_score)
    assert torch.equal(pa.patch_scores, pb.patch_scores)


def split_file(path: Path) -> tuple[dict, dict, bytes]:
    """safetensors file -> (tensor entries, metadata with the JSON header decoded, data bytes)."""
    raw = path.read_bytes()
    (size,) = struct.unpack("<Q", raw[:8])
    entries = json.loads(raw[8 : 8 + size])
    meta = entries.pop("__metadata__")
    meta["header"] = json.loads(meta["header"])
    return entries, meta, raw[8 + size :]


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_fapm_twice_is_bit_identical(pair, root: Path, name: str) -> None:
    first, second = pair(FAPM, name)
    assert first.extractor is not second.extractor
    assert_same_memories(first, second)
    assert_same_predictions(first, second, eval_images(first, root))


def test_patchcore_twice_is_bit_identical(pair, root: Path) -> None:
    first, second = pair(PatchCore, "adaptive")
    assert torch.equal(first.model.bank, second.model.bank)
    assert_same_predictions(first, second, eval_images(first, root))


def test_another_seed_changes_a_projected_coreset(pair, root: Path) -> None:
    """Control: the comparison above can see a difference (the seed drives the projection)."""
    config = CONFIGS["fixed-projected"]
    a, b = pair(FAPM, "fixed-projected")[0], fit_fresh(FAPM, config.replace(seed=config.seed + 1), root)
    banks = [(ga.bank, gb.bank) for ma, mb in zip(a.memories, b.memories) for ga, gb in zip(ma.groups, mb.groups)]
    assert any(not torch.equal(x, y) for x, y in banks)


@pytest.mark.parametrize("cls", [FAPM, PatchCore])
def test_saved_files_hold_identical_content(pair, tmp_path: Path, cls) -> None:
    """Tensor bytes, tensor layout and header are identical (the fit's other statistics too:
    coreset method, training count); only the fit timings in the header differ (and with them the
    checksum, if it covers the header). The files are not byte-identical: safetensors writes the
    metadata map in a random order, and the header records ``fit_stats`` timings."""
    paths = [model.save(tmp_path / f"{i}.safetensors") for i, model in enumerate(pair(cls, "adaptive"))]
    (entries_a, meta_a, data_a), (entries_b, meta_b, data_b) = map(split_file, paths)
    assert data_a == data_b and entries_a == entries_b
    stats_a, stats_b = meta_a["header"].pop("fit_stats"), meta_b["header"].pop("fit_stats")
    timings = {"feature_seconds", "coreset_seconds"} | ({"calibration_seconds"} if cls is FAPM else set())
    assert {k for k in stats_a if k.endswith("_seconds")} == {k for k in stats_b if k.endswith("_seconds")} == timings
    untimed_a = {k: v for k, v in stats_a.items() if k not in timings}
    assert untimed_a == {k: v for k, v in stats_b.items() if k not in timings}
    meta_a.pop("sha256"), meta_b.pop("sha256")
    assert meta_a == meta_b and set(meta_a) == {"format", "format_version", "kind", "header"}


def test_saving_one_model_twice_gives_the_same_content(pair, tmp_path: Path) -> None:
    """Same object, two saves: everything but the metadata's order is identical, checksum included."""
    model = pair(FAPM, "adaptive")[0]
    a, b = (split_file(model.save(tmp_path / f"{i}.safetensors")) for i in range(2))
    assert a == b
