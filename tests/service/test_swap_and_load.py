"""Over a real loopback socket: a small load test (4 clients, keep-alive, micro-batching on) with
no error, nothing lost and the decisions of scoring one by one; and a model swap during such a
load: no request fails, each answer names the old or the new model and carries that model's
score, every request sent after the swap answered names the new one. Timings are not asserted."""
from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

import pytest

from fapm_lib.decisions.results import predict_images
from fapm_lib.service.http_app import ServiceSettings, create_app
from fapm_lib.service.http_server import BackgroundServer
from fapm_lib.service.load_client import run_load
from fapm_lib.service.model_slot import ModelSlot, load_model
from tests.service_support import sample_images


def raw_scores(model_file: Path, images: list[Path]) -> list[float]:
    detector = load_model(model_file).detector
    return [predict_images(detector, [str(p)])[0].raw_score for p in images]


def test_small_load_test_no_error_no_loss_same_decisions(service_models) -> None:
    root, model_file, _ = service_models
    images = sample_images(root)
    slot = ModelSlot(load_model(model_file))
    expected = [predict_images(slot.current.detector, [str(p)])[0] for p in images]
    app = create_app(slot, ServiceSettings(max_batch=8, window_s=0.005))
    with BackgroundServer(app) as server:
        report = run_load(server.url, [p.read_bytes() for p in images], clients=4, requests_per_client=12)
    assert report.errors == 0 and report.lost == 0 and len(report.ok) == 48
    for answer in report.answers:
        assert answer.json["decision"] == expected[answer.body].decision
        assert answer.json["raw_score"] == pytest.approx(expected[answer.body].raw_score, rel=1e-5)
    assert report.throughput() > 0 and report.percentile_ms(0.99) >= report.percentile_ms(0.5)
    assert app.state.batcher.items == 48


def test_a_swap_under_load_fails_no_request(service_models) -> None:
    root, first, second = service_models
    images = sample_images(root)
    scores = {load_model(f).id: raw_scores(f, images) for f in (first, second)}
    assert len(scores) == 2
    old_id, new_id = list(scores)
    assert any(abs(a - b) > 1e-3 for a, b in zip(*scores.values()))  # the models do score differently
    slot = ModelSlot(load_model(first))
    app = create_app(slot, ServiceSettings(max_batch=4, window_s=0.002))
    with BackgroundServer(app) as server:
        def swap() -> None:
            deadline = time.monotonic() + 60
            while app.state.batcher.items < 8:  # under load already
                assert time.monotonic() < deadline
                time.sleep(0.01)
            request = urllib.request.Request(f"{server.url}/model", method="POST",
                                             data=json.dumps({"path": str(second)}).encode(),
                                             headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=60) as answer:
                body = json.load(answer)
            assert body["id"] == new_id and body["previous"]["id"] == old_id

        report = run_load(server.url, [p.read_bytes() for p in images], clients=4, requests_per_client=20,
                          during=swap)
    assert report.errors == 0 and report.lost == 0, [a.error for a in report.answers if a.error]
    named = [a.json["model"]["id"] for a in report.answers]
    assert set(named) == {old_id, new_id}
    for answer in report.answers:
        model = answer.json["model"]["id"]
        assert answer.json["raw_score"] == pytest.approx(scores[model][answer.body], rel=1e-4)
        if answer.sent_at > report.meta["during_end"]:
            assert model == new_id
    assert slot.current.id == new_id and slot.swaps == 1
