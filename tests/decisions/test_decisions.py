"""From scores to decisions: k-fold calibration on normal training images, the normalised
score, OK/NG, masks, ``fapm predict`` outputs, the inference API, and settings that act or
are refused (issue 9). Tiny 64 px images and the real offline backbone."""
from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fapm_lib import FAPM, FAPMConfig, PatchCore
from fapm_lib.cli import main as cli
from fapm_lib.decisions.calibration import Calibration, f1_optimal_threshold, normalize_score, quantile_threshold
from fapm_lib.decisions.heldout import fold_model, image_rows, regions_to_maps
from fapm_lib.detectors import base
from fapm_lib.detectors.model_file import MODEL_FILE
from fapm_lib.method.backbone import create_feature_extractor
from fapm_lib.method.machinery.folds import fold_count, heldout_images, kept_images, scored_images
from fapm_lib.method.regions import split_regions

CATEGORY = "part"
SIZE = 64
TINY = FAPMConfig(resize=SIZE, crop_size=SIZE, grid=2, batch_size=8, coreset_ratio=0.5)
TINY_YAML = f"resize: {SIZE}\ncrop_size: {SIZE}\ngrid: 2\nbatch_size: 8\ncoreset_ratio: 0.5\n"
_EXTRACTORS: dict[tuple, object] = {}


@pytest.fixture(autouse=True)
def cached_extractors(monkeypatch: pytest.MonkeyPatch) -> None:
    """Build each backbone once per module (same weights: random ones come from the seed)."""

    def cached(name: str, pretrained: bool = True, device="cpu"):
        key = (name, pretrained, str(device), torch.random.initial_seed() if not pretrained else None)
        if key not in _EXTRACTORS:
            _EXTRACTORS[key] = create_feature_extractor(name, pretrained, device)
        return _EXTRACTORS[key]

    monkeypatch.setattr(base, "create_feature_extractor", cached)


