"""The ``fapm`` command on bad input: one line on stderr, exit code 2, no traceback (``--debug``
shows it). A few cases run the real command in a subprocess; the rest call ``cli.main``."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fapm_lib import FAPM, FAPMConfig, PatchCore
from fapm_lib.cli import main as cli
from fapm_lib.detectors.model_file import MODEL_FILE
from fapm_lib.method.backbone import create_feature_extractor
from tests.helpers import build_mvtec_tree, one_line, truncated_copy

CATEGORY = "widget"
#: Tiny settings with the re-weighted score (so that ``k`` acts), as a YAML file for ``--config``.
TINY_REWEIGHTED_YAML = ("resize: 64\ncrop_size: 64\ngrid: 2\nbatch_size: 4\ncoreset_ratio: 0.5\n"
                        "image_score: reweighted\nk: 2\n")
TINY = FAPMConfig(resize=64, crop_size=64, grid=2, batch_size=4, coreset_ratio=0.5, k=2)

pytestmark = pytest.mark.usefixtures("cached_extractors")
@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """MVTec layout: 6 train/good, test good 2 + crack 2 (with masks), 64x64 RGB noise."""
    return build_mvtec_tree(tmp_path_factory.mktemp("cli") / "data", CATEGORY, n_train=6,
                            test_counts={"good": 2, "crack": 2}, size=(64, 64))


@pytest.fixture(scope="module")
def reweighted_yaml(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cfg") / "tiny.yaml"
    path.write_text(TINY_REWEIGHTED_YAML)
    return path


@pytest.fixture(scope="module")
def model_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A fitted FAPM and a fitted PatchCore file (random tiny images, real offline backbone)."""
    folder = tmp_path_factory.mktemp("models")
    images = torch.randn(6, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    extractor = create_feature_extractor(TINY.backbone)
    return {
        "fapm": FAPM(TINY, extractor=extractor).fit(images, progress=False).save(folder / "fapm.safetensors"),
        "patchcore": PatchCore(TINY, extractor=extractor).fit(images, progress=False).save(folder / "pc.safetensors"),
    }


def suggested_grids(message: str) -> list[int]:
    """The grids a grid error suggests: ``... (e.g. 1, 2, 4)`` -> [1, 2, 4]."""
    match = re.search(r"\(e\.g\. ([\d, ]+)\)$", message)
    assert match, message
    return [int(g) for g in match.group(1).split(",")]


def run_main(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    """``cli.main(argv)`` -> (exit code, stdout, stderr)."""
    code = cli.main([*argv, "--no-progress"])
    out, err = capsys.readouterr()
    return code, out, err


def fit_args(root: Path, yaml: Path, output: Path, *extra: str) -> list[str]:
    return ["fit", "--data-root", str(root), "--category", CATEGORY, "--config", str(yaml),
            "--output", str(output), *extra]


def run_cli(*argv: str, cwd: Path) -> subprocess.CompletedProcess:
    """The real command: ``python -m fapm_lib ...``."""
    return subprocess.run([sys.executable, "-m", "fapm_lib", *argv, "--no-progress"], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


# ---- true command-line path (subprocess) ------------------------------------------------------
def test_missing_data_root_subprocess(tmp_path: Path, reweighted_yaml: Path) -> None:
    missing = tmp_path / "no_such_root"
    proc = run_cli(*fit_args(missing, reweighted_yaml, tmp_path / "out"), cwd=tmp_path)
    assert proc.returncode == 2
    assert one_line(proc.stderr) == f"fapm fit: error: {missing}: data root does not exist"
    assert not (tmp_path / "out" / MODEL_FILE).exists()


@pytest.mark.slow
def test_debug_shows_the_traceback_subprocess(tmp_path: Path, reweighted_yaml: Path) -> None:
    missing = tmp_path / "no_such_root"
    proc = run_cli(*fit_args(missing, reweighted_yaml, tmp_path / "out", "--debug"), cwd=tmp_path)
    assert proc.returncode == 1
    assert "Traceback (most recent call last)" in proc.stderr
    assert f"fapm_lib.errors.DataError: {missing}: data root does not exist" in proc.stderr


@pytest.mark.slow
def test_predict_with_tampered_model_subprocess(tmp_path: Path, tiny_root: Path, model_files: dict) -> None:
    tampered = tmp_path / "model.safetensors"
    data = bytearray(model_files["fapm"].read_bytes())
    data[-1] ^= 0xFF  # the last byte always lies in the tensor data region
    tampered.write_bytes(bytes(data))
    image = tiny_root / CATEGORY / "test" / "good" / "000.png"
    proc = run_cli("predict", "--model", str(tampered), str(image), "--output", str(tmp_path / "out"), cwd=tmp_path)
    assert proc.returncode == 2
    assert one_line(proc.stderr) == (f"fapm predict: error: {tampered}: checksum mismatch "
                                     "(the file was modified or damaged)")
    assert not (tmp_path / "out").exists()


def test_command_module_loads_without_torch(tmp_path: Path) -> None:
    """Ctrl-C while torch loads (the first seconds) must give the one-line message and exit 130,
    so ``fapm_lib.cli`` (and the package it lives in) must not import torch at import time."""
    probe = "import sys, fapm_lib.cli; print(sorted({'torch', 'timm'} & set(sys.modules)))"
    proc = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]"


# ---- data ------------------------------------------------------------------------------------
def test_missing_category(capsys, tmp_path: Path, tiny_root: Path, reweighted_yaml: Path) -> None:
    argv = fit_args(tiny_root, reweighted_yaml, tmp_path / "out")
    argv[argv.index(CATEGORY)] = "nope"
    code, _, err = run_main(capsys, *argv)
    assert code == 2
    assert one_line(err) == f"fapm fit: error: {tiny_root}: category 'nope' not found; available: {CATEGORY}"


@pytest.fixture
def corrupt_root(tmp_path: Path, tiny_root: Path) -> tuple[Path, Path]:
    """A copy of the tiny tree whose train/good/003.png holds text; (root, bad file)."""
    root = tmp_path / "data"
    shutil.copytree(tiny_root, root)
    bad = root / CATEGORY / "train" / "good" / "003.png"
    bad.write_text("this is not a PNG\n")
    return root, bad


def test_corrupt_training_image_stops_the_fit(capsys, tmp_path: Path, corrupt_root, reweighted_yaml: Path) -> None:
    root, bad = corrupt_root
    code, _, err = run_main(capsys, *fit_args(root, reweighted_yaml, tmp_path / "out"))
    assert code == 2
    assert one_line(err).startswith(f"fapm fit: error: {bad}: cannot read image")
    assert not (tmp_path / "out" / MODEL_FILE).exists()


def test_skip_bad_fits_on_the_rest_and_lists_the_file(capsys, tmp_path: Path, corrupt_root,
                                                       reweighted_yaml: Path) -> None:
    root, bad = corrupt_root
    code, out, err = run_main(capsys, *fit_args(root, reweighted_yaml, tmp_path / "out", "--skip-bad"))
    assert code == 0
    assert one_line(err).startswith(f"skipped: {bad}: cannot read image")
    assert out.startswith(f"fitted {CATEGORY} on 5 images")
    assert FAPM.load(tmp_path / "out" / MODEL_FILE).fit_stats["n_train"] == 5


def test_missing_prediction_input(capsys, tmp_path: Path, model_files: dict) -> None:
    missing = tmp_path / "nothing.png"
    code, _, err = run_main(capsys, "predict", "--model", str(model_files["fapm"]), str(missing),
                            "--output", str(tmp_path / "out"))
    assert code == 2
    assert one_line(err) == f"fapm predict: error: {missing}: no such file or folder"


# ---- configuration -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("yaml_text", "expected"),
    [
        (TINY_REWEIGHTED_YAML + "gridd: 2\n", "unknown key 'gridd'"),
        (TINY_REWEIGHTED_YAML.replace("grid: 2", "grid: two"), "key 'grid' expects int, got str 'two'"),
        (TINY_REWEIGHTED_YAML.replace("coreset_ratio: 0.5", "coreset_ratio: '0.5'"),
         "key 'coreset_ratio' expects float"),
        (TINY_REWEIGHTED_YAML.replace("k: 2", "k: 2.0"), "key 'k' expects int, got float"),
        (TINY_REWEIGHTED_YAML.replace("grid: 2", "grid: [2]"), "key 'grid' expects int, got list"),
        (TINY_REWEIGHTED_YAML + "category: [a]\n", "key 'category' expects str"),
        ("grid: [2\n", "not valid YAML"),
        ("- grid\n- 2\n", "expected a mapping of keys to values, got list"),
    ],
    ids=["unknown-key", "str-for-int", "str-for-float", "float-for-int", "list", "run-key", "syntax", "not-mapping"],
)
def test_bad_yaml_config(capsys, tmp_path: Path, tiny_root: Path, yaml_text: str, expected: str) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(yaml_text)
    code, _, err = run_main(capsys, *fit_args(tiny_root, config, tmp_path / "out"))
    assert code == 2
    line = one_line(err)
    assert line.startswith(f"fapm fit: error: {config}") and expected in line


def test_missing_yaml_config(capsys, tmp_path: Path, tiny_root: Path) -> None:
    config = tmp_path / "absent.yaml"
    code, _, err = run_main(capsys, *fit_args(tiny_root, config, tmp_path / "out"))
    assert code == 2 and one_line(err) == f"fapm fit: error: {config}: config file not found"


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--coreset-ratio", "0"], "coreset_ratio=0.0 must be in (0, 1]"),
        (["--coreset-ratio", "1.5"], "coreset_ratio=1.5 must be in (0, 1]"),
        (["--k", "0"], "k=0 must be >= 1"),
        (["--grid", "0"], "grid=0 must be >= 1"),
        (["--sampling", "random"], "sampling='random' must be one of adaptive, fixed"),
        (["--batch-size", "0"], "batch_size=0 must be >= 1"),
    ],
)
def test_out_of_range_flag(capsys, tmp_path: Path, tiny_root: Path, reweighted_yaml: Path, flags, expected) -> None:
    code, _, err = run_main(capsys, *fit_args(tiny_root, reweighted_yaml, tmp_path / "out", *flags))
    assert code == 2 and one_line(err) == f"fapm fit: error: options: {expected}"


