"""A closed-loop load client for ``POST /predict`` over HTTP/1.1 keep-alive (the standard
library's ``http.client``; no extra package): ``clients`` threads, each sending its requests one
after the other. Used by ``tools/serve_bench.py`` and the tests' small load test."""
from __future__ import annotations

import http.client
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence
from urllib.parse import urlsplit

import numpy as np


@dataclass
class Answer:
    """One request: which body (index), the client, its status, latency, the JSON (or the error)."""

    body: int
    client: int
    status: int
    seconds: float
    json: dict[str, Any] | None = None
    error: str | None = None
    sent_at: float = 0.0


@dataclass
class LoadReport:
    """Every answer, the wall time, and the figures a benchmark reports."""

    answers: list[Answer]
    sent: int
    wall_s: float
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> list[Answer]:
        return [a for a in self.answers if a.status == 200]

    @property
    def errors(self) -> int:
        return len(self.answers) - len(self.ok)

    @property
    def lost(self) -> int:
        """Requests sent that got no answer at all."""
        return self.sent - len(self.answers)

    def throughput(self) -> float:
        """Answered requests per second."""
        return len(self.ok) / self.wall_s if self.wall_s > 0 else 0.0

    def percentile_ms(self, q: float) -> float:
        values = [a.seconds for a in self.ok]
        return float(np.quantile(values, q)) * 1000 if values else float("nan")

    def mean_batch(self) -> float:
        sizes = [a.json.get("batch_size", 1) for a in self.ok if a.json]
        return float(np.mean(sizes)) if sizes else float("nan")


def post(conn: http.client.HTTPConnection, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    conn.request("POST", path, body=body, headers=headers)
    response = conn.getresponse()
    return response.status, response.read()


def run_load(url: str, bodies: Sequence[bytes], clients: int = 4, requests_per_client: int = 500,
             content_type: str = "image/png", query: str = "", token: str | None = None,
             timeout_s: float = 60.0, during: Callable[[], None] | None = None) -> LoadReport:
    """``clients`` threads x ``requests_per_client`` requests; request ``i`` of client ``c`` sends
    body ``(c * requests_per_client + i) % len(bodies)``. ``during``: run in this thread while the
    clients send (e.g. a model swap); the report's ``meta`` has its start and end times."""
    parts = urlsplit(url)
    path = "/predict" + (f"?{query}" if query else "")
    headers = {"Content-Type": content_type, **({"Authorization": f"Bearer {token}"} if token else {})}
    answers: list[Answer] = []
    lock = threading.Lock()

    def client(c: int) -> None:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout_s)
        try:
            for i in range(requests_per_client):
                index = (c * requests_per_client + i) % len(bodies)
                sent = time.perf_counter()
                try:
                    status, raw = post(conn, path, bodies[index], headers)
                    data = json.loads(raw)
                    answer = Answer(index, c, status, time.perf_counter() - sent, data,
                                    None if status == 200 else data.get("error"), sent)
                except (OSError, http.client.HTTPException, ValueError) as exc:
                    conn.close()
                    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout_s)
                    answer = Answer(index, c, 0, time.perf_counter() - sent, None, f"{type(exc).__name__}: {exc}",
                                    sent)
                with lock:
                    answers.append(answer)
        finally:
            conn.close()

    threads = [threading.Thread(target=client, args=(c,), daemon=True) for c in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    meta: dict[str, Any] = {}
    if during is not None:
        meta["during_start"] = time.perf_counter()
        during()
        meta["during_end"] = time.perf_counter()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    return LoadReport(sorted(answers, key=lambda a: a.sent_at), clients * requests_per_client, wall, meta)
