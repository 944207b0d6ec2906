"""Peak resident memory (RSS) of ``FAPM.fit`` on N synthetic training images.

Synthetic images are cheap smooth noise textures, made batch by batch and never all held at once:

- ``--source loader`` (default): an in-memory ``Dataset`` read through a ``DataLoader``, so
  ``fit`` knows the image count and preallocates its region-feature buffers (the CLI's path);
- ``--source generator``: a plain generator of ``[B, 3, S, S]`` batches (count unknown);
- ``--source folder``: PNG files in a temporary MVTec-layout folder read by ``MVTecDataset``.

Prints one JSON line: peak RSS (``VmHWM``) before and after the fit, the sampled RSS peak
and when it happened, the size of the accumulated region features and of the memories.

``--synthetic-features`` skips images and backbone: seeded random ``wide_resnet50_2``-shaped
aggregated maps (``[N, 512, 28, 28]`` and ``[N, 1024, 14, 14]``), made batch by batch and never
all at once, go straight into ``FAPM.fit_map_batches``, k-fold calibration included (``--calibration-folds``,
default 5); ``--max-memory 6GB`` fits through the disk store, ``--scheduler local:2`` runs its region
jobs on Dask. The last line is one JSON object (``peak_rss_mb``, ``n_images``, ``seconds`` per
stage, the settings, the coreset method used, the thresholds, the region jobs' seconds and reads,
and a sha256 of the fitted memory, banks and sources, to compare runs). An in-RAM fit whose
features would not fit under ``--rss-limit-gib`` is refused up front.

    python tools/measure_fit_rss.py --n-images 2000
    python tools/measure_fit_rss.py --backbone wide_resnet50_2 --random-weights --n-images 250
    python tools/measure_fit_rss.py --synthetic-features --n-images 10000 --max-memory 6GB
    python tools/measure_fit_rss.py --synthetic-features --n-images 10000 --max-memory 6GB --scheduler local:2
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from fapm_lib import FAPM, FAPMConfig, MVTecDataset, tune_allocator
from fapm_lib.data.mvtec import make_loader
from fapm_lib.method.backbone import BackboneInfo
from fapm_lib.system.budget import parse_size

MIB = 2**20


def texture(index: int, size: int) -> Tensor:
    """Smooth noise texture ``[3, size, size]`` in roughly [-2, 2], seeded by ``index``."""
    gen = torch.Generator().manual_seed(index)
    coarse = torch.randn(1, 3, size // 8, size // 8, generator=gen)
    fine = torch.randn(1, 3, size, size, generator=gen) * 0.2
    return (F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False) + fine)[0]



class TextureSet(Dataset):
    """``n`` textures made on access: items ``[3, size, size]``."""

    def __init__(self, n: int, size: int) -> None:
        self.n, self.size = n, size

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> Tensor:
        return texture(index, self.size)


def texture_batches(n: int, size: int, batch_size: int) -> Iterator[Tensor]:
    """Batches ``[B, 3, size, size]`` of textures, ``n`` images in all."""
    for start in range(0, n, batch_size):
        yield torch.stack([texture(i, size) for i in range(start, min(n, start + batch_size))])


def write_folder(root: Path, n: int, size: int) -> Path:
    """``root/synthetic/train/good/00000.png ...``: ``n`` RGB textures of ``size`` px; returns root."""
    folder = root / "synthetic" / "train" / "good"
    folder.mkdir(parents=True)
    for i in range(n):
        pixels = (texture(i, size).permute(1, 2, 0).clamp(-2, 2) * 63 + 128).to(torch.uint8).numpy()
        Image.fromarray(np.ascontiguousarray(pixels)).save(folder / f"{i:05d}.png", compress_level=1)
    return root


def current_rss() -> int:
    """Resident set size now, in bytes (Linux /proc)."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize()


def max_rss() -> int:
    """Peak resident set size of this process so far, in bytes: ``VmHWM`` of /proc/self/status.

    Not ``getrusage().ru_maxrss``: Linux carries the parent's peak RSS into a child across
    fork/vfork + exec, so a run started by a large process (pytest after the export tests, at
    ~1.7 GB) reported the parent's peak instead of its own (``ru_maxrss`` only off Linux)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class RssSampler(threading.Thread):
    """Samples RSS every ``interval`` s; ``peak`` bytes and ``peak_at`` s since start. Above
    ``limit`` bytes it prints what it knows and ends the process (exit 3), sparing the machine."""

    def __init__(self, limit: float, interval: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.limit, self.interval, self.peak, self.peak_at = limit, interval, 0, 0.0
        self.start_time = time.perf_counter()
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            rss = current_rss()
            if rss > self.peak:
                self.peak, self.peak_at = rss, time.perf_counter() - self.start_time
            if rss > self.limit:
                print(json.dumps({"aborted": f"RSS above {self.limit / 2**30:.1f} GiB", "rss_mib": round(rss / MIB, 1),
                                  "after_s": round(self.peak_at, 1)}), flush=True)
                os._exit(3)
            self._stop_event.wait(self.interval)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


def feature_bytes(model: FAPM, n_images: int) -> int:
    """Bytes of all training images' aggregated features, float32, both layers."""
    per_image = sum(c * h * w for c, (h, w) in zip(model.backbone_info.channels, model.feature_sizes))
    return 4 * per_image * n_images


