"""Measure what native resolution buys and costs; every table of docs/native.md comes from here.

    python tools/measure_native.py screw   --data "${FAPM_SHARED_DATA:-../shared/data}" --output results/native
    python tools/measure_native.py rail    --output results/native
    python tools/measure_native.py scaling --output results/native
    python tools/measure_native.py bounded --output results/native      # 20 images of 4096 x 2048, 4 GB
    python tools/measure_native.py int8    --output results/native      # MP/s through the INT8 export

Every fit and evaluation runs in its own process on one torch thread (``--threads``), so each
row's peak memory (VmHWM) is its own; ``fapm_lib``'s ``run_test_set`` gives the metrics (image and
pixel AUROC, AUPRO, pixel F1-max on the masks' own geometry: the crop's with the paper's protocol,
the whole image's at native resolution) and the time per image (backbone + search +
post-processing, batched, no data loading). Where a table compares times, the models are loaded
again in one process and timed alternately, batch 1, median after warm-up: those ratios are side
by side. Each command writes ``<output>/<command>.md`` and ``.json`` with the machine, commit and date.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SCREW_ROWS = {  # name -> (data folder under --data, config)
    "protocol 256 / crop 224": ("mvtec_ad_256", {"resize": 256, "crop_size": 224}),
    "whole image, 512 (default)": ("mvtec_ad_512", {}),
    "whole 512, regions of 64 px": ("mvtec_ad_512", {"region_size": 64}),
    "whole 512, neighbour regions 1": ("mvtec_ad_512", {"neighbour_regions": 1}),
    "tiles of 256 at 512": ("mvtec_ad_512", {"tile": 256, "tile_overlap": 64}),
    "512 scaled to 448, regions of 64 px": ("mvtec_ad_512", {"scale": 0.875, "region_size": 64}),
}
RAIL_ROWS = {
    "protocol 256 / crop 224": {"resize": 256, "crop_size": 224},
    "whole image (default)": {},
    "tiles of 256": {"tile": 256, "tile_overlap": 64},
    "neighbour regions 1": {"neighbour_regions": 1},
}
SHIFTS = (0.0, 0.02, 0.05)
METRICS = ("image_auroc", "pixel_auroc", "pixel_aupro", "pixel_f1_max")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("screw", "rail", "scaling", "bounded", "int8"):
        p = sub.add_parser(name)
        p.add_argument("--output", default="results/native")
        p.add_argument("--threads", type=int, default=1)
        p.add_argument("--data", default=os.environ.get("FAPM_SHARED_DATA", str(ROOT.parent / "shared" / "data")))
        p.add_argument("--work", help="folder for generated data and models (default: a temporary folder)")
    child = sub.add_parser("_evaluate")  # one fit + evaluation, in its own process
    for flag in ("--root", "--category", "--config", "--save", "--result", "--threads"):
        child.add_argument(flag, required=True)
    args = parser.parse_args()
    from fapm_lib.system.allocator import tune_allocator

    tune_allocator()  # as `fapm` runs (the CLI tunes it); the tables before this line was added ran without
    if args.command == "_evaluate":
        return _child(args)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    if args.work:
        Path(args.work).mkdir(parents=True, exist_ok=True)  # a new folder is fine: it keeps the fits for a rerun
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        work = Path(args.work) if args.work else Path(tmp)
        tables = {"screw": screw, "rail": rail, "scaling": scaling, "bounded": bounded, "int8": int8}[args.command](
            args, work)
    _write(out / args.command, tables)
    return 0


# ---- the tables ---------------------------------------------------------------------------------
def screw(args: argparse.Namespace, work: Path) -> list[str]:
    """MVTec AD screw: the paper's protocol at 256 against the whole 512 image and its variants."""
    rows, models = [], {}
    for name, (folder, config) in SCREW_ROWS.items():
        root = Path(args.data) / folder
        if not (root / "screw").is_dir():
            rows.append({"setting": name, "note": f"{root}/screw not found: not measured"})
            continue
        result = evaluate(root, "screw", config, work / f"screw-{len(rows)}.safetensors", args.threads)
        rows.append({"setting": name, **result})
        models[name] = (root / "screw", result["model"])
    timing = side_by_side(models, args.threads)
    errors = [{"setting": row["setting"], **pair_errors(per_image_scores(row, "screw", args.threads))}
              for row in rows if "note" not in row]
    return [_table("MVTec AD screw (320 training, 160 test images)", rows, timing, "protocol 256 / crop 224"),
            _markdown("Where each row's image-AUROC errors lie: the (good, defective) test pairs ranked the wrong "
                      "way, and the good images behind most of them", errors)]


