"""Jobs (a category, a chunk of regions) here or on a Dask distributed cluster (``--scheduler``).

``--scheduler local[:N]`` starts a ``LocalCluster`` of N worker processes (one thread each;
default: one per core); ``--scheduler tcp://HOST:PORT`` uses a running cluster (``dask
scheduler`` / ``dask worker``, dask-jobqueue on SLURM, dask-kubernetes); no scheduler: the jobs
run here one after the other, as before. On a cluster a job that fails, or whose worker dies
(killed, out of memory), is reported and submitted once more; the other jobs go on. Results
come back in job order, so a summary built from them does not depend on where they ran.
``dask`` is imported only when a scheduler is given. :class:`JobRunner` keeps one cluster for
several rounds of jobs (the stages of one category's fit).
"""
from __future__ import annotations

import os
import signal
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..errors import ConfigError

#: Test hook: ``NAME=MARKER[@SECONDS]`` makes job NAME kill its own worker process (SIGKILL),
#: at its start or SECONDS into it, the first time it runs on a Dask worker (it creates MARKER
#: first, so the retry runs normally).
KILL_ONCE_ENV = "FAPM_CLUSTER_TEST_KILL"
RETRIES = 1


@dataclass
class Job:
    """One unit of work, ``fn(*args)`` (importable, picklable), named after its category.
    ``hint``: appended to its failure line (e.g. where to read the error)."""

    name: str
    fn: Callable[..., Any]
    args: tuple = ()
    hint: str = ""


@dataclass
class Outcome:
    """What a job gave back: ``results`` by job name (job order) and one-line ``failures``."""

    results: dict[str, Any] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)


def describe_error(exc: BaseException) -> str:
    """One line: a notebook's exception type and message (papermill), or this exception's."""
    ename, evalue = getattr(exc, "ename", None), getattr(exc, "evalue", None)
    text = f"{ename}: {evalue}" if ename else f"{type(exc).__name__}: {exc}"
    return " ".join(text.split())


def parse_scheduler(spec: str) -> tuple[str, int | str]:
    """``local`` / ``local:N`` -> ("local", N); ``tcp://HOST:PORT`` (or tls://) -> ("remote", address)."""
    spec = spec.strip()
    if spec == "local" or spec.startswith("local:"):
        count = spec.partition(":")[2] or str(os.cpu_count() or 1)
        if not count.isdigit() or int(count) < 1:
            raise ConfigError(f"--scheduler {spec}: expected local or local:N with N >= 1 workers")
        return "local", int(count)
    if "://" in spec and spec.split("://", 1)[1]:
        return "remote", spec
    raise ConfigError(f"--scheduler {spec!r}: expected local, local:N or a scheduler address such as tcp://HOST:8786")


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_jobs(jobs: list[Job], scheduler: str | None = None, label: str = "job", debug: bool = False) -> Outcome:
    """Run ``jobs`` in this process (``scheduler`` None) or on Dask; one job's failure never
    stops the others. Progress lines go to stderr."""
    with JobRunner(scheduler, label, debug) as runner:
        return runner.run(jobs)


#: ``on_done(job, result)``: called as each job succeeds (in completion order).
OnDone = Callable[[Job, Any], None]


class JobRunner:
    """Runs rounds of jobs here (``scheduler`` None) or on one Dask client, kept from ``with``
    to its end. ``quiet``: no line per job (failures and retries are still reported)."""

    def __init__(self, scheduler: str | None = None, label: str = "job", debug: bool = False,
                 quiet: bool = False) -> None:
        self.where = None if scheduler is None else parse_scheduler(scheduler)
        self.label, self.debug, self.quiet = label, debug, quiet
        self.client = self.cluster = None

    def __enter__(self) -> "JobRunner":
        if self.where is not None:
            self.client, self.cluster = _client(*self.where)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.client is not None:
            self.client.close()
        if self.cluster is not None:
            self.cluster.close()
        self.client = self.cluster = None

    def run(self, jobs: list[Job], on_done: OnDone | None = None) -> Outcome:
        """Run ``jobs``; results and failures in job order."""
        if self.client is None:
            return _run_here(jobs, self.label, self.debug, on_done, self.quiet)
        return _run_on_dask(jobs, self.client, self.where, self.label, self.debug, on_done, self.quiet)


def _run_here(jobs: list[Job], label: str, debug: bool, on_done: OnDone | None = None, quiet: bool = False) -> Outcome:
    out = Outcome()
    n = len(jobs)
    for i, job in enumerate(jobs, 1):
        if not quiet:
            _log(f"[{i}/{n}] {job.name}: running {label}")
        began = time.perf_counter()
        try:
            out.results[job.name] = job.fn(*job.args)
        except Exception as exc:  # noqa: BLE001 - one job's failure must not stop the others
            out.failures[job.name] = describe_error(exc)
            _log(f"[{i}/{n}] {job.name}: FAILED: {out.failures[job.name]}{job.hint}")
            if debug:
                traceback.print_exc()
            continue
        if on_done is not None:
            on_done(job, out.results[job.name])
        if not quiet:
            _log(f"[{i}/{n}] {job.name}: done in {time.perf_counter() - began:.0f} s")
    return out