def test_grid_that_does_not_divide_the_feature_maps(capsys, tmp_path: Path, tiny_root: Path,
                                                     reweighted_yaml: Path) -> None:
    code, _, err = run_main(capsys, *fit_args(tiny_root, reweighted_yaml, tmp_path / "out", "--grid", "5"))
    assert code == 2
    line = one_line(err)
    assert line.startswith("fapm fit: error: grid=5 does not divide the 8x8")
    # the suggestions must divide every layer's map (8x8 and 4x4), not only the first one's
    assert suggested_grids(line) == [1, 2, 4]


def test_default_grid_does_not_divide_a_28x28_map(capsys, tmp_path: Path, tiny_root: Path) -> None:
    """At a 224 input the stride-8 map is 28x28 (stride 16: 14x14): grid 5 is refused at the first batch."""
    config = tmp_path / "c.yaml"
    config.write_text("resize: 224\ncrop_size: 224\ngrid: 5\n")
    code, _, err = run_main(capsys, *fit_args(tiny_root, config, tmp_path / "out"))
    assert code == 2
    line = one_line(err)
    assert "grid=5 does not divide the 28x28" in line and suggested_grids(line) == [1, 2, 7, 14]


def test_k_larger_than_a_bank(capsys, tmp_path: Path, tiny_root: Path, reweighted_yaml: Path) -> None:
    code, _, err = run_main(capsys, *fit_args(tiny_root, reweighted_yaml, tmp_path / "out", "--k", "10000"))
    assert code == 2
    assert one_line(err).startswith("fapm fit: error: k=10000 exceeds the smallest memory bank (12 vectors, layer 1)")
    assert not (tmp_path / "out" / MODEL_FILE).exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda(capsys, tmp_path: Path, tiny_root: Path, reweighted_yaml: Path) -> None:
    code, _, err = run_main(capsys, *fit_args(tiny_root, reweighted_yaml, tmp_path / "out", "--device", "cuda"))
    assert code == 2 and one_line(err) == "fapm fit: error: --device cuda: no CUDA device is available here"


