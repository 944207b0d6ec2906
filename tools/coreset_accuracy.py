"""The greedy within cells (``coreset_method cells``) against the exact greedy on real categories: image and pixel
AUROC of the test set, and the covering radius of every region's memory.

Each category's backbone features are extracted once; the memory is fitted with the exact greedy
and with ``coreset_method cells`` at each ``--cell-sizes`` (forced, however small the
category), and the test set is scored by each. The covering radius of a memory is measured, not
bounded: for every region and layer, the largest distance from a training vector to its nearest
memory vector; the table gives the mean and the largest ratio cells / exact over the regions,
and checks that the cells memory's stated radius (``LayerMemory.radii``, the largest radius of
a region's cells at the base ratio) holds, up to float32 rounding (``RADIUS_RTOL``). For scale,
the exact greedy is also run ``--starts`` times from random first centres (the library's starts
at vector 0): how far the exact method's own AUROC moves with nothing but its start; the cells
likewise with seeds 1..``--starts`` (other cells). One JSON line per category and cell size,
then a Markdown table (the built-in categories also as their mean).

    python tools/coreset_accuracy.py --data-root ../shared/data/mvtec_ad_256 --categories bottle,screw
    python tools/coreset_accuracy.py --data-root data/builtin --categories all
"""
from __future__ import annotations

import argparse
import contextlib
import json
import statistics
from pathlib import Path
from typing import Iterator

import torch

from fapm_lib import FAPM, FAPMConfig
from fapm_lib.decisions.metrics import image_auroc, pixel_auroc
from fapm_lib.method.coreset import GreedyKCenter
from fapm_lib.method.memory import LayerMemory
from fapm_lib.method.regions import split_regions
from fapm_lib.tutorial.ablations import extract_category, score_variant

#: Relative tolerance of the stated-radius check: both radii come from float32 distances
#: (``|q|^2 + |b|^2 - 2 q.b``), whose rounding at these norms reaches about 1e-4 of a distance.
RADIUS_RTOL = 2e-4


@torch.inference_mode()
def covering_radii(memory: LayerMemory, train_map: torch.Tensor, grid: int) -> torch.Tensor:
    """``[R]``: the largest distance from a region's training vectors to its memory."""
    regions = split_regions(train_map, grid)  # [R, N * s*s, C]
    return torch.stack([memory.search(part, 1)[..., 0].amax(dim=1) for part in regions.split(4096, dim=1)]).amax(0)


def evaluate(model: FAPM, features) -> dict:
    maps, scores, _ = score_variant(model, features.test_maps, "aligned")
    return {"image_auroc": 100 * image_auroc(scores, features.labels),
            "pixel_auroc": None if features.masks is None else 100 * pixel_auroc(maps, features.masks)}


@contextlib.contextmanager
def exact_greedy_from_random_starts(seed: int) -> Iterator[None]:
    """Within the block, every exact greedy run without a given first centre starts at a random
    vector of its set (drawn with ``seed``) instead of vector 0: the exact method's own spread."""
    plain = GreedyKCenter.__init__

    def init(self, x, first=None):
        if first is None:
            first = torch.randint(0, x.shape[1], (x.shape[0],), generator=torch.Generator().manual_seed(seed))
        plain(self, x, first)

    GreedyKCenter.__init__ = init
    try:
        yield
    finally:
        GreedyKCenter.__init__ = plain


