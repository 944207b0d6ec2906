"""Model files: damaged, tampered, foreign or malicious files are refused with a one-line
ModelFileError; nothing is unpickled; a save/load round trip gives identical scores, the same
calibration and, for random backbone weights, the fit's weights."""
from __future__ import annotations

import json
import os
import pickle
import struct
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from fapm_lib import FAPM, FAPMConfig, PatchCore, split_regions
from fapm_lib.decisions.calibration import Calibration
from fapm_lib.detectors.model_file import save_tensors
from fapm_lib.errors import ModelFileError
from fapm_lib.method.backbone import create_feature_extractor
from tests.parts_support import SIZE as PART_SIZE
from tests.parts_support import TINY as PART_TINY

TINY = FAPMConfig(resize=64, crop_size=64, grid=2, batch_size=4, coreset_ratio=0.5, k=2)


# ---- fixtures ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def extractor():
    return create_feature_extractor(TINY.backbone)


@pytest.fixture(scope="module")
def images() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return {"train": torch.randn(6, 3, 64, 64, generator=gen), "test": torch.randn(3, 3, 64, 64, generator=gen)}


@pytest.fixture(scope="module")
def fitted(extractor, images) -> dict[str, FAPM | PatchCore]:
    return {"fapm": FAPM(TINY, extractor=extractor).fit(images["train"], progress=False),
            "patchcore": PatchCore(TINY, extractor=extractor).fit(images["train"], progress=False)}


@pytest.fixture(scope="module")
def saved(fitted, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("saved")
    return {kind: model.save(folder / f"{kind}.safetensors") for kind, model in fitted.items()}


@pytest.fixture
def copy_of(saved, tmp_path: Path):
    """``copy_of(kind)``: a fresh copy of a saved model file, to damage."""

    def make(kind: str = "fapm") -> Path:
        path = tmp_path / "model.safetensors"
        path.write_bytes(saved[kind].read_bytes())
        return path

    return make


# ---- helpers -----------------------------------------------------------------------------------
def refused(path: Path, cls=FAPM, **kwargs) -> str:
    """Load expecting ModelFileError; return its message, checked to be one line naming the file."""
    with pytest.raises(ModelFileError) as info:
        cls.load(path, **kwargs)
    message = str(info.value)
    assert "\n" not in message and message.startswith(str(path)), message
    return message


def layout(path: Path) -> tuple[dict, int]:
    """safetensors layout: (header JSON, offset of the data region)."""
    raw = path.read_bytes()
    (size,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + size]), 8 + size


def metadata(path: Path) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as fh:
        return dict(fh.metadata())


def rewrite(path: Path, **changes: str) -> None:
    """Rewrite ``path`` with safetensors' API: some metadata entries changed, nothing recomputed."""
    save_file(load_file(str(path)), str(path), metadata={**metadata(path), **changes})


def craft(path: Path, edit) -> None:
    """Rewrite ``path`` through the library's own writer after ``edit(tensors, header)``: the
    file is well formed and its checksum is valid, whatever the checksum covers."""
    meta, tensors = metadata(path), load_file(str(path))
    header = json.loads(meta["header"])
    edit(tensors, header)
    save_tensors(path, tensors, meta["kind"], header)


def assert_same_prediction(a, b, images: torch.Tensor) -> None:
    pa, pb = a.predict(images), b.predict(images)
    assert torch.equal(pa.anomaly_map, pb.anomaly_map)
    assert torch.equal(pa.pred_score, pb.pred_score)
    assert torch.equal(pa.patch_scores, pb.patch_scores)


# ---- round trips -------------------------------------------------------------------------------
def test_fapm_round_trip_gives_identical_scores(fitted, saved, extractor, images) -> None:
    original = fitted["fapm"]
    loaded = FAPM.load(saved["fapm"], extractor=extractor)
    assert loaded.config == original.config and loaded.feature_sizes == original.feature_sizes
    for a, b in zip(original.memories, loaded.memories, strict=True):
        assert torch.equal(a.radii, b.radii) and torch.equal(a.far, b.far)
        for ga, gb in zip(a.groups, b.groups, strict=True):
            assert torch.equal(ga.regions, gb.regions) and torch.equal(ga.bank, gb.bank)
    assert_same_prediction(original, loaded, images["test"])


