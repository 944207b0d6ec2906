"""The same fitted FAPM in several runtimes, side by side: torch, onnxruntime, OpenVINO (fp32,
and INT8 with an NNCF-quantized backbone).

One process, the same test images, the same thread count for every runtime (torch's, also
given to onnxruntime's ``intra_op_num_threads`` and OpenVINO's ``INFERENCE_NUM_THREADS``).
``total_ms``: batch 1, median after warm-up, the runtimes alternating within each repeat; the
exported graphs take the uint8 crop (normalisation in the graph), torch the normalised tensor
(``FAPM.predict``), so decoding and resizing are outside every timing. ``throughput_ips``:
batch :data:`~fapm_lib.workflows.side_by_side.THROUGHPUT_BATCH`. Accuracy: each runtime's own maps and scores.
"""
from __future__ import annotations

import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.mvtec import MVTecDataset
from ..decisions.metrics import compute_metrics
from ..detectors.fapm import FAPM
from ..errors import ConfigError
from ..system.timing import WARMUP_RUNS
from .run_fapm import ExportedRunner, load_rgb, prepare

RUNTIMES = ("torch", "onnxruntime", "openvino", "openvino_int8")
#: runtime name -> (export format, INT8, the runner's runtime)
EXPORTS = {"onnxruntime": ("onnx", False, "onnxruntime"), "openvino": ("openvino", False, "openvino"),
           "openvino_int8": ("openvino", True, "openvino")}
ACCURACY_BATCH = 16


def parse_runtimes(value: str | None) -> list[str]:
    """``--runtimes torch,onnxruntime,...`` -> names (``torch`` first when given)."""
    if not value:
        return []
    names = [v.strip() for v in value.split(",") if v.strip()]
    unknown = [n for n in names if n not in RUNTIMES]
    if unknown or not names:
        raise ConfigError(f"--runtimes {value}: unknown runtime {unknown[0] if unknown else value!r}; "
                          f"choose from {', '.join(RUNTIMES)}")
    return list(dict.fromkeys(names))


def uint8_images(dataset: MVTecDataset) -> np.ndarray:
    """The split's images as the exported runner makes them from its sidecar's rule (the native
    canvas, or the protocol's resize and crop): ``[N, H, W, C]`` uint8."""
    t = dataset.transform
    pre = ({"mode": "native", "canvas": list(t.canvas)} if t.native
           else {"mode": "protocol", "resize": t.resize, "crop_size": t.crop_size})
    channels = t.channels or 3
    return np.stack([prepare(load_rgb(s.path, t.resize, channels), pre, str(s.path)) for s in dataset.samples])


def _normalised(images: np.ndarray, model: FAPM) -> torch.Tensor:
    """uint8 ``[N, S, S, 3]`` -> what ``Transform.image`` makes of them, ``[N, 3, S, S]``."""
    t = model.transform
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    return ((x - torch.tensor(t.mean).view(1, 3, 1, 1)) / torch.tensor(t.std).view(1, 3, 1, 1)).contiguous()


def build_runners(model: FAPM, names: list[str], folder: Path, train: MVTecDataset | None,
                  threads: int) -> dict[str, tuple[Callable[[np.ndarray], tuple[Any, Any]], dict]]:
    """For each runtime name: ``run(uint8 [B, S, S, 3]) -> (maps [B, S, S], raw scores [B])`` and
    a few facts (export folder, files' MB, export seconds)."""
    from .graph_export import export_model

    out: dict[str, tuple[Callable, dict]] = {}
    if "torch" in names:
        def run_torch(images: np.ndarray) -> tuple[Any, Any]:
            pred = model.predict(_normalised(images, model))
            return pred.anomaly_map.numpy(), pred.pred_score.numpy()

        out["torch"] = (run_torch, {})
    for name in names:
        if name == "torch":
            continue
        fmt, int8, runtime = EXPORTS[name]
        int8_images = None
        if int8:
            if train is None:
                raise ConfigError(f"--runtimes {name}: needs the training images to calibrate")
            int8_images = list(uint8_images(train))
        start = time.perf_counter()
        sidecar = export_model(model, folder / name, fmt, None, int8_images, progress=False)
        seconds = time.perf_counter() - start
        meta = json.loads(sidecar.read_text())
        runner = ExportedRunner(folder / name, runtime, threads)
        files = ["model.onnx"] if fmt == "onnx" else ["model.xml", "model.bin"]
        sizes = sum((folder / name / f).stat().st_size for f in files) / 2**20

        def run(images: np.ndarray, runner: ExportedRunner = runner) -> tuple[Any, Any]:
            result = runner.run(images)
            return result["anomaly_map"], result["raw_score"]

        out[name] = (run, {"export_seconds": round(seconds, 2), "model_mb": round(sizes, 2),
                           "quantization": meta.get("quantization")})
    return out