# ---- Dask -----------------------------------------------------------------------------------
def run_on_worker(fn: Callable[..., Any], name: str, args: tuple) -> dict[str, Any]:
    """What a Dask worker runs: ``fn(*args)`` with torch limited to the worker's threads; the
    result, or the error as text (exceptions of papermill or torch need not unpickle elsewhere)."""
    _maybe_kill_self(name)
    began = time.perf_counter()
    try:
        _limit_threads()
        return {"ok": True, "result": fn(*args), "seconds": time.perf_counter() - began, "worker": _worker_address()}
    except Exception as exc:  # noqa: BLE001 - reported by the client, which decides on a retry
        return {"ok": False, "error": describe_error(exc), "traceback": traceback.format_exc(),
                "worker": _worker_address()}


def _worker_address() -> str:
    try:
        from distributed import get_worker

        return str(get_worker().address)
    except (ImportError, ValueError):
        return "here"


def _limit_threads() -> None:
    """One torch thread per worker thread (a worker process would otherwise use every core)."""
    from distributed import get_worker

    from .allocator import tune_allocator

    tune_allocator()
    worker = get_worker()
    threads = getattr(getattr(worker, "state", None), "nthreads", None) or getattr(worker, "nthreads", 1)
    import torch

    torch.set_num_threads(max(1, int(threads)))


def _maybe_kill_self(name: str) -> None:
    spec = os.environ.get(KILL_ONCE_ENV, "")
    target, _, rest = spec.partition("=")
    marker, _, delay = rest.partition("@")
    if target != name or not marker or Path(marker).exists():
        return
    try:
        from distributed import get_worker

        get_worker()
    except (ImportError, ValueError):
        return  # never kill a process that is not a Dask worker
    Path(marker).write_text(str(os.getpid()))
    if not delay:
        os.kill(os.getpid(), signal.SIGKILL)
    timer = threading.Timer(float(delay), os.kill, (os.getpid(), signal.SIGKILL))
    timer.daemon = True
    timer.start()


def _client(kind: str, where: int | str):
    """A Dask client: a fresh LocalCluster (closed with the client) or a running scheduler."""
    try:
        import dask
        from distributed import Client, LocalCluster
    except ImportError:
        raise ConfigError("--scheduler needs dask distributed: pip install 'dask[distributed]'") from None
    if kind == "local":
        # the scheduler does not re-run a task whose worker died: run_jobs reports it and resubmits
        # it once (a running cluster keeps its own distributed.scheduler.allowed-failures, default 3)
        with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
            cluster = LocalCluster(n_workers=int(where), threads_per_worker=1, processes=True, dashboard_address=None)
        return Client(cluster), cluster
    try:
        return Client(str(where), timeout="20s"), None
    except (OSError, TimeoutError) as exc:
        raise ConfigError(f"--scheduler {where}: cannot connect ({describe_error(exc)})") from None


def _run_on_dask(jobs: list[Job], client: Any, place: tuple[str, int | str], label: str, debug: bool,
                 on_done: OnDone | None = None, quiet: bool = False) -> Outcome:
    from distributed import as_completed

    kind, where = place
    out, n = Outcome(), len(jobs)
    workers = len(client.scheduler_info().get("workers", {}))
    if not quiet:
        _log(f"dask: {n} jobs ({label}) on {where if kind == 'remote' else f'a LocalCluster of {where} processes'}"
             f", {workers} workers connected")
    attempts = {job.name: 0 for job in jobs}
    by_future = {}

    def submit(job: Job) -> Any:
        attempts[job.name] += 1
        future = client.submit(run_on_worker, job.fn, job.name, job.args, pure=False, retries=0,
                               key=f"fapm-{job.name}-{attempts[job.name]}-{os.getpid()}-{time.time_ns()}")
        by_future[future] = job
        return future

    pending = as_completed([submit(job) for job in jobs])
    done = 0
    for future in pending:
        job = by_future.pop(future)
        try:
            reply = future.result()
        except Exception as exc:  # noqa: BLE001 - KilledWorker, lost connection, ...
            reply = {"ok": False, "error": f"its worker died or was lost ({describe_error(exc)})", "traceback": "",
                     "worker": None}
        if reply["ok"]:
            done += 1
            out.results[job.name] = reply["result"]
            if on_done is not None:
                on_done(job, reply["result"])
            if not quiet:
                _log(f"[{done}/{n}] {job.name}: done in {reply['seconds']:.0f} s on {reply['worker']}")
            continue
        if attempts[job.name] <= RETRIES:
            where_ = f" on {reply['worker']}" if reply["worker"] else ""
            _log(f"{job.name}: failed{where_}: {reply['error']}; retrying once")
            pending.add(submit(job))
            continue
        done += 1
        out.failures[job.name] = reply["error"]
        _log(f"[{done}/{n}] {job.name}: FAILED: {reply['error']}{job.hint}")
        if debug and reply.get("traceback"):
            _log(reply["traceback"])
    order = [job.name for job in jobs]
    out.results = {k: out.results[k] for k in order if k in out.results}
    out.failures = {k: out.failures[k] for k in order if k in out.failures}
    return out
