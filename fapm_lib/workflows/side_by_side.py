"""FAPM vs PatchCore, side by side in one process: accuracy, fit time, per-image time, memory.

Both methods share one frozen backbone instance, the same data, input size and coreset ratio.
Training features are extracted once (timed as shared) and both memories are built from the
cached maps, so ``coreset_seconds`` is each method's own cost. Per-image times are medians of
single-image runs (batch 1) after warm-up, split into backbone, k-NN search and
post-processing, plus the end-to-end ``predict``; the methods alternate within each repeat so
that a noisy (shared) machine slows both alike.
"""
from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..config import FAPMConfig
from ..data.mvtec import MVTecDataset
from ..decisions.metrics import compute_metrics
from ..deploy.runtime_benchmark import measure_runtimes, runtimes_markdown
from ..detectors.base import Detector
from ..detectors.fapm import FAPM
from ..detectors.patchcore import PatchCore
from ..errors import ConfigError
from ..method.backbone import FeatureExtractor, create_feature_extractor
from ..system.allocator import tune_allocator
from ..system.atomic import write_text_atomic
from ..system.provenance import cpu_model
from ..system.timing import STAGES, WARMUP_RUNS, predict_by_stage, timed

METRIC_KEYS = ("image_auroc", "pixel_auroc", "pixel_f1_max")
#: The per-method keys of ``benchmark.json``, in order.
METHOD_KEYS = (*METRIC_KEYS, "coreset_seconds", "fit_seconds", "backbone_ms", "search_ms", "post_ms",
               "total_ms", "memory_mb")
#: ``ratios`` key -> the per-method value it divides (PatchCore / FAPM).
RATIO_KEYS = {"search": "search_ms", "coreset": "coreset_seconds", "total": "total_ms"}
THROUGHPUT_BATCH = 16


def _sig(x: float, digits: int = 6) -> float:
    """Round to ``digits`` significant digits (the values written to the report)."""
    return float(f"{x:.{digits}g}")


def _log(message: str) -> None:
    print(f"benchmark: {message}", file=sys.stderr, flush=True)


def _test_tensors(dataset: MVTecDataset) -> dict[str, Any]:
    """The whole test split in memory: images ``[N, 3, S, S]``, masks ``[N, S, S]``, labels ``[N]``."""
    items = [dataset[i] for i in range(len(dataset))]
    return {"images": torch.stack([it["image"] for it in items]),
            "masks": torch.stack([it["mask"] for it in items]) if dataset.has_masks else None,
            "labels": torch.tensor([it["label"] for it in items])}


@torch.inference_mode()
def _accuracy(model: Detector, maps: list[Tensor], test: dict[str, Any], batch_size: int) -> dict[str, Any]:
    """The four metrics of ``model`` on the test set, from the shared cached test maps."""
    preds = [model.predict_maps([m[i : i + batch_size] for m in maps])
             for i in range(0, len(test["labels"]), batch_size)]
    scores = torch.cat([p.pred_score.cpu() for p in preds])
    amaps = torch.cat([p.anomaly_map.cpu() for p in preds])
    return compute_metrics(scores, test["labels"], amaps, test["masks"])


@torch.inference_mode()
def _single_image_times(models: dict[str, Detector], images: Tensor,
                        repeats: int) -> dict[str, dict[str, dict[str, float]]]:
    """Median ms per image at batch 1 of ``backbone`` (embed), ``search`` (knn), ``post``
    (postprocess) and ``total`` (predict, end to end), each method after warm-up:
    ``{method: {"wall": {part: ms}, "cpu": {part: ms}}}`` (cpu: process CPU time, all threads)."""
    device = next(iter(models.values())).device
    for model in models.values():
        for i in range(WARMUP_RUNS):
            model.predict(images[i % len(images)][None].to(device))
    parts = (*STAGES, "total")
    samples = {n: {clock: {p: [] for p in parts} for clock in ("wall", "cpu")} for n in models}
    names = list(models)
    for rep in range(repeats):
        image = images[rep % len(images)][None].to(device)
        for name in names if rep % 2 == 0 else names[::-1]:
            model = models[name]
            _, stages = predict_by_stage(model.runnable(), image)
            _, *total = timed(device, model.predict, image)
            for part in STAGES:
                samples[name]["wall"][part].append(stages.wall[part])
                samples[name]["cpu"][part].append(stages.cpu[part])
            samples[name]["wall"]["total"].append(total[0])
            samples[name]["cpu"]["total"].append(total[1])
    return {n: {clock: {p: 1000.0 * statistics.median(v) for p, v in by_part.items()}
                for clock, by_part in clocks.items()} for n, clocks in samples.items()}