def part_image(seed: int, defect: bool = False) -> np.ndarray:
    """A smooth shaded part on a plain background (small noise); ``defect``: a dark square."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    disc = ((x - 0.5) ** 2 + (y - 0.5) ** 2 < 0.12).astype(float)
    gray = 0.35 + 0.4 * disc * (0.7 + 0.3 * x) + rng.normal(0, 0.01, (SIZE, SIZE))
    if defect:
        top, left = rng.integers(14, 36, 2)
        gray[top : top + 12, left : left + 12] = 0.02
    rgb = np.stack([gray, gray * 0.95, gray * 0.9], -1)
    return (np.clip(rgb, 0, 1) * 255).round().astype(np.uint8)


def write_tree(root: Path, n_train: int = 10, n_good: int = 3, n_bad: int = 3, seed: int = 0) -> Path:
    """MVTec layout under ``root/part``: train/good, test/good, test/crack with masks."""
    cat = root / CATEGORY
    for i in range(n_train):
        (cat / "train" / "good").mkdir(parents=True, exist_ok=True)
        Image.fromarray(part_image(seed + i)).save(cat / "train" / "good" / f"{i:03d}.png")
    for i in range(n_good):
        (cat / "test" / "good").mkdir(parents=True, exist_ok=True)
        Image.fromarray(part_image(seed + 500 + i)).save(cat / "test" / "good" / f"{i:03d}.png")
    for i in range(n_bad):
        for sub in ("test/crack", "ground_truth/crack"):
            (cat / sub).mkdir(parents=True, exist_ok=True)
        image = part_image(seed + 900 + i, defect=True)
        Image.fromarray(image).save(cat / "test" / "crack" / f"{i:03d}.png")
        mask = (image[..., 0] < 10).astype(np.uint8) * 255
        Image.fromarray(mask).save(cat / "ground_truth" / "crack" / f"{i:03d}_mask.png")
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tree(tmp_path_factory.mktemp("decisions") / "data")


@pytest.fixture(scope="module")
def tiny_yaml(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cfg") / "tiny.yaml"
    path.write_text(TINY_YAML)
    return path


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory, data: Path, tiny_yaml: Path) -> Path:
    """``fapm fit`` on the tiny part data (calibrated, 5 folds): the model file."""
    out = tmp_path_factory.mktemp("fit")
    assert cli.main(["fit", "--config", str(tiny_yaml), "--data-root", str(data), "--category", CATEGORY,
                     "--output", str(out), "--no-progress"]) == 0
    return out / MODEL_FILE


def run_main(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_line(stderr: str) -> str:
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    return lines[0]


def evaluate(capsys, out: Path, *argv: str) -> dict:
    code, _, err = run_main(capsys, "evaluate", *argv, "--output", str(out), "--no-progress")
    assert code == 0, err
    return json.loads((out / "metrics.json").read_text())


# ---- the mapping ------------------------------------------------------------------------------
def test_normalised_score_is_one_half_exactly_at_the_threshold() -> None:
    for threshold, scale in ((31.25, 1.5), (0.0, 1e-6), (-3.0, 7.0)):
        assert normalize_score(threshold, threshold, scale) == 0.5
        assert float(normalize_score(torch.tensor([threshold]), threshold, scale)) == 0.5
        raw = torch.linspace(threshold - 5, threshold + 5, 101)
        norm = normalize_score(raw, threshold, scale)
        assert torch.all(norm[1:] >= norm[:-1]) and norm.min() >= 0 and norm.max() <= 1
    cal = Calibration(10.0, 2.0, 5.0, 1.0)
    assert cal.decide(10.0) == "NG" and cal.decide(math.nextafter(10.0, 0)) == "OK"
    assert cal.score(10.0) == 0.5 and cal.pixel_score(5.0) == 0.5
    assert normalize_score(1e9, 0.0, 1.0) == 1.0 and normalize_score(-1e9, 0.0, 1.0) == 0.0  # no overflow


def test_quantile_rule_and_fold_sets() -> None:
    values = np.random.default_rng(0).normal(size=200)
    for rate in (0.01, 0.05, 0.2):
        threshold = quantile_threshold(values, rate)
        assert threshold == pytest.approx(np.quantile(values, 1 - rate))
        assert (values >= threshold).mean() <= rate + 1 / len(values)
    held = heldout_images(scored_images(11, None, 0), fold_count(11, 5))
    assert sorted(torch.cat([images for images, _ in held]).tolist()) == list(range(11)) and len(held) == 5
    assert all(torch.equal(images, slots) for images, slots in held)  # every image scored: slot = image
    assert fold_count(3, 5) == 3 and kept_images(3, 3, 1).tolist() == [0, 2]


def test_a_large_fit_scores_a_seeded_sample_spread_over_the_folds() -> None:
    scored = scored_images(1000, 100, seed=3)
    assert len(scored) == 100 and torch.all(scored[1:] > scored[:-1])
    assert torch.equal(scored, scored_images(1000, 100, seed=3)) and not torch.equal(scored, scored_images(1000, 100, 4))
    assert torch.equal(scored_images(80, 100, 3), torch.arange(80))  # fewer images than the cap: all
    held = heldout_images(scored, 5)
    for f, (images, slots) in enumerate(held):
        assert torch.all(images % 5 == f) and torch.equal(scored[slots], images)
        assert 5 <= len(images) <= 40  # a random sample of 100 leaves every fold some images


def test_f1_optimal_threshold_decides_ties_together() -> None:
    values = np.array([0.1, 0.2, 0.5, 0.5, 0.9, 0.3])
    targets = np.array([0, 0, 1, 0, 1, 0])
    threshold, f1 = f1_optimal_threshold(values, targets)
    # candidates: >= 0.9 -> F1 2/3; >= 0.5 -> tp 2, flagged 3 -> 0.8; >= 0.3 -> 2/3
    assert threshold == 0.5 and f1 == pytest.approx(0.8)


def test_heldout_images_are_scored_by_memories_that_never_saw_them() -> None:
    """With ratio 1 the fold memory holds every row of the other folds: the held-out 1-NN
    distance of each position equals brute force over the same region of the other images."""
    torch.manual_seed(0)
    n, grid = 6, 2
    maps = [torch.randn(n, 5, 4, 4), torch.randn(n, 7, 2, 2)]
    regions = [split_regions(m, grid) for m in maps]
    config = TINY.replace(coreset_ratio=1.0, sampling="fixed")
    train, heldout = torch.tensor([0, 2, 3, 5]), torch.tensor([1, 4])
    model = fold_model(regions, [(4, 4), (2, 2)], config, train)
    knn = model.search([regions_to_maps(r, heldout, grid, size) for r, size in zip(regions, [(4, 4), (2, 2)])], 2)
    expected = torch.zeros(len(heldout), 4, 4)
    for layer, m in enumerate(maps):
        factor = 4 // m.shape[-1]
        s = m.shape[-1] // grid
        for a, img in enumerate(heldout.tolist()):
            for y in range(m.shape[-2]):
                for x in range(m.shape[-1]):
                    gy, gx = y // s, x // s
                    block = m[train][:, :, gy * s : (gy + 1) * s, gx * s : (gx + 1) * s]
                    bank = block.permute(0, 2, 3, 1).reshape(-1, m.shape[1])
                    d = (bank - m[img, :, y, x]).norm(dim=1).min()
                    expected[a, y * factor : (y + 1) * factor, x * factor : (x + 1) * factor] += d
    assert torch.allclose(knn[..., 0], expected, atol=1e-4)
    assert image_rows(torch.tensor([1]), 4).tolist() == [4, 5, 6, 7]


def test_final_memory_is_the_same_with_and_without_calibration() -> None:
    images = torch.randn(8, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    calibrated = FAPM(TINY).fit(images, progress=False)
    plain = FAPM(TINY.replace(calibration_folds=0)).fit(images, progress=False)
    assert plain.calibration is None and calibrated.calibration is not None
    for a, b in zip(calibrated.memories, plain.memories):
        assert all(torch.equal(g.bank, h.bank) and torch.equal(g.regions, h.regions) for g, h in zip(a.groups, b.groups))
    summary = calibrated.calibration.summary
    assert summary["folds"] == 5 and summary["n_images"] == 8 and len(summary["image"]["values"]) == 8
    for part in ("image", "pixel"):
        assert {"n", "mean", "std", "max", "quantiles"} <= set(summary[part])


# ---- training only ----------------------------------------------------------------------------
def test_threshold_comes_from_training_images_only(capsys, tmp_path: Path, data: Path, tiny_yaml: Path) -> None:
    """Same train/good, different test sets: the same thresholds; only the measured rates move."""
    other = tmp_path / "other"
    shutil.copytree(data / CATEGORY / "train", other / CATEGORY / "train")
    write_tree(tmp_path / "tmp", n_train=0, n_good=5, n_bad=2, seed=77)
    for sub in ("test", "ground_truth"):
        shutil.copytree(tmp_path / "tmp" / CATEGORY / sub, other / CATEGORY / sub)
    common = ["--config", str(tiny_yaml), "--category", CATEGORY]
    first = evaluate(capsys, tmp_path / "a", *common, "--data-root", str(data))
    second = evaluate(capsys, tmp_path / "b", *common, "--data-root", str(other))
    assert first["threshold"] == second["threshold"] and first["pixel_threshold"] == second["pixel_threshold"]
    assert first["n_test"] != second["n_test"]
    for metrics in (first, second):
        assert metrics["threshold_method"] == "false_alarm_rate"
        assert 0 <= metrics["false_alarm_rate"] <= 1 and 0 <= metrics["miss_rate"] <= 1
        assert metrics["settings"]["config"]["calibration_folds"] == 5


# ---- save / load ------------------------------------------------------------------------------
def test_calibration_round_trips_through_the_model_file(tmp_path: Path, fitted: Path) -> None:
    model = FAPM.load(fitted)
    assert model.calibration is not None and model.calibration.method == "false_alarm_rate"
    again = FAPM.load(model.save(tmp_path / "again.safetensors"))
    assert again.calibration == model.calibration
    images = torch.randn(6, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    patchcore = PatchCore(TINY).fit(images, progress=False)
    patchcore.calibration = Calibration(12.0, 1.0, 9.0, 0.5, "manual", None, {"note": "set by hand"})
    loaded = PatchCore.load(patchcore.save(tmp_path / "pc.safetensors"))
    assert loaded.calibration == patchcore.calibration
    header_only = FAPM(TINY.replace(calibration_folds=0)).fit(images, progress=False)
    assert FAPM.load(header_only.save(tmp_path / "plain.safetensors")).calibration is None


def test_random_weights_reload_to_the_same_scores(tmp_path: Path) -> None:
    config = TINY.replace(pretrained=False, seed=3, calibration_folds=0)
    images = torch.randn(6, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(4))
    _EXTRACTORS.clear()
    model = FAPM(config).fit(images, progress=False)
    path = model.save(tmp_path / "random.safetensors")
    torch.manual_seed(12345)  # whatever the global RNG holds, the reload draws the fit's weights
    reloaded = FAPM.load(path)
    torch.testing.assert_close(reloaded.predict(images[:3]).pred_score, model.predict(images[:3]).pred_score)
    other = FAPM(config.replace(seed=4)).fit(images, progress=False)
    assert not torch.allclose(other.predict(images[:3]).pred_score, model.predict(images[:3]).pred_score)


# ---- the inference API ------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(64, 64, 3), (50, 83, 3), (97, 61), (40, 40, 1), (33, 120, 4)])
def test_predict_image_any_size_gray_or_rgb(fitted: Path, shape: tuple[int, ...]) -> None:
    model = FAPM.load(fitted)
    array = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    result = model.predict_image(array)
    assert result.anomaly_map.shape == result.mask.shape == shape[:2]
    assert result.decision in ("OK", "NG") and 0 <= result.score <= 1
    assert (result.score >= 0.5) == (result.decision == "NG") == (result.raw_score >= model.calibration.image_threshold)
    left, top, right, bottom = result.box
    assert 0 <= left < right <= shape[1] and 0 <= top < bottom <= shape[0]
    assert not result.mask[result.anomaly_map == 0].any()


def test_predict_image_inputs_agree(fitted: Path, data: Path) -> None:
    """Path, PIL image, uint8 array, float array and the gray copy of a gray image: one result."""
    model = FAPM.load(fitted)
    path = data / CATEGORY / "test" / "crack" / "000.png"
    rgb = np.asarray(Image.open(path).convert("L").convert("RGB"))
    gray = rgb[..., 0]
    results = [model.predict_image(x) for x in (rgb, gray, Image.fromarray(gray), gray.astype(np.float32) / 255)]
    for r in results[1:]:
        assert r.raw_score == pytest.approx(results[0].raw_score, rel=1e-5)
        assert np.array_equal(r.mask, results[0].mask)
    assert model.predict_image(path).path == str(path)
    folder = model.predict_folder(data / CATEGORY / "test")
    assert [Path(r.path).parent.name for r in folder] == ["crack"] * 3 + ["good"] * 3
    defect, good = folder[0], folder[-1]
    assert defect.decision == "NG" and defect.mask.sum() > good.mask.sum()


def test_predict_image_refuses_bad_arrays(fitted: Path) -> None:
    from fapm_lib.errors import DataError

    model = FAPM.load(fitted)
    with pytest.raises(DataError, match="float numpy image"):
        model.predict_image(np.full((20, 20), 2.0))
    with pytest.raises(DataError, match="shape"):
        model.predict_image(np.zeros((4, 20, 20, 3), np.uint8))


# ---- fapm predict -----------------------------------------------------------------------------
def test_predict_cli_writes_scores_masks_and_calibrated_overlays(capsys, tmp_path: Path, data: Path,
                                                                 fitted: Path) -> None:
    test = data / CATEGORY / "test"
    out = tmp_path / "pred"
    code, stdout, err = run_main(capsys, "predict", "--model", str(fitted), str(test / "good"), str(test / "crack"),
                                 "--output", str(out), "--no-progress")
    assert code == 0 and err == "" and stdout.startswith("scored 6 images")
    with open(out / "scores.csv", newline="") as fh:
        reader = csv.DictReader(fh)
        assert reader.fieldnames[:4] == ["path", "raw_score", "score", "decision"]
        rows = list(reader)
    names = [r["overlay"] for r in rows]
    assert len(set(names)) == 6 and "overlays/good/000.png.png" in names and "overlays/crack/000.png.png" in names
    model = FAPM.load(fitted)
    for row in rows:
        raw, score = float(row["raw_score"]), float(row["score"])
        assert row["decision"] == ("NG" if raw >= model.calibration.image_threshold else "OK")
        assert (score >= 0.5) == (row["decision"] == "NG")
        mask = np.asarray(Image.open(out / row["mask"]))
        assert mask.shape == (SIZE, SIZE) and set(np.unique(mask)) <= {0, 255}
    good = [r for r in rows if "/good/" in r["path"]]
    bad = [r for r in rows if "/crack/" in r["path"]]
    assert all(r["decision"] == "NG" for r in bad)

    def coloured(row: dict) -> float:
        """Fraction of the overlay's picture area that differs from the input image."""
        picture = np.asarray(Image.open(out / row["overlay"]), dtype=np.int16)
        image = np.asarray(Image.open(row["path"]).convert("RGB"), dtype=np.int16)
        area = picture[-SIZE:, :SIZE]
        return float((np.abs(area - image).max(-1) > 8).mean())

    def flagged(row: dict) -> float:
        return float((np.asarray(Image.open(out / row["mask"])) > 0).mean())

    assert max(coloured(r) for r in good) < min(coloured(r) for r in bad)
    assert max(flagged(r) for r in good) < min(flagged(r) for r in bad)
    assert np.mean([flagged(r) for r in good]) < 0.05  # about the 1% pixel false-alarm target, not the map's own max


