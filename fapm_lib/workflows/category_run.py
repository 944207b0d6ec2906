"""One category from command-line style options (an ``argparse.Namespace``): fit, or load and
re-score, then evaluate and write ``metrics.json`` and heatmaps; and the plan of a run over several
categories. Used by ``fapm fit``, ``fit-all``, ``evaluate`` and ``demo`` (:mod:`fapm_lib.workflows.fit`,
``fit_all``, ``evaluate``, ``demo``; nothing here imports the CLI)."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from ..config import FIT_KEYS, check_k_acts, flag_name
from ..data.mvtec import MVTecDataset
from ..decisions import metrics as metric_rules
from ..decisions.calibration import from_validation, manual, rescore
from ..decisions.evaluation import decision_metrics, run_test_set
from ..detectors.fapm import FAPM
from ..detectors.model_file import MODEL_FILE
from ..errors import ConfigError, DataError
from ..method.memory_builders import check_k
from ..report.evaluation_page import write_evaluation_report
from ..report.heatmaps import save_heatmaps
from ..scale.pipeline import check_scheduler
from ..system.atomic import write_text_atomic
from ..system.jobs import parse_scheduler
from .batch import resolve_categories
from .folder_args import data_name, data_settings, folder_datasets, uses_folders
from .options import CALIBRATION_FLAGS, TUNING_FLAGS, build_config, read_config_file
from .options import check_device as _device


def datasets_from_args(model, args: argparse.Namespace, splits: tuple[str, ...]) -> list[MVTecDataset]:
    """The ``splits`` of ``args.category`` under ``args.data_root`` (or of ``--good`` / ``--defect``
    folders, :mod:`~fapm_lib.workflows.folder_args`), read with ``model``'s transform."""
    if uses_folders(args):
        return folder_datasets(model, args, splits)
    if not args.data_root or not args.category:
        raise ConfigError("--data-root and --category are required (or set them in --config)")
    out = []
    for split in splits:
        ds = MVTecDataset(args.data_root, args.category, split, model.transform, skip_bad=args.skip_bad)
        for _, why in ds.skipped:
            print(f"skipped: {why}", file=sys.stderr)
        out.append(ds)
    return out


def fit_from_args(args: argparse.Namespace, model_cls: type | None = None, scheduler: str | None = None):
    """A fitted detector (``model_cls``, default FAPM) from the options; decision flags applied.
    ``scheduler``: run this category's region jobs on Dask (``fapm fit --scheduler``)."""
    model = (model_cls or FAPM)(build_config(args), device=_device(args.device))
    check_scheduler(model.config, scheduler)  # before reading any image
    (train,) = datasets_from_args(model, args, ("train",))
    start = time.perf_counter()
    model.fit(train, progress=not args.no_progress, **({"scheduler": scheduler} if scheduler else {}))
    model.fit_stats.update(fit_seconds=time.perf_counter() - start, n_train=len(train))
    apply_decision_flags(model, args)
    return model


def apply_decision_flags(model, args: argparse.Namespace) -> None:
    """``--validation-root`` (F1-optimal thresholds on labelled validation images), then
    ``--threshold`` / ``--pixel-threshold`` (manual, recorded): set ``model.calibration``."""
    if getattr(args, "validation_root", None):
        val = MVTecDataset(args.validation_root, args.category, "test", model.transform, skip_bad=args.skip_bad)
        result = run_test_set(model, val, progress=not args.no_progress, metrics=False)
        model.calibration = from_validation(model.calibration, result.scores, result.labels, result.maps,
                                            result.masks, model.config.image_score, model.search_k)
    if getattr(args, "threshold", None) is not None or getattr(args, "pixel_threshold", None) is not None:
        model.calibration = manual(model.calibration, args.threshold, args.pixel_threshold,
                                   model.config.image_score, model.search_k)


