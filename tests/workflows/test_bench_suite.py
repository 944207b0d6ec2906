"""``fapm benchmark --suite`` (``make bench``) in a tiny quick mode on tiny generated data: every table
written with the machine, the commit and the date; missing data and runtimes leave cells empty with a
note (never invented); a failing part keeps its previous tables; the pages' ``bench:`` blocks are
filled exactly and idempotently, the text outside them untouched."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from fapm_lib.cli.main import main
from fapm_lib.errors import ConfigError
from fapm_lib.report.bench_pages import blocks, fill, rewrite_pages
from fapm_lib.system.provenance import cpu_model
from fapm_lib.workflows import bench_suite
from fapm_lib.workflows.bench_suite import TABLES, SuiteSettings, run_suite
from tests.helpers import build_mvtec_tree

#: Small images and a 2x2 grid: seconds, not minutes (the real suite keeps resize 256 / crop 224).
TINY = {"resize": 64, "crop_size": 64, "grid": 2, "coreset_ratio": 0.5, "batch_size": 4}
DATE = re.compile(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2} UTC")


def _settings(base: Path, mvtec: Path | None, **changes) -> SuiteSettings:
    builtin = base / "builtin"
    if not builtin.exists():
        for name in ("alpha", "beta"):
            build_mvtec_tree(builtin, name, n_train=3, test_counts={"good": 2, "crack": 2})
    values = dict(output=base / "out", mvtec_root=mvtec, builtin_root=builtin, repeats=2,
                  timing_backbone="resnet18", backbones=("tf_efficientnet_lite0", "tf_efficientnet_lite1"),
                  pretrained=False, runtimes=("torch", "onnxruntime"), overrides=TINY)
    return SuiteSettings(**{**values, **changes})


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """The whole suite on tiny bottle / screw / two built-in categories; onnxruntime made "missing"."""
    base = tmp_path_factory.mktemp("suite")
    mvtec = base / "mvtec"
    for name in ("bottle", "screw"):
        build_mvtec_tree(mvtec, name, n_train=3, test_counts={"good": 2, "crack": 2})
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(bench_suite.RUNTIME_PACKAGES, "onnxruntime", ("onnx", "fapm_no_such_runtime"))
        summary = run_suite(_settings(base, mvtec))
    return base / "out", summary


def _table(output: Path, name: str) -> str:
    return (output / f"{name}.md").read_text(encoding="utf-8")


def _rows(text: str) -> dict[str, list[str]]:
    """First cell -> the other cells of every table row (header and rule rows included)."""
    rows = [[c.strip() for c in line.strip().strip("|").split("|")]
            for line in text.splitlines() if line.startswith("|")]
    return {r[0]: r[1:] for r in rows}


def test_every_table_is_written_with_machine_commit_and_date(suite: tuple[Path, dict]) -> None:
    output, summary = suite
    assert {p: info["status"] for p, info in summary["parts"].items()} == dict.fromkeys(bench_suite.PARTS, "measured")
    for name in TABLES:
        text = _table(output, name)
        stamp_line = next(line for line in text.splitlines() if "Measured by `fapm benchmark --suite`" in line)
        assert DATE.search(stamp_line) and "commit " in stamp_line and cpu_model() in stamp_line, stamp_line
        assert re.search(r"\d+ cores, [\d.]+ GB RAM", stamp_line) and "torch " in stamp_line, stamp_line
        assert re.search(r"this part took [\d.]+ min", stamp_line), stamp_line
        assert "input 64 (resize 64, centre crop 64)" in text, name  # the geometry actually used
        data = json.loads((output / f"{name}.json").read_text())
        assert data["table"] == name and data["stamp"]["machine"]["cpu"] == cpu_model()
    assert json.loads((output / "suite.json").read_text())["parts"]["speed"]["seconds"] > 0


def test_speed_table_holds_both_runs_and_says_timing_only(suite: tuple[Path, dict]) -> None:
    output, _ = suite
    rows = _rows(_table(output, "speed"))
    assert rows["per image, ms (fit: s)"] == ["FAPM, lite0 (random weights)", "PatchCore, lite0 (random weights)",
                                              "PatchCore / FAPM", "FAPM, resnet18 (random weights)",
                                              "PatchCore, resnet18 (random weights)", "PatchCore / FAPM"]
    assert rows["image / pixel AUROC, %"][:2] == ["timing only", "timing only"]
    end_to_end = rows["end to end, ms"]
    assert all(float(end_to_end[i]) > 0 for i in (0, 1, 3, 4)) and end_to_end[2].endswith("x")
    report = json.loads((output / "speed.json").read_text())["reports"]["main"]
    assert float(end_to_end[0]) == pytest.approx(report["fapm"]["total_ms"], abs=0.051)
    assert "pixel AUPRO, %" in _rows(_table(output, "speed-details"))


def test_a_missing_runtime_is_an_empty_row_with_a_note(suite: tuple[Path, dict]) -> None:
    output, _ = suite
    text = _table(output, "exports")
    rows = {k.split(" ")[0]: v for k, v in _rows(text).items()}
    assert float(rows["torch"][0]) > 0 and rows["torch"][1] == "1.00x"
    assert rows["onnxruntime"] == ["", "", "", ""]
    assert "Not measured: onnxruntime: fapm_no_such_runtime not installed" in text
    assert "onnxruntime" not in json.loads((output / "exports.json").read_text())["runtimes"]


def test_backbone_and_accuracy_tables(suite: tuple[Path, dict]) -> None:
    output, _ = suite
    rows = _rows(_table(output, "backbones"))
    assert "built-in, mean of 2: image / pixel AUROC" in rows["backbone"]
    for backbone in ("`tf_efficientnet_lite0`", "`tf_efficientnet_lite1`"):
        assert rows[backbone][:3] == ["timing only"] * 3 and float(rows[backbone][4]) > 0
    accuracy = _rows(_table(output, "accuracy"))
    assert "FAPM, paper (WRN-50-2)" in accuracy and "PatchCore-50%, this repo (lite0, CPU)" in accuracy
    data = json.loads((output / "backbones.json").read_text())
    assert set(data["reports"]["tf_efficientnet_lite0"]) == {"mvtec/bottle", "mvtec/screw", "builtin/alpha",
                                                             "builtin/beta"}
    assert "patchcore" in data["reports"]["tf_efficientnet_lite0"]["mvtec/bottle"]
    assert "patchcore" not in data["reports"]["tf_efficientnet_lite1"]["mvtec/bottle"]


def test_missing_dataset_leaves_cells_empty_with_a_note(tmp_path: Path) -> None:
    settings = _settings(tmp_path, tmp_path / "no_mvtec_here", backbones=("tf_efficientnet_lite0",),
                         pretrained=True, runtimes=("torch",))
    summary = run_suite(settings)
    assert all(info["status"] == "measured" for info in summary["parts"].values())
    output = settings.output
    speed = _table(output, "speed")
    assert "Not measured: MVTec AD bottle not found in" in speed
    assert all(cells[0] == "" and cells[1] == "" for label, cells in _rows(speed).items()
               if label not in ("per image, ms (fit: s)", "---"))
    assert "Not measured: MVTec AD bottle not found" in _table(output, "exports")
    exports = {k.split(" ")[0]: v for k, v in _rows(_table(output, "exports")).items()}
    assert exports["torch"] == ["", "", "", ""]
    backbone = _rows(_table(output, "backbones"))["`tf_efficientnet_lite0`"]
    assert backbone[:2] == ["", ""] and re.fullmatch(r"\d+\.\d / \d+\.\d", backbone[2])  # built-in measured
    assert "Not measured: MVTec AD screw not found" in _table(output, "backbones")
    builtin = _rows(_table(output, "builtin"))
    assert all(re.fullmatch(r"\d+\.\d", c) for c in builtin["FAPM, this repo"])
    assert _rows(_table(output, "accuracy"))["FAPM, this repo (lite0, CPU)"][:4] == ["", "", "", ""]


def test_a_failing_part_keeps_its_previous_tables(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = _settings(tmp_path, None, parts=("speed",))
    (settings.output).mkdir(parents=True)
    (settings.output / "speed.md").write_text("old table\n")

    def broken(*_):
        raise RuntimeError("out of memory")

    monkeypatch.setitem(bench_suite.PART_FUNCTIONS, "speed", broken)
    summary = run_suite(settings)
    assert summary["parts"]["speed"]["status"] == "failed: RuntimeError: out of memory"
    assert (settings.output / "speed.md").read_text() == "old table\n"


def test_resume_reuses_the_single_runs_and_says_so(suite: tuple[Path, dict], tmp_path: Path) -> None:
    output, _ = suite
    shutil.copytree(output, tmp_path / "out")
    alpha = tmp_path / "out" / "runs" / "backbones" / "lite0" / "builtin" / "alpha" / "benchmark.json"
    run = json.loads(alpha.read_text())
    alpha.write_text(json.dumps({k: v for k, v in run.items() if k not in ("patchcore", "ratios")}))
    summary = run_suite(_settings(tmp_path, output.parent / "mvtec", parts=("speed", "backbones"), resume=True,
                                  builtin_root=output.parent / "builtin"))
    assert all(info["status"] == "measured" for info in summary["parts"].values())
    speed = _table(tmp_path / "out", "speed")
    assert "2 of its 2 single runs were reused (`--resume`) from an earlier invocation, written " in speed
    assert _rows(speed)["end to end, ms"] == _rows(_table(output, "speed"))["end to end, ms"]
    assert "8 of its 8 single runs were reused" in _table(tmp_path / "out", "backbones")
    builtin = _table(tmp_path / "out", "builtin")  # a reused run without PatchCore: its cells empty, said so
    assert "Not measured: PatchCore on builtin/alpha: the reused runs hold FAPM only." in builtin
    assert _rows(builtin)["PatchCore-50%, this repo"] == ["", "", ""]
    reused = json.loads((tmp_path / "out" / "speed.json").read_text())["reports"]["main"]["provenance"]
    first = json.loads((output / "speed.json").read_text())["reports"]["main"]["provenance"]
    assert reused["reused"] is True and (reused["date"], reused["commit"]) == (first["date"], first["commit"])


PAGE = """# A page

