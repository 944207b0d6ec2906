"""Measurements of issue 17 (flat folders, ``fapm update``, explanations), printed as Markdown and
written to ``--output`` as JSON.

``update``: per category, fit on ``train/good`` (k-fold calibrated), score the test set, take the
good test images flagged NG (false alarms; when there are fewer than ``--n-add``, the
highest-scored good test images fill up, and the JSON says which), add them with
``FAPM.add_good`` (no refit), and refit from scratch on train + added. The three models are
evaluated on the test images left (the added ones removed): image / pixel AUROC, false alarms
and misses at each model's own threshold; update time against refit time (both without file I/O
and without the first fit's backbone warm-up).

``explain``: every defective test image of a category is explained; the test is independent of
the memory's bookkeeping: the recorded source image is run through the backbone again, its
feature at the recorded cell is compared with the test feature, and that distance must equal the
reported one; the source cell must lie in the test cell's region.

``flat``: a flat folder of good images (PNG and JPEG mixed, sub-folders, a text file) fits with
``fapm fit --good`` and scores with ``fapm predict --report --explain``.

    python tools/measure_factory.py update --data-root ../shared/data/mvtec_ad_256 --categories screw,bottle
    python tools/measure_factory.py update --data-root data/builtin --categories all
    python tools/measure_factory.py explain --data-root ../shared/data/mvtec_ad_256 --categories screw
    python tools/measure_factory.py flat --data-root ../shared/data/mvtec_ad_256 --categories bottle
"""
from __future__ import annotations

import argparse
import copy
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

from fapm_lib import FAPM, FAPMConfig, MVTecDataset, markdown_table
from fapm_lib.data.samples import Sample, SampleDataset
from fapm_lib.decisions.evaluation import decision_metrics, run_test_set
from fapm_lib.decisions.nearest_patch import explain_images
from fapm_lib.decisions.refresh import refresh
from fapm_lib.detectors.add_good import predict_maps


def _subset(dataset: MVTecDataset, keep: list[int]) -> MVTecDataset:
    small = copy.copy(dataset)
    small.samples = [dataset.samples[i] for i in keep]
    return small


def _evaluate(model: FAPM, test: MVTecDataset, other_threshold: float | None = None) -> dict:
    """Image / pixel AUROC, the threshold, false-alarm and miss rates at it (and at ``other_threshold``)."""
    result = run_test_set(model, test, progress=False)
    rates = decision_metrics(result, model.calibration)
    out = {"image_auroc": result.metrics["image_auroc"], "pixel_auroc": result.metrics["pixel_auroc"],
           "threshold": rates["threshold"], "false_alarm_rate": rates["false_alarm_rate"],
           "miss_rate": rates["miss_rate"]}
    if other_threshold is not None:
        flagged = result.scores >= other_threshold
        out["at_old_memory_rule"] = {"threshold": other_threshold,
                                     "false_alarm_rate": float(flagged[result.labels == 0].float().mean()),
                                     "miss_rate": float((~flagged[result.labels == 1]).float().mean())}
    return out


def old_memory_rule(model: FAPM, added: list[Sample]) -> float:
    """The image threshold the update would get if the added images' held-out scores came from
    the memory before the update alone (the rule ``heldout_added`` replaces)."""
    maps = model.extract(SampleDataset(added, model.transform, False), progress=False)
    neighbours, amaps, _ = predict_maps(model.model, maps, model.config.batch_size, model.config.search_k)
    return refresh(model.calibration, neighbours, amaps).image_threshold