def rail(args: argparse.Namespace, work: Path) -> list[str]:
    """The built-in long part: crop against whole image against tiles, then with shifted parts."""
    from fapm_lib.data.synthetic import generate_category

    root = work / "rail-data"
    generate_category(root, "rail", seed=0)
    shifted = {s: _shifted_copy(root, work / f"rail-shift-{s}", s) for s in SHIFTS if s}
    tables, rows, models = [], [], {}
    for name, config in RAIL_ROWS.items():
        result = evaluate(root, "rail", config, work / f"rail-{len(rows)}.safetensors", args.threads)
        rows.append({"setting": name, **result})
        models[name] = (root / "rail", result["model"])
    timing = side_by_side(models, args.threads)
    tables.append(_table("rail, 1536 x 512 (60 training, 60 test images)", rows, timing, "protocol 256 / crop 224"))
    shift_rows = []
    for name, (_, model) in models.items():
        row: dict[str, Any] = {"setting": name}
        for s, folder in shifted.items():
            metrics = rescore(model, folder, "rail", args.threads).metrics
            row.update({f"image AUROC, shift {s:.0%}": metrics["image_auroc"],
                        f"AUPRO, shift {s:.0%}": metrics["pixel_aupro"]})
        shift_rows.append(row)
    tables.append(_markdown("rail with parts that do not sit still: the test parts moved right by 2 % and 5 % of "
                            "the width (31 and 77 pixels); the same fitted models", shift_rows))
    return tables


def scaling(args: argparse.Namespace, work: Path) -> list[str]:
    """Fit time and ms per image at four sizes, one thread; the exponent of the cost in pixels. The
    times per image are batch 1, the four models timed alternately in one process (a shared
    machine's load drifts between the fits; it cannot favour one size there)."""
    sizes = [(224, 224), (512, 512), (1024, 1024), (1024, 2048)]
    rows, models = [], {}
    for height, width in sizes:
        root = work / f"noise-{height}x{width}"
        _noise_set(root, height, width, n_train=10, n_test=4)
        result = evaluate(root, "part", {}, work / f"noise-{height}x{width}.safetensors", args.threads,
                          metrics=False)
        rows.append({"size (H x W)": f"{height} x {width}", "megapixels": height * width / 1e6,
                     "fit s (10 images)": result["fit_s"], "ms per image, batched": result["ms_per_image"],
                     "peak RSS MB": result["peak_rss_mb"]})
        models[rows[-1]["size (H x W)"]] = (root / "part", result["model"])
    timing = side_by_side(models, args.threads, repeats=9)
    for row in rows:
        row["batch-1 ms, side by side"] = timing[row["size (H x W)"]]
    pixels = np.log([r["megapixels"] for r in rows])
    exponent = {k: float(np.polyfit(pixels, np.log([r[k] for r in rows]), 1)[0])
                for k in ("fit s (10 images)", "batch-1 ms, side by side")}
    note = ("cost ~ pixels^e, least squares over the four sizes: " +
            ", ".join(f"{k}: e = {v:.2f}" for k, v in exponent.items()))
    return [_markdown("Cost against pixels (smooth random texture, 10 training images, defaults, one thread)",
                      rows, note)]


def bounded(args: argparse.Namespace, work: Path) -> list[str]:
    """20 training images of 4096 x 2048 fitted within --max-memory 4GB, then one prediction."""
    root = work / "large"
    _noise_set(root, 2048, 4096, n_train=20, n_test=2)
    result = evaluate(root, "part", {"max_memory": "4GB"}, work / "large.safetensors", args.threads, metrics=False)
    row = {"training images": 20, "size": "4096 x 2048", "max_memory": "4GB", "fit s": result["fit_s"],
           "fit's peak RSS MB (VmHWM)": result["fit_peak_rss_mb"],
           "peak RSS MB with 2 predictions": result["peak_rss_mb"], "ms per test image": result["ms_per_image"],
           "memory vectors": result["vectors"]}
    return [_markdown("A bounded fit at 8.4 megapixels per image (defaults, one thread)", [row])]


