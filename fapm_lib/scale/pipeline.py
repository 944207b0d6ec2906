"""One category's bounded fit, stage by stage, a chunk of regions per job, here or on Dask
(``fit --max-memory B [--scheduler local:N | tcp://HOST:PORT]``).

1. coreset, layer by layer: which rows each region keeps. ``exact``: every region's greedy run
   to ``r`` (paused), the far regions' runs resumed to ``a r``; for the calibration, the same
   per fold, on the other folds' images. ``cells``: every region's cells
   (:mod:`fapm_lib.method.machinery.cells`), the whole fit's memory and every fold's from one read.
2. one region pass per layer: each job reads its regions once, writes their memory banks and,
   for the k-fold calibration, the distances of every fold's held-out rows to that fold's
   memory (``[R, N * s*s, k]`` beside the store), merged into maps afterwards
   (:mod:`fapm_lib.decisions.heldout_store`).

Jobs never share state: the memory is the same wherever and in whatever chunks they ran (bit for
bit, and equal to the in-RAM fit's for the exact greedy). Each stage takes as many regions per
job as ``max_memory`` allows beside what the process already holds.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..config import FAPMConfig
from ..errors import ConfigError, DataError
from ..method.coreset import GreedyState, Selection, far_regions, near_far_sizes
from ..method.machinery.cells import resolve_method, select_layer, work_bytes
from ..method.machinery.folds import fold_count, heldout_images, kept_images, scored_images
from ..method.memory import BankGroup, LayerMemory
from ..method.memory_builders import check_fold_k, check_k_sizes
from ..method.regions import image_rows
from ..system.allocator import release_free_memory
from ..system.budget import current_rss, parse_size, regions_per_chunk
from ..system.jobs import Job, JobRunner, parse_scheduler
from .region_source import RegionSource
from .regionjobs import (
    BankFile,
    BankSlots,
    HeldOutTask,
    cells_job,
    greedy_first_job,
    greedy_resume_job,
    region_pass_job,
)
from .store import LayerStore

#: Bytes of the batched products of held-out queries against a fold's banks, per job.
PARTIAL_BYTES = 128 * 2**20


@dataclass
class RegionFit:
    """What :func:`fit_layers` gives: the ``memories``; the coreset ``method`` used; with the
    calibration, ``knn`` (per layer, a store of the held-out rows' ``k`` nearest distances),
    ``folds``; ``stats``: regions per job and each job's seconds and bytes read, by stage."""

    memories: list[LayerMemory]
    method: str
    knn: list[LayerStore] | None = None
    k: int = 0
    folds: int = 0
    stats: dict = field(default_factory=dict)


class _Stage:
    """One progress bar, and the jobs' reports, of one stage."""

    def __init__(self, fit: "_Fit", name: str, total: float, unit: str = "region") -> None:
        self.fit, self.name = fit, name
        self.bar = tqdm(total=total, desc=name, unit=unit, unit_scale=unit == "op", disable=not fit.progress,
                        leave=False)

    def run(self, jobs: list[Job], units: Callable[[Job], float]) -> list[Any]:
        """Run ``jobs``; their results in job order; DataError naming the first that failed."""
        def done(job: Job, result: Any) -> None:
            release_free_memory()  # the next job is planned against what the process holds
            report = result[1] if isinstance(result, tuple) else result
            self.fit.reports.append({"stage": self.name, "job": job.name, **report})
            self.bar.update(units(job))

        outcome = self.fit.runner.run(jobs, done)
        if outcome.failures:
            name, why = next(iter(outcome.failures.items()))
            raise DataError(f"{self.name}: job {name} failed: {why}")
        return [outcome.results[job.name] for job in jobs]

    def close(self) -> None:
        self.bar.close()


@dataclass
class _Fit:
    config: FAPMConfig
    layers: list[RegionSource]
    rows_per_image: list[int]
    runner: JobRunner
    progress: bool
    regions_per_job: int | None = None
    reports: list[dict] = field(default_factory=list)
    plan: dict = field(default_factory=dict)

    @property
    def n_images(self) -> int:
        return self.layers[0].rows() // self.rows_per_image[0]

    def chunks_of(self, layer: int, stage: str, per_region: int, held: dict[str, int], regions: Tensor | None = None
                  ) -> list[list[int]]:
        """``regions`` (default all) of layer ``layer`` in jobs of as many as the budget allows."""
        ids = torch.arange(self.layers[layer].n_regions) if regions is None else regions
        held = {"process now": current_rss(), **held}
        per_job = regions_per_chunk(parse_size(self.config.max_memory), held, per_region, max(1, len(ids)),
                                    str(self.config.max_memory), f"this fit ({stage}, layer {layer})")
        if self.runner.client is not None:  # at least one job per worker
            workers = max(1, len(self.runner.client.scheduler_info().get("workers", {})))
            per_job = min(per_job, -(-len(ids) // workers))
        per_job = min(per_job, self.regions_per_job or per_job)
        self.plan.setdefault(stage, {})[layer] = per_job
        return [part.tolist() for part in ids.split(max(1, per_job))] if len(ids) else []


def check_scheduler(config: FAPMConfig, scheduler: str | None) -> None:
    """ConfigError unless ``scheduler`` (None: no Dask) can run this fit's region jobs: they read
    the disk store of ``max_memory``, which a remote cluster must reach (``store_dir``)."""
    if scheduler is None:
        return
    kind, _ = parse_scheduler(scheduler)
    if config.max_memory is None:
        raise ConfigError(f"--scheduler {scheduler} for one category needs --max-memory: its jobs read the disk "
                          "store of region features")
    if kind == "remote" and config.store_dir is None:
        raise ConfigError(f"--scheduler {scheduler}: give --store-dir, a folder every worker can read "
                          "(the feature store goes there)")


def fit_layers(layers: list[RegionSource], rows_per_image: list[int], config: FAPMConfig, workdir: Path | None = None,
               scheduler: str | None = None, keep_neighbours: int = 0, progress: bool = False,
               regions_per_job: int | None = None) -> RegionFit:
    """Every layer's memory from region features read a chunk of regions at a time (per layer a
    :class:`~fapm_lib.scale.region_source.RegionSource` of ``[R, N * s*s, C]``; ``rows_per_image``:
    ``s*s`` per layer), within ``config.max_memory``. ``keep_neighbours``: with the k-fold
    calibration (``config.calibration_folds``), the held-out rows' nearest distances to keep
    (written under ``workdir``); 0: none. ``scheduler``: run the jobs on Dask (the workers read
    the same files: ``workdir`` and the store must be on a filesystem they share).
    ``regions_per_job``: at most this many regions per job (default: as many as the budget allows,
    and on Dask at least one job per worker)."""
    check_scheduler(config, scheduler)
    began = time.perf_counter()
    with JobRunner(scheduler, label="regions", quiet=True) as runner:
        fit = _Fit(config, layers, rows_per_image, runner, progress, regions_per_job)
        n = fit.n_images
        method = resolve_method(config, n, [(p, src.dim) for p, src in zip(rows_per_image, layers)],
                                layers[0].n_regions)
        folds = fold_count(n, config.calibration_folds) if keep_neighbours and n >= 2 else 0
        final, by_fold = [], []
        for layer in range(len(layers)):
            if method == "cells":
                final_and_folds = _cell_selections(fit, layer, folds)
                final.append(final_and_folds[0])
                by_fold.append(final_and_folds[1:])
            else:
                final.append(_select_exact(fit, layer, None, f"coreset layer {layer}"))
                by_fold.append([_select_exact(fit, layer, f, f"calibration coreset layer {layer}, fold {f}")
                                for f in range(folds)])
        check_k_sizes([_smallest(s) for s in final], config.search_k)  # before any search, as in RAM
        k = 0
        if folds:
            k = min(keep_neighbours, *(_smallest(s) for layer in by_fold for s in layer))
            check_fold_k(config.search_k, k)
        selected = time.perf_counter()
        memories, knn = _region_passes(fit, final, by_fold, k, folds, workdir)
    stats = {"coreset_method": method, "coreset_seconds": selected - began,
             "region_pass_seconds": time.perf_counter() - selected, "regions_per_chunk": fit.plan,
             "jobs": summarize(fit.reports)}
    return RegionFit(memories, method, knn, k, folds, stats)


def summarize(reports: list[dict]) -> dict[str, dict]:
    """Per stage: the jobs' regions and seconds (in job completion order) and the GB they read."""
    out: dict[str, dict] = {}
    for r in reports:
        stage = out.setdefault(r["stage"], {"regions": [], "seconds": [], "read_gb": 0.0})
        stage["regions"].append(r["regions"])
        stage["seconds"].append(round(r["seconds"], 3))
        stage["read_gb"] = round(stage["read_gb"] + r["read_bytes"] / 1e9, 3)
    return out


def _smallest(selection: Selection) -> int:
    return min(rows.shape[1] for _, rows in selection.groups())


def _cell_selections(fit: _Fit, layer: int, folds: int) -> list[Selection]:
    """The greedy within cells for layer ``layer``: the whole fit's selection, then each fold's."""
    config, src, per_image = fit.config, fit.layers[layer], fit.rows_per_image[layer]
    variants = [torch.arange(fit.n_images)] + [kept_images(fit.n_images, folds, f) for f in range(folds)]
    per_region, per_job = work_bytes(src.rows(), src.dim, len(variants))
    parts = fit.chunks_of(layer, "coreset", per_region, {"greedy batches and cell partition": per_job})
    stage = _Stage(fit, f"coreset layer {layer}", src.n_regions)
    jobs = [Job(f"coreset-l{layer}-r{ids[0]}", cells_job, (src, ids, variants, per_image, config)) for ids in parts]
    results = stage.run(jobs, lambda job: len(job.args[1]))
    stage.close()
    return [select_layer([c for choices, _ in results for c in choices[v]], config.sampling)
            for v in range(len(variants))]


def _select_exact(fit: _Fit, layer: int, fold: int | None, name: str) -> Selection:
    """The exact greedy's selection for layer ``layer``: over every image (``fold`` None) or over the
    images outside ``fold``; rows among all of a region's rows."""
    config, src, per_image = fit.config, fit.layers[layer], fit.rows_per_image[layer]
    folds = fold_count(fit.n_images, config.calibration_folds)
    images = None if fold is None else kept_images(fit.n_images, folds, fold)
    n = src.rows(images)
    n_near, n_far = near_far_sizes(n, config.coreset_ratio, config.adaptive_multiplier, config.sampling)
    greedy_dim = min(config.coreset_projection or src.dim, src.dim)
    per_region = 4 * n * (src.dim + 2 * greedy_dim + 5) + 12 * n_far
    stage = _Stage(fit, name, src.n_regions * n_near, unit="step")
    parts = fit.chunks_of(layer, "coreset", per_region, {"paused runs": 4 * src.n_regions * n})
    args = (images, n_near, config.coreset_projection, config.seed)
    first = stage.run([Job(f"greedy-l{layer}-f{fold}-r{ids[0]}", greedy_first_job, (src, ids, *args)) for ids in parts],
                      lambda job: len(job.args[1]) * n_near)
    state = GreedyState(*(torch.cat([getattr(s, name) for s, _ in first]) for name in
                          ("indices", "radii", "min_sq", "farthest")))
    radii = state.radii[:, n_near - 1].clone()
    far = far_regions(radii, n_near, n_far)
    far_ids = far.nonzero().flatten()
    stage.bar.total += len(far_ids) * (n_far - n_near)
    jobs = []
    for ids in fit.chunks_of(layer, "coreset", per_region, {"paused runs": 4 * src.n_regions * n}, far_ids):
        at = torch.tensor(ids)
        paused = GreedyState(state.indices[at], state.radii[at], state.min_sq[at], state.farthest[at])
        jobs.append(Job(f"resume-l{layer}-f{fold}-r{ids[0]}", greedy_resume_job,
                        (src, ids, images, paused, n_far, config.coreset_projection, config.seed)))
    resumed = stage.run(jobs, lambda job: len(job.args[1]) * (n_far - n_near))
    stage.close()
    far_rows = torch.cat([rows for rows, _ in resumed]) if resumed else torch.empty(0, n_far, dtype=torch.long)
    selection = Selection(radii, far, state.indices[~far][:, :n_near], far_rows)
    if images is None:
        return selection
    rows = image_rows(images, per_image)  # rows among the fold's images -> among all images
    return Selection(radii, far, rows[selection.near_rows], rows[selection.far_rows])


def _region_passes(fit: _Fit, final: list[Selection], by_fold: list[list[Selection]], k: int, folds: int,
                   workdir: Path | None) -> tuple[list[LayerMemory], list[LayerStore] | None]:
    """Stage 2: every layer's memory banks and, with ``k``, the held-out distances."""
    groups = [s.groups() for s in final]
    bank_bytes = [sum(4 * src.dim * rows.numel() for _, rows in g) for src, g in zip(fit.layers, groups)]
    held = heldout_images(scored_images(fit.n_images, fit.config.calibration_images, fit.config.seed), folds)
    costs = []
    for layer, src in enumerate(fit.layers):  # per region: the read, plus the searches of every fold
        rows = fit.rows_per_image[layer]
        searches = sum(len(images) * rows * _smallest(s) for (images, _), s in zip(held, by_fold[layer]))
        costs.append(src.rows() + searches)
    total = sum(cost * src.n_regions for cost, src in zip(costs, fit.layers))  # rows read and distances
    stage = _Stage(fit, "calibration" if k else "memory banks", total, unit="op")
    remote = fit.runner.client is not None
    memories, knn = [], [] if k else None
    for layer, src in enumerate(fit.layers):
        slots = BankSlots(groups[layer], src.dim)
        sink = BankFile.plan(_need(workdir) / f"layer{layer}.banks", groups[layer], src.dim) if remote else slots
        task = None
        if k:
            knn.append(LayerStore.create(_need(workdir) / f"layer{layer}.knn.f32", src.n_regions,
                                         fit.rows_per_image[layer], k, sum(len(images) for images, _ in held)))
            task = HeldOutTask([images for images, _ in held], [slots for _, slots in held],
                               [_rows_by_region(s) for s in by_fold[layer]], k, knn[-1], PARTIAL_BYTES)
        largest = max(rows.shape[1] for s in [final[layer], *by_fold[layer]] for _, rows in s.groups())
        per_region = 4 * (src.rows() * (src.dim + k) + 3 * largest * src.dim)
        final_rows = _rows_by_region(final[layer])
        jobs = []  # this layer's and the next layers' banks are not resident yet: reserved
        for ids in fit.chunks_of(layer, "memory and calibration", per_region,
                                 {"memory banks": sum(bank_bytes[layer:]), "searches": PARTIAL_BYTES if k else 0}):
            job_task = None if task is None else task.of(ids)
            jobs.append(Job(f"pass-l{layer}-r{ids[0]}", region_pass_job,
                            (src, ids, [final_rows[r] for r in ids], sink, fit.rows_per_image[layer], job_task)))
        stage.run(jobs, lambda job, layer=layer: len(job.args[1]) * costs[layer])
        if remote:
            slots.load(sink)
            sink.path.unlink()
        memories.append(LayerMemory([BankGroup(ids, t.transpose(1, 2), rows) for (ids, rows), t in
                                     zip(groups[layer], slots.tensors)], final[layer].radii, final[layer].far))
    stage.close()
    return memories, knn


def _rows_by_region(selection: Selection) -> list[Tensor]:
    """The rows each region keeps, in region order."""
    rows: list[Tensor] = [torch.empty(0, dtype=torch.long)] * selection.far.shape[0]
    for ids, kept in selection.groups():
        for i, r in enumerate(ids.tolist()):
            rows[r] = kept[i]
    return rows


def _need(workdir: Path | None) -> Path:
    if workdir is None:
        raise ConfigError("this fit needs a folder for its files (the feature store's)")
    return workdir