def update_one(root: Path, category: str, n_add: int, backbone: str, rate: float) -> dict:
    config = FAPMConfig(backbone=backbone, false_alarm_rate=rate)
    model = FAPM(config)
    train = MVTecDataset(root, category, "train", model.transform)
    test = MVTecDataset(root, category, "test", model.transform)
    start = time.perf_counter()
    model.fit(train, progress=False)
    fit_seconds = time.perf_counter() - start
    scored = run_test_set(model, test, progress=False, metrics=False)
    goods = [i for i in torch.argsort(scored.scores, descending=True).tolist() if scored.labels[i] == 0]
    flagged = [i for i in goods if model.calibration.decide(float(scored.scores[i])) == "NG"]
    chosen = (flagged + [i for i in goods if i not in flagged])[:n_add]
    rule = (f"{len(flagged)} false alarms" + ("" if len(flagged) >= n_add else
            f"; filled up with the highest-scored good test images to {len(chosen)}"))
    added = [Sample(test.samples[i].path, 0, "good", None) for i in chosen]
    rest = _subset(test, [i for i in range(len(test)) if i not in chosen])
    before = _evaluate(model, rest)
    alternative = old_memory_rule(model, added)
    updated = FAPM.load(_save(model))
    report = updated.add_good(SampleDataset(added, updated.transform, False))
    refit = FAPM(config)
    union = SampleDataset([*train.samples, *added], refit.transform, False)
    start = time.perf_counter()
    refit.fit(union, progress=False)
    refit_seconds = time.perf_counter() - start
    refit_scores = refit.predict(torch.stack([refit.transform.image(Image.open(s.path).convert("RGB"))
                                              for s in added])).pred_score
    return {
        "category": category, "n_train": len(train), "n_test_left": len(rest), "added": [str(s.path) for s in added],
        "choice": rule, "fit_seconds": fit_seconds, "update_seconds": report.seconds, "refit_seconds": refit_seconds,
        "refit_split": {k: refit.fit_stats[k] for k in ("feature_seconds", "coreset_seconds", "calibration_seconds")},
        "added_before": report.before, "added_after_update": report.after,
        "added_after_refit": [(float(s), refit.calibration.decide(float(s))) for s in refit_scores],
        "vectors": {"fit": report.vectors_before, "update": report.vectors_after,
                    "refit": int(refit.memory_size()["vectors"])},
        "radius_before": report.radius_before, "radius_after": report.radius_after,
        "original": before, "updated": _evaluate(updated, rest, alternative), "refit": _evaluate(refit, rest),
        "false_alarm_rate_target": rate,
    }


def _save(model: FAPM) -> Path:
    path = Path(tempfile.mkdtemp(prefix="fapm_update_")) / "model.safetensors"
    return model.save(path)


def update_rows(results: list[dict]) -> str:
    rows = []
    for r in results:
        became_ok = sum(b[1] == "NG" and a[1] == "OK" for b, a in zip(r["added_before"], r["added_after_update"]))
        was_ng = sum(b[1] == "NG" for b in r["added_before"])
        rows.append({
            "category": r["category"], "train": r["n_train"], "added (NG before)": f"{len(r['added'])} ({was_ng})",
            "NG -> OK (update)": f"{became_ok}/{was_ng}",
            "image AUROC orig / upd / refit": "{:.1f} / {:.1f} / {:.1f}".format(
                *(100 * r[m]["image_auroc"] for m in ("original", "updated", "refit"))),
            "pixel AUROC orig / upd / refit": "{:.2f} / {:.2f} / {:.2f}".format(
                *(100 * r[m]["pixel_auroc"] for m in ("original", "updated", "refit"))),
            "threshold orig / upd / refit": "{:.2f} / {:.2f} / {:.2f}".format(
                *(r[m]["threshold"] for m in ("original", "updated", "refit"))),
            "miss % orig / upd / refit": "{:.1f} / {:.1f} / {:.1f}".format(
                *(100 * r[m]["miss_rate"] for m in ("original", "updated", "refit"))),
            "old-memory rule: threshold, miss %": "{:.2f}, {:.1f}".format(
                r["updated"]["at_old_memory_rule"]["threshold"], 100 * r["updated"]["at_old_memory_rule"]["miss_rate"]),
            "update s": round(r["update_seconds"], 2), "refit s": round(r["refit_seconds"], 1),
        })
    return markdown_table(rows)