def int8(args: argparse.Namespace, work: Path) -> list[str]:
    """Megapixels per second scored through the exports at a line camera's 2560 x 2048 (5.2 MP)."""
    root = work / "camera"
    _noise_set(root, 2048, 2560, n_train=8, n_test=2)
    model_files = {scale: work / f"camera-scale-{scale:g}.safetensors" for scale in (1.0, 0.5)}
    for scale, model_file in model_files.items():
        evaluate(root, "part", {} if scale == 1.0 else {"scale": scale}, model_file, args.threads, metrics=False)
    rows = []
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    int8_flags = ["--format", "openvino", "--int8", "--data-root", str(root), "--category", "part"]
    for name, scale, flags in (("OpenVINO fp32", 1.0, ["--format", "openvino"]), ("OpenVINO INT8", 1.0, int8_flags),
                               ("OpenVINO INT8, scale 0.5", 0.5, int8_flags)):
        folder = work / name.replace(" ", "_").replace(",", "")
        subprocess.run([sys.executable, "-m", "fapm_lib", "export", "--model", str(model_files[scale]), *flags,
                        "--batch-size", "1", "--output", str(folder), "--no-check", "--no-progress",
                        "--threads", str(args.threads)], check=True, env=env)
        rows.append({"runtime": name, **_runner_speed(folder, root / "part" / "test" / "good", args.threads)})
    rows.append({"runtime": "torch (eager)", **_torch_speed(model_files[1.0], root / "part" / "test" / "good",
                                                            args.threads)})
    return [_markdown("Megapixels per second of input scored, 2560 x 2048 images (5.2 MP), one thread; "
                      "from the decoded frame (a scaled model's resize included)", rows)]


# ---- one fit and evaluation, in a child process ---------------------------------------------------
def evaluate(root: Path, category: str, config: dict, save: Path, threads: int, metrics: bool = True) -> dict:
    """Fit on ``root/category/train``, evaluate on its test split, in a child process; a result
    already in ``--work`` for the same data and settings is reused (an interrupted run goes on)."""
    result = save.with_suffix(".json")
    if result.exists():
        done = json.loads(result.read_text())
        if done.get("config") == config and done.get("root") == str(root) and done.get("metrics", True) == metrics:
            return done
    subprocess.run([sys.executable, __file__, "_evaluate", "--root", str(root), "--category", category,
                    "--config", json.dumps({**config, "_metrics": metrics}), "--save", str(save),
                    "--result", str(result), "--threads", str(threads)], check=True)
    return json.loads(result.read_text())


def _child(args: argparse.Namespace) -> int:
    import torch

    from fapm_lib import FAPM, FAPMConfig, MVTecDataset
    from fapm_lib.decisions.evaluation import run_test_set

    torch.set_num_threads(int(args.threads))
    values = json.loads(args.config)
    metrics = values.pop("_metrics")
    model = FAPM(FAPMConfig(**values))
    start = time.perf_counter()
    model.fit(MVTecDataset(args.root, args.category, "train", model.transform), progress=False)
    fit_s = time.perf_counter() - start
    fit_peak_rss_mb = _peak_rss_mb()  # the fit's high-water mark, before any prediction
    model.save(args.save)
    test = MVTecDataset(args.root, args.category, "test", model.transform)
    result = run_test_set(model, test, progress=False, metrics=metrics)
    out = {"fit_s": fit_s, "ms_per_image": result.ms_per_image, **{f"{k}_ms": v for k, v in result.stage_ms.items()},
           "fit_peak_rss_mb": fit_peak_rss_mb, "peak_rss_mb": _peak_rss_mb(),
           "vectors": int(model.memory_size()["vectors"]), "canvas": list(model.canvas), "model": str(args.save),
           **{k: result.metrics.get(k) for k in METRICS},
           "scores": result.scores.tolist(), "labels": result.labels.tolist(), "paths": result.paths}
    out.update(config=values, root=str(args.root), metrics=metrics)
    Path(args.result).write_text(json.dumps(out))
    return 0


def rescore(model_file: str, root: Path, category: str, threads: int, metrics: bool = True):
    """A saved model scored on a test split (here, in this process): its ``EvalResult``."""
    import torch

    from fapm_lib import FAPM, MVTecDataset
    from fapm_lib.decisions.evaluation import run_test_set

    torch.set_num_threads(threads)
    model = FAPM.load(model_file)
    return run_test_set(model, MVTecDataset(root, category, "test", model.transform), progress=False, metrics=metrics)


def per_image_scores(result: dict, category: str, threads: int) -> dict:
    """A row's test images' ``scores``, ``labels`` and ``paths``: kept in its result file (a result
    written before they were kept is scored again with its saved model, then updated)."""
    if "scores" not in result:
        scored = rescore(result["model"], Path(result["root"]), category, threads, metrics=False)
        result.update(scores=scored.scores.tolist(), labels=scored.labels.tolist(), paths=scored.paths)
        kept = {k: v for k, v in result.items() if k != "setting"}  # the result file, without the table's label
        Path(result["model"]).with_suffix(".json").write_text(json.dumps(kept))
    return result


