"""FAPM, the detector: fit per-region, per-layer memories and calibrate; predict; save and load.

The inference itself is :class:`~fapm_lib.method.fapm_model.FAPMModel` (``FAPM.model`` once fitted).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Iterable

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..data.samples import sample_paths
from ..decisions.calibration import K_KEPT
from ..decisions.heldout import calibrate_regions
from ..decisions.heldout_store import calibrate_from_knn
from ..errors import ConfigError, DataError, ModelFileError
from ..method.backbone import FEATURE_STRIDES, FeatureExtractor
from ..method.fapm_model import FAPMModel
from ..method.geometry import ModelGeometry
from ..method.machinery.cells import resolve_method
from ..method.memory import BankGroup, LayerMemory
from ..method.memory_builders import build_memories, check_k
from ..method.region_grid import check_region_grid, region_grid
from ..method.regions import RegionFeatureBuffer, cells_per_region, split_regions
from ..scale.bounded import check_budget, write_store
from ..scale.pipeline import check_scheduler, fit_layers
from ..scale.region_source import TensorRegions
from ..scale.store import FeatureStore
from .base import Detector, ImageBatches, iter_images
from .model_file import save_tensors


class FAPM(Detector):
    """Fast Adaptive Patch Memory (Kim et al., ICASSP 2023).

    >>> model = FAPM(FAPMConfig()).fit(MVTecDataset(root, "bottle", "train", model.transform))
    >>> pred = model.predict(images)          # images [B, 3, 224, 224] -> anomaly_map, pred_score
    """

    kind = "fapm"

    @property
    def memories(self) -> list[LayerMemory]:
        """One :class:`LayerMemory` per layer (empty before fitting)."""
        return [] if self.model is None else list(self.model.memories)

    # ---- fit -------------------------------------------------------------------------------
    def fit(self, data: ImageBatches | Tensor, progress: bool = True, scheduler: str | None = None) -> "FAPM":
        """Extract features of all training images region by region, build the memories, then
        calibrate the thresholds (k-fold, ``config.calibration_folds``). ``scheduler``: with
        ``config.max_memory``, run the region jobs on Dask (``local:N`` or ``tcp://HOST:PORT``)."""
        check_scheduler(self.config, scheduler)
        torch.manual_seed(self.config.seed)
        self.reset_input()  # the training images set the canvas
        batches, n = iter_images(data, self.config.batch_size)
        total = None if n is None else -(-n // self.config.batch_size)
        # the bar is closed (its line cleared) however the fit ends, Ctrl-C included
        with tqdm(batches, desc="features", total=total, disable=not progress, leave=False) as bar:
            self.fit_map_batches((self.embed(images) for images in bar), n, progress, scheduler)
        self.train_images = sample_paths(data)  # image i of the memories' sources; None for tensors
        return self

    def fit_map_batches(self, batches: Iterable[list[Tensor]], n_images: int | None = None,
                        progress: bool = False, scheduler: str | None = None) -> "FAPM":
        """Fit from aggregated maps arriving batch by batch (per layer ``[B, C, h, w]``), e.g.
        :meth:`embed` of each image batch. ``n_images``: the total, when known (preallocates).
        With ``config.max_memory`` the features go to a disk store (:mod:`fapm_lib.scale`)."""
        check_scheduler(self.config, scheduler)
        if self.config.max_memory is not None:
            return self._fit_bounded(batches, n_images, progress, scheduler)
        start = time.perf_counter()
        buffers: list[RegionFeatureBuffer] = []
        for maps in batches:
            if not buffers:
                self._set_feature_sizes(maps)
                buffers = [RegionFeatureBuffer(self.region_grid, n_images) for _ in maps]
            for buf, f in zip(buffers, maps):
                buf.add(f)
        if not buffers:
            raise DataError("no training images to fit on")
        self.fit_stats["feature_seconds"] = time.perf_counter() - start
        regions = [b.result() for b in buffers]
        self.fit_regions(regions, progress)
        return self.calibrate_regions(regions, progress)

    def fit_maps(self, maps: list[Tensor], progress: bool = False) -> "FAPM":
        """Build the memories from cached aggregated maps (per layer ``[N, C, h, w]``): used to
        refit with other ratios or grids without running the backbone again (no calibration)."""
        self._set_feature_sizes(maps)
        return self.fit_regions([split_regions(m.to(self.device), self.region_grid) for m in maps], progress)

    def fit_regions(self, regions: list[Tensor], progress: bool = False) -> "FAPM":
        """Coreset-subsample region features (per layer ``[R, N, C]``) into the memories."""
        start = time.perf_counter()
        rows = self._rows_per_image()
        if rows:
            n_images = regions[0].shape[1] // rows[0]
            method = resolve_method(self.config, n_images, [(p, r.shape[2]) for p, r in zip(rows, regions)],
                                    regions[0].shape[0])
        elif self.config.coreset_method == "cells":  # bare region features: no image count, no cells
            raise ConfigError("coreset_method cells needs the feature map sizes: fit with fit, fit_maps or "
                              "fit_map_batches, not fit_regions on bare region features")
        else:
            n_images, method = None, "exact"
        if self.config.max_memory is not None:  # already in RAM: the coreset still runs chunk by chunk
            fitted = fit_layers([TensorRegions(r.cpu(), n) for r, n in zip(regions, rows)], rows, self.config,
                                progress=progress)
            memories = [m.to(self.device) for m in fitted.memories]
            self.fit_stats.update(regions_per_chunk=fitted.stats["regions_per_chunk"])
        else:
            memories = build_memories([r.to(self.device) for r in regions], self.config, progress, rows, method)
        self.set_memories(memories)
        self.fit_stats.update(coreset_method=method, n_train=n_images, coreset_seconds=time.perf_counter() - start)
        return self

    def set_memories(self, memories: list[LayerMemory]) -> None:
        """Use these memories (fitted on :attr:`feature_sizes`); the old thresholds no longer hold."""
        check_k(memories, self.search_k)  # before assigning: a refused fit leaves the old memories
        self.model = FAPMModel.from_config(self.config, self._extractor, memories, self.geometry,
                                           tile_rule=self.tile_rule).to(self.device)
        self.calibration = None
        self.train_images = None  # FAPM.fit sets them after; other fits do not know them

    def calibrate_regions(self, regions: list[Tensor], progress: bool = False) -> "FAPM":
        """k-fold thresholds from the training region features (per layer ``[R, N*s*s, C]``),
        see :mod:`fapm_lib.decisions.heldout`; ``calibration`` stays None with ``calibration_folds 0``."""
        start = time.perf_counter()
        self.calibration = calibrate_regions(regions, self.geometry, self.config, progress,
                                             self.fit_stats.get("coreset_method", "exact"))
        self.fit_stats["calibration_seconds"] = time.perf_counter() - start
        return self

    def _fit_bounded(self, batches: Iterable[list[Tensor]], n_images: int | None, progress: bool,
                     scheduler: str | None = None) -> "FAPM":
        """Features -> a disk store (one file per layer, by region) -> memories and the k-fold
        calibration's held-out distances chunk by chunk (:func:`~fapm_lib.scale.pipeline.fit_layers`)
        -> thresholds; the store's folder is removed afterwards, also on errors."""
        start = time.perf_counter()

        def first_batch(maps: list[Tensor]) -> tuple[int, int]:
            self._set_feature_sizes(maps)
            grid = self.region_grid
            if n_images is not None:  # refuse a budget too small before extracting everything
                check_budget(self.config, n_images,
                             [(p, int(f.shape[1])) for p, f in zip(self._rows_per_image(), maps)], grid[0] * grid[1])
            return grid

        with FeatureStore(self.config.store_dir) as store:
            layers = write_store(store, batches, n_images, on_first=first_batch)
            self.fit_stats["feature_seconds"] = time.perf_counter() - start
            keep = K_KEPT if self.config.calibration_folds else 0
            fitted = fit_layers(layers, self._rows_per_image(), self.config, store.root, scheduler, keep, progress)
            self.set_memories([m.to(self.device) for m in fitted.memories])
            self.fit_stats.update(fitted.stats, n_train=layers[0].rows() // self._rows_per_image()[0])
            began = time.perf_counter()
            self.calibration = calibrate_from_knn(fitted, self.geometry, self.config, store.root, progress)
            self.fit_stats["calibration_seconds"] = time.perf_counter() - began
        return self

    @property
    def region_grid(self) -> tuple[int, int]:
        """``(rows, cols)`` of regions: the protocol's square grid, or at native resolution the
        padded canvas in regions of ``region_pixels``."""
        return region_grid(self.config, self.feature_sizes)

    @property
    def geometry(self) -> ModelGeometry:
        """The fit's :class:`~fapm_lib.method.geometry.ModelGeometry`. Region features fitted bare
        (:meth:`fit_regions`, no feature maps seen) take the protocol's square input."""
        sizes = self.feature_sizes
        if not sizes:
            if self.config.native:
                raise ConfigError("region features without feature maps need the paper's protocol (resize / "
                                  "crop_size): at native resolution the regions come from the maps (fit or fit_maps)")
            sizes = [(self.config.input_size // stride,) * 2 for stride in FEATURE_STRIDES]
        canvas = self.canvas or tuple(side * FEATURE_STRIDES[0] for side in sizes[0])
        padded = self.padded if self.canvas is not None else canvas
        return ModelGeometry(canvas, padded, region_grid(self.config, sizes), tuple(sizes))

    def _rows_per_image(self) -> list[int]:
        """Vectors per image in one region, per layer (``s*s``)."""
        return [cells_per_region(size, self.region_grid) for size in self.feature_sizes]

    def _set_feature_sizes(self, maps: list[Tensor]) -> None:
        sizes = [(int(m.shape[-2]), int(m.shape[-1])) for m in maps]
        check_region_grid(self.config, sizes, self.backbone_info.strides)
        self.feature_sizes = sizes

    # ---- adding normal images (fapm update) -------------------------------------------------
    def add_good(self, data: ImageBatches | Tensor, progress: bool = False):
        """Add normal images (a dataset, loader or ``[N, 3, S, S]`` tensor) to the fitted memories
        without a refit and refresh the calibration (:mod:`fapm_lib.detectors.add_good`); returns
        its :class:`~fapm_lib.detectors.add_good.UpdateReport`."""
        from .add_good import add_good

        return add_good(self, data, progress)

    # ---- save / load -----------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """One safetensors file: memories + the config, backbone and calibration that go with them."""
        self._require_fitted()
        tensors: dict[str, Tensor] = {}
        for layer, mem in enumerate(self.memories):
            tensors[f"layers.{layer}.radii"] = mem.radii
            tensors[f"layers.{layer}.far"] = mem.far.to(torch.uint8)
            for g, group in enumerate(mem.groups):
                tensors[f"layers.{layer}.groups.{g}.regions"] = group.regions
                tensors[f"layers.{layer}.groups.{g}.bank"] = group.bank
                if group.sources is not None:
                    tensors[f"layers.{layer}.groups.{g}.sources"] = group.sources
        header = {**self._header(), "n_layers": len(self.memories),
                  "n_groups": [len(m.groups) for m in self.memories]}
        return save_tensors(path, tensors, self.kind, header)

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu",
             extractor: FeatureExtractor | None = None) -> "FAPM":
        """Load a model saved by :meth:`save`; refuses damaged or mismatched files with one line."""
        model, tensors, header = cls._open(path, device, extractor)
        config = model.config
        try:
            channels = header["backbone"]["channels"]
            memories = []
            for layer in range(header["n_layers"]):
                parts = [(tensors[f"layers.{layer}.groups.{g}.regions"], tensors[f"layers.{layer}.groups.{g}.bank"])
                         for g in range(header["n_groups"][layer])]
                sources = [tensors.get(f"layers.{layer}.groups.{g}.sources") for g in range(len(parts))]
                radii, far = tensors[f"layers.{layer}.radii"], tensors[f"layers.{layer}.far"]
                _check_layer(path, layer, parts, radii, far, channels[layer], model.region_grid,
                             header["backbone"]["name"])
                _check_sources(path, layer, parts, sources)
                memories.append(LayerMemory([BankGroup(r, b, src) for (r, b), src in zip(parts, sources)], radii,
                                            far.bool()))
            if len(model.feature_sizes) != len(memories):
                raise ModelFileError(f"{path}: {len(model.feature_sizes)} feature sizes for {len(memories)} layers")
            check_region_grid(config, model.feature_sizes)
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelFileError(f"{path}: incomplete model file (missing {exc})") from None
        except ConfigError as exc:
            raise ModelFileError(str(exc)) from None
        model.model = FAPMModel.from_config(config, extractor, memories, model.geometry, tile_rule=model.tile_rule)
        return model.to(device)

def _check_layer(path: str | Path, layer: int, parts: list[tuple[Tensor, Tensor]], radii: Tensor, far: Tensor,
                 channels: int, grid: tuple[int, int], backbone: str) -> None:
    """Refuse a layer whose tensors cannot be a memory of this shape (even with a valid checksum):
    float32 banks ``[G, M, C]`` with C = the backbone's channels, int64 region ids covering
    0..rows*cols-1 exactly once, ``radii`` and ``far`` of one value per region."""
    n_regions = grid[0] * grid[1]
    problem = None
    if any(bank.dtype != torch.float32 or bank.ndim != 3 or regions.dtype != torch.int64 or regions.ndim != 1
           or bank.shape[0] != regions.shape[0] or bank.shape[1] == 0 for regions, bank in parts):
        problem = "malformed memory bank tensors"
    elif any(bank.shape[-1] != channels for _, bank in parts):
        problem = f"memory does not match backbone {backbone} ({channels} channels)"
    elif not parts or not torch.equal(torch.cat([r for r, _ in parts]).sort().values, torch.arange(n_regions)):
        problem = f"region ids do not cover the {grid[0]}x{grid[1]} grid exactly once"
    elif radii.shape != (n_regions,) or far.shape != (n_regions,) or radii.dtype != torch.float32:
        problem = "malformed radii or near/far tensors"
    if problem:
        raise ModelFileError(f"{path}: layer {layer}: {problem}")


def _check_sources(path: str | Path, layer: int, parts: list[tuple[Tensor, Tensor]],
                   sources: list[Tensor | None]) -> None:
    """Refuse malformed sources: one int64 row index ``>= 0`` per memory vector, or none at all
    (format version 1)."""
    if all(src is None for src in sources):
        return
    if any(src is None or src.dtype != torch.int64 or tuple(src.shape) != tuple(bank.shape[:2]) or
           (src.numel() and int(src.min()) < 0) for src, (_, bank) in zip(sources, parts)):
        raise ModelFileError(f"{path}: layer {layer}: malformed memory sources")