def test_predict_cli_keeps_source_folders_apart(capsys, tmp_path: Path, data: Path, fitted: Path) -> None:
    test = data / CATEGORY / "test"
    out = tmp_path / "pred"
    Image.fromarray(part_image(3)).save(tmp_path / "000.jpg")  # same stem, another format, another folder
    shutil.copy(tmp_path / "000.jpg", test / "good" / "000.jpg")
    code, _, err = run_main(capsys, "predict", "--model", str(fitted), str(test / "good" / "000.png"),
                            str(test / "crack" / "000.png"), str(test / "good" / "000.png"),
                            str(test / "good" / "000.jpg"), str(tmp_path / "000.jpg"), "--output", str(out))
    (test / "good" / "000.jpg").unlink()
    assert code == 0 and one_line(err) == f"skipped: {test / 'good' / '000.png'}: given more than once (scored once)"
    with open(out / "scores.csv", newline="") as fh:
        overlays = [r["overlay"] for r in csv.DictReader(fh)]
    assert overlays == ["overlays/good/000.png.png", "overlays/crack/000.png.png", "overlays/good/000.jpg.png",
                        f"overlays/{tmp_path.name}/000.jpg.png"]  # the extension kept, never a counter
    assert all((out / o).is_file() for o in overlays)


def test_uncalibrated_model_states_it(capsys, tmp_path: Path, data: Path, tiny_yaml: Path) -> None:
    out = tmp_path / "fit"
    assert cli.main(["fit", "--config", str(tiny_yaml), "--data-root", str(data), "--category", CATEGORY,
                     "--calibration-folds", "0", "--output", str(out), "--no-progress"]) == 0
    capsys.readouterr()
    model_file = out / MODEL_FILE
    image = data / CATEGORY / "test" / "good" / "000.png"
    code, stdout, err = run_main(capsys, "predict", "--model", str(model_file), str(image), "--output", str(tmp_path / "p"))
    assert code == 0 and "uncalibrated" in one_line(err) and "uncalibrated" in stdout
    with open(tmp_path / "p" / "scores.csv", newline="") as fh:
        (row,) = list(csv.DictReader(fh))
    assert row["decision"] == "uncalibrated" and row["score"] == "" and float(row["raw_score"]) > 0
    result = FAPM.load(model_file).predict_image(image)
    assert result.decision == "uncalibrated" and result.score is None and result.mask is None
    # a manual threshold gives decisions, recorded as manual
    metrics = evaluate(capsys, tmp_path / "e", "--model", str(model_file), "--data-root", str(data),
                       "--category", CATEGORY, "--threshold", "1e9", "--pixel-threshold", "1e9")
    assert metrics["threshold"] == 1e9 and metrics["threshold_method"] == "manual"
    assert metrics["false_alarm_rate"] == 0.0 and metrics["miss_rate"] == 1.0


