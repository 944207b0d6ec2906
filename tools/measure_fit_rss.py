"""Peak resident memory (RSS) of ``FAPM.fit`` on N synthetic training images.

Synthetic images are cheap smooth noise textures, made batch by batch and never all held at once:

- ``--source loader`` (default): an in-memory ``Dataset`` read through a ``DataLoader``, so
  ``fit`` knows the image count and preallocates its region-feature buffers (the CLI's path);
- ``--source generator``: a plain generator of ``[B, 3, S, S]`` batches (count unknown);
- ``--source folder``: PNG files in a temporary MVTec-layout folder read by ``MVTecDataset``.

Prints one JSON line: peak RSS (``ru_maxrss``) before and after the fit, the sampled RSS peak
and when it happened, the size of the accumulated region features and of the memories.

    python tools/measure_fit_rss.py --n-images 2000
    python tools/measure_fit_rss.py --backbone wide_resnet50_2 --random-weights --n-images 250
"""
from __future__ import annotations

import argparse
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
from fapm_lib.data import make_loader

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
    """Peak resident set size of this process so far, in bytes (``ru_maxrss`` is in KiB on Linux)."""
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
    config = FAPMConfig(backbone=args.backbone, pretrained=not args.random_weights, batch_size=args.batch_size)
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
        "backbone": config.backbone, "malloc_tuned": malloc_tuned, "pretrained": config.pretrained, "source": args.source,
        "n_images": args.n_images, "input": config.input_size, "channels": list(model.backbone_info.channels),
        "feature_sizes": [list(s) for s in model.feature_sizes], "torch_threads": torch.get_num_threads(),
        "rss_before_fit_mib": round(before_now / MIB, 1), "peak_rss_before_fit_mib": round(before_peak / MIB, 1),
        "peak_rss_mib": round(peak / MIB, 1), "sampled_peak_mib": round(sampler.peak / MIB, 1),
        "sampled_peak_at_s": round(sampler.peak_at, 1),
        "feature_seconds": round(model.fit_stats["feature_seconds"], 1), "fit_seconds": round(fit_seconds, 1),
        "features_mib": round(features / MIB, 1), "features_mib_per_1000": round(features / args.n_images * 1000 / MIB, 1),
        "fit_growth_mib": round((peak - before_now) / MIB, 1),
        "memory_mib": round(model.memory_size()["megabytes"], 1),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n-images", type=int, default=2000)
    p.add_argument("--backbone", default="tf_efficientnet_lite0")
    p.add_argument("--random-weights", action="store_true", help="random backbone weights (no download)")
    p.add_argument("--source", choices=["loader", "generator", "folder"], default="loader")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--rss-limit-gib", type=float, default=8.0, help="abort (exit 3) when RSS exceeds this")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    print(json.dumps(measure(parse_args(argv))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