def compare(features, config: FAPMConfig, cell_sizes: list[int], starts: int) -> list[dict]:
    exact = FAPM(config.replace(coreset_method="exact")).fit_maps(features.train_maps)
    exact_radii = [covering_radii(m, t, config.grid) for m, t in zip(exact.memories, features.train_maps)]
    others = []
    for seed in range(1, starts + 1):
        with exact_greedy_from_random_starts(seed):
            exact = FAPM(config.replace(coreset_method="exact")).fit_maps(features.train_maps)
            others.append(evaluate(exact, features))
    base = {"category": features.name, "n_train": int(features.train_maps[0].shape[0]), **{
        f"exact_{k}": v for k, v in evaluate(exact, features).items()},
            **{f"exact_starts_{k}": [o[k] for o in others] for k in ("image_auroc", "pixel_auroc")},
            "exact_vectors": exact.memory_size()["vectors"], "exact_coreset_s": exact.fit_stats["coreset_seconds"]}
    rows = []
    for size in cell_sizes:
        fast = FAPM(config.replace(coreset_method="cells", coreset_cell_size=size)).fit_maps(features.train_maps)
        ratios, excess = [], []
        for memory, train_map, ref in zip(fast.memories, features.train_maps, exact_radii):
            radii = covering_radii(memory, train_map, config.grid)
            excess.append(radii / memory.radii)
            ratios.append(radii / ref)
        ratio = torch.cat(ratios)
        seeds = [evaluate(FAPM(config.replace(coreset_method="cells", coreset_cell_size=size, seed=seed))
                          .fit_maps(features.train_maps), features) for seed in range(1, starts + 1)]
        rows.append({**base, "cell_size": size, **{f"cells_{k}": v for k, v in evaluate(fast, features).items()},
                     **{f"cells_seeds_{k}": [o[k] for o in seeds] for k in ("image_auroc", "pixel_auroc")},
                     "cells_vectors": fast.memory_size()["vectors"],
                     "cells_coreset_s": fast.fit_stats["coreset_seconds"],
                     "radius_ratio_mean": float(ratio.mean()), "radius_ratio_max": float(ratio.max()),
                     "measured_over_stated_radius_max": float(torch.cat(excess).max()),
                     "stated_radius_holds": bool(torch.cat(excess).max() <= 1 + RADIUS_RTOL)})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def _range(values: list[float]) -> str:
    return f"{min(values):.2f} - {max(values):.2f}" if values else ""


def table(rows: list[dict], builtin: bool) -> str:
    keys = ("exact_image_auroc", "cells_image_auroc", "exact_pixel_auroc", "cells_pixel_auroc",
            "radius_ratio_mean", "radius_ratio_max")
    lines = ["| category | cell size | image AUROC exact / cells | exact, other starts / cells, other seeds | "
             "pixel AUROC exact / cells | exact, other starts / cells, other seeds | "
             "covering radius cells / exact, mean (max) | memory vectors exact / cells |",
             "|---|---|---|---|---|---|---|---|"]
    groups = [[r] for r in rows]
    if builtin:
        by_size: dict[int, list[dict]] = {}
        for r in rows:
            by_size.setdefault(r["cell_size"], []).append(r)
        groups += [[{"category": f"built-in mean ({len(g)})", "cell_size": c, "exact_vectors": "", "cells_vectors": "",
                     **{k: statistics.fmean(r[k] for r in g) for k in keys},
                     **{f"exact_starts_{m}": [statistics.fmean(v) for v in zip(*(r[f"exact_starts_{m}"] for r in g))]
                        for m in ("image_auroc", "pixel_auroc")},
                     **{f"cells_seeds_{m}": [statistics.fmean(v) for v in zip(*(r[f"cells_seeds_{m}"] for r in g))]
                        for m in ("image_auroc", "pixel_auroc")}}] for c, g in by_size.items()]
    for (r,) in groups:
        lines.append(f"| {r['category']} | {r['cell_size']} | "
                     f"{r['exact_image_auroc']:.2f} / {r['cells_image_auroc']:.2f} | "
                     f"{_range(r['exact_starts_image_auroc'])} / {_range(r['cells_seeds_image_auroc'])} | "
                     f"{r['exact_pixel_auroc']:.2f} / {r['cells_pixel_auroc']:.2f} | "
                     f"{_range(r['exact_starts_pixel_auroc'])} / {_range(r['cells_seeds_pixel_auroc'])} | "
                     f"{r['radius_ratio_mean']:.3f} ({r['radius_ratio_max']:.3f}) | "
                     f"{r['exact_vectors']} / {r['cells_vectors']} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", required=True)
    p.add_argument("--categories", default="all", help="a,b,... or all (every folder with train/good)")
    p.add_argument("--backbone", default="tf_efficientnet_lite0")
    p.add_argument("--cell-sizes", default="250", help="vectors per cell, comma list (default: the default, 250)")
    p.add_argument("--starts", type=int, default=3, help="exact greedy runs from random first centres and cells "
                   "runs with other seeds (1..N), for their spread")
    args = p.parse_args()
    root = Path(args.data_root)
    names = sorted(d.name for d in root.iterdir() if (d / "train" / "good").is_dir()) if args.categories == "all" \
        else args.categories.split(",")
    config = FAPMConfig(backbone=args.backbone)
    extractor_model = FAPM(config)
    rows = []
    for name in names:
        rows += compare(extract_category(extractor_model, root, name), config,
                        [int(c) for c in args.cell_sizes.split(",")], args.starts)
    print(table(rows, builtin=args.categories == "all"))


if __name__ == "__main__":
    main()
