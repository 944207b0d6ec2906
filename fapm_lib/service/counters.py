"""The service's counters, shown by ``GET /metrics`` in the Prometheus text format (0.0.4):
requests by path and status, decisions, latency quantiles over the last requests, batches and
their items, the queue, refusals for a full queue, model swaps and the live model."""
from __future__ import annotations

import threading
from collections import Counter, deque

import numpy as np

LATENCY_WINDOW = 10_000
QUANTILES = (0.5, 0.9, 0.99)


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class ServiceCounters:
    """Thread-safe counters (the event loop and the batcher's worker both update them)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: Counter[tuple[str, int]] = Counter()
        self.decisions: Counter[str] = Counter()
        self.latencies: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self.latency_sum = 0.0
        self.latency_count = 0
        self.batches = 0
        self.batch_items = 0
        self.rejected = 0

    def request(self, path: str, status: int) -> None:
        with self._lock:
            self.requests[(path, status)] += 1

    def queue_full(self) -> None:
        with self._lock:
            self.rejected += 1

    def prediction(self, decision: str, seconds: float) -> None:
        with self._lock:
            self.decisions[decision] += 1
            self.latencies.append(seconds)
            self.latency_sum += seconds
            self.latency_count += 1

    def batch(self, size: int) -> None:
        with self._lock:
            self.batches += 1
            self.batch_items += size

    def latency_quantiles(self) -> dict[float, float]:
        """Quantiles of the last :data:`LATENCY_WINDOW` prediction latencies (seconds); {} before any."""
        with self._lock:
            values = np.array(self.latencies)
        return {} if not len(values) else {q: float(np.quantile(values, q)) for q in QUANTILES}

    def render(self, queue_depth: int, swaps: int, model_id: str, model_name: str) -> str:
        """The Prometheus text exposition."""
        quantiles = self.latency_quantiles()
        with self._lock:
            lines = ["# HELP fapm_requests_total HTTP requests answered, by path and status.",
                     "# TYPE fapm_requests_total counter"]
            lines += [f'fapm_requests_total{{path="{_label(p)}",status="{s}"}} {n}'
                      for (p, s), n in sorted(self.requests.items())]
            lines += ["# HELP fapm_decisions_total Parts scored, by decision.", "# TYPE fapm_decisions_total counter"]
            lines += [f'fapm_decisions_total{{decision="{_label(d)}"}} {n}' for d, n in sorted(self.decisions.items())]
            lines += ["# HELP fapm_predict_seconds Time from request to answer of POST /predict (last "
                      f"{LATENCY_WINDOW} requests).", "# TYPE fapm_predict_seconds summary"]
            lines += [f'fapm_predict_seconds{{quantile="{q}"}} {v:.6f}' for q, v in quantiles.items()]
            lines += [f"fapm_predict_seconds_sum {self.latency_sum:.6f}",
                      f"fapm_predict_seconds_count {self.latency_count}",
                      "# HELP fapm_batches_total Batches scored.", "# TYPE fapm_batches_total counter",
                      f"fapm_batches_total {self.batches}",
                      "# HELP fapm_batch_items_total Parts scored in batches.",
                      "# TYPE fapm_batch_items_total counter", f"fapm_batch_items_total {self.batch_items}",
                      "# HELP fapm_queue_depth Requests waiting to be scored.", "# TYPE fapm_queue_depth gauge",
                      f"fapm_queue_depth {queue_depth}",
                      "# HELP fapm_queue_full_total Requests refused with 503 (queue full).",
                      "# TYPE fapm_queue_full_total counter", f"fapm_queue_full_total {self.rejected}",
                      "# HELP fapm_model_swaps_total Models swapped in since start.",
                      "# TYPE fapm_model_swaps_total counter", f"fapm_model_swaps_total {swaps}",
                      "# HELP fapm_model_info The live model (id: sha256 prefix of its file).",
                      "# TYPE fapm_model_info gauge",
                      f'fapm_model_info{{id="{_label(model_id)}",name="{_label(model_name)}"}} 1']
        return "\n".join(lines) + "\n"