@torch.inference_mode()
def explain_one(root: Path, category: str, backbone: str) -> dict:
    model = FAPM(FAPMConfig(backbone=backbone))
    model.fit(MVTecDataset(root, category, "train", model.transform), progress=False)
    test = MVTecDataset(root, category, "test", model.transform)
    paths = [str(s.path) for s in test.samples if s.label == 1]
    same_region, worst, n = 0, 0.0, 0
    grid = model.config.grid
    for start in range(0, len(paths), 16):
        chunk = paths[start : start + 16]
        for path, why in zip(chunk, explain_images(model, chunk)):
            test_maps = model.embed(model.transform.image(Image.open(path).convert("RGB"))[None])
            for match in why.layers:
                train_maps = model.embed(model.transform.image(Image.open(match.train_image).convert("RGB"))[None])
                side = test_maps[match.layer].shape[-1] // grid
                (ty, tx), (sy, sx) = match.test_cell, match.train_cell
                same_region += (ty // side, tx // side) == (sy // side, sx // side) == match.region_yx
                test_vector, train_vector = test_maps[match.layer][0, :, ty, tx], train_maps[match.layer][0, :, sy, sx]
                recomputed = float((test_vector - train_vector).norm())
                worst = max(worst, abs(recomputed - match.distance))
                n += 1
    return {"category": category, "defects": len(paths), "matches": n, "same_region": same_region,
            "max_distance_discrepancy": worst}


def flat_one(root: Path, category: str, backbone: str, work: Path) -> dict:
    flat = work / "flat_good"
    shutil.rmtree(flat, ignore_errors=True)
    train = sorted((root / category / "train" / "good").glob("*.png"))
    for i, path in enumerate(train):
        if i % 2:
            target = flat / "batch_b" / "jpeg" / (path.stem + ".jpg")
            target.parent.mkdir(parents=True, exist_ok=True)
            Image.open(path).convert("RGB").save(target, quality=95)
        else:
            target = flat / "batch_a" / path.name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, target)
    (flat / "batch_a" / "notes.txt").write_text("shift notes\n")
    command = [sys.executable, "-m", "fapm_lib"]
    timings = {}
    for name, args in (("fit", ["fit", "--good", str(flat), "--backbone", backbone, "--output", str(work / "model")]),
                       ("predict", ["predict", "--model", str(work / "model" / "model.safetensors"),
                                    str(root / category / "test"), "--output", str(work / "pred"), "--report",
                                    "--explain"])):
        start = time.perf_counter()
        done = subprocess.run([*command, *args, "--no-progress", "--threads", "1"], capture_output=True, text=True)
        timings[name] = {"seconds": time.perf_counter() - start, "stdout": done.stdout.strip()[-300:],
                         "stderr": done.stderr.strip()[-300:], "returncode": done.returncode}
    rows = (work / "pred" / "scores.csv").read_text().splitlines()[1:]
    ng = {"good": 0, "defect": 0}
    for row in rows:
        kind = "good" if "/test/good/" in row.split(",")[0] else "defect"
        ng[kind] += row.split(",")[3] == "NG"
    report = work / "pred" / "report.html"
    return {"category": category, "n_train": len(train), "n_jpeg": len(train) // 2, "n_test": len(rows),
            "ng_good": ng["good"], "ng_defect": ng["defect"], "report_mb": report.stat().st_size / 2**20, **timings}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("what", choices=["update", "explain", "flat"])
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--categories", required=True, help="a,b or all")
    parser.add_argument("--n-add", type=int, default=5)
    parser.add_argument("--false-alarm-rate", type=float, default=0.01, help="the calibration's target rate")
    parser.add_argument("--backbone", default="tf_efficientnet_lite0")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", default="runs/factory")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    root = Path(args.data_root)
    categories = (sorted(p.name for p in root.iterdir() if (p / "train").is_dir()) if args.categories == "all"
                  else args.categories.split(","))
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for category in categories:
        if args.what == "update":
            results.append(update_one(root, category, args.n_add, args.backbone, args.false_alarm_rate))
        elif args.what == "explain":
            results.append(explain_one(root, category, args.backbone))
        else:
            results.append(flat_one(root, category, args.backbone, out / f"flat_{category}"))
        print(json.dumps(results[-1])[:2000], flush=True)
    tag = "" if args.false_alarm_rate == 0.01 else f"_rate{args.false_alarm_rate}"
    (out / f"{args.what}_{'_'.join(categories)}{tag}.json").write_text(json.dumps(results, indent=1))
    if args.what == "update":
        print(update_rows(results))


if __name__ == "__main__":
    main()