# ---- settings act or are refused --------------------------------------------------------------
def test_evaluate_model_honours_k_and_image_score(capsys, tmp_path: Path, data: Path, tiny_yaml: Path,
                                                  fitted: Path) -> None:
    """``--model M --image-score reweighted --k 3`` scores like a fresh fit with those flags
    (same memories: k is read only when scoring) and re-derives the threshold from the stored
    held-out scores; without the flags it is the model's own max score."""
    common = ["--data-root", str(data), "--category", CATEGORY]
    plain = evaluate(capsys, tmp_path / "plain", "--model", str(fitted), *common)
    rescored = evaluate(capsys, tmp_path / "rescored", "--model", str(fitted), *common,
                        "--image-score", "reweighted", "--k", "3")
    fresh = evaluate(capsys, tmp_path / "fresh", "--config", str(tiny_yaml), *common,
                     "--image-score", "reweighted", "--k", "3")
    assert rescored["settings"]["config"]["k"] == 3 and rescored["settings"]["config"]["image_score"] == "reweighted"
    assert rescored["threshold"] != plain["threshold"]
    assert rescored["threshold"] == pytest.approx(fresh["threshold"], rel=1e-6)
    for key in ("image_auroc", "false_alarm_rate", "miss_rate"):
        assert rescored[key] == pytest.approx(fresh[key], rel=1e-6)
    again = evaluate(capsys, tmp_path / "k4", "--model", str(fitted), *common, "--image-score", "reweighted", "--k", "4")
    assert again["threshold"] != rescored["threshold"]
    rate = evaluate(capsys, tmp_path / "rate", "--model", str(fitted), *common, "--false-alarm-rate", "0.3")
    assert rate["threshold"] < plain["threshold"] and rate["target_false_alarm_rate"] == 0.3


