"""Micro-batching: concurrent parts are scored in one batch, with the results of scoring them one
by one; a full queue answers 503 with Retry-After at once (made deterministic with a queue of one
place and a worker held inside its batch); a stopped batcher refuses instead of hanging."""
from __future__ import annotations

import http.client
import threading
import time

import pytest

from fapm_lib.data.images import load_image
from fapm_lib.decisions.results import predict_images
from fapm_lib.service.http_app import ServiceSettings, create_app
from fapm_lib.service.http_server import BackgroundServer
from fapm_lib.service.micro_batch import MicroBatcher, QueueFull
from fapm_lib.service.model_slot import ModelSlot, load_model
from fapm_lib.service.part_scoring import Part, score_parts
from tests.service_support import sample_images


class HeldFirstBatch:
    """A batch handler that holds its first batch until released, then calls ``inner``."""

    def __init__(self, inner) -> None:
        self.inner, self.sizes = inner, []
        self.entered, self.release = threading.Event(), threading.Event()

    def __call__(self, items):
        self.sizes.append(len(items))
        if len(self.sizes) == 1:
            self.entered.set()
            assert self.release.wait(30)
        return self.inner(items)


def test_parts_queued_together_are_scored_in_one_batch() -> None:
    handler = HeldFirstBatch(lambda items: [x * 10 for x in items])
    batcher = MicroBatcher(handler, max_batch=8, window_s=0.02, queue_size=16).start()
    try:
        first = batcher.submit(1)
        assert handler.entered.wait(10)
        waiting = [batcher.submit(i) for i in range(2, 7)]
        assert batcher.depth == 5
        handler.release.set()
        outcomes = [f.result(10) for f in [first, *waiting]]
    finally:
        batcher.stop()
    assert handler.sizes == [1, 5]
    assert [o.value for o in outcomes] == [10, 20, 30, 40, 50, 60]
    assert [o.batch_size for o in outcomes] == [1, 5, 5, 5, 5, 5]


def test_max_batch_splits_and_a_failing_batch_fails_only_its_own_jobs() -> None:
    def handler(items):
        if "bad" in items:
            raise RuntimeError("boom")
        return items

    held = HeldFirstBatch(handler)
    batcher = MicroBatcher(held, max_batch=3, window_s=0, queue_size=16).start()
    try:
        first = batcher.submit("a")
        assert held.entered.wait(10)
        jobs = [batcher.submit(x) for x in ("b", "c", "bad", "d", "e", "f")]
        held.release.set()
        assert first.result(10).value == "a"
        assert [j.result(10).value for j in jobs[3:]] == ["d", "e", "f"]
        for job in jobs[:3]:
            with pytest.raises(RuntimeError, match="boom"):
                job.result(10)
    finally:
        batcher.stop()
    assert held.sizes == [1, 3, 3]
    with pytest.raises(QueueFull, match="stopping"):
        batcher.submit("late")


def test_a_batch_gives_the_one_by_one_results(service_models) -> None:
    root, model_file, _ = service_models
    slot = ModelSlot(load_model(model_file))
    images = [load_image(p) for p in sample_images(root)]
    alone = [predict_images(slot.current.detector, [image])[0] for image in images]
    handler = HeldFirstBatch(lambda parts: score_parts(slot, parts))
    batcher = MicroBatcher(handler, max_batch=8, window_s=0.02, queue_size=16).start()
    try:
        first = batcher.submit(Part(images[0]))
        assert handler.entered.wait(10)
        rest = [batcher.submit(Part(image)) for image in images[1:]]
        handler.release.set()
        outcomes = [f.result(60) for f in [first, *rest]]
    finally:
        batcher.stop()
    assert handler.sizes == [1, len(images) - 1]
    for outcome, expected in zip(outcomes, alone):
        result = outcome.value.result
        assert result.decision == expected.decision and outcome.value.model.id == slot.current.id
        assert result.raw_score == pytest.approx(expected.raw_score, rel=1e-5)
        assert result.anomaly_map.shape == expected.anomaly_map.shape


def post_image(url: str, body: bytes, answers: list, timeout: float = 60) -> None:
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    conn.request("POST", "/predict", body=body, headers={"Content-Type": "image/png"})
    response = conn.getresponse()
    answers.append((response.status, response.getheader("Retry-After"), response.read()))
    conn.close()


def test_a_full_queue_answers_503_with_retry_after_at_once(service_models) -> None:
    root, model_file, _ = service_models
    slot = ModelSlot(load_model(model_file))
    app = create_app(slot, ServiceSettings(max_batch=1, window_s=0, queue_size=1, retry_after_s=2))
    held = HeldFirstBatch(app.state.batcher.handle)
    app.state.batcher.handle = held
    body = sample_images(root)[0].read_bytes()
    with BackgroundServer(app) as server:
        answers: list = []
        first = threading.Thread(target=post_image, args=(server.url, body, answers))
        first.start()
        assert held.entered.wait(30)  # the worker holds the first request
        second = threading.Thread(target=post_image, args=(server.url, body, answers))
        second.start()
        deadline = time.monotonic() + 30
        while app.state.batcher.depth < 1:  # the second waits in the queue's only place
            assert time.monotonic() < deadline
            time.sleep(0.01)
        refused: list = []
        began = time.perf_counter()
        post_image(server.url, body, refused)
        assert time.perf_counter() - began < 10  # answered, not held
        status, retry_after, text = refused[0]
        assert status == 503 and retry_after == "2"
        assert b"busy: the queue is full (1 requests waiting); retry in 2 s" in text
        held.release.set()
        first.join(60)
        second.join(60)
        assert [a[0] for a in answers] == [200, 200]
        after: list = []
        post_image(server.url, body, after)
        assert after[0][0] == 200
    assert "fapm_queue_full_total 1" in app.state.counters.render(0, 0, "x", "y")