@torch.inference_mode()
def _throughput(model: Detector, images: Tensor, runs: int) -> float:
    """Images per second, end to end at batch ``THROUGHPUT_BATCH`` (median of ``runs``, after one warm-up)."""
    index = torch.arange(THROUGHPUT_BATCH) % len(images)
    batch = images[index].to(model.device)
    model.predict(batch)
    seconds = statistics.median(timed(model.device, model.predict, batch)[1] for _ in range(runs))
    return THROUGHPUT_BATCH / seconds


def device_name(device: torch.device) -> str:
    """GPU name on cuda; else the CPU model from /proc/cpuinfo (or the platform's processor)."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()


def environment(config: FAPMConfig, device: torch.device) -> dict[str, Any]:
    """Where and with what the numbers were measured."""
    import timm

    return {"device": device_name(device), "device_type": device.type, "cpu_count": os.cpu_count(),
            "malloc_tuned": tune_allocator(),
            "torch_threads": torch.get_num_threads(), "torch_version": torch.__version__,
            "timm_version": timm.__version__, "python_version": platform.python_version(),
            "backbone": config.backbone, "random_weights": not config.pretrained,
            "input_size": config.input_size, "coreset_ratio": config.coreset_ratio, "grid": config.grid,
            "k": config.k, "batch_size_timing": 1, "batch_size_throughput": THROUGHPUT_BATCH}


def _fit_all(models: dict[str, Detector], train: MVTecDataset, progress: bool) -> dict[str, tuple[float, float]]:
    """Extract the training features once, fit every model from them. Returns (wall, CPU)
    seconds of ``"features"`` and of each model's coreset (``fit_maps``)."""
    first = next(iter(models.values()))
    _log(f"features of {len(train)} training images (shared)")
    maps, *seconds = timed(first.device, first.extract, train, progress)
    out = {"features": tuple(seconds)}
    for name, model in models.items():
        _log(f"coreset {name}")
        out[name] = tuple(timed(model.device, model.fit_maps, maps, progress)[1:])
    return out


#: The methods of a benchmark, by their key in ``benchmark.json``.
METHODS: dict[str, type[Detector]] = {"fapm": FAPM, "patchcore": PatchCore}