Hand-written text before.

<!-- bench:speed -->
| old | table |
<!-- /bench:speed -->

Between the blocks.

<!-- bench:exports -->
<!-- /bench:exports -->

<!-- bench:unknown -->
kept as it is
<!-- /bench:unknown -->
After."""


def test_fill_is_exact_and_idempotent(suite: tuple[Path, dict], tmp_path: Path) -> None:
    output, _ = suite
    page = tmp_path / "page.md"
    page.write_text(PAGE)
    fragments = {name: _table(output, name) for name in ("speed", "exports")}
    assert rewrite_pages([page], fragments) == {str(page): ["speed", "exports"]}
    once = page.read_text()
    found = blocks(once)
    for name, fragment in fragments.items():
        assert found[name] == "\n" + fragment.rstrip("\n") + "\n", name  # one blank line each side
    assert found["unknown"] == "kept as it is"
    outside = re.sub(r"<!-- bench:(\w+) -->.*?<!-- /bench:\1 -->", "", once, flags=re.S)
    assert outside == re.sub(r"<!-- bench:(\w+) -->.*?<!-- /bench:\1 -->", "", PAGE, flags=re.S)
    assert fill(once, fragments)[0] == once
    rewrite_pages([page], fragments)
    assert page.read_text() == once


@pytest.mark.parametrize("text, message", [
    ("<!-- bench:a -->\nx\n", "never closed"),
    ("x\n<!-- /bench:a -->\n", "not open"),
    ("<!-- bench:a -->\n<!-- bench:b -->\n<!-- /bench:b -->\n<!-- /bench:a -->\n", "opens inside"),
    ("<!-- bench:a -->\n<!-- /bench:a -->\n<!-- bench:a -->\n<!-- /bench:a -->\n", "twice"),
    ("<!-- bench:a --> text\n<!-- /bench:a -->\n", "alone on its line"),
])
def test_malformed_markers_are_refused_with_the_line(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        fill(text, {"a": "new"}, "page.md")


def test_cli_fills_pages_from_the_output_without_measuring(suite: tuple[Path, dict], tmp_path: Path) -> None:
    output, _ = suite
    page = tmp_path / "page.md"
    page.write_text(PAGE)
    assert main(["benchmark", "--suite", "--parts", "none", "--output", str(output), "--pages", str(page)]) == 0
    assert blocks(page.read_text())["speed"].strip("\n") == _table(output, "speed").rstrip("\n")


@pytest.mark.parametrize("argv, message", [
    (["--suite", "--category", "bottle"], "--category: not with --suite"),
    (["--suite", "--parts", "speed,gpu"], "unknown part 'gpu'"),
    (["--pages", "README.md", "--data-root", "x", "--category", "y"], "--pages: only with --suite"),
    (["--suite", "--parts", "none", "--pages", "no_such_page.md"], "no such file"),
])
def test_cli_refuses_bad_suite_flags(argv: list[str], message: str, tmp_path: Path, capsys) -> None:
    assert main(["benchmark", "--output", str(tmp_path / "o"), *argv]) == 2
    assert message in capsys.readouterr().err
