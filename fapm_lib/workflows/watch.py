"""``fapm watch --model M IN_DIR --output OUT``: score every image file a camera drops into
``IN_DIR`` exactly once (:mod:`fapm_lib.service.drop_folder`): ``OUT/results.jsonl`` (one line
per file, appended durably), ``OUT/overlays/`` for NG parts; safe to ``kill -9`` and restart."""
from __future__ import annotations

import argparse
import signal
import sys
import time

from ..errors import ConfigError
from ..service.drop_folder import DropFolder
from ..service.model_slot import load_model
from .options import check_device


def run_watch(args: argparse.Namespace) -> int:
    """Load the model, then pass over the folder every ``--interval`` s until SIGINT / SIGTERM
    (``--once``: one pass; SIGTERM ends after the batch in hand, exit 0)."""
    for flag, value in (("--interval", args.interval), ("--settle", args.settle)):
        if not value >= 0:
            raise ConfigError(f"{flag} {value}: must be >= 0 seconds")
    loaded = load_model(args.model, check_device(args.device))
    folder = DropFolder(args.input, args.output, loaded, args.settle, args.move_done,
                        report=lambda line: print(line, flush=True))
    stop = []
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
    print(f"fapm watch: model {loaded.id}; {folder.journal.records} files already recorded in "
          f"{folder.journal.path}; watching {folder.source}", file=sys.stderr, flush=True)
    scored = 0
    try:
        while not stop:
            scored += folder.scan_once(stop=lambda: bool(stop))
            if args.once:
                break
            time.sleep(args.interval)
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(f"fapm watch: scored {scored} files this run; {folder.journal.records} in {folder.journal.path}",
          file=sys.stderr)
    return 0