def test_patchcore_round_trip_gives_identical_scores(fitted, saved, extractor, images) -> None:
    loaded = PatchCore.load(saved["patchcore"], extractor=extractor)
    assert torch.equal(loaded.model.bank, fitted["patchcore"].model.bank)
    assert_same_prediction(fitted["patchcore"], loaded, images["test"])


def test_loading_never_unpickles(saved, extractor, monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*args, **kwargs):
        raise AssertionError("model loading must not unpickle")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    assert FAPM.load(saved["fapm"], extractor=extractor).is_fitted
    assert PatchCore.load(saved["patchcore"], extractor=extractor).is_fitted


# ---- what the file carries beside the memory: the calibration, the backbone's seed --------------
@pytest.mark.usefixtures("cached_extractors")
def test_calibration_round_trips_through_the_model_file(tmp_path: Path, part_model_file: Path) -> None:
    model = FAPM.load(part_model_file)
    assert model.calibration is not None and model.calibration.method == "false_alarm_rate"
    again = FAPM.load(model.save(tmp_path / "again.safetensors"))
    assert again.calibration == model.calibration
    images = torch.randn(6, 3, PART_SIZE, PART_SIZE, generator=torch.Generator().manual_seed(2))
    patchcore = PatchCore(PART_TINY).fit(images, progress=False)
    patchcore.calibration = Calibration(12.0, 1.0, 9.0, 0.5, "manual", None, {"note": "set by hand"})
    loaded = PatchCore.load(patchcore.save(tmp_path / "pc.safetensors"))
    assert loaded.calibration == patchcore.calibration
    header_only = FAPM(PART_TINY.replace(calibration_folds=0)).fit(images, progress=False)
    assert FAPM.load(header_only.save(tmp_path / "plain.safetensors")).calibration is None


def test_random_weights_reload_to_the_same_scores(tmp_path: Path, cached_extractors: dict) -> None:
    config = PART_TINY.replace(pretrained=False, seed=3, calibration_folds=0)
    images = torch.randn(6, 3, PART_SIZE, PART_SIZE, generator=torch.Generator().manual_seed(4))
    cached_extractors.clear()
    model = FAPM(config).fit(images, progress=False)
    path = model.save(tmp_path / "random.safetensors")
    torch.manual_seed(12345)  # whatever the global RNG holds, the reload draws the fit's weights
    reloaded = FAPM.load(path)
    torch.testing.assert_close(reloaded.predict(images[:3]).pred_score, model.predict(images[:3]).pred_score)
    other = FAPM(config.replace(seed=4)).fit(images, progress=False)
    assert not torch.allclose(other.predict(images[:3]).pred_score, model.predict(images[:3]).pred_score)


# ---- damaged files -----------------------------------------------------------------------------
@pytest.mark.parametrize("where", ["empty", "length-prefix", "mid-header", "header-end", "first-data-byte",
                                   "half", "last-byte"])
