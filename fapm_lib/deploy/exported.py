"""Exported models (ONNX in onnxruntime, OpenVINO IR) behind the torch model's predict interface.

:func:`load_predictor` returns either a :class:`~fapm_lib.FAPM` or an
:class:`ExportedModel`; both have ``transform``, ``config``, ``device``, ``calibration`` and
``predict(images [B, 3, S, S] normalised) -> Prediction``, so code that scores images (the
``predict`` command) does not care which one it got.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..config import FAPMConfig
from ..data.transform import Transform
from ..decisions.calibration import Calibration
from ..errors import ConfigError, DataError, ModelFileError
from .run_fapm import SIDECAR, ExportedRunner, ExportError

EXPORTED_SUFFIXES = (".onnx", ".xml")


@dataclass
class RuntimePrediction:
    """What an exported graph gives, with the names of :class:`~fapm_lib.method.scoring.Prediction`
    (``anomaly_map [B, S, S]``, ``pred_score [B]``, ``patch_scores [B, H8, W8]``) plus, for a
    calibrated export, ``score [B]`` (normalised, 0.5 at the threshold), ``decision [B]`` (bool,
    True = NG), ``mask [B, S, S]`` (bool) and ``score_map [B, S, S]``."""

    anomaly_map: Tensor
    pred_score: Tensor
    patch_scores: Tensor
    score: Tensor | None = None
    decision: Tensor | None = None
    mask: Tensor | None = None
    score_map: Tensor | None = None


def is_exported(path: str | os.PathLike) -> bool:
    """True for an export folder, its ``.onnx`` / ``.xml`` file or its sidecar."""
    p = Path(path)
    return p.suffix in EXPORTED_SUFFIXES or p.name == SIDECAR or (p.is_dir() and (p / SIDECAR).is_file())


class ExportedModel:
    """An exported FAPM graph (see :mod:`fapm_lib.deploy.graph_export`), run by onnxruntime or OpenVINO."""

    kind = "exported"

    def __init__(self, path: str | os.PathLike, runtime: str | None = None, threads: int | None = None) -> None:
        try:
            self.runner = ExportedRunner(path, runtime, threads)
        except ExportError as exc:
            raise ModelFileError(str(exc)) from None
        meta = self.runner.meta
        pre = meta["preprocessing"]
        try:
            self.config = FAPMConfig.from_dict(meta["model"]["config"], source=f"{self.runner.sidecar_path} (config)")
            self.transform = exported_transform(pre, self.runner.shape)
            cal = meta.get("calibration")
            self.calibration = None if cal is None else Calibration(**cal)
        except (KeyError, TypeError, ConfigError) as exc:
            raise ModelFileError(f"{self.runner.sidecar_path}: inconsistent export description ({exc})") from None
        self.device = torch.device("cpu")
        self.runtime = self.runner.runtime
        self.batch_size = self.runner.batch_size

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """``(H, W, C)`` of one input image."""
        return self.runner.shape

    def predict_uint8(self, images: np.ndarray) -> RuntimePrediction:
        """uint8 ``[B, H, W, C]`` (as :meth:`load` makes them) -> :class:`RuntimePrediction`."""
        try:
            out = self.runner.run(images)
        except ExportError as exc:
            raise ConfigError(str(exc)) from None
        t = {k: torch.from_numpy(np.asarray(v)) for k, v in out.items()}
        return RuntimePrediction(t["anomaly_map"], t["raw_score"], t["patch_scores"], t.get("score"),
                                 t.get("decision"), t.get("mask"), t.get("score_map"))

    def predict(self, images: Tensor) -> RuntimePrediction:
        """``images [B, C, H, W]`` normalised as :attr:`transform` makes them (what the torch
        model takes) -> :class:`RuntimePrediction`. The uint8 pixels are recovered exactly
        (``round((x * std + mean) * 255)``), then run through the graph."""
        return self.predict_uint8(to_uint8(images, self.transform))

    def load(self, path: str | os.PathLike) -> np.ndarray:
        """One image file -> uint8 ``[H, W, C]``, decoded and prepared as the runner does."""
        try:
            return self.runner.load(path)
        except ExportError as exc:
            raise DataError(str(exc)) from None

    def to(self, device: str | torch.device) -> "ExportedModel":
        if torch.device(device).type != "cpu":
            raise ConfigError(f"--device {device}: exported models run on the CPU here (onnxruntime / OpenVINO)")
        return self


def to_uint8(images: Tensor, transform: Transform) -> np.ndarray:
    """Normalised ``[B, C, H, W]`` -> the uint8 ``[B, H, W, C]`` pixels they were made from;
    ConfigError when the values are not a :meth:`Transform.image` output of this transform."""
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ConfigError(f"images {list(images.shape)}: expected [B, C, H, W] with C 1 or 3")
    c = images.shape[1]
    mean = torch.tensor(transform.mean[:c], dtype=torch.float32).view(1, c, 1, 1)
    std = torch.tensor(transform.std[:c], dtype=torch.float32).view(1, c, 1, 1)
    pixels = (images.detach().cpu().float() * std + mean) * 255.0
    rounded = pixels.round()
    if pixels.numel() and (float((pixels - rounded).abs().max()) > 0.05 or rounded.min() < 0 or rounded.max() > 255):
        raise ConfigError("images are not uint8 pixels normalised with this model's mean/std")
    return rounded.to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


def load_predictor(path: str | os.PathLike, device: str = "cpu", threads: int | None = None):
    """A fitted model for scoring: :class:`ExportedModel` for an export (folder, ``.onnx``,
    ``.xml``), else :meth:`FAPM.load` of a ``.safetensors`` file. The ``predict`` command's hook."""
    if is_exported(path):
        return ExportedModel(path, threads=threads).to(device)
    from ..detectors.fapm import FAPM

    return FAPM.load(path, device=device)


def exported_transform(pre: dict, shape: tuple[int, int, int]) -> Transform:
    """The :class:`Transform` an export's ``preprocessing`` describes (its input ``shape`` ``(H, W, C)``);
    sidecars written before native resolution describe the protocol in RGB."""
    mean, std = tuple(pre["mean"]), tuple(pre["std"])
    if pre.get("mode", "protocol") == "native":
        return Transform(canvas=(shape[0], shape[1]), channels=shape[2], mean=mean, std=std)
    return Transform(resize=pre["resize"], crop_size=pre["crop_size"], channels=shape[2], mean=mean, std=std)
