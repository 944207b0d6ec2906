"""PatchCore, the detector: the baseline FAPM speeds up, on the same backbone, coreset and
post-processing (:class:`~fapm_lib.method.patchcore_model.PatchCoreModel`)."""
from __future__ import annotations

import time
from pathlib import Path

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..errors import ConfigError, DataError, ModelFileError
from ..method.backbone import FeatureExtractor
from ..method.patchcore_model import PATCHCORE_PROJECTION, PatchCoreModel, build_bank, patch_rows
from .base import Detector, ImageBatches, iter_images
from .model_file import save_tensors


class PatchCore(Detector):
    """One memory bank for all positions; greedy coreset on a random projection; k-NN search
    over the whole bank for every query. No k-fold calibration (``calibration`` stays None)."""

    kind = "patchcore"

    @property
    def projection(self) -> int:
        return self.config.coreset_projection or PATCHCORE_PROJECTION

    def fit(self, data: ImageBatches | Tensor, progress: bool = True) -> "PatchCore":
        """Collect every training position's feature ``[N*H8*W8, C]``, keep a greedy coreset of ``r``."""
        torch.manual_seed(self.config.seed)
        self.reset_input()  # the training images set the canvas
        start = time.perf_counter()
        batches, _ = iter_images(data, self.config.batch_size)
        rows = [patch_rows(self.embed(images)) for images in tqdm(batches, desc="features", disable=not progress,
                                                                   leave=False)]
        if not rows:
            raise DataError("no training images to fit on")
        self.fit_stats["feature_seconds"] = time.perf_counter() - start
        return self.fit_rows(torch.cat(rows), progress)

    def fit_maps(self, maps: list[Tensor], progress: bool = False) -> "PatchCore":
        """Build the bank from cached aggregated maps (per layer ``[N, C, h, w]``)."""
        self.feature_sizes = [(int(m.shape[-2]), int(m.shape[-1])) for m in maps]
        return self.fit_rows(patch_rows([m.to(self.device) for m in maps]), progress)

    def fit_rows(self, rows: Tensor, progress: bool = False) -> "PatchCore":
        """Greedy coreset of ``rows [N, C]`` (selected on a random projection) -> the bank ``[M, C]``."""
        if self.config.max_memory is not None:
            raise ConfigError("max_memory: a bounded-memory fit is implemented for FAPM only, not PatchCore")
        if self.config.coreset_method == "cells" or self.config.coreset_cell_size is not None:
            raise ConfigError("coreset_method cells: the greedy within cells is implemented for FAPM only, not "
                              "PatchCore (its one memory keeps the exact greedy)")
        start = time.perf_counter()
        bank = build_bank(rows, self.config.coreset_ratio, self.projection, self.config.seed, progress)
        canvas, padded = self._canvas_and_padded()
        self.model = PatchCoreModel.from_config(self.config, self._extractor, bank, canvas, padded,
                                                tile_rule=self.tile_rule).to(self.device)
        self.calibration = None  # no k-fold calibration here
        self.fit_stats["coreset_seconds"] = time.perf_counter() - start
        return self

    def _canvas_and_padded(self) -> tuple[tuple[int, int], tuple[int, int]]:
        """The canvas and its padded size (from the feature maps for a bank fitted on maps alone)."""
        if self.canvas is None:
            if not self.feature_sizes:
                raise ConfigError("PatchCore needs its input size: fit it on images or feature maps")
            side = tuple(v * 8 for v in self.feature_sizes[0])
            return side, side  # type: ignore[return-value]
        return self.canvas, self.padded

    def save(self, path: str | Path) -> Path:
        model = self._require_fitted()
        return save_tensors(path, {"bank": model.bank}, self.kind, self._header())

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu",
             extractor: FeatureExtractor | None = None) -> "PatchCore":
        """Load a model saved by :meth:`save`; refuses damaged or mismatched files with one line."""
        model, tensors, header = cls._open(path, device, extractor)
        bank = tensors.get("bank")
        if bank is None or bank.dtype != torch.float32 or bank.ndim != 2 or bank.shape[0] == 0:
            raise ModelFileError(f"{path}: malformed memory bank tensor")
        if bank.shape[-1] != sum(header["backbone"]["channels"]):
            raise ModelFileError(f"{path}: memory does not match backbone {header['backbone']['name']}")
        try:
            model.model = PatchCoreModel.from_config(model.config, extractor, bank, *model._canvas_and_padded(),
                                                     tile_rule=model.tile_rule)
        except ConfigError as exc:
            raise ModelFileError(f"{path}: {exc}") from None
        return model.to(device)
