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
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..config import FAPMConfig
from ..data.mvtec import MVTecDataset
from ..decisions.metrics import compute_metrics
from ..deploy.runtime_benchmark import measure_runtimes, parse_runtimes, runtimes_markdown
from ..detectors.base import Detector
from ..detectors.fapm import FAPM
from ..detectors.patchcore import PatchCore
from ..errors import ConfigError
from ..method.backbone import create_feature_extractor
from ..report.tables import percent
from ..system.allocator import tune_allocator
from ..system.atomic import write_text_atomic
from ..system.timing import STAGES, WARMUP_RUNS, predict_by_stage, timed
from .options import build_config, check_device

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
    preds = [model.predict_maps([m[i : i + batch_size] for m in maps]) for i in range(0, len(test["labels"]), batch_size)]
    scores = torch.cat([p.pred_score.cpu() for p in preds])
    amaps = torch.cat([p.anomaly_map.cpu() for p in preds])
    return compute_metrics(scores, test["labels"], amaps, test["masks"])


@torch.inference_mode()
def _single_image_times(models: dict[str, Detector], images: Tensor, repeats: int) -> dict[str, dict[str, dict[str, float]]]:
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
    return {n: {clock: {p: 1000.0 * statistics.median(v) for p, v in by_part.items()} for clock, by_part in clocks.items()}
            for n, clocks in samples.items()}


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
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


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


def benchmark_category(config: FAPMConfig, data_root: str | Path, category: str, output: str | Path | None = None,
                  device: str = "cpu", repeats: int = 20, progress: bool = True, skip_bad: bool = False,
                  runtimes: list[str] | None = None) -> dict[str, Any]:
    """Fit and evaluate FAPM and PatchCore side by side; return (and, with ``output``, write
    ``benchmark.json`` and ``benchmark.md``) the report dict. ``runtimes`` (e.g. ``["torch",
    "onnxruntime"]``): also time the fitted FAPM in those runtimes (``report["runtimes"]``,
    :mod:`fapm_lib.runtime_benchmark`)."""
    if repeats < 1:
        raise ConfigError(f"--repeats {repeats}: must be >= 1")
    dev = torch.device(device)
    if runtimes and dev.type != "cpu":
        raise ConfigError("--runtimes: the exported runtimes run on the CPU; use --device cpu")
    torch.manual_seed(config.seed)
    _log(f"backbone {config.backbone} ({'random weights' if not config.pretrained else 'pretrained'}) on {device}")
    extractor = create_feature_extractor(config.backbone, config.pretrained, dev)
    models: dict[str, Detector] = {"fapm": FAPM(config, dev, extractor), "patchcore": PatchCore(config, dev, extractor)}
    transform = models["fapm"].transform
    train, test_set = (MVTecDataset(data_root, category, split, transform, skip_bad=skip_bad) for split in ("train", "test"))
    for _, why in train.skipped + test_set.skipped:
        _log(f"skipped: {why}")

    fit = _fit_all(models, train, progress)
    feature_seconds, coreset = fit["features"][0], {name: fit[name][0] for name in models}

    _log(f"accuracy on {len(test_set)} test images")
    test = _test_tensors(test_set)
    test_maps, test_feature_seconds, _ = timed(dev, models["fapm"].extract, test["images"], False)
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
        "coreset_seconds_definition": "wall time of fit_maps on the cached training maps (everything after the shared features)",
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
    """The required part of ``benchmark.json``: per-method values and PatchCore/FAPM ratios."""
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
    report["ratios"] = {key: _sig(report["patchcore"][field] / report["fapm"][field]) for key, field in RATIO_KEYS.items()}
    return report


def _times(numerator: float, denominator: float) -> str:
    return f"{numerator / denominator:.2f}x" if denominator > 0 else "n/a"


def _pct(value: float | None) -> str:
    return percent(value, missing="n/a")


