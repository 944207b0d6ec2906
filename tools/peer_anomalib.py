"""Side-by-side benchmark: this repository's FAPM against anomalib's PatchCore, on real MVTec AD.

What it measures, per category and per method, in ONE process on ONE torch thread:

- fit time (s): feature extraction (images decoded from disk by the same data loader, batch 16)
  plus memory / coreset construction. FAPM: ``FAPM(config).fit(dataset)`` with
  ``calibration_folds=0`` (no k-fold threshold calibration: anomalib's PatchCore has none, so
  the work is comparable). anomalib: its ``PatchcoreModel`` in training mode over the same
  batches (its own embedding collection), then its own ``subsample_embedding`` (KCenterGreedy
  coreset on a sparse random projection).
- batch-1 ms per image: median of ``--repeats`` single-image runs (end to end: normalised image
  in, 224x224 anomaly map and image score out) after warm-up; within each repeat the two methods
  run one after the other, their order swapped every repeat. Process CPU ms is recorded too.
- batch-16 images/s: 16 / median time of ``--batch-repeats`` batches of 16 test images,
  alternated the same way.
- peak memory (MB): the peak RSS increase over the RSS just before that method's phase (its
  fit, then its inference over the whole test set), sampled every 5 ms by a background thread
  with psutil. Both methods run in this one process (the brief: one process, one thread), so
  the heap is handed back to the OS (gc + glibc ``malloc_trim``) before each phase, the
  preloaded test tensors exist before both phases, and FAPM's phase runs first.
- image AUROC, pixel AUROC, pixel F1-max, pixel AUPRO: ``fapm_lib``'s ``compute_metrics`` on both
  methods' image scores and 224x224 anomaly maps (the same code for both).

The same protocol for both: the same data (``MVTecDataset``), the same transform
(``FAPMConfig(resize=256, crop_size=224)``: resize 256, centre crop 224, lite0's mean/std),
the same ``tf_efficientnet_lite0`` ImageNet weights (anomalib's ``TimmFeatureExtractor`` is built
with ``pre_trained=False`` and given FAPM's backbone state dict; the feature maps are asserted
bit-identical, so FAPM's extractor is built with ``optimize=False``: timm's modules as they are,
no folded batch norms, no channels-last input), the same layers (the stride-8 and stride-16 stages, ``blocks.2`` and
``blocks.4``), the same 3x3 average-pool aggregation, coreset ratio 0.1. Each method keeps
its own scoring: FAPM its defaults (grid 7, adaptive ratio, ``max`` image score);
anomalib its defaults (``num_neighbors=9``: the paper's re-weighted image score; nearest
upsampling + Gaussian blur sigma 4). anomalib's image AUROC with the plain ``max`` patch score
(``num_neighbors=1``) is recorded in the JSON as well.

One difference is left as each library ships it: timm's ``features_only`` EfficientNet runs every
block, FAPM's extractor drops the blocks after the stride-16 stage; anomalib's runs blocks 5 and
6 too (unused). The JSON has each extractor's own backbone time so that it can be told apart.

Commands (from the repository root)::

    python tools/peer_anomalib.py setup          # builds .peer-venv/ (anomalib + this repo)
    python tools/peer_anomalib.py check          # the two extractors give identical maps
    python tools/peer_anomalib.py run --data-root ../shared/data/mvtec_ad_256 \\
        --categories bottle,screw --output results/peer
    # quick check on a subset (labelled SUBSET RUN in the outputs):
    python tools/peer_anomalib.py run --data-root ../shared/data/mvtec_ad_256 \\
        --categories bottle --limit-train 10 --limit-test 12 --output results/peer_subset

``run`` and ``check`` re-execute themselves under the peer venv when started from another
interpreter. ``--data-root`` defaults to ``$FAPM_SHARED_DATA``, else ``../shared/data/mvtec_ad_256``.
Outputs: ``OUTPUT/peer.md`` and ``OUTPUT/peer.json``, written atomically, rewritten after each
category (``complete: false`` until the last one). Expect anomalib's coreset to take ~40 min
(bottle) and ~80 min (screw) on one thread; FAPM's fit about 15 s.

Environment (``setup``): anomalib is NOT a dependency of the package (never in pyproject.toml);
it lives in its own venv, ``.peer-venv/`` (git-ignored). Pins: ``ANOMALIB_VERSION`` below (the
release this was measured with, the current one on PyPI at the time), ``torch==2.14.1`` and
``torchvision==0.29.1`` (the wheels on this machine's disk), given both as requirements and as
a pip constraints file so that no dependency can pull another torch. anomalib 2.7.0 declares
torch only in its ``cpu``/``cu126``/``cu130`` extras, so installing it without extras plus the
pins resolves with no conflict: no ``--no-deps`` workaround was needed.
"""
from __future__ import annotations