def test_argparse_errors_exit_2_without_traceback(capsys, tmp_path: Path) -> None:
    """Flag syntax errors are argparse's: usage line + one error line naming the flag, exit 2."""
    with pytest.raises(SystemExit) as info:
        cli.main(["fit", "--grid", "two", "--output", str(tmp_path)])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1] == "fapm fit: error: argument --grid: invalid int value: 'two'"


# ---- model files -----------------------------------------------------------------------------
def _flipped(path: Path, out: Path) -> Path:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    out.write_bytes(bytes(data))
    return out


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        ("truncated", "not a readable model file"),
        ("flipped", "checksum mismatch (the file was modified or damaged)"),
        ("patchcore", "holds a patchcore model, not a fapm model"),
        ("text", "not a readable model file"),
        ("missing", "model file not found"),
    ],
)
def test_predict_refuses_bad_model_files(capsys, tmp_path: Path, tiny_root: Path, model_files: dict,
                                         damage: str, expected: str) -> None:
    path = tmp_path / "model.safetensors"
    if damage == "truncated":
        truncated_copy(model_files["fapm"], path)
    elif damage == "flipped":
        _flipped(model_files["fapm"], path)
    elif damage == "patchcore":
        shutil.copy(model_files["patchcore"], path)
    elif damage == "text":
        path.write_text("model: yes\n")
    image = tiny_root / CATEGORY / "test" / "good" / "000.png"
    code, _, err = run_main(capsys, "predict", "--model", str(path), str(image), "--output", str(tmp_path / "out"))
    assert code == 2
    line = one_line(err)
    assert line.startswith(f"fapm predict: error: {path}: ") and expected in line
    assert not (tmp_path / "out").exists()


