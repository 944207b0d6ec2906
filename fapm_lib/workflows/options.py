"""Command-line style options (an ``argparse.Namespace``) -> the run's FAPMConfig and device."""
from __future__ import annotations

from typing import Any

from ..config import FAPMConfig, check_k_acts, load_yaml_config
from ..errors import ConfigError

#: Option name -> FAPMConfig field type, for the optional tuning flags (``--coreset-ratio`` ...).
TUNING_FLAGS = {"coreset_ratio": float, "adaptive_multiplier": float, "grid": int, "k": int,
                "sampling": str, "image_score": str, "batch_size": int, "coreset_method": str,
                "coreset_cell_size": int, "resize": int, "crop_size": int, "scale": float, "region_size": int,
                "tile": int, "tile_overlap": int, "neighbour_regions": int}
#: Calibration flags of fit / evaluate / demo -> FAPMConfig field.
CALIBRATION_FLAGS = {"calibration_folds": int, "calibration_images": int, "false_alarm_rate": float}


def build_config(args: Any):
    """FAPMConfig from the defaults, then ``args.config`` (a YAML file), then the flags set on
    ``args`` (an ``argparse.Namespace``); fills ``args.category`` / ``args.data_root`` from the
    YAML file's run section when they are not given."""
    values = read_config_file(args)
    flags = {}
    for key in ("backbone", "seed", *TUNING_FLAGS, *CALIBRATION_FLAGS, "max_memory", "store_dir"):
        if getattr(args, key, None) is not None:
            values[key] = flags[key] = getattr(args, key)
    if getattr(args, "random_weights", False):
        values["pretrained"] = False
    config = FAPMConfig.from_dict(values, source="options")
    if "calibration_images" in values and config.calibration_folds == 0:
        raise ConfigError(f"options: calibration_images={values['calibration_images']!r} acts only with the k-fold "
                          "calibration (calibration_folds >= 2); drop it or set calibration_folds")
    check_k_acts(values, "options", "--k" if "k" in flags else "k")  # a k from the YAML too
    return config


def read_config_file(args: Any) -> dict[str, Any]:
    """The model settings of ``args.config`` (a YAML file; none without it); fills
    ``args.category`` / ``args.data_root`` from its run section when they are not given."""
    if not getattr(args, "config", None):
        return {}
    values, run = load_yaml_config(args.config)
    for key in ("category", "data_root"):
        if getattr(args, key, None) is None and key in run:
            setattr(args, key, run[key])
    return values


def check_device(name: str) -> str:
    """``name`` ("cpu" or "cuda"); ConfigError when CUDA is asked for and not available."""
    import torch

    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is available here")
    return name