def apply_scoring_flags(model, args: argparse.Namespace) -> None:
    """With ``--model``: honour the scoring-time settings (``--k``, ``--image-score``,
    ``--batch-size``, ``--false-alarm-rate``, scoring keys of ``--config``), refuse the fit-time
    ones (:data:`~fapm_lib.config.FIT_KEYS`) with a line naming the flag; re-derive the
    thresholds from the stored held-out scores."""
    given = {key: getattr(args, key) for key in FIT_KEYS if getattr(args, key, None) is not None}
    if getattr(args, "random_weights", False):
        given["pretrained"] = False
    if given.pop("backbone", model.config.backbone) != model.config.backbone:
        raise ConfigError(f"--backbone {args.backbone} differs from the model's backbone {model.config.backbone}")
    for key in given:
        flag = "--random-weights" if key == "pretrained" else flag_name(key)
        raise ConfigError(f"{flag} is a fit-time setting and {args.model} is already fitted "
                          f"(with {key}={getattr(model.config, key)!r}); refit without --model to change it")
    changes: dict[str, Any] = {}
    if getattr(args, "config", None):
        for key, value in read_config_file(args).items():
            if key in FIT_KEYS and value != getattr(model.config, key):
                raise ConfigError(f"{args.config}: {key}={value!r} is a fit-time setting, but {args.model} was "
                                  f"fitted with {key}={getattr(model.config, key)!r}; refit without --model")
            if key not in FIT_KEYS:
                changes[key] = value
    for key in (*TUNING_FLAGS, *CALIBRATION_FLAGS):
        if getattr(args, key, None) is not None:
            changes[key] = getattr(args, key)
    if "k" in changes:
        check_k_acts({"image_score": model.config.image_score, **changes}, "options", "--k")
    if not changes:
        return
    old = model.config
    new = old.replace(**changes)
    if new.search_k > 1:  # the neighbours scoring now reads must exist
        if isinstance(model, FAPM):
            check_k(model.memories, new.search_k)
        elif new.search_k > model.memory_size()["vectors"]:
            raise ConfigError(f"k={new.search_k} exceeds the memory bank ({model.memory_size()['vectors']} vectors)")
    model.config = new
    scoring = ("image_score", "k", "false_alarm_rate")
    if model.calibration is not None and any(getattr(old, f) != getattr(model.config, f) for f in scoring):
        model.calibration = rescore(model.calibration, model.config.image_score, model.search_k,
                                    model.config.false_alarm_rate)


def evaluate_category(args: argparse.Namespace, output: Path, model_cls: type | None = None) -> dict[str, Any]:
    """Fit (or load ``args.model``), evaluate, write ``metrics.json`` and heatmaps; return the metrics.

    ``model_cls``: FAPM (default) or PatchCore."""
    model_cls = model_cls or FAPM
    if getattr(args, "model", None):
        model = model_cls.load(args.model, device=_device(args.device))
        apply_scoring_flags(model, args)
        apply_decision_flags(model, args)
        model_file = str(args.model)
    else:
        model = fit_from_args(args, model_cls)
        model_file = str(model.save(output / MODEL_FILE))
    (test,) = datasets_from_args(model, args, ("test",))
    result = run_test_set(model, test, progress=not args.no_progress)
    downscale = metric_rules.pixel_metrics_downscale(result.maps.shape)
    if result.masks is None:
        print(f"pixel metrics skipped: {data_name(args)} has no ground_truth masks (--masks)", file=sys.stderr)
    elif downscale > 1:
        print(f"pixel metrics on maps and masks reduced {downscale}x ({result.maps.numel():,} pixels, more than "
              f"{metric_rules.PIXEL_METRICS_MAX_PIXELS:,}: see fapm_lib.decisions.metrics)", file=sys.stderr)
    metrics = {**result.metrics, **decision_metrics(result, model.calibration),
               "n_train": model.fit_stats.get("n_train"), "n_test": len(test),
               "backbone": model.config.backbone, "fit_seconds": model.fit_stats.get("fit_seconds"),
               "ms_per_image": result.ms_per_image,
               **{f"{stage}_ms_per_image": ms for stage, ms in result.stage_ms.items()},
               "settings": {"config": model.config.to_dict(), "model_file": model_file,
                            **data_settings(args), "pixel_metrics_downscale": downscale,
                            "calibration": None if model.calibration is None else model.calibration.brief()}}
    write_text_atomic(output / "metrics.json", json.dumps(metrics, indent=2))
    save_heatmaps(result, test, output / "heatmaps", calibration=model.calibration)
    if getattr(args, "report", False):
        write_evaluation_report(output / "report.html", model, result, test, metrics)
    return metrics


def category_args(values: dict[str, Any], category: str) -> argparse.Namespace:
    """``values`` (a command's options) for one ``category``, fitting (no ``--model``)."""
    return argparse.Namespace(**{**values, "category": category, "model": None})


def plan_categories(args: argparse.Namespace) -> tuple[list[str], Path, dict[str, Any]]:
    """The categories ``--categories`` names under ``--data-root``, the output folder and the
    options every category job gets (checked before any job starts)."""
    if not args.data_root:
        raise ConfigError("--data-root is required (or set data_root in --config)")
    root = Path(args.data_root).expanduser()
    if not root.is_dir():
        raise DataError(f"{args.data_root}: data root does not exist")
    if args.scheduler is not None:
        parse_scheduler(args.scheduler)
    values = {k: v for k, v in vars(args).items() if k != "func"}
    if args.scheduler is not None:
        values["no_progress"] = True  # progress bars of several workers would interleave
    return resolve_categories(root, args.categories), Path(args.output), values
