"""``fapm serve --model M [--host H --port P]``: the HTTP service (:mod:`fapm_lib.service`) with
the model kept loaded; micro-batched scoring, the page at ``/``, swaps without a failed request."""
from __future__ import annotations

import argparse
import logging
import os
import sys

from ..errors import ConfigError

INSTALL_HINT = "pip install 'fapm-lib[serve]'"
TOKEN_ENV = "FAPM_SERVE_TOKEN"


def require_serve_extra() -> None:
    """ConfigError (one line) naming the extra when Starlette, uvicorn or python-multipart is missing."""
    for module in ("starlette", "uvicorn", "python_multipart"):
        try:
            __import__(module)
        except ImportError:
            raise ConfigError(f"fapm serve needs the serve extra ({module} is not installed): {INSTALL_HINT}") from None


def service_settings(args: argparse.Namespace, token: str | None):
    """The :class:`~fapm_lib.service.http_app.ServiceSettings` of the flags; ConfigError for a bad one."""
    from ..service.http_app import ServiceSettings

    checks = (("--max-batch", args.max_batch, args.max_batch >= 1), ("--queue-size", args.queue_size,
              args.queue_size >= 1), ("--batch-window-ms", args.batch_window_ms, 0 <= args.batch_window_ms <= 1000),
              ("--max-upload-mb", args.max_upload_mb, args.max_upload_mb > 0),
              ("--max-pixels", args.max_pixels, args.max_pixels >= 1),
              ("--request-timeout", args.request_timeout, args.request_timeout > 0))
    for flag, value, ok in checks:
        if not ok:
            raise ConfigError(f"{flag} {value}: out of range (see fapm serve --help)")
    return ServiceSettings(max_bytes=int(args.max_upload_mb * 1024 * 1024), max_pixels=args.max_pixels,
                           max_batch=args.max_batch, window_s=args.batch_window_ms / 1000,
                           queue_size=args.queue_size, request_timeout_s=args.request_timeout, token=token)


def run_serve(args: argparse.Namespace) -> int:
    """Load the model, bind, say where, serve until SIGINT / SIGTERM."""
    require_serve_extra()
    from ..service.http_app import create_app
    from ..service.http_server import bind, is_loopback, serve_forever, url_of
    from ..service.model_slot import ModelSlot, load_model
    from .options import check_device

    token = args.token or os.environ.get(TOKEN_ENV) or None
    if not is_loopback(args.host) and token is None and not args.no_token:
        raise ConfigError(f"--host {args.host} is reachable from other machines: set a token (--token or "
                          f"${TOKEN_ENV}) or pass --no-token to serve without one")
    if args.no_token and token is not None:
        raise ConfigError("--no-token and a token (--token or $" + TOKEN_ENV + ") contradict each other")
    settings = service_settings(args, token)
    device = check_device(args.device)
    loaded = load_model(args.model, device)
    sock = bind(args.host, args.port)
    logging.basicConfig(level=logging.WARNING, format="fapm serve: %(message)s")
    app = create_app(ModelSlot(loaded, device), settings)
    auth = "token required" if token else "no token"
    print(f"fapm serve: model {loaded.id} ({loaded.path}) on {url_of(sock)}/ ({auth}; "
          f"batches of up to {settings.max_batch}, window {args.batch_window_ms:g} ms, queue "
          f"{settings.queue_size}); Ctrl-C stops", flush=True)
    serve_forever(app, sock)
    print("fapm serve: stopped", file=sys.stderr)
    return 0