def training_data(args: argparse.Namespace, model: FAPM, workdir: Path):
    """What ``fit`` gets for ``args.source``."""
    size = model.config.input_size
    if args.source == "generator":
        return texture_batches(args.n_images, size, model.config.batch_size)
    if args.source == "loader":
        return make_loader(TextureSet(args.n_images, size), model.config.batch_size)
    root = write_folder(workdir, args.n_images, model.config.resize)
    return MVTecDataset(root, "synthetic", "train", model.transform)


def measure(args: argparse.Namespace) -> dict:
    """Fit once; return the figures (with the ``fapm`` command's allocator settings, unless
    ``FAPM_NO_MALLOC_TUNING=1``)."""
    malloc_tuned = tune_allocator()
    # the memory fit alone (calibration_folds 0), as the README's figures were measured
    config = FAPMConfig(backbone=args.backbone, pretrained=not args.random_weights, batch_size=args.batch_size,
                        calibration_folds=0)
    model = FAPM(config)
    # build the backbone and run one full batch first, so the baseline holds its working memory
    model.embed(torch.zeros(config.batch_size, 3, config.input_size, config.input_size))
    with tempfile.TemporaryDirectory() as workdir:
        data = training_data(args, model, Path(workdir))
        before_peak, before_now = max_rss(), current_rss()
        sampler = RssSampler(args.rss_limit_gib * 2**30)
        sampler.start()
        start = time.perf_counter()
        model.fit(data, progress=not args.no_progress)
        fit_seconds = time.perf_counter() - start
        sampler.stop()
    features = feature_bytes(model, args.n_images)
    peak = max_rss()
    return {
        "backbone": config.backbone, "malloc_tuned": malloc_tuned, "pretrained": config.pretrained,
        "source": args.source,
        "n_images": args.n_images, "input": config.input_size, "channels": list(model.backbone_info.channels),
        "feature_sizes": [list(s) for s in model.feature_sizes], "torch_threads": torch.get_num_threads(),
        "rss_before_fit_mib": round(before_now / MIB, 1), "peak_rss_before_fit_mib": round(before_peak / MIB, 1),
        "peak_rss_mib": round(peak / MIB, 1), "sampled_peak_mib": round(sampler.peak / MIB, 1),
        "sampled_peak_at_s": round(sampler.peak_at, 1),
        "feature_seconds": round(model.fit_stats["feature_seconds"], 1), "fit_seconds": round(fit_seconds, 1),
        "features_mib": round(features / MIB, 1),
        "features_mib_per_1000": round(features / args.n_images * 1000 / MIB, 1),
        "fit_growth_mib": round((peak - before_now) / MIB, 1),
        "memory_mib": round(model.memory_size()["megabytes"], 1),
    }


#: wide_resnet50_2 at 224: layer2 [512, 28, 28] (stride 8), layer3 [1024, 14, 14] (stride 16).
WRN_INFO = BackboneInfo("wide_resnet50_2 (synthetic features)", (512, 1024), (8, 16), (0.485, 0.456, 0.406),
                        (0.229, 0.224, 0.225), False)
WRN_SHAPES = ((512, 28, 28), (1024, 14, 14))


class FeatureStub:
    """Stands in for the backbone: only its :class:`BackboneInfo` is read (no weights are built)."""

    info = WRN_INFO


def synthetic_maps(n: int, batch_size: int, seed: int = 0) -> Iterator[list[Tensor]]:
    """Seeded random WRN-shaped aggregated maps, one batch ``[[B, 512, 28, 28], [B, 1024, 14, 14]]``
    at a time (each batch from its own generator, so the maps do not depend on what was made before)."""
    for start in range(0, n, batch_size):
        gen = torch.Generator().manual_seed(seed * 1_000_003 + start)
        b = min(batch_size, n - start)
        yield [torch.randn(b, *shape, generator=gen).abs_() for shape in WRN_SHAPES]  # >= 0, like ReLU features


