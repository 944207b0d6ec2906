"""The Starlette application of ``fapm serve``.

Routes: ``POST /predict`` (the image as the body or as the multipart field ``file``;
``?heatmap=1`` adds the calibrated overlay, ``?explain=1`` the nearest normal patch),
``GET /health``, ``GET /model``, ``POST /model`` (``{"path": FILE}``: swap in another model file),
``GET /metrics`` (Prometheus text), ``GET /`` (the page) and ``/static/...`` (its files).
Every refusal is JSON ``{"error": "<one line>"}`` with its status; no traceback is ever sent.
With a token, every route but ``/health``, the page and its files needs
``Authorization: Bearer <token>``.
"""
from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ..decisions.nearest_patch import check_explainable
from ..errors import FAPMError
from .answers import answer
from .counters import ServiceCounters
from .micro_batch import MicroBatcher, QueueFull
from .model_slot import ModelSlot
from .part_scoring import Part, score_parts
from .request_body import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_PIXELS,
    BadInput,
    check_content_type,
    check_length,
    decode_image,
    too_large,
)

STATIC = Path(__file__).parent / "static"
FLAGS = ("heatmap", "explain")
TRUE, FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off", ""}
#: How much more than the limit is read and discarded so the client gets its 413 (then the connection closes).
DRAIN_FACTOR = 4
log = logging.getLogger("fapm.serve")


@dataclass(frozen=True)
class ServiceSettings:
    """The service's limits and batching (``fapm serve`` flags)."""

    max_bytes: int = DEFAULT_MAX_BYTES
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_batch: int = 8
    window_s: float = 0.005
    queue_size: int = 64
    request_timeout_s: float = 60.0
    retry_after_s: int = 1
    token: str | None = None


def error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """``{"error": message}`` with ``status``."""
    return JSONResponse({"error": message}, status, headers=headers)


