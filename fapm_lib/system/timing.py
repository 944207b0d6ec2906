"""Wall and CPU time of a prediction's stages, with the device synchronised at every boundary.

One helper for every place that times: ``evaluate`` (per-stage ms of a test run), ``benchmark``
(medians of single-image runs) and the notebooks (``tutorial.notebook.time_stages``).
"""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

#: The stages of a model's forward pass, in order: ``embed``, ``search``, ``postprocess``.
STAGES = ("backbone", "search", "post")
#: Untimed runs before timing (first-call allocations, lazy initialisation).
WARMUP_RUNS = 3


def sync_device(device: torch.device) -> None:
    """Wait for queued GPU work, so that wall-clock timings are real (no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def clocks() -> tuple[float, float]:
    """Now, as (wall seconds, process CPU seconds of all threads)."""
    return time.perf_counter(), time.process_time()


class StageTimer:
    """Times consecutive stages on one device: each :meth:`lap` synchronises the device, then
    ends the current stage, adding its wall and CPU seconds to ``wall[stage]`` and
    ``cpu[stage]``. The next stage starts where the last one ended, so the stages add up to
    :meth:`total`."""

    def __init__(self, device: torch.device) -> None:
        self.device = torch.device(device)
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        sync_device(self.device)
        self._start = self._last = clocks()

    def lap(self, stage: str) -> None:
        """End ``stage`` now (after the device has finished its queued work)."""
        sync_device(self.device)
        now = clocks()
        self.wall[stage] = self.wall.get(stage, 0.0) + now[0] - self._last[0]
        self.cpu[stage] = self.cpu.get(stage, 0.0) + now[1] - self._last[1]
        self._last = now

    def total(self) -> tuple[float, float]:
        """(wall, CPU) seconds from the start to the last lap."""
        return self._last[0] - self._start[0], self._last[1] - self._start[1]


def timed(device: torch.device, fn: Callable[..., Any], *args: Any) -> tuple[Any, float, float]:
    """Run ``fn(*args)`` once: its result, wall seconds and process CPU seconds (all threads),
    the device synchronised before and after."""
    timer = StageTimer(device)
    out = fn(*args)
    timer.lap("run")
    return out, timer.wall["run"], timer.cpu["run"]


@torch.inference_mode()
def predict_by_stage(model: Any, images: Tensor) -> tuple[Any, StageTimer]:
    """A model's forward pass run stage by stage (the same numbers): ``backbone``
    (``model.embed``), ``search`` (``model.search``), ``post`` (``model.postprocess``) on
    ``model.device``; returns the prediction and the :class:`StageTimer` holding each stage's
    seconds (:data:`STAGES`)."""
    timer = StageTimer(model.device)
    maps = model.embed(images)
    timer.lap("backbone")
    knn = model.search(maps)
    timer.lap("search")
    prediction = model.postprocess(knn)
    timer.lap("post")
    return prediction, timer
