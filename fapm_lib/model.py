"""FAPM: fit per-region, per-layer memories; predict anomaly maps and image scores; save, load."""
from __future__ import annotations

import json
import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .backbone import FeatureExtractor
from .base import ImageBatches, PatchModel, Prediction, iter_images
from .config import FAPMConfig
from .errors import ConfigError, DataError, ModelFileError
from .features import aggregate, aggregate_maps
from .budget import current_rss, parse_size, regions_per_chunk
from .coreset import coreset_size
from .memory import (BankGroup, LayerMemory, RegionSource, TensorRegions, build_layer_memory,
                     build_layer_memory_chunked, check_k, chunk_work_bytes, layer_fixed_bytes)
from .persistence import load_tensors, save_tensors
from .store import FeatureStore, LayerStoreWriter
from .regions import RegionFeatureBuffer, check_grid, region_lookup, region_rows, split_regions, valid_grids


class FAPM(PatchModel):
    """Fast Adaptive Patch Memory (Kim et al., ICASSP 2023).

    >>> model = FAPM(FAPMConfig()).fit(MVTecDataset(root, "bottle", "train", model.transform))
    >>> pred = model.predict(images)          # images [B, 3, 224, 224]
    """

    kind = "fapm"

    def __init__(self, config: FAPMConfig | None = None, device: str | torch.device = "cpu",
                 extractor: FeatureExtractor | None = None) -> None:
        super().__init__(config, device, extractor)
        self.memories: list[LayerMemory] = []

    @property
    def is_fitted(self) -> bool:
        return bool(self.memories)

    # ---- fit -------------------------------------------------------------------------------
    def fit(self, data: ImageBatches | Tensor, progress: bool = True) -> "FAPM":
        """Extract features of all training images region by region, then build the memories."""
        torch.manual_seed(self.config.seed)
        batches, n = iter_images(data, self.config.batch_size)
        total = None if n is None else -(-n // self.config.batch_size)
        maps = (self.embed(images) for images in tqdm(batches, desc="features", total=total, disable=not progress,
                                                       leave=False))
        return self.fit_map_batches(maps, n, progress)

    def fit_map_batches(self, batches: Iterable[list[Tensor]], n_images: int | None = None,
                        progress: bool = False) -> "FAPM":
        """Fit from aggregated maps arriving batch by batch (per layer ``[B, C, h, w]``), e.g.
        :meth:`embed` of each image batch. ``n_images``: the total, when known (preallocates).
        With ``config.max_memory`` the features go to a disk store (:meth:`fit_store`)."""
        if self.config.max_memory is not None:
            return self._fit_bounded(batches, n_images, progress)
        start = time.perf_counter()
        buffers: list[RegionFeatureBuffer] = []
        for maps in batches:
            if not buffers:
                self._set_feature_sizes(maps)
                buffers = [RegionFeatureBuffer(self.config.grid, n_images) for _ in maps]
            for buf, f in zip(buffers, maps):
                buf.add(f)
        if not buffers:
            raise DataError("no training images to fit on")
        self.fit_stats["feature_seconds"] = time.perf_counter() - start
        return self.fit_regions([b.result() for b in buffers], progress)

    def fit_maps(self, maps: list[Tensor], progress: bool = False) -> "FAPM":
        """Build the memories from cached aggregated maps (per layer ``[N, C, h, w]``): used to
        refit with other ratios, grids or k without running the backbone again."""
        self._set_feature_sizes(maps)
        return self.fit_regions([split_regions(m.to(self.device), self.config.grid) for m in maps], progress)

    def fit_regions(self, regions: list[Tensor], progress: bool = False) -> "FAPM":
        """Coreset-subsample region features (per layer ``[R, N, C]``) into the memories."""
        cfg = self.config
        if cfg.max_memory is not None:  # already in RAM: the coreset still runs chunk by chunk
            rows = [(h // cfg.grid) * (w // cfg.grid) for h, w in self.feature_sizes]
            return self.fit_store([TensorRegions(r, n) for r, n in zip(regions, rows)], progress)
        start = time.perf_counter()
        memories = [
            build_layer_memory(r.to(self.device), cfg.coreset_ratio, cfg.adaptive_multiplier, cfg.sampling,
                               cfg.coreset_projection, cfg.seed, progress, name=f"layer {i}")
            for i, r in enumerate(regions)
        ]
        check_k(memories, cfg.k)  # before assigning: a refused fit leaves the old memories
        self.memories = memories
        self.fit_stats["coreset_seconds"] = time.perf_counter() - start
        return self

    # ---- fit in bounded memory (config.max_memory) ---------------------------------------------
    def _fit_bounded(self, batches: Iterable[list[Tensor]], n_images: int | None, progress: bool) -> "FAPM":
        """Features -> a disk store (one file per layer, by region) -> :meth:`fit_store`; the
        store's folder is removed afterwards, also on errors."""
        cfg = self.config
        start = time.perf_counter()
        with FeatureStore(cfg.store_dir) as store:
            writers: list[LayerStoreWriter] = []
            try:
                for maps in batches:
                    if not writers:
                        self._set_feature_sizes(maps)
                        writers = [store.writer(i, cfg.grid, n_images) for i in range(len(maps))]
                        if n_images is not None:  # refuse a budget too small before extracting everything
                            shapes = [(int(f.shape[1]), n_images) for f in maps]
                            self._chunk_plan(shapes, layer=None)
                    for writer, f in zip(writers, maps):
                        writer.add(f)
                if not writers:
                    raise DataError("no training images to fit on")
                layers = [writer.finish() for writer in writers]
            finally:
                for writer in writers:
                    writer.close()
            self.fit_stats["feature_seconds"] = time.perf_counter() - start
            return self.fit_store(layers, progress)

    def fit_store(self, layers: list[RegionSource], progress: bool = False) -> "FAPM":
        """Build the memories from region features read chunk by chunk (per layer a
        :class:`~fapm_lib.memory.RegionSource` of ``[R, M, C]``), as many regions at a time as
        ``config.max_memory`` allows: the same memories as :meth:`fit_regions`."""
        cfg = self.config
        start = time.perf_counter()
        rows = [(h // cfg.grid) * (w // cfg.grid) for h, w in self.feature_sizes]
        shapes = [(src.dim, src.rows() // per_image) for src, per_image in zip(layers, rows)]
        memories, plan = [], []
        for i, source in enumerate(layers):
            plan.append(self._chunk_plan(shapes, layer=i))  # the layers built so far are in the RSS
            memories.append(build_layer_memory_chunked(
                source, plan[-1], cfg.coreset_ratio, cfg.adaptive_multiplier, cfg.sampling, cfg.coreset_projection,
                cfg.seed, device=self.device, progress=progress, name=f"layer {i}"))
        check_k(memories, cfg.k)
        self.memories = memories
        self.fit_stats["coreset_seconds"] = time.perf_counter() - start
        self.fit_stats["regions_per_chunk"] = plan
        return self

    def _chunk_plan(self, shapes: list[tuple[int, int]], layer: int | None) -> int:
        """Regions per coreset chunk for ``layer`` under ``config.max_memory`` (ConfigError with
        the minimum budget when one region does not fit). ``shapes``: per layer (channels,
        images). ``layer=None``: check every layer (before extraction)."""
        cfg = self.config
        budget = parse_size(cfg.max_memory)
        n_regions = cfg.grid**2
        sizes = []
        for (dim, n_images), (h, w) in zip(shapes, self.feature_sizes):
            n_rows = n_images * (h // cfg.grid) * (w // cfg.grid)
            n_keep = coreset_size(n_rows, cfg.coreset_ratio * (cfg.adaptive_multiplier if cfg.sampling == "adaptive" else 1))
            sizes.append((layer_fixed_bytes(n_regions, n_rows, dim, n_keep),
                          chunk_work_bytes(n_rows, dim, n_keep, cfg.coreset_projection)))
        rss = current_rss()
        todo = range(len(sizes)) if layer is None else [layer]
        per_chunk = n_regions
        for i in todo:
            # this layer's greedy state, this and later layers' banks (before extraction: every layer's)
            reserved = sizes if layer is None else sizes[i:]
            held = {"process now": rss, "greedy state and memory banks": sum(fixed for fixed, _ in reserved)}
            per_chunk = regions_per_chunk(budget, held, sizes[i][1], n_regions, str(cfg.max_memory),
                                          f"this fit (layer {i})")
        return per_chunk

    def _set_feature_sizes(self, maps: list[Tensor]) -> None:
        sizes = [(int(m.shape[-2]), int(m.shape[-1])) for m in maps]
        options = valid_grids(*(side for size in sizes for side in size))  # grids that fit every layer
        for i, (h, w) in enumerate(sizes):
            check_grid(h, w, self.config.grid, f"layer-{i} feature map (stride {self.backbone_info.strides[i]})", options)
        self.feature_sizes = sizes

    # ---- predict ---------------------------------------------------------------------------
    def knn(self, maps: list[Tensor]) -> Tensor:
        """Nearest distances within each query's own region, fused over layers:
        aggregated maps -> ``[B, H8, W8, search_k]``."""
        self._require_fitted()
        per_layer = [self._layer_distances(layer, f) for layer, f in enumerate(maps[: len(self.memories)])]
        return self._fuse(per_layer, maps[0].shape[0])

    def _layer_distances(self, layer: int, f: Tensor) -> Tensor:
        """One layer's k-NN distances, on the finest grid: ``[B, C, h, w] -> [B*H8*W8, search_k]``.

        One gather puts the queries in region order (``[R, B*s*s, C]``, size groups contiguous),
        the search runs one matrix product per size group, and one gather puts the distances
        back on the finest grid (merged and upsampled with the aligned cells)."""
        mem, (h, w), grid, k = self.memories[layer], self.feature_sizes[layer], self.config.grid, self.search_k
        if f.shape[-2:] != (h, w):
            raise ConfigError(f"input gives {tuple(f.shape[-2:])} feature maps, the model was fitted on {(h, w)}")
        batch = f.shape[0]
        rows = region_rows(grid, h, w, batch, mem.order, f.device)
        flat = f.permute(0, 2, 3, 1).reshape(-1, f.shape[1])  # [B*h*w, C], a view when channels-last
        queries = flat.index_select(0, rows).view(grid * grid, -1, f.shape[1])  # [R, B*s*s, C]
        dist = mem.search_ordered(queries, k).view(-1, k)  # [R*B*s*s, k]
        lookup = region_lookup(grid, h, w, batch, mem.order, self.feature_sizes[0][0] // h, f.device)
        return dist.index_select(0, lookup)

    def _fuse(self, per_layer: list[Tensor], batch: int) -> Tensor:
        """Sum of :meth:`_layer_distances` (layer 0 first) -> ``[B, H8, W8, search_k]``."""
        fused = per_layer[0]
        for dist in per_layer[1:]:
            fused = fused.add_(dist)
        return fused.view(batch, *self.feature_sizes[0], self.search_k)

    # ---- latency: search layer 0 while the backbone still runs --------------------------------
    #: Overlap the stride-8 search with the backbone's later stages in :meth:`predict`: None
    #: (auto) does it on a CPU when a core is left idle (``2 x torch threads <= cores``).
    overlap_search: bool | None = None

    def overlaps_search(self) -> bool:
        """Whether :meth:`predict` runs the stride-8 search on a second thread."""
        if self.device.type != "cpu":
            return False  # GPU kernels are asynchronous already
        if self.overlap_search is not None:
            return self.overlap_search
        return 2 * torch.get_num_threads() <= available_cores()

    @torch.inference_mode()
    def predict(self, images: Tensor) -> Prediction:
        """``images [B, 3, S, S]`` (normalised) -> :class:`Prediction`; the same numbers as
        ``postprocess(knn(embed(images)))``, sooner when :meth:`overlaps_search`."""
        if not (self.is_fitted and self.overlaps_search()):
            return super().predict(images)
        return self.postprocess(self._knn_overlapped(images))

    def _knn_overlapped(self, images: Tensor) -> Tensor:
        """``knn(embed(images))``, with layer 0's search started on a worker thread as soon as
        the backbone hands out its stride-8 map, while the stride-16 stages still run."""
        pool = self.config.pool_size
        module = self.extractor.stage_module(0)
        if module is None:
            return self.knn(self.embed(images))
        started: dict[str, Any] = {}

        def start_search(_module: torch.nn.Module, _inputs: Any, output: Tensor) -> None:
            # pooled here, before later stages run: they never see (or change) this copy
            pooled = aggregate(output.float(), pool)
            started["raw"], pooled = output, pooled.clone() if pooled is output else pooled
            started["search"] = _search_worker().submit(_in_inference_mode, self._layer_distances, 0, pooled)

        handle = module.register_forward_hook(start_search)
        try:
            raw = self.extractor(images.to(self.device))
        finally:
            handle.remove()
        search: Future | None = started.get("search")
        if search is None or raw[0] is not started["raw"]:  # the hook did not see feature 0: in order
            if search is not None:
                wait([search])
            return self.knn(aggregate_maps(raw, pool))
        try:
            rest = [self._layer_distances(layer, f)
                    for layer, f in enumerate(aggregate_maps(raw[1 : len(self.memories)], pool), start=1)]
        finally:
            wait([search])  # never leave the worker running on this model
        return self._fuse([search.result(), *rest], images.shape[0])

    # ---- info ------------------------------------------------------------------------------
    def memory_size(self) -> dict[str, float]:
        """Memory vectors and megabytes, all layers."""
        n = sum(m.n_vectors() for m in self.memories)
        mb = sum(g.bank.numel() * g.bank.element_size() for m in self.memories for g in m.groups) / 2**20
        return {"vectors": n, "megabytes": mb}

    def to(self, device: str | torch.device) -> "FAPM":
        self.device = torch.device(device)
        self.memories = [m.to(self.device) for m in self.memories]
        if self._extractor is not None:
            self._extractor.to(self.device)
        return self

    # ---- save / load -----------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """One safetensors file: memories + the config and backbone that made them."""
        self._require_fitted()
        tensors: dict[str, Tensor] = {}
        for l, mem in enumerate(self.memories):
            tensors[f"layers.{l}.radii"] = mem.radii
            tensors[f"layers.{l}.far"] = mem.far.to(torch.uint8)
            for g, group in enumerate(mem.groups):
                tensors[f"layers.{l}.groups.{g}.regions"] = group.regions
                tensors[f"layers.{l}.groups.{g}.bank"] = group.bank
        header = {
            "config": json.loads(self.config.to_json()),
            "backbone": self._backbone_header(),
            "feature_sizes": [list(s) for s in self.feature_sizes],
            "n_layers": len(self.memories),
            "n_groups": [len(m.groups) for m in self.memories],
            "fit_stats": self.fit_stats,
        }
        return save_tensors(path, tensors, self.kind, header)

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu",
             extractor: FeatureExtractor | None = None) -> "FAPM":
        """Load a model saved by :meth:`save`; refuses damaged or mismatched files."""
        tensors, header = load_tensors(path, cls.kind)
        try:
            config = FAPMConfig.from_dict(header["config"], source=f"{path} (config)")
            model = cls(config, device, extractor)
            model.feature_sizes = [tuple(s) for s in header["feature_sizes"]]
            model.fit_stats = dict(header.get("fit_stats", {}))
            channels = header["backbone"]["channels"]
            for l in range(header["n_layers"]):
                n_groups = header["n_groups"][l]
                parts = [(tensors[f"layers.{l}.groups.{g}.regions"], tensors[f"layers.{l}.groups.{g}.bank"])
                         for g in range(n_groups)]
                radii, far = tensors[f"layers.{l}.radii"], tensors[f"layers.{l}.far"]
                _check_layer(path, l, parts, radii, far, channels[l], config.grid, header["backbone"]["name"])
                groups = [BankGroup(regions, bank) for regions, bank in parts]
                model.memories.append(LayerMemory(groups, radii, far.bool()))
            for i, (h, w) in enumerate(model.feature_sizes):
                check_grid(h, w, config.grid, f"layer-{i} feature map")
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelFileError(f"{path}: incomplete model file (missing {exc})") from None
        except ConfigError as exc:
            raise ModelFileError(str(exc)) from None
        model._check_extractor(path, header["backbone"])
        return model.to(device)


def _check_layer(path: str | Path, layer: int, parts: list[tuple[Tensor, Tensor]], radii: Tensor, far: Tensor,
                 channels: int, grid: int, backbone: str) -> None:
    """Refuse a layer whose tensors cannot be a memory of this shape (even with a valid checksum):
    float32 banks ``[G, M, C]`` with C = the backbone's channels, int64 region ids covering
    0..grid**2-1 exactly once, ``radii`` and ``far`` of one value per region."""
    n_regions = grid * grid
    problem = None
    if any(bank.dtype != torch.float32 or bank.ndim != 3 or regions.dtype != torch.int64 or regions.ndim != 1
           or bank.shape[0] != regions.shape[0] or bank.shape[1] == 0 for regions, bank in parts):
        problem = "malformed memory bank tensors"
    elif any(bank.shape[-1] != channels for _, bank in parts):
        problem = f"memory does not match backbone {backbone} ({channels} channels)"
    elif not parts or not torch.equal(torch.cat([r for r, _ in parts]).sort().values, torch.arange(n_regions)):
        problem = f"region ids do not cover the {grid}x{grid} grid exactly once"
    elif radii.shape != (n_regions,) or far.shape != (n_regions,) or radii.dtype != torch.float32:
        problem = "malformed radii or near/far tensors"
    if problem:
        raise ModelFileError(f"{path}: layer {layer}: {problem}")


def available_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


_worker: ThreadPoolExecutor | None = None
_worker_lock = threading.Lock()


def _search_worker() -> ThreadPoolExecutor:
    """The one background thread that runs overlapped searches (started on first use)."""
    global _worker
    with _worker_lock:
        if _worker is None:
            _worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fapm-search")
        return _worker


def _in_inference_mode(fn: Any, *args: Any) -> Any:
    """``fn(*args)`` under ``torch.inference_mode`` (a per-thread setting)."""
    with torch.inference_mode():
        return fn(*args)