@pytest.mark.parametrize(("flags", "expected"), [
    (["--image-score", "reweighted", "--k", "1"], "k=1 must be >= 2 with image_score reweighted"),
    (["--k", "8"], "--k=8 acts only with image_score reweighted"),
    (["--false-alarm-rate", "0"], "false_alarm_rate=0.0 must be in (0, 1)"),
    (["--calibration-folds", "1"], "calibration_folds=1 must be 0 (no calibration) or >= 2"),
])
def test_fit_refuses_settings_that_would_not_act(capsys, tmp_path: Path, data: Path, tiny_yaml: Path,
                                                 flags: list[str], expected: str) -> None:
    code, _, err = run_main(capsys, "fit", "--config", str(tiny_yaml), "--data-root", str(data),
                            "--category", CATEGORY, *flags, "--output", str(tmp_path / "o"))
    assert code == 2 and expected in one_line(err)
    assert not (tmp_path / "o").exists()


def test_yaml_k_with_max_is_refused(capsys, tmp_path: Path, data: Path) -> None:
    config = tmp_path / "k.yaml"
    config.write_text(TINY_YAML + "k: 8\n")
    code, _, err = run_main(capsys, "fit", "--config", str(config), "--data-root", str(data),
                            "--category", CATEGORY, "--output", str(tmp_path / "o"))
    assert code == 2 and one_line(err) == (f"fapm fit: error: {config}: k=8 acts only with image_score reweighted "
                                          "(the max score and the maps read the nearest distance only); drop it "
                                          "or set image_score reweighted")