def _accuracy(run: Callable, images: np.ndarray, labels: torch.Tensor, masks: torch.Tensor | None) -> dict:
    maps, scores = zip(*(run(images[i : i + ACCURACY_BATCH]) for i in range(0, len(images), ACCURACY_BATCH)))
    return compute_metrics(torch.from_numpy(np.concatenate(scores)), labels,
                           torch.from_numpy(np.concatenate(maps)), masks)


def measure_runtimes(model: FAPM, test: MVTecDataset, train: MVTecDataset | None, names: list[str],
                     repeats: int = 20, throughput_batch: int = 16, log: Callable[[str], None] = print) -> dict:
    """``benchmark.json["runtimes"]``: per runtime ``total_ms``, ``throughput_ips``,
    ``image_auroc``, ``pixel_auroc`` (and ``cpu_ms``, ``pixel_f1_max``, the changes against torch), plus
    ``_details`` (threads, protocol, export sizes, onnxruntime's peak RSS)."""
    threads = torch.get_num_threads()
    images = uint8_images(test)
    labels = torch.tensor([s.label for s in test.samples])
    masks = torch.stack([test[i]["mask"] for i in range(len(test))]) if test.has_masks else None
    report: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="fapm-runtimes-") as tmp, torch.inference_mode():
        log(f"runtimes: exporting {', '.join(n for n in names if n != 'torch') or 'nothing'} ({threads} threads each)")
        runners = build_runners(model, names, Path(tmp), train, threads)
        metrics = {}
        for name, (run, _) in runners.items():
            log(f"runtimes: accuracy of {name} on {len(images)} test images")
            metrics[name] = _accuracy(run, images, labels, masks)
        log(f"runtimes: {repeats} single-image runs each, then batch {throughput_batch}")
        single = single_times(runners, images, repeats)
        batched = {name: _throughput(run, images, throughput_batch, max(2, repeats // 5))
                   for name, (run, _) in runners.items()}
        rss = {f"batch_{b}": onnxruntime_peak_rss(Path(tmp) / "onnxruntime", threads, b)
               for b in (1, throughput_batch)} if "onnxruntime" in runners else None
        for name, (_, facts) in runners.items():
            m = metrics[name]
            report[name] = {"total_ms": round(single[name]["wall_ms"], 4), "cpu_ms": round(single[name]["cpu_ms"], 4),
                            "throughput_ips": round(batched[name], 3),
                            "image_auroc": m["image_auroc"], "pixel_auroc": m["pixel_auroc"],
                            "pixel_f1_max": m["pixel_f1_max"], **facts}
            if "torch" in metrics and name != "torch":
                for key in ("image_auroc", "pixel_auroc"):
                    ref, got = metrics["torch"][key], m[key]
                    report[name][f"{key}_change"] = None if ref is None or got is None else got - ref
    fastest = min((n for n in report if n in ("onnxruntime", "openvino")), key=lambda n: report[n]["total_ms"],
                  default=None)
    report["_details"] = {
        "threads": threads, "n_test": len(images), "repeats": repeats, "warmup_runs": WARMUP_RUNS,
        "throughput_batch": throughput_batch, "input": f"uint8 [B, {images.shape[1]}, {images.shape[2]}, 3]",
        "protocol": ("batch 1 medians after warm-up, runtimes alternating per repeat; exports take the uint8 crop, "
                     "torch the normalised tensor; decoding and resizing are not timed"),
        "export": "dynamic batch, one graph per runtime",
        "fastest_fp32_export": fastest,
        "fastest_fp32_over_torch": (round(report[fastest]["total_ms"] / report["torch"]["total_ms"], 4)
                                    if fastest and "torch" in report else None),
        "versions": runtime_versions(),
        "onnxruntime_peak_rss_mb": rss, "benchmark_peak_rss_mb": round(
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1),
    }
    return report


def single_times(runners: dict, images: np.ndarray, repeats: int) -> dict[str, dict[str, float]]:
    """Batch-1 medians after warm-up, the runtimes alternating: ``{name: {"wall_ms", "cpu_ms"}}``
    (cpu: process CPU time, all threads)."""
    names = list(runners)
    for name in names:
        for i in range(WARMUP_RUNS):
            runners[name][0](images[i % len(images)][None])
    samples: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    for rep in range(repeats):
        one = images[rep % len(images)][None]
        for name in names if rep % 2 == 0 else names[::-1]:
            start, cpu_start = time.perf_counter(), time.process_time()
            runners[name][0](one)
            samples[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - cpu_start)
    return {n: {"wall_ms": 1000.0 * statistics.median(samples[n]), "cpu_ms": 1000.0 * statistics.median(cpu[n])}
            for n in names}


def _throughput(run: Callable, images: np.ndarray, batch: int, runs: int) -> float:
    chunk = images[np.arange(batch) % len(images)]
    run(chunk)
    seconds = []
    for _ in range(runs):
        start = time.perf_counter()
        run(chunk)
        seconds.append(time.perf_counter() - start)
    return batch / statistics.median(seconds)


# VmHWM (peak RSS of this process image; getrusage's ru_maxrss would include the parent's
# peak, inherited across fork and exec)
_RSS_SCRIPT = """
import sys, numpy as np
def peak_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
sys.path.insert(0, sys.argv[1])
from run_fapm import ExportedRunner
runner = ExportedRunner(sys.argv[2], "onnxruntime", int(sys.argv[3]))
shape = runner.shape  # (H, W, C)
before = peak_mb()
for _ in range(3):
    runner.run(np.zeros((int(sys.argv[4]), *shape), np.uint8))
print(peak_mb(), before)
"""


def onnxruntime_peak_rss(folder: Path, threads: int, batch: int) -> dict[str, float] | None:
    """Peak RSS (MB) of a fresh process that only loads onnxruntime and the export, then runs it
    three times at ``batch``: the memory an inspection program needs for the model."""
    runner_dir = Path(__file__).parent
    if not Path("/proc/self/status").is_file():
        return None  # not Linux
    proc = subprocess.run([sys.executable, "-c", _RSS_SCRIPT, str(runner_dir), str(folder), str(threads), str(batch)],
                          capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        return None
    peak, loaded = map(float, proc.stdout.split()[-2:])
    return {"peak_rss_mb": round(peak, 1), "after_session_load_mb": round(loaded, 1), "batch": batch}


def runtime_versions() -> dict[str, str]:
    """The installed versions of torch and the export runtimes (the missing ones left out)."""
    from importlib import metadata

    found = {}
    for package in ("torch", "onnxruntime", "openvino", "nncf"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return found


def runtime_label(name: str, versions: dict[str, str] | None = None) -> str:
    """How a table names runtime ``name``, with its version where known: ``onnxruntime 1.32, fp32``."""
    v = {k: f" {x}" for k, x in (versions or {}).items()}
    ov = f"OpenVINO{v.get('openvino', '')}"
    return {"torch": f"torch{v.get('torch', '')} (eager)",
            "onnxruntime": f"onnxruntime{v.get('onnxruntime', '')}, fp32", "openvino": f"{ov}, fp32",
            "openvino_int8": f"{ov}, INT8 backbone (NNCF{v.get('nncf', '')})"}.get(name, name)


def _pct(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{100 * value:.{digits}f}"


def _change(row: dict[str, Any]) -> str:
    if "image_auroc_change" not in row:
        return ""
    return " / ".join("n/a" if row[k] is None else f"{100 * row[k]:+.2f}"
                      for k in ("image_auroc_change", "pixel_auroc_change"))


def _vs_torch(row: dict[str, Any], torch_ms: float | None) -> str:
    return f"{row['total_ms'] / torch_ms:.2f}x" if torch_ms else ""


#: A runtimes-table column: header (``{batch}``: the throughput batch), the cell of one
#: runtime's row given torch's ``total_ms`` (None when torch was not timed), and whether it is
#: an accuracy figure (meaningless with random weights).
Column = tuple[str, Callable[[dict[str, Any], "float | None"], str], bool]
#: The columns of ``benchmark.md``'s runtimes section.
DETAIL_COLUMNS: tuple[Column, ...] = (
    ("total ms (batch 1)", lambda r, t: f"{r['total_ms']:.2f}", False),
    ("vs torch", _vs_torch, False),
    ("CPU ms (batch 1)", lambda r, t: f"{r['cpu_ms']:.2f}", False),
    ("throughput img/s (batch {batch})", lambda r, t: f"{r['throughput_ips']:.1f}", False),
    ("image AUROC", lambda r, t: _pct(r["image_auroc"]), True),
    ("pixel AUROC", lambda r, t: _pct(r["pixel_auroc"]), True),
    ("change vs torch (image / pixel, points)", lambda r, t: _change(r), True),
)
#: The columns of the front page's exports table.
SUMMARY_COLUMNS: tuple[Column, ...] = (
    ("ms per image, batch 1", lambda r, t: f"{r['total_ms']:.1f}", False),
    ("vs torch", _vs_torch, False),
    ("images/s at batch {batch}", lambda r, t: f"{r['throughput_ips']:.1f}", False),
    ("image / pixel AUROC", lambda r, t: f"{_pct(r['image_auroc'])} / {_pct(r['pixel_auroc'])}", True),
)


def runtimes_table(runtimes: dict[str, Any] | None, names: Sequence[str] | None = None,
                   columns: Sequence[Column] = DETAIL_COLUMNS, batch: int = 16, accuracy: bool = True) -> list[str]:
    """A markdown table of :func:`measure_runtimes`' report, one row per name in ``names``
    (default: the measured ones); a runtime not in the report (not measured) gets empty cells;
    without ``accuracy`` (random weights) the accuracy cells say "timing only"."""
    runtimes = runtimes or {}
    details = runtimes.get("_details", {})
    names = [n for n in runtimes if not n.startswith("_")] if names is None else list(names)
    batch = details.get("throughput_batch", batch)
    torch_ms = runtimes.get("torch", {}).get("total_ms")
    lines = ["| runtime | " + " | ".join(h.format(batch=batch) for h, _, _ in columns) + " |",
             "|---|" + "---|" * len(columns)]
    for name in names:
        row = runtimes.get(name)
        cells = [("timing only" if is_accuracy and not accuracy else cell(row, torch_ms)) if row else ""
                 for _, cell, is_accuracy in columns]
        lines.append(f"| {runtime_label(name, details.get('versions'))} | " + " | ".join(cells) + " |")
    return lines


def runtimes_details(runtimes: dict, accuracy: bool = True) -> list[str]:
    """The runtimes table with every column, then onnxruntime's own peak memory (when measured)."""
    lines = runtimes_table(runtimes, accuracy=accuracy)
    rss = {k: v for k, v in (runtimes["_details"].get("onnxruntime_peak_rss_mb") or {}).items() if v}
    if rss:
        parts = [f"batch {v['batch']}: {v['peak_rss_mb']:.0f} MB" for v in rss.values()]
        loaded = next(iter(rss.values()))["after_session_load_mb"]
        lines += ["", f"onnxruntime alone, peak RSS of a fresh process running the export: {', '.join(parts)} "
                      f"({loaded:.0f} MB after loading the session)."]
    return lines


def runtimes_markdown(runtimes: dict) -> list[str]:
    """The ``benchmark.md`` section for ``runtimes``."""
    det = runtimes["_details"]
    return ["## Runtimes", "",
            f"{det['threads']} thread(s) each; {det['protocol']}. Input {det['input']}; {det['export']}.", "",
            *runtimes_details(runtimes), ""]