def benchmark_category(config: FAPMConfig, data_root: str | Path, category: str, output: str | Path | None = None,
                       device: str = "cpu", repeats: int = 20, progress: bool = True, skip_bad: bool = False,
                       runtimes: list[str] | None = None, methods: Sequence[str] = tuple(METHODS),
                       extractor: FeatureExtractor | None = None) -> dict[str, Any]:
    """Fit and evaluate FAPM and PatchCore side by side; return (and, with ``output``, write
    ``benchmark.json`` and ``benchmark.md``) the report dict. ``runtimes`` (e.g. ``["torch",
    "onnxruntime"]``): also time the fitted FAPM in those runtimes (``report["runtimes"]``,
    :mod:`fapm_lib.deploy.runtime_benchmark`). ``methods``: a subset of :data:`METHODS` (the
    ratios need both); ``extractor``: a backbone instance to share with other runs (it must be
    ``config``'s)."""
    if repeats < 1:
        raise ConfigError(f"--repeats {repeats}: must be >= 1")
    if not methods or any(m not in METHODS for m in methods):
        raise ConfigError(f"methods {list(methods)}: choose from {', '.join(METHODS)}")
    if runtimes and "fapm" not in methods:
        raise ConfigError("--runtimes: times the fitted FAPM, which this run does not fit")
    dev = torch.device(device)
    if runtimes and dev.type != "cpu":
        raise ConfigError("--runtimes: the exported runtimes run on the CPU; use --device cpu")
    torch.manual_seed(config.seed)
    if extractor is None:
        _log(f"backbone {config.backbone} ({'random weights' if not config.pretrained else 'pretrained'}) on {device}")
        extractor = create_feature_extractor(config.backbone, config.pretrained, dev)
    models: dict[str, Detector] = {name: METHODS[name](config, dev, extractor) for name in methods}
    first = next(iter(models.values()))
    transform = first.transform
    train, test_set = (MVTecDataset(data_root, category, split, transform, skip_bad=skip_bad)
                       for split in ("train", "test"))
    for _, why in train.skipped + test_set.skipped:
        _log(f"skipped: {why}")

    fit = _fit_all(models, train, progress)
    feature_seconds, coreset = fit["features"][0], {name: fit[name][0] for name in models}

    _log(f"accuracy on {len(test_set)} test images")
    test = _test_tensors(test_set)
    test_maps, test_feature_seconds, _ = timed(dev, first.extract, test["images"], False)
    metrics = {name: _accuracy(model, test_maps, test, config.batch_size) for name, model in models.items()}
    del test_maps

    _log(f"timing: {repeats} single-image runs per method, then batch {THROUGHPUT_BATCH}")
    times = _single_image_times(models, test["images"], repeats)
    throughput = {name: _throughput(model, test["images"], max(2, repeats // 5)) for name, model in models.items()}

    if runtimes:
        runtime_report = measure_runtimes(models["fapm"], test_set, train, runtimes, repeats, THROUGHPUT_BATCH, _log)

    report = _assemble(models, metrics, {n: t["wall"] for n, t in times.items()}, coreset, feature_seconds)
    if runtimes:
        report["runtimes"] = runtime_report
    report["details"] = {
        "feature_seconds": _sig(feature_seconds), "test_feature_seconds": _sig(test_feature_seconds),
        "n_train": len(train), "n_test": len(test_set), "category": category, "repeats": repeats,
        "coreset_seconds_definition": ("wall time of fit_maps on the cached training maps "
                                       "(everything after the shared features)"),
        **{f"{n}_{k}": v for n in models for k, v in _method_details(models[n], metrics[n], throughput[n]).items()},
        **{f"{n}_cpu_ms": {p: _sig(v) for p, v in times[n]["cpu"].items()} for n in models},
        "cpu_seconds": {key: _sig(fit[key][1]) for key in fit},
        "peak_rss_mb": _sig(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0),
    }
    report["environment"] = environment(config, dev)
    if output is not None:
        write_report(report, Path(output))
    return report


def _method_details(model: Detector, metrics: dict[str, Any], throughput: float) -> dict[str, Any]:
    size = model.memory_size()
    return {"pixel_aupro": metrics.get("pixel_aupro"), "memory_vectors": int(size["vectors"]),
            "throughput_images_per_s": _sig(throughput)}


def _assemble(models: dict[str, Detector], metrics: dict[str, dict], times: dict[str, dict],
              coreset: dict[str, float], feature_seconds: float) -> dict[str, Any]:
    """The required part of ``benchmark.json``: per-method values and (with both methods) the
    PatchCore/FAPM ratios."""
    report: dict[str, Any] = {}
    for name, model in models.items():
        t = times[name]
        report[name] = {
            **{k: metrics[name].get(k) for k in METRIC_KEYS},
            "coreset_seconds": _sig(coreset[name]),
            "fit_seconds": _sig(feature_seconds + coreset[name]),
            "backbone_ms": _sig(t["backbone"]), "search_ms": _sig(t["search"]), "post_ms": _sig(t["post"]),
            "total_ms": _sig(t["total"]), "memory_mb": _sig(model.memory_size()["megabytes"]),
        }
    if len(models) == len(METHODS):
        report["ratios"] = {key: _sig(report["patchcore"][field] / report["fapm"][field])
                            for key, field in RATIO_KEYS.items()}
    return report


@dataclass(frozen=True)
class Row:
    """One row of a speed table: ``value(report, method)`` (a number, a pair of numbers shown as
    ``a / b``, or None), its format, the format of the PatchCore / FAPM ratio (None: no ratio)
    and whether it is an accuracy figure (meaningless with random weights)."""

    label: str
    value: Callable[[dict[str, Any], str], Any]
    fmt: str = ".2f"
    ratio: str | None = None
    accuracy: bool = False


def _method_value(key: str, scale: float = 1.0) -> Callable[[dict[str, Any], str], Any]:
    return lambda report, m: None if report[m].get(key) is None else scale * report[m][key]


def _detail(key: str) -> Callable[[dict[str, Any], str], Any]:
    return lambda report, m: report["details"].get(f"{m}_{key}")


def _cpu_ms(part: str) -> Callable[[dict[str, Any], str], Any]:
    return lambda report, m: report["details"][f"{m}_cpu_ms"][part]


def _auroc_pair(report: dict[str, Any], m: str) -> tuple[float, float] | None:
    values = (report[m]["image_auroc"], report[m]["pixel_auroc"])
    return None if None in values else (100 * values[0], 100 * values[1])


def _aupro(report: dict[str, Any], m: str) -> float | None:
    value = report["details"].get(f"{m}_pixel_aupro")
    return None if value is None else 100 * value


_FEATURES = Row("fit: feature extraction (shared), s", lambda r, m: r["details"]["feature_seconds"])
_CORESET = Row("fit: coreset, s", _method_value("coreset_seconds"), ratio=".1f")
#: Every row of ``benchmark.md``.
DETAIL_ROWS: tuple[Row, ...] = (
    Row("image AUROC, %", _method_value("image_auroc", 100), ".1f", accuracy=True),
    Row("pixel AUROC, %", _method_value("pixel_auroc", 100), ".1f", accuracy=True),
    Row("pixel F1-max, %", _method_value("pixel_f1_max", 100), ".1f", accuracy=True),
    Row("pixel AUPRO, %", _aupro, ".1f", accuracy=True),
    _FEATURES, _CORESET,
    Row("fit: coreset, CPU s", lambda r, m: r["details"]["cpu_seconds"][m], ratio=".2f"),
    Row("fit: total, s", _method_value("fit_seconds")),
    Row("backbone, ms", _method_value("backbone_ms")),
    Row("search (k-NN), ms", _method_value("search_ms"), ".3f", ratio=".1f"),
    Row("post-processing, ms", _method_value("post_ms"), ".3f"),
    Row("end to end, ms", _method_value("total_ms"), ratio=".2f"),
    Row("end to end / backbone", lambda r, m: r[m]["total_ms"] / r[m]["backbone_ms"], ".3f"),
    *(Row(f"CPU time: {part}, ms", _cpu_ms(part), ".3f", ratio=".2f")
      for part in ("backbone", "search", "post", "total")),
    Row(f"throughput at batch {THROUGHPUT_BATCH}, images/s", _detail("throughput_images_per_s"), ".1f"),
    Row("memory bank, MB", _method_value("memory_mb")),
    Row("memory bank, vectors", _detail("memory_vectors"), "d"),
)
#: The rows of the front page's speed table.
SUMMARY_ROWS: tuple[Row, ...] = (
    Row("image / pixel AUROC, %", _auroc_pair, ".1f", accuracy=True),
    _FEATURES, _CORESET,
    Row("backbone (+ 3x3 pooling), ms", _method_value("backbone_ms"), ".1f"),
    Row("search (k-NN), ms", _method_value("search_ms"), ".2f", ratio=".1f"),
    Row("end to end, ms", _method_value("total_ms"), ".1f", ratio=".1f"),
    Row(f"throughput at batch {THROUGHPUT_BATCH}, images/s", _detail("throughput_images_per_s"), ".1f"),
    Row("memory bank, MB", _method_value("memory_mb")),
)
METHOD_LABELS = {"fapm": "FAPM", "patchcore": "PatchCore"}


def _number(value: Any, fmt: str) -> str:
    if value is None:
        return ""
    return " / ".join(f"{v:{fmt}}" for v in value) if isinstance(value, tuple) else f"{value:{fmt}}"


def _row_cells(row: Row, report: dict[str, Any] | None, methods: list[str]) -> list[str]:
    """One report's cells of ``row``: a value per method, then the ratio (with both methods).
    No report: empty cells (not measured). Random weights: accuracy cells say "timing only"."""
    if report is None:
        return [""] * (len(methods) + (len(methods) == len(METHODS)))
    if row.accuracy and report["environment"]["random_weights"]:
        values, cells = {}, ["timing only"] * len(methods)
    else:
        values = {m: row.value(report, m) for m in methods}
        cells = [_number(values[m], row.fmt) for m in methods]
    if len(methods) == len(METHODS):
        fapm, patchcore = values.get("fapm"), values.get("patchcore")
        usable = row.ratio and isinstance(fapm, (int, float)) and isinstance(patchcore, (int, float)) and fapm > 0
        cells.append(f"{patchcore / fapm:{row.ratio}}x" if usable else "")
    return cells


def speed_table(columns: Sequence[tuple[str, dict[str, Any] | None]], rows: Sequence[Row] = DETAIL_ROWS,
                corner: str = "") -> list[str]:
    """A markdown table of benchmark reports side by side: per ``(label, report)`` one column per
    method (``"FAPM, <label>"``) and, with both methods, their ratio; a None report (not
    measured) gives empty cells."""
    groups = [(label, report, [m for m in METHODS if report is None or m in report]) for label, report in columns]
    header = [corner]
    for label, _, methods in groups:
        header += [f"{METHOD_LABELS[m]}{', ' + label if label else ''}" for m in methods]
        header += ["PatchCore / FAPM"] if len(methods) == len(METHODS) else []
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row.label] + [c for _, report, methods in groups for c in _row_cells(row, report, methods)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def benchmark_markdown(report: dict[str, Any]) -> str:
    """``benchmark.md``: accuracy, fit and per-image times, memory, the environment."""
    env, det = report["environment"], report["details"]
    weights = "random weights: timing only" if env["random_weights"] else "ImageNet weights"
    lines = [
        f"# FAPM vs PatchCore: {det['category']}, {env['backbone']} ({weights})", "",
        (f"Device: {env['device']} ({env['device_type']}, {env['torch_threads']} torch threads), "
         f"torch {env['torch_version']}, timm {env['timm_version']}; input {env['input_size']}x{env['input_size']}, "
         f"coreset ratio {env['coreset_ratio']}, grid {env['grid']}x{env['grid']}, k {env['k']}; "
         f"{det['n_train']} training and {det['n_test']} test images."), "",
        (f"Per image: medians of {det['repeats']} single-image runs (batch 1) after warm-up; "
         f"throughput: end to end at batch {env['batch_size_throughput']}."), "",
        *speed_table([("", report)]),
        "", (f"Peak resident memory of the run: {det['peak_rss_mb']:.0f} MB. "
             f"Coreset time: {det['coreset_seconds_definition']}. Times in ms are wall-clock medians; the CPU-time "
             "rows (process CPU time, all threads) vary less when other programs share the machine."), "",
    ]
    if "runtimes" in report:
        lines += runtimes_markdown(report["runtimes"])
    return "\n".join(lines)


def write_report(report: dict[str, Any], output: Path) -> tuple[Path, Path]:
    """Write ``benchmark.json`` and ``benchmark.md`` into ``output`` (atomically)."""
    json_path = write_text_atomic(output / "benchmark.json", json.dumps(report, indent=2))
    md_path = write_text_atomic(output / "benchmark.md", benchmark_markdown(report))
    return json_path, md_path