@pytest.mark.parametrize(("flags", "named"), [
    (["--coreset-ratio", "0.2"], "--coreset-ratio"), (["--adaptive-multiplier", "3"], "--adaptive-multiplier"),
    (["--grid", "1"], "--grid"), (["--sampling", "fixed"], "--sampling"), (["--seed", "1"], "--seed"),
    (["--random-weights"], "--random-weights"), (["--calibration-folds", "3"], "--calibration-folds"),
    (["--k", "3"], "--k=3 acts only with image_score reweighted"),
    (["--image-score", "reweighted", "--k", "1"], "k=1 must be >= 2"),
])
def test_evaluate_model_refuses_fit_time_flags(capsys, tmp_path: Path, data: Path, fitted: Path,
                                               flags: list[str], named: str) -> None:
    code, _, err = run_main(capsys, "evaluate", "--model", str(fitted), "--data-root", str(data),
                            "--category", CATEGORY, *flags, "--output", str(tmp_path / "o"))
    assert code == 2 and named in one_line(err)
    assert not (tmp_path / "o" / "metrics.json").exists()


def test_evaluate_model_refuses_a_config_with_other_fit_settings(capsys, tmp_path: Path, data: Path,
                                                                 fitted: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(TINY_YAML.replace("grid: 2", "grid: 1"))
    code, _, err = run_main(capsys, "evaluate", "--model", str(fitted), "--config", str(config), "--data-root",
                            str(data), "--category", CATEGORY, "--output", str(tmp_path / "o"))
    assert code == 2 and f"{config}: grid=1 is a fit-time setting" in one_line(err)
    config.write_text(TINY_YAML + "image_score: reweighted\nk: 3\n")  # same fit settings: scoring keys act
    metrics = evaluate(capsys, tmp_path / "ok", "--model", str(fitted), "--config", str(config),
                       "--data-root", str(data), "--category", CATEGORY)
    assert metrics["settings"]["config"]["k"] == 3


def test_validation_root_gives_f1_thresholds(capsys, tmp_path: Path, data: Path, tiny_yaml: Path) -> None:
    validation = write_tree(tmp_path / "val", n_train=0, n_good=3, n_bad=3, seed=300)
    metrics = evaluate(capsys, tmp_path / "e", "--config", str(tiny_yaml), "--data-root", str(data),
                       "--category", CATEGORY, "--validation-root", str(validation))
    assert metrics["threshold_method"] == "f1_validation"
    val = metrics["settings"]["calibration"]["summary"]["validation"]
    assert val["n_images"] == 6 and val["n_defective"] == 3 and 0 < val["image_f1"] <= 1
    model = FAPM.load(tmp_path / "e" / MODEL_FILE)
    assert model.calibration.method == "f1_validation" and model.calibration.image_threshold == metrics["threshold"]