def test_truncated_file(copy_of, where: str) -> None:
    path = copy_of()
    raw = path.read_bytes()
    _, data_start = layout(path)
    cut = {"empty": 0, "length-prefix": 5, "mid-header": data_start // 2, "header-end": data_start,
           "first-data-byte": data_start + 1, "half": len(raw) // 2, "last-byte": len(raw) - 1}[where]
    path.write_bytes(raw[:cut])
    assert "not a readable model file" in refused(path)


@pytest.mark.parametrize("tensor", ["layers.0.groups.0.bank", "layers.1.groups.1.bank", "layers.0.radii",
                                    "layers.1.far", "layers.0.groups.1.regions"])
def test_one_flipped_byte_in_tensor_data(copy_of, tensor: str) -> None:
    path = copy_of()
    header, data_start = layout(path)
    begin, end = header[tensor]["data_offsets"]
    raw = bytearray(path.read_bytes())
    raw[data_start + (begin + end) // 2] ^= 0x01
    path.write_bytes(bytes(raw))
    assert refused(path).endswith("checksum mismatch (the file was modified or damaged)")


@pytest.mark.parametrize(
    ("old", "new"),
    [('\\"grid\\": 2', '\\"grid\\": 4'), ('\\"k\\": 2', '\\"k\\": 1'),
     ('\\"blur_sigma\\": 4.0', '\\"blur_sigma\\": 0.0'),
     ('\\"feature_sizes\\": [[8, 8], [4, 4]]', '\\"feature_sizes\\": [[4, 4], [8, 8]]')],
    ids=["grid", "k", "blur_sigma", "feature_sizes"],
)
def test_edited_header_config_is_refused(copy_of, old: str, new: str) -> None:
    """An edit of the JSON header (same length, so the file stays valid safetensors) must not
    load silently: the stored config decides how the memories are searched."""
    path = copy_of()
    raw = path.read_bytes()
    assert raw.count(old.encode()) == 1
    path.write_bytes(raw.replace(old.encode(), new.encode()))
    refused(path)


def test_header_config_out_of_range_is_refused(copy_of) -> None:
    path = copy_of()
    craft(path, lambda tensors, header: header["config"].update(coreset_ratio=5.0))
    assert "coreset_ratio=5.0 must be in (0, 1]" in refused(path)


def test_other_format_version(copy_of) -> None:
    path = copy_of()
    rewrite(path, format_version="99")
    assert refused(path) == f"{path}: model format version 99 is not supported (this library reads 1, 2, 3)"


def test_a_version_1_file_still_loads_and_predicts_the_same(saved, extractor, images, tmp_path: Path) -> None:
    """Files written before the memory sources existed (format version 1) load, without sources."""
    from fapm_lib.detectors import model_file

    old = tmp_path / "v1.safetensors"
    tensors = {k: v for k, v in load_file(str(saved["fapm"])).items() if not k.endswith(".sources")}
    header = json.loads(metadata(saved["fapm"])["header"])
    header_json = json.dumps(header, sort_keys=True)
    save_file(tensors, str(old), metadata={
        "format": "fapm_lib", "format_version": "1", "kind": "fapm", "header": header_json,
        "sha256": model_file.tensors_digest(tensors, model_file._preamble("fapm", header_json, 1))})
    v1, v2 = FAPM.load(old, extractor=extractor), FAPM.load(saved["fapm"], extractor=extractor)
    assert all(g.sources is None for m in v1.memories for g in m.groups)
    assert all(g.sources is not None for m in v2.memories for g in m.groups)
    assert_same_prediction(v1, v2, images["test"])


def test_sources_name_the_training_rows_of_each_memory_vector(fitted, images) -> None:
    """Every memory vector is the training vector its source names (ratio < 1: a real subset)."""
    model = fitted["fapm"]
    maps = model.extract(images["train"], progress=False)
    for memory, m in zip(model.memories, maps):
        regions = split_regions(m, model.config.grid)
        for group in memory.groups:
            rows = regions[group.regions[:, None], group.sources]  # [G, M, C]
            assert torch.equal(rows, group.bank)


def test_not_our_safetensors_file(tmp_path: Path) -> None:
    path = tmp_path / "weights.safetensors"
    save_file({"conv.weight": torch.zeros(2, 3)}, str(path))
    assert refused(path) == f"{path}: not a fapm_lib model file"


def test_patchcore_file_loaded_as_fapm_and_back(saved) -> None:
    assert refused(saved["patchcore"]) == f"{saved['patchcore']}: holds a patchcore model, not a fapm model"
    assert refused(saved["fapm"], PatchCore) == f"{saved['fapm']}: holds a fapm model, not a patchcore model"


def test_missing_tensor_with_a_valid_checksum(copy_of) -> None:
    path = copy_of()
    craft(path, lambda tensors, header: tensors.pop("layers.1.radii"))
    assert "incomplete model file (missing 'layers.1.radii')" in refused(path)


def test_header_channels_that_do_not_match_the_memory(copy_of) -> None:
    path = copy_of()
    craft(path, lambda tensors, header: header["backbone"].update(channels=[32, 96]))
    message = refused(path)
    assert "layer 0" in message and "memory does not match backbone tf_efficientnet_lite0" in message


CRAFTED = {
    "float16-bank": lambda t, h: t.update({"layers.0.groups.0.bank": t["layers.0.groups.0.bank"].half()}),
    "regions-out-of-range": lambda t, h: t.update({"layers.0.groups.0.regions": t["layers.0.groups.0.regions"] + 100}),
    "bank-without-region-axis": lambda t, h: t.update({"layers.1.groups.1.bank": t["layers.1.groups.1.bank"][0]}),
}


@pytest.mark.parametrize("change", sorted(CRAFTED))
def test_crafted_file_with_a_valid_checksum_is_refused_at_load(copy_of, change: str) -> None:
    """A checksum only detects damage; a well-formed file with wrong dtypes or shapes must be
    refused at load, not fail later inside predict with a traceback."""
    path = copy_of()
    craft(path, CRAFTED[change])
    refused(path)


@pytest.mark.parametrize("n_bytes", [1, 7, 8, 100, 65536])
def test_random_bytes(tmp_path: Path, n_bytes: int) -> None:
    path = tmp_path / "model.safetensors"
    path.write_bytes(os.urandom(n_bytes))
    assert "not a readable model file" in refused(path)


def test_plausible_length_prefix_then_garbage(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    path.write_bytes(struct.pack("<Q", 64) + b"{" + os.urandom(200))
    assert "not a readable model file" in refused(path)


def test_missing_file_and_folder(tmp_path: Path) -> None:
    assert refused(tmp_path / "absent.safetensors").endswith("model file not found")
    assert refused(tmp_path).endswith("model file not found")


# ---- other backbones ---------------------------------------------------------------------------
def test_extractor_with_other_channels_is_refused(saved) -> None:
    other = create_feature_extractor("mobilenetv2_100", pretrained=False)
    message = refused(saved["fapm"], extractor=other)
    fitted, _, given = message.partition(", not ")
    assert "tf_efficientnet_lite0" in fitted and "channels [40, 112]" in fitted
    assert "mobilenetv2_100" in given and "channels [32, 96]" in given
    assert "mobilenetv2_100" in refused(saved["patchcore"], PatchCore, extractor=other)


@pytest.mark.parametrize(("name", "pretrained"), [("efficientnet_b0", False), ("tf_efficientnet_lite0", False)],
                         ids=["other-architecture-same-channels", "random-weights"])
def test_extractor_with_same_channels_but_other_weights_is_refused(saved, name: str, pretrained: bool) -> None:
    """efficientnet_b0 has lite0's channels (40, 112); a random-weights lite0 too. Either gives
    meaningless distances to memories made with the pretrained lite0."""
    other = create_feature_extractor(name, pretrained=pretrained)
    assert other.info.channels == (40, 112)
    refused(saved["fapm"], extractor=other)


# ---- pickles -----------------------------------------------------------------------------------
class _Payload:
    """Unpickling this runs ``exec`` that creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').close()",)


def test_malicious_pickle_is_refused_and_never_run(tmp_path: Path) -> None:
    control = tmp_path / "control_marker"
    pickle.loads(pickle.dumps(_Payload(control)))
    assert control.exists()  # the payload is live when unpickled

    marker = tmp_path / "marker"
    path = tmp_path / "model.safetensors"
    path.write_bytes(pickle.dumps(_Payload(marker)))
    assert "not a readable model file" in refused(path)
    assert "not a readable model file" in refused(path, PatchCore)
    assert not marker.exists()


def test_torch_save_file_with_a_malicious_pickle_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    path = tmp_path / "model.safetensors"
    torch.save({"bank": torch.zeros(2), "payload": _Payload(marker)}, path)
    assert not marker.exists()
    assert "not a readable model file" in refused(path)
    assert not marker.exists()


def test_a_file_written_before_native_resolution_loads_and_scores_as_then(tmp_path: Path) -> None:
    """``fixtures/pre_native_model.safetensors`` was written by the library before native
    resolution (commit e8860d8: no canvas and no input channels in its header) from the built-in
    vial at 64 px, with ``resize 64, crop_size 64, grid 2``; ``pre_native_scores.json`` holds the
    raw scores that code gave the test images. Today's library reads it as the paper's protocol in
    RGB and gives the same scores."""
    import json

    from fapm_lib.data.mvtec import MVTecDataset
    from fapm_lib.data.synthetic import generate_category

    fixtures = Path(__file__).parent / "fixtures"
    expected = json.loads((fixtures / "pre_native_scores.json").read_text())
    root = generate_category(tmp_path, "vial", seed=0, size=64, n_train=6, n_test_good=1, n_per_defect=1).parent
    model = FAPM.load(fixtures / "pre_native_model.safetensors")
    assert (model.config.resize, model.config.crop_size, model.channels, model.canvas) == (64, 64, 3, (64, 64))
    test = MVTecDataset(root, "vial", "test", model.transform)
    assert [str(s.path.relative_to(root)) for s in test.samples] == expected["paths"]
    scores = model.predict(torch.stack([test[i]["image"] for i in range(len(test))])).pred_score
    assert torch.allclose(scores, torch.tensor(expected["raw_scores"]), rtol=1e-4)


def test_tiles_are_cut_by_the_rule_the_file_was_fitted_with(extractor, tmp_path: Path) -> None:
    """New fits cut even tiles and record it; a file without the record (written before the rule)
    keeps tiles of the full ``tile``, so it scores as it did; an unknown rule is refused."""
    config = FAPMConfig(tile=128, tile_overlap=32, calibration_folds=0, coreset_ratio=0.5, batch_size=4)
    images = torch.randn(5, 3, 64, 160, generator=torch.Generator().manual_seed(3))
    fitted = FAPM(config, extractor=extractor).fit(images[:4], progress=False)
    assert fitted.tile_rule == "even" and fitted.model.tiles.size == (64, 96)  # 2 x 96, not 2 x 128
    path = fitted.save(tmp_path / "even.safetensors")
    assert json.loads(metadata(path)["header"])["tile_rule"] == "even"
    assert_same_prediction(FAPM.load(path, extractor=extractor), fitted, images[4:])
    craft(path, lambda tensors, header: header.pop("tile_rule"))
    before = FAPM.load(path, extractor=extractor)
    assert before.tile_rule == "full" and before.model.tiles.size == (64, 128)
    assert before.embed(images[4:])[0].shape == fitted.embed(images[4:])[0].shape
    assert not torch.equal(before.embed(images[4:])[0], fitted.embed(images[4:])[0])
    craft(path, lambda tensors, header: header.update(tile_rule="half"))
    assert refused(path) == f"{path}: malformed tile_rule 'half' (expected one of even, full)"
    assert before.fit(images[:4], progress=False).tile_rule == "even"  # a new fit cuts by the new rule
    assert before.model.tiles.size == (64, 96)


@pytest.mark.parametrize("change, message", [
    ({"canvas": None}, "a native-resolution model without its canvas size"),
    ({"canvas": [64, "wide"]}, "malformed canvas [64, 'wide']"),
    ({"canvas": [0, 160]}, "malformed canvas [0, 160]"),
    ({"input_channels": 2}, "malformed input_channels 2"),
])
def test_a_native_header_with_a_malformed_geometry_is_refused(extractor, tmp_path: Path, change: dict,
                                                              message: str) -> None:
    config = FAPMConfig(calibration_folds=0, coreset_ratio=0.5, batch_size=4)
    images = torch.randn(3, 3, 64, 96, generator=torch.Generator().manual_seed(4))
    path = FAPM(config, extractor=extractor).fit(images, progress=False).save(tmp_path / "native.safetensors")
    craft(path, lambda tensors, header: header.update(change))
    assert refused(path) == f"{path}: {message}"