def benchmark_markdown(report: dict[str, Any]) -> str:
    """``benchmark.md``: accuracy, fit and per-image times, memory, the environment."""
    env, det = report["environment"], report["details"]
    f, p, r = report["fapm"], report["patchcore"], report["ratios"]
    weights = "random weights: timing only" if env["random_weights"] else "ImageNet weights"
    lines = [
        f"# FAPM vs PatchCore: {det['category']}, {env['backbone']} ({weights})", "",
        (f"Device: {env['device']} ({env['device_type']}, {env['torch_threads']} torch threads), "
         f"torch {env['torch_version']}, timm {env['timm_version']}; input {env['input_size']}x{env['input_size']}, "
         f"coreset ratio {env['coreset_ratio']}, grid {env['grid']}x{env['grid']}, k {env['k']}; "
         f"{det['n_train']} training and {det['n_test']} test images."), "",
        "## Accuracy (%)" + (" - random weights: timing only, these numbers are meaningless" if env["random_weights"] else ""), "",
        "| method | image AUROC | pixel AUROC | pixel F1-max | pixel AUPRO |", "|---|---|---|---|---|",
        *(f"| {label} | {_pct(m['image_auroc'])} | {_pct(m['pixel_auroc'])} | {_pct(m['pixel_f1_max'])} | "
          f"{_pct(det[f'{key}_pixel_aupro'])} |" for key, label, m in (("fapm", "FAPM", f), ("patchcore", "PatchCore", p))),
        "", "## Speed", "",
        (f"Per image: medians of {det['repeats']} single-image runs (batch 1) after warm-up; "
         f"throughput: end to end at batch {env['batch_size_throughput']}."), "",
        "| | FAPM | PatchCore | PatchCore / FAPM |", "|---|---|---|---|",
        f"| fit: feature extraction (shared), s | {det['feature_seconds']:.2f} | {det['feature_seconds']:.2f} | |",
        f"| fit: coreset, s | {f['coreset_seconds']:.2f} | {p['coreset_seconds']:.2f} | {r['coreset']:.1f}x |",
        (f"| fit: coreset, CPU s | {det['cpu_seconds']['fapm']:.2f} | {det['cpu_seconds']['patchcore']:.2f} | "
         f"{_times(det['cpu_seconds']['patchcore'], det['cpu_seconds']['fapm'])} |"),
        f"| fit: total, s | {f['fit_seconds']:.2f} | {p['fit_seconds']:.2f} | |",
        f"| backbone, ms | {f['backbone_ms']:.2f} | {p['backbone_ms']:.2f} | |",
        f"| search (k-NN), ms | {f['search_ms']:.3f} | {p['search_ms']:.3f} | {r['search']:.1f}x |",
        f"| post-processing, ms | {f['post_ms']:.3f} | {p['post_ms']:.3f} | |",
        f"| end to end, ms | {f['total_ms']:.2f} | {p['total_ms']:.2f} | {r['total']:.2f}x |",
        f"| end to end / backbone | {f['total_ms'] / f['backbone_ms']:.3f} | {p['total_ms'] / p['backbone_ms']:.3f} | |",
        *(f"| CPU time: {part}, ms | {det['fapm_cpu_ms'][part]:.3f} | {det['patchcore_cpu_ms'][part]:.3f} | "
          f"{_times(det['patchcore_cpu_ms'][part], det['fapm_cpu_ms'][part])} |" for part in ("backbone", "search", "post", "total")),
        f"| throughput, images/s | {det['fapm_throughput_images_per_s']:.1f} | {det['patchcore_throughput_images_per_s']:.1f} | |",
        f"| memory bank, MB | {f['memory_mb']:.2f} | {p['memory_mb']:.2f} | |",
        f"| memory bank, vectors | {det['fapm_memory_vectors']} | {det['patchcore_memory_vectors']} | |",
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


def run_benchmark(args) -> int:
    """``fapm benchmark``: run, write ``O/benchmark.json`` and ``O/benchmark.md``, print the summary."""
    config = build_config(args)
    if not args.data_root or not args.category:
        raise ConfigError("--data-root and --category are required (or set them in --config)")
    runtimes = parse_runtimes(args.runtimes)
    report = benchmark_category(config, args.data_root, args.category, args.output, check_device(args.device), args.repeats,
                           progress=not args.no_progress, skip_bad=args.skip_bad, runtimes=runtimes)
    print(benchmark_markdown(report))
    return 0
