"""What the decisions need of a detector, as a type: :class:`~fapm_lib.detectors.fapm.FAPM` and
:class:`~fapm_lib.detectors.patchcore.PatchCore` (a higher layer) satisfy it, so this layer
can take one without importing it."""
from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor

from ..config import FAPMConfig
from ..data.transform import Transform
from ..method.anomaly_model import AnomalyModel
from ..method.scoring import Prediction
from .calibration import Calibration


class ScoringDetector(Protocol):
    """A fitted detector: its settings, device, thresholds and training images (None: unknown),
    its pre-processing, and its inference module (:meth:`runnable`, with its backbone)."""

    config: FAPMConfig
    device: torch.device
    calibration: Calibration | None
    train_images: list[str] | None

    @property
    def transform(self) -> Transform:
        """The pre-processing the module expects."""

    def predict(self, images: Tensor) -> Prediction:
        """``images [B, 3, S, S]`` (normalised) -> :class:`Prediction`."""

    def runnable(self) -> AnomalyModel:
        """The fitted inference module with its backbone."""