def test_evaluate_refuses_a_backbone_other_than_the_models(capsys, tmp_path: Path, tiny_root: Path,
                                                            model_files: dict) -> None:
    code, _, err = run_main(capsys, "evaluate", "--model", str(model_files["fapm"]), "--data-root", str(tiny_root),
                            "--category", CATEGORY, "--backbone", "resnet18", "--output", str(tmp_path / "out"))
    assert code == 2
    assert one_line(err) == ("fapm evaluate: error: --backbone resnet18 differs from the model's backbone "
                             "tf_efficientnet_lite0")


def test_valid_predict_writes_scores(capsys, tmp_path: Path, tiny_root: Path, model_files: dict) -> None:
    """Control for the refusals above: the same command with the intact file works."""
    image_dir = tiny_root / CATEGORY / "test"
    code, out, err = run_main(capsys, "predict", "--model", str(model_files["fapm"]), str(image_dir),
                              "--output", str(tmp_path / "out"))
    assert code == 0 and out.startswith("scored 4 images")
    assert all(line.startswith("skipped: ") and line.endswith(": not an image file") for line in err.splitlines())
    assert len(err.splitlines()) == 4  # the junk files of the two test folders, listed
    rows = (tmp_path / "out" / "scores.csv").read_text().splitlines()
    assert len(rows) == 5 and rows[0] == "path,raw_score,score,decision,mask,overlay"


