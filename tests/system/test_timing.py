"""The stage-timing helper: each stage gets its own time, the stages add up, the device is
synchronised at every boundary. A fake clock makes the times exact (no timing thresholds)."""
from __future__ import annotations

import pytest
import torch

from fapm_lib.system.timing import STAGES, StageTimer, predict_by_stage, timed
from tests.timing_support import FakeClock, FakeModel


def test_each_stage_gets_its_own_time_and_they_add_up(clock: FakeClock) -> None:
    prediction, timer = predict_by_stage(FakeModel(clock, []), torch.zeros(1))
    assert prediction == "prediction"
    assert list(timer.wall) == list(STAGES)
    assert timer.wall == {"backbone": 2.0, "search": 0.25, "post": 0.5}
    assert timer.cpu == {"backbone": 1.5, "search": 0.125, "post": 0.75}
    assert timer.total() == (sum(timer.wall.values()), sum(timer.cpu.values()))


def test_laps_of_one_stage_accumulate_and_time_between_laps_counts(clock: FakeClock) -> None:
    timer = StageTimer(torch.device("cpu"))
    clock.advance(1.0, 0.5)
    timer.lap("a")
    clock.advance(2.0, 1.0)
    timer.lap("b")
    clock.advance(4.0, 2.0)
    timer.lap("a")
    assert timer.wall == {"a": 5.0, "b": 2.0} and timer.cpu == {"a": 2.5, "b": 1.0}
    assert timer.total() == (7.0, 3.5)


def test_timed_returns_the_result_and_its_times(clock: FakeClock) -> None:
    def work(x: int) -> int:
        clock.advance(3.0, 6.0)  # CPU time of all threads can exceed the wall time
        return 2 * x

    assert timed(torch.device("cpu"), work, 21) == (42, 3.0, 6.0)


def test_the_device_is_synchronised_at_every_stage_boundary(monkeypatch: pytest.MonkeyPatch) -> None:
    log: list[str] = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: log.append(f"sync {device}"))
    model = FakeModel(FakeClock(), log, device="cuda")
    predict_by_stage(model, torch.zeros(1))
    sync = "sync cuda"
    assert log == [sync, "embed", sync, "search", sync, "postprocess", sync]


def test_no_synchronisation_on_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(device=None):
        raise AssertionError("synchronised a CPU run")

    monkeypatch.setattr(torch.cuda, "synchronize", refuse)
    predict_by_stage(FakeModel(FakeClock(), []), torch.zeros(1))


def test_predict_by_stage_gives_the_numbers_of_predict() -> None:
    from fapm_lib.config import FAPMConfig
    from fapm_lib.detectors.fapm import FAPM
    from fapm_lib.method.backbone import create_feature_extractor

    images = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    model = FAPM(FAPMConfig(resize=64, crop_size=64, grid=2, coreset_ratio=0.5, k=1),
                 extractor=create_feature_extractor("tf_efficientnet_lite0")).fit(images, progress=False)
    prediction, timer = predict_by_stage(model.runnable(), images[:2])
    expected = model.predict(images[:2])
    for name in ("anomaly_map", "pred_score", "patch_scores"):
        assert torch.equal(getattr(prediction, name), getattr(expected, name)), name
    assert set(timer.wall) == set(STAGES) and all(t >= 0 for t in (*timer.wall.values(), *timer.cpu.values()))
