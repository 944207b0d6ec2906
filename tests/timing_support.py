"""A fake clock and a fake model whose stages take known times, for the stage-timing tests (exact
numbers, no timing thresholds)."""
from __future__ import annotations

import torch


class FakeClock:
    """Stands in for :func:`fapm_lib.system.timing.clocks`; ``advance`` moves (wall, cpu) on."""

    def __init__(self) -> None:
        self.wall, self.cpu = 1000.0, 50.0

    def __call__(self) -> tuple[float, float]:
        return self.wall, self.cpu

    def advance(self, wall: float, cpu: float) -> None:
        self.wall += wall
        self.cpu += cpu


class FakeModel:
    """embed / search / postprocess that take known (wall, cpu) seconds and log their calls; it is
    its own fitted module (``runnable()``), as a detector's torch module would be."""

    COST = {"embed": (2.0, 1.5), "search": (0.25, 0.125), "postprocess": (0.5, 0.75)}

    def __init__(self, clock: FakeClock, log: list[str], device: str = "cpu") -> None:
        self.clock, self.log, self.device = clock, log, torch.device(device)

    def _run(self, name: str, value):
        self.log.append(name)
        self.clock.advance(*self.COST[name])
        return value

    def embed(self, images):
        return self._run("embed", ["maps", images])

    def search(self, maps):
        assert maps[0] == "maps"
        return self._run("search", "knn")

    def postprocess(self, knn):
        assert knn == "knn"
        return self._run("postprocess", "prediction")

    def runnable(self) -> "FakeModel":
        return self