def parse_flags(query: Any) -> dict[str, bool]:
    """``heatmap`` / ``explain`` from the query string; BadInput 400 for another key or value."""
    flags = {name: False for name in FLAGS}
    for key, value in query.multi_items():
        if key not in flags:
            raise BadInput(400, f"unknown query parameter {key!r} (known: {', '.join(FLAGS)})")
        if value.lower() not in TRUE | FALSE:
            raise BadInput(400, f"{key}={value!r}: use 1 or 0")
        flags[key] = value.lower() in TRUE
    return flags


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The body, at most ``max_bytes``; BadInput 413 beyond (after draining a little more, so
    that the client, still sending, reads the answer)."""
    check_length(request.headers.get("content-length"), max_bytes)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            if size > DRAIN_FACTOR * max_bytes:
                break
            chunks = []
            continue
        chunks.append(chunk)
    if size > max_bytes:
        raise too_large(size if size <= DRAIN_FACTOR * max_bytes else None, max_bytes)
    return b"".join(chunks)


async def multipart_file(request: Request, body: bytes) -> bytes:
    """The bytes of the multipart field ``file``; BadInput 400 for a malformed form or no such field."""

    async def stream() -> AsyncIterator[bytes]:
        yield body

    try:
        form = await MultiPartParser(request.headers, stream(), max_files=1, max_fields=16).parse()
    except MultiPartException as exc:
        raise BadInput(400, f"malformed multipart form ({exc.message})") from None
    try:
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise BadInput(400, "the multipart form has no file field named 'file'")
        return await upload.read()
    finally:
        await form.close()


def create_app(slot: ModelSlot, settings: ServiceSettings | None = None,
               counters: ServiceCounters | None = None) -> Starlette:
    """The service around the live model of ``slot`` (the batcher starts and stops with the app)."""
    settings = settings or ServiceSettings()
    counters = counters or ServiceCounters()
    batcher = MicroBatcher(lambda parts: score_parts(slot, parts), settings.max_batch, settings.window_s,
                           settings.queue_size, on_batch=counters.batch)

    def authorised(request: Request) -> None:
        if settings.token is None:
            return
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {settings.token}".encode()):
            raise BadInput(401, "missing or wrong token: send the header Authorization: Bearer <token>")

    async def guarded(path: str, request: Request, work) -> Response:
        """Run ``work()``; refusals become one-line JSON errors; count the answer."""
        try:
            response = await work()
        except BadInput as exc:
            extra = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
            response = error(exc.status, exc.message, extra)
        except Exception as exc:  # noqa: BLE001 - one line to the client, the traceback to the log
            log.exception("%s %s failed", request.method, path)
            response = error(500, f"internal error: {type(exc).__name__}: {' '.join(str(exc).split())[:200]}")
        counters.request(path, response.status_code)
        return response

    async def predict(request: Request) -> Response:
        async def work() -> Response:
            started = time.perf_counter()
            authorised(request)
            flags = parse_flags(request.query_params)
            kind = check_content_type(request.headers.get("content-type", ""))
            body = await read_body(request, settings.max_bytes)
            data = await multipart_file(request, body) if kind == "multipart" else body
            image = await run_in_threadpool(decode_image, data, settings.max_pixels)
            if flags["explain"]:
                try:
                    check_explainable(slot.current.detector)
                except FAPMError as exc:
                    raise BadInput(422, f"explain=1 refused: {exc}") from None
            try:
                future = batcher.submit(Part(image, flags["explain"]))
            except QueueFull as exc:
                counters.queue_full()
                return error(503, f"busy: {exc}; retry in {settings.retry_after_s} s",
                             {"Retry-After": str(settings.retry_after_s)})
            try:
                outcome = await asyncio.wait_for(asyncio.wrap_future(future), settings.request_timeout_s)
            except asyncio.TimeoutError:
                return error(503, f"not scored within {settings.request_timeout_s:g} s; retry later",
                             {"Retry-After": str(settings.retry_after_s)})
            except FAPMError as exc:  # the image cannot be scored by this model
                raise BadInput(422, str(exc)) from None
            body = await run_in_threadpool(answer, outcome.value, image, flags["heatmap"], flags["explain"])
            seconds = time.perf_counter() - started
            body.update(ms=round(seconds * 1000, 3), queue_ms=round(outcome.queued_s * 1000, 3),
                        batch_size=outcome.batch_size)
            counters.prediction(body["decision"], seconds)
            return JSONResponse(body)

        return await guarded("/predict", request, work)

    async def health(request: Request) -> Response:
        async def work() -> Response:
            loaded = slot.current
            return JSONResponse({"status": "ok", "model": {"id": loaded.id, "name": loaded.name},
                                 "queue_depth": batcher.depth})

        return await guarded("/health", request, work)

    async def model_info(request: Request) -> Response:
        async def work() -> Response:
            authorised(request)
            return JSONResponse(slot.current.describe())

        return await guarded("/model", request, work)

    async def model_swap(request: Request) -> Response:
        async def work() -> Response:
            authorised(request)
            try:
                values = await request.json()
                path = values["path"]
                if not isinstance(path, str) or not path:
                    raise TypeError
            except (ValueError, KeyError, TypeError):
                raise BadInput(400, 'send JSON {"path": "<model file on this machine>"}') from None
            previous = slot.current
            try:
                loaded = await run_in_threadpool(slot.swap, path)
            except FAPMError as exc:
                raise BadInput(422, f"model not swapped, {previous.id} stays live: {exc}") from None
            log.warning("model swapped: %s (%s) -> %s (%s)", previous.id, previous.path, loaded.id, loaded.path)
            return JSONResponse({"previous": {"id": previous.id, "name": previous.name}, **loaded.describe()})

        return await guarded("/model", request, work)

    async def metrics(request: Request) -> Response:
        async def work() -> Response:
            authorised(request)
            loaded = slot.current
            text = counters.render(batcher.depth, slot.swaps, loaded.id, loaded.name)
            return PlainTextResponse(text, media_type="text/plain; version=0.0.4")

        return await guarded("/metrics", request, work)

    async def page(request: Request) -> Response:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    async def http_error(request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        detail = exc.detail if isinstance(exc, HTTPException) else "internal error"
        return error(status, f"{request.method} {request.url.path}: {detail}")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        batcher.start()
        try:
            yield
        finally:
            await run_in_threadpool(batcher.stop)

    routes = [Route("/", page), Route("/predict", predict, methods=["POST"]), Route("/health", health),
              Route("/model", model_info, methods=["GET"]), Route("/model", model_swap, methods=["POST"]),
              Route("/metrics", metrics), Mount("/static", StaticFiles(directory=STATIC), name="static")]
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={HTTPException: http_error})
    app.state.slot, app.state.batcher, app.state.counters, app.state.settings = slot, batcher, counters, settings
    return app
