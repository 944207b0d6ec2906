"""Micro-batching: concurrent requests scored together, from a bounded queue, by one worker.

:meth:`MicroBatcher.submit` puts a job on a queue of ``queue_size`` places and returns a
``concurrent.futures.Future`` at once; a full queue raises :class:`QueueFull` at once (the
service answers 503 with ``Retry-After``): nothing waits for room. One worker thread takes the
first job, then more for up to ``window_s`` seconds or until it holds ``max_batch``, and hands
the batch to ``handle`` (a list in, one output per item out). Every job's future gets its
output, or the batch's exception: no job is dropped. ``window_s = 0`` takes only what is
already queued; ``max_batch = 1`` scores one request at a time.
"""
from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from ..errors import ConfigError


class QueueFull(Exception):
    """The queue has no room: answer 503 and let the client retry."""


@dataclass
class Job:
    """One queued item and the future its output goes to."""

    item: Any
    future: Future = field(default_factory=Future)
    queued_at: float = field(default_factory=time.perf_counter)


@dataclass(frozen=True)
class Outcome:
    """A job's output, the size of the batch it was scored in and its seconds in the queue."""

    value: Any
    batch_size: int
    queued_s: float


_STOP = object()


class MicroBatcher:
    """A bounded queue and one worker thread that scores jobs in batches (see the module)."""

    def __init__(self, handle: Callable[[Sequence[Any]], Sequence[Any]], max_batch: int = 8,
                 window_s: float = 0.005, queue_size: int = 64,
                 on_batch: Callable[[int], None] | None = None) -> None:
        for name, value, low in (("max_batch", max_batch, 1), ("queue_size", queue_size, 1)):
            if value < low:
                raise ConfigError(f"{name}={value} must be >= {low}")
        if not 0 <= window_s <= 1:
            raise ConfigError(f"batch window {window_s * 1000:g} ms must be in [0, 1000] ms")
        self.handle, self.max_batch, self.window_s = handle, max_batch, window_s
        self.on_batch = on_batch
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self._thread: threading.Thread | None = None
        self._closed = False
        self.batches = 0
        self.items = 0

    @property
    def depth(self) -> int:
        """Jobs waiting in the queue now."""
        return self._queue.qsize()

    def start(self) -> "MicroBatcher":
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="fapm-micro-batcher", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Finish the jobs already queued, then stop the worker."""
        self._closed = True
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join(timeout)
            self._thread = None

    def submit(self, item: Any) -> Future:
        """Queue ``item``; its future resolves to an :class:`Outcome`. QueueFull when there is no room."""
        if self._closed:
            raise QueueFull("the service is stopping")
        job = Job(item)
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            raise QueueFull(f"the queue is full ({self._queue.maxsize} requests waiting)") from None
        return job.future

    def _collect(self, first: Job) -> tuple[list[Job], bool]:
        """``first`` and whatever follows within the window, up to ``max_batch``; and whether
        the stop sentinel was met."""
        jobs, deadline = [first], time.perf_counter() + self.window_s
        while len(jobs) < self.max_batch:
            left = deadline - time.perf_counter()
            try:
                job = self._queue.get(timeout=left) if left > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if job is _STOP:
                return jobs, True
            jobs.append(job)
        return jobs, False

    def _run(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is _STOP:
                break
            jobs, stopping = self._collect(first)
            live = [job for job in jobs if job.future.set_running_or_notify_cancel()]  # a timed-out request
            if live:
                self._score(live)

    def _score(self, jobs: list[Job]) -> None:
        started = time.perf_counter()
        try:
            outputs = list(self.handle([job.item for job in jobs]))
            if len(outputs) != len(jobs):
                raise RuntimeError(f"the batch handler gave {len(outputs)} outputs for {len(jobs)} items")
        except BaseException as exc:  # noqa: BLE001 - every job learns why; the worker goes on
            for job in jobs:
                job.future.set_exception(exc)
        else:
            for job, value in zip(jobs, outputs):
                job.future.set_result(Outcome(value, len(jobs), started - job.queued_at))
        self.batches += 1
        self.items += len(jobs)
        if self.on_batch is not None:
            self.on_batch(len(jobs))
