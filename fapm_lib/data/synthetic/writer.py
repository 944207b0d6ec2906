"""Write categories and the whole set in MVTec AD layout, atomically, with a completion marker."""
from __future__ import annotations

import json
import os
import secrets
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ...system.atomic import write_text_atomic
from .catalogue import CATEGORIES, CategorySpec, check_category, check_count, check_seed, check_size
from .render import render_sample

VERSION = 2                 # bump whenever a rendering changes: stale sets are regenerated (2: rail)
MARKER = ".complete"
N_TRAIN, N_TEST_GOOD, N_PER_DEFECT = 60, 20, 10   # images per folder by default


def _write_png(path: Path, array: np.ndarray) -> None:
    """[H, W, 3] or [H, W] uint8 -> PNG without metadata chunks (deterministic bytes)."""
    Image.fromarray(array).save(path, format="PNG", compress_level=1)


def _plan(spec: CategorySpec, n_train: int, n_test_good: int, n_per_defect: int
          ) -> list[tuple[str, str, int]]:
    """(split, defect, count) for every folder of one category."""
    return ([("train", "good", n_train), ("test", "good", n_test_good)]
            + [("test", d, n_per_defect) for d in spec.defects])


def _replace_dir(tmp: Path, final: Path) -> None:
    """Move a finished ``tmp`` directory onto ``final``, replacing any old one."""
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}-{secrets.token_hex(4)}")
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def _remove_leftovers(root: Path, category: str) -> None:
    """Delete hidden work directories of ``category`` left by killed runs (dead pid)."""
    for path in root.glob(f".{category}.*-*-*"):
        parts = path.name.split("-")
        if path.is_dir() and len(parts) >= 3 and parts[-2].isdigit() and not _pid_alive(int(parts[-2])):
            shutil.rmtree(path, ignore_errors=True)


def generate_category(output: str | Path, category: str, seed: int = 0, size: int = 256,
                      n_train: int = N_TRAIN, n_test_good: int = N_TEST_GOOD,
                      n_per_defect: int = N_PER_DEFECT) -> Path:
    """Write one category under ``output`` in MVTec AD layout; returns ``output/category``.

    Written into a hidden sibling directory first and renamed when complete, so an
    interrupted run never leaves a half category behind.
    """
    spec = check_category(category)
    size, seed = check_size(size), check_seed(seed)
    counts = [check_count(n, v) for n, v in
              (("n_train", n_train), ("n_test_good", n_test_good), ("n_per_defect", n_per_defect))]
    root = Path(output)
    root.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(root, category)
    tmp = root / f".{category}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        for split, defect, count in _plan(spec, *counts):
            folder = tmp / split / defect
            folder.mkdir(parents=True)
            masks = tmp / "ground_truth" / defect
            if defect != "good":
                masks.mkdir(parents=True)
            for i in range(count):
                sample = render_sample(category, split, defect, i, seed=seed, size=size)
                _write_png(folder / f"{i:03d}.png", sample.image)
                if sample.mask is not None:
                    _write_png(masks / f"{i:03d}_mask.png", sample.mask)
        _replace_dir(tmp, root / category)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root / category


def _marker(seed: int, size: int, categories: Sequence[str]) -> dict[str, Any]:
    return {"generator": "fapm_lib.data.synthetic", "version": VERSION, "seed": seed, "size": size,
            "categories": sorted(categories),
            "counts": {"train": N_TRAIN, "test_good": N_TEST_GOOD, "per_defect": N_PER_DEFECT}}


def _read_marker(root: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((root / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def generate_dataset(output: str | Path, seed: int = 0, size: int = 256,
                     categories: Sequence[str] | None = None, progress: bool = False) -> Path:
    """Write the listed categories (all by default) under ``output``; returns ``output``.

    The marker ``output/.complete`` (seed, size, version, categories) is written last.
    """
    names = list(dict.fromkeys(CATEGORIES if categories is None else categories))
    for name in names:
        check_category(name)
    size, seed = check_size(size), check_seed(seed)
    root = Path(output)
    root.mkdir(parents=True, exist_ok=True)
    old = _read_marker(root)
    (root / MARKER).unlink(missing_ok=True)
    kept: list[str] = []
    if old and (old.get("version"), old.get("seed"), old.get("size")) == (VERSION, seed, size):
        kept = [c for c in old.get("categories", []) if c in CATEGORIES and (root / c).is_dir()]
    for name in names:
        start = time.perf_counter()
        generate_category(root, name, seed=seed, size=size)
        if progress:
            print(f"synth: {name} written in {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
    write_text_atomic(root / MARKER, json.dumps(_marker(seed, size, set(kept) | set(names)),
                                                indent=1, sort_keys=True) + "\n")
    return root


def ensure_dataset(output: str | Path, seed: int = 0, size: int = 256) -> Path:
    """Return ``output`` holding the full set for (seed, size), generating it only if missing
    or incomplete."""
    root = Path(output)
    size, seed = check_size(size), check_seed(seed)
    if _read_marker(root) == _marker(seed, size, CATEGORIES) and all((root / c).is_dir() for c in CATEGORIES):
        return root
    return generate_dataset(root, seed=seed, size=size)