def memory_digest(model: FAPM) -> str:
    """sha256 over every memory tensor (radii, near/far, region ids, banks, sources) in a fixed order."""
    h = hashlib.sha256()
    for mem in model.memories:
        for t in (mem.radii, mem.far, *(x for g in mem.groups for x in (g.regions, g.bank.contiguous(), g.sources))):
            h.update(t.cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def measure_synthetic(args: argparse.Namespace) -> dict:
    """Fit on synthetic WRN-shaped features; refuses an in-RAM fit that would not fit the limit."""
    malloc_tuned = tune_allocator()
    config = FAPMConfig(backbone=WRN_INFO.name, pretrained=False, batch_size=args.batch_size,
                        coreset_ratio=args.coreset_ratio, coreset_projection=args.coreset_projection,
                        sampling=args.sampling, max_memory=args.max_memory, store_dir=args.store_dir,
                        calibration_folds=args.calibration_folds, coreset_method=args.coreset_method,
                        coreset_cell_size=args.coreset_cell_size)
    per_image = 4 * sum(c * h * w for c, h, w in WRN_SHAPES)
    settings = {"mode": "synthetic-features", "n_images": args.n_images, "max_memory": args.max_memory,
                "coreset_ratio": args.coreset_ratio, "coreset_projection": args.coreset_projection,
                "sampling": args.sampling, "batch_size": args.batch_size, "torch_threads": torch.get_num_threads(),
                "calibration_folds": args.calibration_folds, "scheduler": args.scheduler,
                "coreset_cell_size": args.coreset_cell_size,
                "malloc_tuned": malloc_tuned, "features_mb": round(per_image * args.n_images / 1e6, 1)}
    limit = args.rss_limit_gib * 2**30
    if args.max_memory is None:
        # in RAM: every feature, plus the transposed copy of layer 2 during its coreset, plus the process
        need = per_image * args.n_images + 4 * 512 * 28 * 28 * args.n_images + 1.0e9
        if need > limit:
            return {**settings, "skipped": f"an in-RAM fit needs about {need / 1e9:.1f} GB, above --rss-limit-gib "
                                           f"{args.rss_limit_gib}: not run (use --max-memory)"}
    else:
        limit = max(limit, 1.1 * parse_size(args.max_memory))
    model = FAPM(config, extractor=FeatureStub())
    before_now = current_rss()
    sampler = RssSampler(limit)
    sampler.start()
    start = time.perf_counter()
    model.fit_map_batches(synthetic_maps(args.n_images, args.batch_size, args.seed),
                          None if args.unknown_count else args.n_images, progress=not args.no_progress,
                          scheduler=args.scheduler)
    seconds = time.perf_counter() - start
    sampler.stop()
    peak = max_rss()
    stats, cal = model.fit_stats, model.calibration
    return {**settings, "unknown_count": args.unknown_count,
            "peak_rss_mb": round(peak / 1e6, 1), "sampled_peak_mb": round(sampler.peak / 1e6, 1),
            "sampled_peak_at_s": round(sampler.peak_at, 1),
            "rss_before_fit_mb": round(before_now / 1e6, 1), "seconds": round(seconds, 1),
            **{key: round(stats[key], 1) for key in ("feature_seconds", "coreset_seconds", "region_pass_seconds",
                                                    "calibration_seconds") if key in stats},
            "coreset_method": stats.get("coreset_method"),
            "image_threshold": None if cal is None else cal.image_threshold,
            "pixel_threshold": None if cal is None else cal.pixel_threshold,
            "regions_per_chunk": stats.get("regions_per_chunk"), "jobs": stats.get("jobs"),
            "memory_mb": round(model.memory_size()["megabytes"] * 2**20 / 1e6, 1),
            "bank_sizes": [sorted(set(m.bank_sizes().tolist())) for m in model.memories],
            "memory_sha256": memory_digest(model)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n-images", type=int, default=2000)
    p.add_argument("--backbone", default="tf_efficientnet_lite0")
    p.add_argument("--random-weights", action="store_true", help="random backbone weights (no download)")
    p.add_argument("--source", choices=["loader", "generator", "folder"], default="loader")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--rss-limit-gib", type=float, default=8.0, help="abort (exit 3) when RSS exceeds this")
    p.add_argument("--no-progress", action="store_true")
    g = p.add_argument_group("synthetic features (no images, no backbone)")
    g.add_argument("--synthetic-features", action="store_true", help="feed WRN-shaped random maps into the fit")
    g.add_argument("--max-memory", help="fit through the disk store within this peak RSS, e.g. 6GB")
    g.add_argument("--store-dir", help="folder for the store's temporary files (default: the temp dir)")
    g.add_argument("--coreset-ratio", type=float, default=0.1)
    g.add_argument("--coreset-projection", type=int)
    g.add_argument("--sampling", choices=["adaptive", "fixed"], default="adaptive")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--unknown-count", action="store_true", help="do not tell the fit the image count up front")
    g.add_argument("--calibration-folds", type=int, default=5, help="k-fold calibration (0: the memory fit alone)")
    g.add_argument("--coreset-method", choices=["auto", "exact", "cells"], default="auto")
    g.add_argument("--coreset-cell-size", type=int)
    g.add_argument("--scheduler", help="with --max-memory: the region jobs on Dask, e.g. local:2")
    args = p.parse_args(argv)
    synthetic_only = (args.max_memory or args.store_dir or args.coreset_projection or args.unknown_count
                      or args.coreset_ratio != 0.1 or args.sampling != "adaptive" or args.scheduler
                      or args.calibration_folds != 5 or args.coreset_method != "auto" or args.coreset_cell_size)
    if not args.synthetic_features and synthetic_only:
        p.error("--max-memory, --store-dir, --coreset-ratio, --coreset-projection, --sampling, --unknown-count, "
                "--calibration-folds, --coreset-method, --coreset-cell-size and --scheduler need --synthetic-features")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = measure_synthetic(args) if args.synthetic_features else measure(args)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