def pair_errors(result: dict, worst: int = 2) -> dict[str, Any]:
    """Image AUROC read as pairs: each (good, defective) pair ranked the wrong way is one error (a
    tie half of one). The good images behind the most errors, by name, and the AUROC without the
    ``worst`` of them: it says whether a few good images or the whole set carry the errors."""
    scores, labels = np.asarray(result["scores"]), np.asarray(result["labels"])
    good, bad = scores[labels == 0], scores[labels == 1]
    per_good = wrong_pairs(good, bad)
    names = [f"{Path(p).parent.name}/{Path(p).name}" for p, y in zip(result["paths"], labels) if y == 0]
    order = np.argsort(-per_good, kind="stable")
    rest = np.delete(per_good, order[:worst])
    return {"image AUROC": 1 - per_good.sum() / per_good.size / bad.size, "pairs": per_good.size * bad.size,
            "pairs ranked wrong": float(per_good.sum()),
            "behind most of them": ", ".join(f"{names[i]} ({per_good[i]:g})" for i in order[:worst]),
            f"image AUROC without those {worst}": 1 - rest.sum() / rest.size / bad.size,
            "image AUROC, 95 % interval": "{:.3f} to {:.3f}".format(*auroc_interval(good, bad))}


def wrong_pairs(good: np.ndarray, bad: np.ndarray) -> np.ndarray:
    """``[len(good)]``: for each good image's score, the defective scores below it (a tie counts
    half): image AUROC is one minus their sum over all pairs."""
    return (bad[None, :] < good[:, None]).sum(1) + 0.5 * (bad[None, :] == good[:, None]).sum(1)


def auroc_interval(good: np.ndarray, bad: np.ndarray, rounds: int = 2000, seed: int = 0) -> tuple[float, float]:
    """The image AUROC's 95 % bootstrap interval: good and defective images resampled apart (each
    class keeps its count), ``rounds`` times, seeded. It says how far a test set this size can move it."""
    rng = np.random.default_rng(seed)
    values = np.empty(rounds)
    for r in range(rounds):
        g, b = rng.choice(good, good.size), rng.choice(bad, bad.size)
        values[r] = 1 - wrong_pairs(g, b).sum() / g.size / b.size
    low, high = np.quantile(values, [0.025, 0.975])
    return float(low), float(high)


def side_by_side(models: dict[str, tuple[Path, str]], threads: int, repeats: int = 15) -> dict[str, float]:
    """Median ms per image at batch 1 of each model, timed alternately in this process."""
    import torch

    from fapm_lib import FAPM, MVTecDataset

    torch.set_num_threads(threads)
    loaded, images = {}, {}
    for name, (folder, model_file) in models.items():
        model = FAPM.load(model_file)
        loaded[name] = model
        data = MVTecDataset(folder.parent, folder.name, "test", model.transform)
        images[name] = data[0]["image"][None]
    times: dict[str, list[float]] = {name: [] for name in loaded}
    with torch.inference_mode():
        for name, model in loaded.items():
            for _ in range(2):
                model.predict(images[name])
        for _ in range(repeats):
            for name, model in loaded.items():
                start = time.perf_counter()
                model.predict(images[name])
                times[name].append(1000 * (time.perf_counter() - start))
    return {name: statistics.median(t) for name, t in times.items()}


def _runner_speed(folder: Path, images: Path, threads: int) -> dict[str, float]:
    from fapm_lib.deploy.run_fapm import ExportedRunner, load_rgb, prepare

    runner = ExportedRunner(folder, threads=threads)
    pre = runner.preprocessing
    frame = load_rgb(sorted(images.glob("*.png"))[0], pre.get("resize"), runner.shape[2])  # decoded, not timed

    def score() -> None:
        runner.run(prepare(frame, pre)[None])  # the frame brought to the canvas (a resize when scaled), scored

    for _ in range(2):
        score()
    times = []
    for _ in range(5):
        start = time.perf_counter()
        score()
        times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    megapixels = frame.width * frame.height / 1e6
    return {"ms per image": 1000 * seconds, "MP/s": megapixels / seconds}