import argparse
import ctypes
import datetime as _dt
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: the anomalib release this benchmark was measured with (the current PyPI release then)
ANOMALIB_VERSION = "2.7.0"
#: torch and torchvision as on this machine's disk; pip must not pull any other
TORCH_PINS = ("torch==2.14.1", "torchvision==0.29.1")
EXTRA_PACKAGES = ("psutil",)  # the memory sampler
DEFAULT_VENV = REPO / ".peer-venv"
BACKBONE = "tf_efficientnet_lite0"
CORESET_RATIO = 0.1
POOL_SIZE = 3
SEED = 0


# ---- environment -----------------------------------------------------------------------------
def venv_dir(args: argparse.Namespace | None = None) -> Path:
    given = getattr(args, "venv", None) or os.environ.get("PEER_VENV")
    return Path(given).resolve() if given else DEFAULT_VENV


def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def in_venv(venv: Path) -> bool:
    return Path(sys.prefix).resolve() == venv.resolve()


def setup(args: argparse.Namespace) -> int:
    """Create the peer venv with anomalib, this repository (editable) and the pinned torch."""
    venv = venv_dir(args)
    if not venv_python(venv).exists():
        print(f"creating {venv}", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = str(venv_python(venv))
    with tempfile.NamedTemporaryFile("w", suffix=".txt", prefix="peer-constraints-", delete=False) as f:
        f.write("\n".join(TORCH_PINS) + "\n")
        constraints = f.name
    try:
        cmd = [py, "-m", "pip", "install", "-c", constraints, *TORCH_PINS, f"anomalib=={ANOMALIB_VERSION}",
               *EXTRA_PACKAGES, "-e", str(REPO)]
        print(" ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
    finally:
        os.unlink(constraints)
    probe = ("import torch, torchvision, timm, anomalib, fapm_lib; "
             "print('torch', torch.__version__, 'torchvision', torchvision.__version__, "
             "'timm', timm.__version__, 'anomalib', anomalib.__version__)")
    subprocess.run([py, "-c", probe], check=True)
    subprocess.run([py, "-m", "pip", "check"], check=False)  # reported, not fatal
    print(f"peer venv ready: {venv}")
    return 0


def reexec_in_venv(args: argparse.Namespace) -> None:
    """Run this script again under the peer venv's python (one thread), unless already in it."""
    venv = venv_dir(args)
    if in_venv(venv):
        return
    py = venv_python(venv)
    if not py.exists():
        sys.exit(f"no peer venv at {venv}: run `python {Path(__file__).name} setup` first")
    env = dict(os.environ, PEER_VENV=str(venv), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    os.execve(str(py), [str(py), str(Path(__file__).resolve()), *sys.argv[1:]], env)


def one_thread() -> None:
    import torch

    torch.set_num_threads(1)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set
        pass


# ---- the two methods -------------------------------------------------------------------------
def fapm_config(**changes):
    from fapm_lib import FAPMConfig

    # resize and crop passed explicitly: the paper's protocol, whatever the library's defaults become
    values = dict(backbone=BACKBONE, resize=256, crop_size=224, pool_size=POOL_SIZE, coreset_ratio=CORESET_RATIO,
                  calibration_folds=0, seed=SEED)
    values.update(changes)
    return FAPMConfig(**values)


def stride_layers(extractor) -> list[str]:
    """timm module names of the extractor's stride-8 and stride-16 stages (``blocks.2``, ``blocks.4``)."""
    info = extractor.model.feature_info
    strides = info.reduction()
    assert list(strides) == [8, 16], strides
    return list(info.module_name())


def build_anomalib(extractor, num_neighbors: int = 9):
    """anomalib's PatchCore torch model on FAPM's very weights (built with pre_trained=False)."""
    import torch
    from anomalib.models.image.patchcore.torch_model import PatchcoreModel

    layers = stride_layers(extractor)
    model = PatchcoreModel(layers=layers, backbone=BACKBONE, pre_trained=False, num_neighbors=num_neighbors)
    state = extractor.model.state_dict()
    result = model.feature_extractor.feature_extractor.load_state_dict(state, strict=False)
    assert not result.unexpected_keys, result.unexpected_keys
    # FAPM's extractor stops after the stride-16 stage; timm's (anomalib's) keeps blocks 5 and 6,
    # which no returned map depends on: those (and only those) keep their random initialisation
    stray = [k for k in result.missing_keys if not k.startswith(("blocks.5.", "blocks.6."))]
    assert not stray, stray
    model.eval()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        check_same_maps(extractor, model.feature_extractor, torch.randn(2, 3, 224, 224))
    return model


def check_same_maps(fapm_extractor, anomalib_extractor, images) -> float:
    """Assert the two extractors give bit-identical stride-8 / stride-16 maps; return max |diff|."""
    import torch

    with torch.inference_mode():
        ours = fapm_extractor(images)
        theirs = list(anomalib_extractor(images).values())
    assert len(ours) == len(theirs) == 2
    worst = 0.0
    for a, b in zip(ours, theirs):
        assert a.shape == b.shape, (a.shape, b.shape)
        worst = max(worst, float((a - b).abs().max()))
        assert torch.equal(a, b), f"feature maps differ (max |diff| {worst:g}): not the same weights"
    return worst


def anomalib_fit(model, loader) -> None:
    """What anomalib's Lightning ``Patchcore`` does: training_step per batch, then the coreset."""
    import torch

    model.train()
    with torch.inference_mode():
        for batch in loader:
            model(batch["image"])
    with torch.inference_mode():  # (inference mode, as Lightning's fit-end hook; no autograd either way)
        model.subsample_embedding(CORESET_RATIO)
    model.eval()


def anomalib_predict(model, images):
    import torch

    with torch.inference_mode():
        out = model(images)
    return out.anomaly_map[:, 0], out.pred_score


def fapm_predict(model, images):
    pred = model.predict(images)
    return pred.anomaly_map, pred.pred_score


# ---- measuring -------------------------------------------------------------------------------
def trim_heap() -> None:
    """Free Python garbage and hand glibc's free heap back to the OS (honest RSS baselines)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakRSS:
    """Peak RSS increase over the RSS at ``start``, sampled by a background thread."""

    def __init__(self, interval: float = 0.005) -> None:
        import psutil

        self._proc = psutil.Process()
        self.interval = interval
        self._stop = threading.Event()
        self.baseline = self.peak = 0

    def __enter__(self) -> "PeakRSS":
        trim_heap()
        self.baseline = self.peak = self._proc.memory_info().rss
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self._proc.memory_info().rss)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)

    @property
    def increase_mb(self) -> float:
        return (self.peak - self.baseline) / 2**20


def timed(fn, *args):
    """(wall s, process CPU s, result)."""
    w, c = time.perf_counter(), time.process_time()
    out = fn(*args)
    return time.perf_counter() - w, time.process_time() - c, out


def alternate(runners: dict, inputs: list, repeats: int, warmup: int) -> dict:
    """Run every method on ``inputs[i % len]`` per repeat, order swapped each repeat; medians."""
    names = list(runners)
    for i in range(warmup):
        for name in names:
            runners[name](inputs[i % len(inputs)])
    wall = {n: [] for n in names}
    cpu = {n: [] for n in names}
    for r in range(repeats):
        x = inputs[r % len(inputs)]
        for name in (names if r % 2 == 0 else names[::-1]):
            w, c, _ = timed(runners[name], x)
            wall[name].append(w)
            cpu[name].append(c)
    return {n: {"median_s": statistics.median(wall[n]), "median_cpu_s": statistics.median(cpu[n]),
                "min_s": min(wall[n]), "runs": len(wall[n])} for n in names}


# ---- data ------------------------------------------------------------------------------------
def spread(items: list, limit: int | None) -> list:
    """``limit`` items evenly spread over ``items`` (all of them without a limit)."""
    if not limit or limit >= len(items):
        return items
    step = (len(items) - 1) / max(limit - 1, 1)
    return [items[round(i * step)] for i in range(limit)]


def load_split(root, category, split, transform, limit):
    from fapm_lib import MVTecDataset

    dataset = MVTecDataset(root, category, split, transform)
    if limit:  # train: the first N images; test: N spread over the sorted list (every defect type and good)
        dataset.samples = dataset.samples[:limit] if split == "train" else spread(dataset.samples, limit)
    return dataset


def stack_test(dataset, batch_size=16):
    import torch
    from torch.utils.data import DataLoader

    images, masks, labels = [], [], []
    for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        images.append(batch["image"])
        masks.append(batch["mask"])
        labels.append(torch.as_tensor(batch["label"]))
    return torch.cat(images), torch.cat(masks), torch.cat(labels)


def predict_all(fn, images, batch_size=16):
    import torch

    maps, scores = [], []
    for chunk in images.split(batch_size):
        m, s = fn(chunk)
        maps.append(m.float().cpu())
        scores.append(s.float().cpu().reshape(-1))
    return torch.cat(maps), torch.cat(scores)


# ---- one category ----------------------------------------------------------------------------
def run_category(args, category: str, on_partial=None) -> dict:
    import torch
    from torch.utils.data import DataLoader

    from fapm_lib import FAPM, compute_metrics, create_feature_extractor

    print(f"\n== {category} ==", flush=True)
    load_start = os.getloadavg()
    config = fapm_config()
    extractor = create_feature_extractor(BACKBONE, optimize=False)
    fapm = FAPM(config, extractor=extractor)
    transform = fapm.transform
    assert (transform.resize, transform.crop_size) == (256, 224)
    train = load_split(args.data_root, category, "train", transform, args.limit_train)
    test = load_split(args.data_root, category, "test", transform, args.limit_test)
    test_images, test_masks, test_labels = stack_test(test)
    print(f"train {len(train)} images, test {len(test)} ({int(test_labels.sum())} anomalous)", flush=True)
    row: dict = {"category": category, "n_train": len(train), "n_test": len(test),
                 "n_test_anomalous": int(test_labels.sum()), "loadavg_start": load_start}

    # FAPM: fit (features + memories; calibration off), then the test set
    torch.manual_seed(SEED)
    with PeakRSS() as mem_f:
        fit_w, fit_c, _ = timed(lambda: fapm.fit(train, progress=False))
        maps_f, scores_f = predict_all(lambda x: fapm_predict(fapm, x), test_images)
    row["fapm"] = {"fit_s": fit_w, "fit_cpu_s": fit_c, "fit_stats": dict(fapm.fit_stats),
                   "peak_rss_increase_mb": mem_f.increase_mb, "memory_bank": fapm.memory_size(),
                   "metrics": compute_metrics(scores_f, test_labels, maps_f, test_masks)}
    print(f"FAPM: fit {fit_w:.1f} s, peak +{mem_f.increase_mb:.0f} MB, {row['fapm']['metrics']}", flush=True)
    if on_partial:  # FAPM's half on disk before anomalib's long fit (kept if the run is interrupted)
        on_partial(row)

    # anomalib PatchCore: same weights, its own embedding collection + coreset, then the test set
    model = build_anomalib(extractor)
    loader = DataLoader(train, batch_size=config.batch_size, shuffle=False)
    torch.manual_seed(SEED)  # KCenterGreedy's random start and the projection's signs (torch RNG),
    import numpy as np  # the projection's column choice (numpy's global RNG, random_state=None)

    np.random.seed(SEED)
    print("anomalib: fitting (its coreset is the slow part) ...", flush=True)
    with PeakRSS() as mem_a:
        fit_w, fit_c, _ = timed(anomalib_fit, model, loader)
        maps_a, scores_a = predict_all(lambda x: anomalib_predict(model, x), test_images)
    bank = model.memory_bank
    row["anomalib"] = {"fit_s": fit_w, "fit_cpu_s": fit_c, "peak_rss_increase_mb": mem_a.increase_mb,
                       "memory_bank": {"vectors": int(bank.shape[0]), "dim": int(bank.shape[1]),
                                       "megabytes": bank.numel() * bank.element_size() / 2**20},
                       "metrics": compute_metrics(scores_a, test_labels, maps_a, test_masks)}
    model.num_neighbors = 1  # the plain max patch score, for reference (maps are unchanged)
    _, scores_max = predict_all(lambda x: anomalib_predict(model, x), test_images)
    model.num_neighbors = 9
    row["anomalib"]["image_auroc_max_score"] = compute_metrics(scores_max, test_labels, maps_a, None)["image_auroc"]
    print(f"anomalib: fit {fit_w:.1f} s, peak +{mem_a.increase_mb:.0f} MB, {row['anomalib']['metrics']}", flush=True)

    # speed, the two methods alternated
    singles = [test_images[i:i + 1] for i in range(len(test_images))]
    runners = {"fapm": lambda x: fapm_predict(fapm, x), "anomalib": lambda x: anomalib_predict(model, x)}
    b1 = alternate(runners, singles, args.repeats, args.warmup)
    batches = [test_images[(i * 16) % len(test_images):][:16] for i in range(max(1, len(test_images) // 16))]
    batches = [b if len(b) == 16 else test_images[:16] for b in batches]
    b16 = alternate(runners, batches, args.batch_repeats, 1)
    with torch.inference_mode():
        bb = alternate({"fapm": extractor, "anomalib": model.feature_extractor}, singles, args.repeats, args.warmup)
    n16 = int(batches[0].shape[0])
    for name in ("fapm", "anomalib"):
        row[name]["batch1_ms"] = 1000 * b1[name]["median_s"]
        row[name]["batch1_cpu_ms"] = 1000 * b1[name]["median_cpu_s"]
        row[name]["batch16_img_s"] = n16 / b16[name]["median_s"]
        row[name]["batch16_cpu_img_s"] = n16 / b16[name]["median_cpu_s"]
        row[name]["backbone_batch1_ms"] = 1000 * bb[name]["median_s"]
        row[name]["backbone_batch1_cpu_ms"] = 1000 * bb[name]["median_cpu_s"]
    row["timing_runs"] = {"batch1": args.repeats, "batch16": args.batch_repeats, "batch16_size": n16,
                          "warmup": args.warmup}
    row["loadavg_end"] = os.getloadavg()
    print(f"batch 1: FAPM {row['fapm']['batch1_ms']:.1f} ms, anomalib {row['anomalib']['batch1_ms']:.1f} ms; "
          f"batch 16: {row['fapm']['batch16_img_s']:.1f} vs {row['anomalib']['batch16_img_s']:.1f} img/s", flush=True)
    # model and fapm go with this frame; the heap is trimmed for the next category
    trim_heap()
    return row


# ---- report ----------------------------------------------------------------------------------
def environment() -> dict:
    import anomalib
    import timm
    import torch
    import torchvision

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())

    def git(*a):
        try:
            return subprocess.run(["git", *a], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return None

    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
            "timm": timm.__version__, "anomalib": anomalib.__version__,
            "git_commit": git("rev-parse", "HEAD"),
            "git_dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
            "git_branch": git("rev-parse", "--abbrev-ref", "HEAD")}


def fmt(v, digits=1, scale=1.0):
    return "" if v is None else f"{v * scale:.{digits}f}"


def markdown(report: dict) -> str:
    env = report["environment"]
    lines = [f"# FAPM against anomalib's PatchCore, side by side{' (SUBSET RUN)' if report['subset'] else ''}", ""]
    if report["subset"]:
        lines += [f"**SUBSET RUN**: at most {report['limit_train']} training and {report['limit_test']} test images "
                  "per category. A quick check of the script, not a result.", ""]
    if not report["complete"]:
        lines += [f"**In progress**: {len(report['rows'])} of {len(report['categories'])} categories done.", ""]
        if report.get("in_progress"):
            now_, f = report["in_progress"], report["in_progress"]["fapm"]
            lines += [f"{now_['category']}: {now_['note']}. FAPM's half so far: fit {fmt(f['fit_s'])} s, peak "
                      f"+{fmt(f['peak_rss_increase_mb'], 0)} MiB, image / pixel AUROC "
                      f"{fmt(f['metrics']['image_auroc'], 1, 100)} / {fmt(f['metrics']['pixel_auroc'], 1, 100)}, "
                      f"pixel F1-max {fmt(f['metrics']['pixel_f1_max'], 1, 100)} (speed is measured after "
                      "anomalib's fit).", ""]
    lines += ["| method | category | fit s | batch-1 ms | batch-16 img/s | peak memory MB | image AUROC | "
              "pixel AUROC | pixel F1-max | pixel AUPRO |", "|---|---|---|---|---|---|---|---|---|---|"]
    for method, label in (("fapm", "FAPM (fapm_lib)"), ("anomalib", f"PatchCore (anomalib {env['anomalib']})")):
        for row in report["rows"]:
            r, m = row[method], row[method]["metrics"]
            lines.append(f"| {label} | {row['category']} | {fmt(r['fit_s'])} | {fmt(r['batch1_ms'])} | "
                         f"{fmt(r['batch16_img_s'])} | {fmt(r['peak_rss_increase_mb'], 0)} | "
                         f"{fmt(m['image_auroc'], 1, 100)} | {fmt(m['pixel_auroc'], 1, 100)} | "
                         f"{fmt(m['pixel_f1_max'], 1, 100)} | {fmt(m['pixel_aupro'], 1, 100)} |")
    lines += ["", "Metrics in %, by `fapm_lib.compute_metrics` for both methods (maps at 224x224).", ""]
    lines += ["| category | train / test images | FAPM bank | anomalib bank | anomalib image AUROC, max score | "
              "backbone ms, FAPM / anomalib extractor | batch-1 CPU ms, FAPM / anomalib | load avg start / end |",
              "|---|---|---|---|---|---|---|---|"]
    for row in report["rows"]:
        f, a = row["fapm"], row["anomalib"]
        lines.append(f"| {row['category']} | {row['n_train']} / {row['n_test']} | "
                     f"{f['memory_bank'].get('vectors', '')} vectors, "
                     f"{fmt(f['memory_bank'].get('megabytes'), 2)} MiB | "
                     f"{a['memory_bank']['vectors']} x {a['memory_bank']['dim']}, "
                     f"{fmt(a['memory_bank']['megabytes'], 2)} MiB | "
                     f"{fmt(a['image_auroc_max_score'], 1, 100)} | {fmt(f['backbone_batch1_ms'])} / "
                     f"{fmt(a['backbone_batch1_ms'])} | {fmt(f['batch1_cpu_ms'])} / {fmt(a['batch1_cpu_ms'])} | "
                     f"{' '.join(fmt(x, 2) for x in row['loadavg_start'])} / "
                     f"{' '.join(fmt(x, 2) for x in row['loadavg_end'])} |")
    t = report["rows"][0]["timing_runs"] if report["rows"] else {}
    lines += ["",
              f"- Machine: {env['cpu']}, {env['cores']} cores; torch {env['torch']} ({env['torch_threads']} thread), "
              f"torchvision {env['torchvision']}, timm {env['timm']}, anomalib {env['anomalib']}, "
              f"Python {env['python']}.",
              f"- Commit {env['git_commit']}{' (uncommitted changes)' if env['git_dirty'] else ''} "
              f"on {env['git_branch']}; started {report['started']}, written {report['written']} (UTC).",
              f"- Load average (1, 5, 15 min) at start {' '.join(fmt(x, 2) for x in report['loadavg_start'])}, "
              f"at end {' '.join(fmt(x, 2) for x in report['loadavg_end'])}.",
              f"- Command: `{report['command']}`"
              + (f" (with --resume: {', '.join(report['resumed_from']['categories'])} kept from the run started "
                 f"{report['resumed_from']['started']})" if report.get("resumed_from") else ""),
              "- Protocol: one process, `torch.set_num_threads(1)`; resize 256, centre crop 224; "
              f"{BACKBONE} ImageNet weights, the same tensors in both (maps asserted bit-identical); layers "
              f"{', '.join(report['layers'])} (stride 8, 16); 3x3 average-pool aggregation; "
              f"coreset ratio {CORESET_RATIO}. "
              "FAPM: grid 7, adaptive ratio, `max` score, `calibration_folds=0`. anomalib: `PatchcoreModel` "
              "(`num_neighbors=9`, re-weighted score), its embedding collection and `subsample_embedding`.",
              "- Fit: images decoded by the same loader (batch 16) + features + memory/coreset. "
              f"Batch-1 ms: median of {t.get('batch1', '?')} single-image runs after {t.get('warmup', '?')} warm-up, "
              f"the methods alternated; batch-16: {t.get('batch16_size', 16)} / median of "
              f"{t.get('batch16', '?')} batches. "
              "Peak memory (MiB): peak RSS increase over the RSS before the method's phase (fit + test-set inference), "
              "sampled every 5 ms by a psutil thread, heap trimmed before each phase.",
              "- anomalib's extractor also runs timm's blocks 5 and 6 (unused by its maps); FAPM's stops at block 4: "
              "see the backbone column."]
    return "\n".join(lines) + "\n"


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def resumed_rows(path: Path, report: dict) -> dict:
    """Rows of an earlier run of the same kind (subset limits, backbone layers) at ``path``, by
    category; {} when there is none. Lets an interrupted run go on with the categories left."""
    if not path.exists():
        return {}
    old = json.loads(path.read_text())
    if any(old.get(k) != report[k] for k in ("subset", "limit_train", "limit_test", "layers")):
        sys.exit(f"--resume: {path} was written by a run with other limits or layers; use another --output")
    if old["environment"].get("anomalib") != report["environment"]["anomalib"]:
        sys.exit(f"--resume: {path} was measured with anomalib {old['environment'].get('anomalib')}")
    rows = {row["category"]: row for row in old.get("rows", []) if row["category"] in report["categories"]}
    return {**rows, "_started": old.get("started")} if rows else {}


def run(args: argparse.Namespace) -> int:
    reexec_in_venv(args)
    one_thread()
    from fapm_lib import create_feature_extractor

    categories = [c.strip() for c in args.categories.split(",") if c.strip()]
    output = Path(args.output)
    report = {"subset": bool(args.limit_train or args.limit_test), "limit_train": args.limit_train,
              "limit_test": args.limit_test, "categories": categories, "complete": False, "rows": [],
              "started": now(), "loadavg_start": os.getloadavg(), "environment": environment(),
              "command": "python tools/peer_anomalib.py " + " ".join(sys.argv[1:]),
              "layers": stride_layers(create_feature_extractor(BACKBONE)), "data_root": str(args.data_root_shown)}
    done = resumed_rows(output / "peer.json", report) if args.resume else {}
    if done:
        started = done.pop("_started")
        report["resumed_from"] = {"categories": sorted(done), "started": started}
        print(f"resuming: {', '.join(report['resumed_from']['categories'])} already measured", flush=True)
    def save() -> None:
        report["written"], report["loadavg_end"] = now(), os.getloadavg()
        write_atomic(output / "peer.json", json.dumps(report, indent=2) + "\n")
        write_atomic(output / "peer.md", markdown(report))

    def partial(row: dict) -> None:
        report["in_progress"] = {"category": row["category"], "fapm": row["fapm"],
                                 "note": "FAPM measured; anomalib's fit started " + now() + " UTC"}
        save()

    for category in categories:
        report["rows"].append(done[category] if category in done else run_category(args, category, partial))
        report.pop("in_progress", None)
        report["complete"] = len(report["rows"]) == len(categories)
        save()
        print(f"wrote {output / 'peer.md'}", flush=True)
    print(markdown(report))
    return 0


def check(args: argparse.Namespace) -> int:
    """The script's own guard of "same weights": identical maps on a random batch."""
    reexec_in_venv(args)
    one_thread()
    import torch

    from fapm_lib import create_feature_extractor

    extractor = create_feature_extractor(BACKBONE, optimize=False)
    model = build_anomalib(extractor)  # asserts identical maps on a seeded random batch
    torch.manual_seed(1)
    images = torch.randn(4, 3, 224, 224)
    worst = check_same_maps(extractor, model.feature_extractor, images)
    shapes = [tuple(m.shape) for m in extractor(images)]
    print(f"ok: FAPM's and anomalib's extractors give identical maps {shapes} on a random batch "
          f"(layers {stride_layers(extractor)}, max |diff| {worst:g})")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("setup", "check", "run"):
        p = sub.add_parser(name)
        p.add_argument("--venv", help=f"the peer venv (default {DEFAULT_VENV.relative_to(REPO)}/, or $PEER_VENV)")
    p = sub.choices["run"]
    p.add_argument("--data-root", default=None,
                   help="MVTec AD root (default $FAPM_SHARED_DATA, else ../shared/data/mvtec_ad_256)")
    p.add_argument("--categories", default="bottle,screw")
    p.add_argument("--output", default="results/peer")
    p.add_argument("--repeats", type=int, default=30, help="batch-1 runs per method")
    p.add_argument("--batch-repeats", type=int, default=5, help="batch-16 runs per method")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--resume", action="store_true",
                   help="keep the categories already in OUTPUT/peer.json (same limits) and measure the others")
    p.add_argument("--limit-train", type=int, default=None, help="SUBSET RUN: first N training images")
    p.add_argument("--limit-test", type=int, default=None, help="SUBSET RUN: N test images spread over the set")
    args = parser.parse_args(argv)
    if args.command == "setup":
        return setup(args)
    if args.command == "check":
        return check(args)
    shown = args.data_root or os.environ.get("FAPM_SHARED_DATA") or "../shared/data/mvtec_ad_256"
    args.data_root_shown = shown
    args.data_root = Path(shown) if Path(shown).is_absolute() else (Path.cwd() / shown)
    if not args.data_root.is_dir() and not Path(shown).is_absolute():
        args.data_root = REPO / shown  # relative to the repository root
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
