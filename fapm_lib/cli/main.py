"""The ``fapm`` command: fit, fit-all, evaluate, predict, update, export, synth, demo, batch, benchmark, gif,
serve, watch.

Errors the user can fix are one line on stderr with exit code 2; ``--debug`` shows the traceback.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Callable

from ..data import BUILTIN_ROOT
from ..errors import ConfigError, FAPMError
from ..system.allocator import tune_allocator
from ..workflows.options import TUNING_FLAGS


# ---- shared options -------------------------------------------------------------------------
def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: one per core; 1 is often faster "
                   "on a machine that other jobs share)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _model_options(p: argparse.ArgumentParser, data_required: bool = True) -> None:
    p.add_argument("--data-root", required=data_required, help="folder holding <category>/train, test, ground_truth")
    p.add_argument("--category", required=data_required, help="category folder name, e.g. bottle")
    p.add_argument("--backbone", help="timm model name (default tf_efficientnet_lite0, offline)")
    p.add_argument("--config", help="YAML file with FAPMConfig keys (flags override it)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--seed", type=int)
    p.add_argument("--random-weights", action="store_true", help="random backbone weights (timing only)")
    p.add_argument("--skip-bad", action="store_true", help="skip unreadable images and list them instead of stopping")
    for name, kind in TUNING_FLAGS.items():
        p.add_argument("--" + name.replace("_", "-"), type=kind, dest=name)


def _decision_options(p: argparse.ArgumentParser, fitting: bool = True) -> None:
    """Flags that set how scores become decisions (:mod:`fapm_lib.decisions.calibration`)."""
    if fitting:
        p.add_argument("--calibration-folds", type=int, dest="calibration_folds",
                       help="k-fold calibration on train/good (default 5; 0: uncalibrated, raw scores only)")
        p.add_argument("--calibration-images", type=int, dest="calibration_images",
                       help="held-out images the calibration scores: a seeded sample of a larger training "
                       "set (default 2000)")
        p.add_argument("--false-alarm-rate", type=float, dest="false_alarm_rate",
                       help="target fraction of normal images (and pixels) flagged NG (default 0.01)")
        p.add_argument("--validation-root", help="MVTec-layout root with labelled defects (<category>/test, "
                       "ground_truth): F1-optimal thresholds on it instead (never pass the test set)")
    p.add_argument("--threshold", type=float, help="manual image threshold in raw-score units (overrides, recorded)")
    p.add_argument("--pixel-threshold", type=float, help="manual pixel threshold in raw-score units")


def _folder_options(p: argparse.ArgumentParser) -> None:
    """Plain labelled folders instead of the MVTec layout (evaluate, with --model)."""
    p.add_argument("--good", help="a folder of normal test images (any depth), with --defect and --model")
    p.add_argument("--defect", help="a folder of defective test images; the first sub-folder is the defect type")
    p.add_argument("--masks", help="masks of the --defect images: <same sub-folder>/<stem>.png or <stem>_mask.png")


def _scale_options(p: argparse.ArgumentParser) -> None:
    """Bounded-memory fit flags (config keys max_memory, store_dir)."""
    p.add_argument("--max-memory", dest="max_memory", help="fit within this peak RSS through a disk store, "
                   "e.g. 4GB or 512MB (decimal; GiB/MiB are binary)")
    p.add_argument("--store-dir", dest="store_dir", help="folder for the store's temporary files "
                   "(default: the temp dir)")


def _scheduler_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scheduler", help="run the categories on Dask: local[:N] (a LocalCluster of N worker "
                   "processes) or tcp://HOST:PORT (a running scheduler); default: one after the other here")


# ---- the commands -----------------------------------------------------------------------------
def _fit(p: argparse.ArgumentParser) -> None:
    _model_options(p, data_required=False)
    p.add_argument("--good", help="a folder of normal images (any depth, any image format) instead of "
                   "--data-root/--category")
    p.add_argument("--output", required=True, help="folder for model.safetensors")
    _decision_options(p)
    _scale_options(p)
    p.add_argument("--scheduler", help="with --max-memory: run this category's region jobs on Dask: local[:N] or "
                   "tcp://HOST:PORT (then --store-dir must be a folder every worker reads)")


def _fit_all(p: argparse.ArgumentParser) -> None:
    _model_options(p, data_required=False)
    p.add_argument("--categories", default="all", help="a,b,... or all (every category folder)")
    p.add_argument("--output", required=True, help="folder for <category>/model.safetensors and fits.md")
    _scale_options(p)
    _scheduler_option(p)


def _evaluate(p: argparse.ArgumentParser) -> None:
    _model_options(p, data_required=False)
    p.add_argument("--model", help="a fitted model file instead of fitting (then only scoring-time flags act)")
    p.add_argument("--output", required=True, help="folder for metrics.json and heatmaps/")
    _decision_options(p)
    p.add_argument("--categories", help="fit + evaluate each of a,b,... or all: <output>/<category>/ and "
                   "<output>/summary.md")
    _folder_options(p)
    p.add_argument("--report", action="store_true", help="also write <output>/report.html (one self-contained page)")
    _scale_options(p)
    _scheduler_option(p)


def _predict(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True)
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR")
    p.add_argument("--output", required=True, help="folder for scores.csv, overlays/ and masks/")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    _decision_options(p, fitting=False)
    p.add_argument("--explain", action="store_true", help="per image, the nearest normal patch of its most "
                   "anomalous place: explanations/<name>.png and explanations.json")
    p.add_argument("--report", action="store_true", help="also write <output>/report.html (one self-contained page)")


def _update(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="a fitted model.safetensors")
    p.add_argument("--add-good", required=True, dest="add_good", help="a folder of normal images to add "
                   "(any depth, any image format)")
    p.add_argument("--output", required=True, help="the updated model: a .safetensors file, or a folder for "
                   "model.safetensors")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--skip-bad", action="store_true", help="skip unreadable images and list them instead of stopping")


def _export(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="a fitted model.safetensors")
    p.add_argument("--format", default="onnx", choices=["onnx", "openvino"])
    p.add_argument("--batch-size", default="dynamic", help="fixed batch size N, or dynamic (default)")
    p.add_argument("--output", required=True, help="folder for the model, fapm_export.json and run_fapm.py")
    p.add_argument("--int8", action="store_true", help="OpenVINO only: INT8 backbone (NNCF), calibrated on "
                   "--data-root/--category training images")
    p.add_argument("--data-root", help="with --int8: data root holding <category>/train/good")
    p.add_argument("--category", help="with --int8: the category whose training images calibrate")
    p.add_argument("--no-check", action="store_true", help="skip the check against the torch model")


def _synth(p: argparse.ArgumentParser) -> None:
    p.add_argument("--output", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--categories", help="comma-separated subset")


def _demo(p: argparse.ArgumentParser) -> None:
    _model_options(p, data_required=False)
    p.set_defaults(data_root=str(BUILTIN_ROOT))
    p.add_argument("--categories", help="comma-separated subset (default: all built-in)")
    p.add_argument("--with-patchcore", action="store_true", help="also fit and evaluate PatchCore (slower)")
    p.add_argument("--calibration-folds", type=int, dest="calibration_folds", help="k-fold calibration (default 5)")
    p.add_argument("--false-alarm-rate", type=float, dest="false_alarm_rate",
                   help="target false-alarm rate (default 0.01)")
    p.add_argument("--output", default="results")


def _batch(p: argparse.ArgumentParser) -> None:
    p.add_argument("--notebook", required=True)
    p.add_argument("--data-root", required=True)
    p.add_argument("--categories", default="all", help="a,b,... or all")
    p.add_argument("--backbone", default=None)
    p.add_argument("--fast", action="store_true", help="pass fast=True to the notebook")
    p.add_argument("--output", required=True)
    _scheduler_option(p)


def _benchmark(p: argparse.ArgumentParser) -> None:
    _model_options(p, data_required=False)
    p.add_argument("--repeats", type=int, help="timed single-image runs per method (default 20; --suite: 30)")
    p.add_argument("--runtimes", help="also time FAPM exported: comma list of torch, onnxruntime, openvino, "
                   "openvino_int8")
    p.add_argument("--output", required=True)
    p.add_argument("--suite", action="store_true", help="every table of README.md, docs/benchmark.md and "
                   "docs/deploy.md (make bench): --data-root is the MVTec AD copy (default ../shared/data/"
                   "mvtec_ad_256 or $FAPM_SHARED_DATA), one torch thread unless --threads")
    p.add_argument("--parts", help="with --suite: which parts to measure (comma list of speed, exports, "
                   "backbones, default all; none: only fill --pages from --output)")
    p.add_argument("--pages", help="with --suite: comma list of pages whose <!-- bench:NAME --> blocks are "
                   "filled from the tables in --output (e.g. README.md,docs/benchmark.md,docs/deploy.md)")
    p.add_argument("--builtin-root", help="with --suite: the built-in set (default data/builtin, generated "
                   "when missing)")
    p.add_argument("--quick", action="store_true", help="with --suite: 3 repeats, one backbone, 2 built-in "
                   "categories (a check that the suite runs; its tables say so)")
    p.add_argument("--backbones-table", dest="backbones_table", help="with --suite: the backbones of the backbone "
                   "table (comma list; default tf_efficientnet_lite0,tf_efficientnet_lite1,tf_efficientnet_lite2)")
    p.add_argument("--resume", action="store_true", help="with --suite: reuse the single runs already in "
                   "--output/runs (an interrupted suite goes on where it stopped; the tables say which were reused)")


def _gif(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True)
    p.add_argument("--data-root", required=True)
    p.add_argument("--category", required=True)
    p.add_argument("--output", required=True, help="the .gif file")
    p.add_argument("--max-frames", type=int, default=24)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])


def _serve(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="a fitted model.safetensors (FAPM)")
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1, this machine "
                   "only; another one needs a token or --no-token)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (default 8000; 0: a free one, printed)")
    p.add_argument("--token", help="require 'Authorization: Bearer TOKEN' (default: $FAPM_SERVE_TOKEN)")
    p.add_argument("--no-token", action="store_true", help="serve another interface than loopback without a token")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--max-batch", type=int, default=8, help="parts scored together at most (1: no batching)")
    p.add_argument("--batch-window-ms", type=float, default=5.0, help="how long a batch waits for more parts "
                   "after its first (default 5)")
    p.add_argument("--queue-size", type=int, default=64, help="requests waiting at most; beyond: 503 + Retry-After")
    p.add_argument("--max-upload-mb", type=float, default=32.0, help="largest request body (default 32 MiB; "
                   "beyond: 413)")
    p.add_argument("--max-pixels", type=int, default=8192 * 8192, help="largest image, width x height "
                   "(default 8192^2; beyond: 413, decompression bombs included)")
    p.add_argument("--request-timeout", type=float, default=60.0, help="seconds a request may wait to be scored "
                   "(then 503)")


def _watch(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="a fitted model.safetensors (FAPM)")
    p.add_argument("input", metavar="IN_DIR", help="the folder the camera drops image files into (any depth)")
    p.add_argument("--output", required=True, help="folder for results.jsonl and overlays/ of NG parts")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--once", action="store_true", help="score what is there now, then exit")
    p.add_argument("--interval", type=float, default=0.5, help="seconds between two looks at the folder")
    p.add_argument("--settle", type=float, default=1.0, help="a file is taken once unchanged for this many "
                   "seconds (a camera still writing it is waited for)")
    p.add_argument("--move-done", dest="move_done", help="move each scored file into this folder (same "
                   "sub-folders); default: leave it, results.jsonl marks it done")


#: command -> (help, the function adding its own options). Each command runs the function
#: ``run_<command>`` of ``fapm_lib.workflows.<command>`` (``-`` read as ``_``), imported when it runs,
#: so ``fapm --help`` imports no workflow.
COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None]]] = {
    "fit": ("fit a model on <data-root>/<category>/train/good (or --good DIR)", _fit),
    "fit-all": ("fit one model per category (here or on a Dask cluster)", _fit_all),
    "evaluate": ("fit (or load --model) and evaluate on the test split", _evaluate),
    "predict": ("score images with a fitted model", _predict),
    "update": ("add normal images (marked false alarms) to a fitted model, no refit", _update),
    "export": ("export a fitted model as one ONNX / OpenVINO graph (uint8 image in)", _export),
    "synth": ("generate the built-in dataset (MVTec layout)", _synth),
    "demo": ("the main job: every built-in category, results/summary.md", _demo),
    "batch": ("run a notebook once per category with papermill", _batch),
    "benchmark": ("FAPM vs PatchCore: accuracy and speed, side by side", _benchmark),
    "gif": ("animate test images with heatmap and mask", _gif),
    "serve": ("HTTP service: score parts as they come, model kept loaded (needs the serve extra)", _serve),
    "watch": ("score every image file dropped into a folder, exactly once", _watch),
}


def handler(command: str) -> Callable[[argparse.Namespace], int]:
    """The workflow function that runs ``command``: ``fapm_lib.workflows.<command>.run_<command>``."""
    name = command.replace("-", "_")
    return getattr(importlib.import_module(f"fapm_lib.workflows.{name}"), f"run_{name}")


def build_parser() -> argparse.ArgumentParser:
    """The ``fapm`` parser: one sub-parser per entry of :data:`COMMANDS`, each with the common flags."""
    parser = argparse.ArgumentParser(prog="fapm", description="FAPM: Fast Adaptive Patch Memory anomaly detection")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (text, add_options) in COMMANDS.items():
        command = sub.add_parser(name, help=text)
        add_options(command)
        _common(command)
    return parser


def _set_threads(threads: int | None) -> None:
    if threads is None:
        return
    if threads < 1:
        raise ConfigError(f"--threads {threads}: must be >= 1")
    import torch

    torch.set_num_threads(threads)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        tune_allocator()
        _set_threads(args.threads)
        return handler(args.command)(args)
    except FAPMError as exc:
        if args.debug:
            raise
        print(f"fapm {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"fapm {args.command}: interrupted; files already written are complete", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