def _torch_speed(model_file: Path, images: Path, threads: int) -> dict[str, float]:
    import torch

    from fapm_lib import FAPM
    from fapm_lib.data.images import as_pil

    torch.set_num_threads(threads)
    model = FAPM.load(model_file)
    x = model.transform.image(as_pil(sorted(images.glob("*.png"))[0]))[None]
    with torch.inference_mode():
        for _ in range(2):
            model.predict(x)
        times = []
        for _ in range(5):
            start = time.perf_counter()
            model.predict(x)
            times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    return {"ms per image": 1000 * seconds, "MP/s": x.shape[-2] * x.shape[-1] / 1e6 / seconds}


# ---- data ---------------------------------------------------------------------------------------
def _shifted_copy(root: Path, target: Path, shift: float) -> Path:
    """The rail's test split again, every part moved right by ``shift`` of the width (same seeds)."""
    from PIL import Image

    from fapm_lib.data.synthetic import CATEGORIES, render_sample
    from fapm_lib.data.synthetic.writer import N_PER_DEFECT, N_TEST_GOOD

    spec = CATEGORIES["rail"]
    for defect, count in [("good", N_TEST_GOOD)] + [(d, N_PER_DEFECT) for d in spec.defects]:
        folder = target / "rail" / "test" / defect
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            sample = render_sample("rail", "test", defect, i, seed=0, shift=(shift, 0.0))
            Image.fromarray(sample.image).save(folder / f"{i:03d}.png")
            if sample.mask is not None:
                masks = target / "rail" / "ground_truth" / defect
                masks.mkdir(parents=True, exist_ok=True)
                Image.fromarray(sample.mask).save(masks / f"{i:03d}_mask.png")
    (target / "rail" / "train").mkdir(parents=True, exist_ok=True)
    return target


def _noise_set(root: Path, height: int, width: int, n_train: int, n_test: int) -> None:
    """A category ``part`` of smooth random textures, ``height x width`` (costs do not depend on content)."""
    from PIL import Image
    from scipy import ndimage

    rng = np.random.default_rng(0)
    for split, count in (("train", n_train), ("test", n_test)):
        folder = root / "part" / split / "good"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            noise = ndimage.gaussian_filter(rng.standard_normal((height, width, 3)).astype(np.float32), (3, 3, 0))
            pixels = np.clip(128 + 400 * noise, 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{i:03d}.png", compress_level=1)


# ---- output -------------------------------------------------------------------------------------
def _peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM), MB (decimal)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024 / 1e6
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6


def _table(title: str, rows: list[dict], timing: dict[str, float], reference: str) -> str:
    """The accuracy / cost table, with the side-by-side times and their ratio to ``reference``."""
    shown = []
    for row in rows:
        line = {"setting": row["setting"]}
        if "note" in row:
            line["note"] = row["note"]
        else:
            line.update({"image AUROC": row["image_auroc"], "pixel AUROC": row["pixel_auroc"],
                         "AUPRO": row["pixel_aupro"], "pixel F1": row["pixel_f1_max"],
                         "ms / image": row["ms_per_image"], "fit s": row["fit_s"],
                         "peak RSS MB": row["peak_rss_mb"], "canvas": "x".join(map(str, row["canvas"]))})
        if row["setting"] in timing:
            line["batch-1 ms, side by side"] = timing[row["setting"]]
            if reference in timing:
                line["x protocol"] = f"{timing[row['setting']] / timing[reference]:.1f}"
        shown.append(line)
    return _markdown(title, shown, "ms / image: batched evaluation (backbone + search + post-processing); "
                     "batch-1 ms: the models loaded again in one process and timed alternately")


def _markdown(title: str, rows: list[dict], note: str = "") -> str:
    keys = list(dict.fromkeys(k for row in rows for k in row))
    def fmt(v) -> str:
        if v is None:
            return ""
        if isinstance(v, float):
            return f"{v:.4f}" if abs(v) < 1.5 else f"{v:.1f}"
        return str(v)
    lines = [f"### {title}", "", "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(fmt(row.get(k)) for k in keys) + " |" for row in rows]
    return "\n".join(lines + (["", note] if note else []))


def _write(stem: Path, tables: list[str]) -> None:
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    machine = (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, load average "
               f"{os.getloadavg()[0]:.1f}; commit {commit}{' + uncommitted changes' if dirty else ''}; {date.today()}")
    text = "\n\n".join(tables) + f"\n\nMeasured by `python {' '.join(sys.argv)}` ({machine}).\n"
    stem.with_suffix(".md").write_text(text)
    stem.with_suffix(".json").write_text(json.dumps({"tables": tables, "machine": machine}, indent=2))
    print(text)


if __name__ == "__main__":
    sys.exit(main())
