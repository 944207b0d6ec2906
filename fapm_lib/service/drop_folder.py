"""``fapm watch``'s work: find the image files a camera dropped into a folder, score each one
exactly once, record it in the journal (:mod:`fapm_lib.service.journal`).

One pass (:meth:`DropFolder.scan_once`):

1. list the image files under the folder (any depth, sorted; hidden files and folders, names
   ending ``.tmp`` / ``.part`` and the ``--move-done`` folder are skipped), each with its key
   (relative path, size, mtime);
2. a file whose key is recorded is done: only moved if ``--move-done`` asks and the move had
   not happened (the process was killed in between);
3. a file changed less than ``settle`` seconds ago is left for a later pass (still being written);
4. the others are scored in batches (:func:`~fapm_lib.decisions.results.predict_images`, as
   ``fapm predict``), an NG part's calibrated overlay is written (atomically) under
   ``overlays/``, then its line is appended, then it is moved. An unreadable file gets a line
   with its error, once.

Killed anywhere, a restart finds every file either recorded (not scored again) or not (scored
now): each file appears exactly once in ``results.jsonl``.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from ..data.images import IMAGE_EXTENSIONS, load_image
from ..decisions.results import Result, predict_images
from ..errors import DataError
from ..report.viz import save_png
from .answers import caption, overlay_picture, result_fields
from .journal import Journal, Key
from .model_slot import LoadedModel

SKIPPED_SUFFIXES = (".tmp", ".part")


@dataclass(frozen=True)
class Dropped:
    """An image file found in the folder: its path, its name relative to the folder, its key."""

    path: Path
    name: str
    key: Key


class DropFolder:
    """The watched folder ``source``, the output folder and the journal in it."""

    def __init__(self, source: str | os.PathLike, output: str | os.PathLike, loaded: LoadedModel,
                 settle_s: float = 1.0, move_done: str | os.PathLike | None = None,
                 report: Callable[[str], None] = print) -> None:
        self.source, self.output = Path(source).resolve(), Path(output).resolve()
        if not self.source.is_dir():
            raise DataError(f"{source}: no such folder")
        self.move_done = None if move_done is None else Path(move_done).resolve()
        if self.output.is_relative_to(self.source) or (self.move_done is not None and self.move_done == self.source):
            raise DataError(f"--output and --move-done must lie outside {source} (or be a sub-folder that is not "
                            "the folder itself, for --move-done)")
        self.loaded, self.settle_s, self.report = loaded, settle_s, report
        self.journal = Journal(self.output)
        if self.journal.cut_bytes:
            report(f"note: {self.journal.path}: removed an incomplete last line ({self.journal.cut_bytes} bytes); "
                   "its file is scored again")

    def files(self) -> Iterator[Dropped]:
        """The image files under the folder, sorted (see the module's step 1)."""
        for folder, dirs, names in os.walk(self.source):
            here = Path(folder)
            dirs[:] = sorted(d for d in dirs if not d.startswith(".") and (here / d) != self.move_done)
            for name in sorted(names):
                path = here / name
                if name.startswith(".") or name.lower().endswith(SKIPPED_SUFFIXES) or \
                        path.suffix.lower() not in IMAGE_EXTENSIONS:
                    continue
                try:
                    stat = path.stat()
                except FileNotFoundError:  # moved away meanwhile
                    continue
                rel = path.relative_to(self.source).as_posix()
                yield Dropped(path, rel, (rel, stat.st_size, stat.st_mtime_ns))

    def scan_once(self, batch_size: int | None = None, stop: Callable[[], bool] = lambda: False) -> int:
        """One pass over the folder; the number of files scored. ``stop()`` is asked between
        batches (SIGTERM: the pass ends after the batch in hand)."""
        batch_size = batch_size or self.loaded.detector.config.batch_size
        now, ready = time.time_ns(), []
        for dropped in self.files():
            if dropped.key in self.journal:
                self._mark_done(dropped)
            elif now - dropped.key[2] >= self.settle_s * 1e9:
                ready.append(dropped)
        scored = 0
        for start in range(0, len(ready), batch_size):
            if stop():
                break
            self._score(ready[start : start + batch_size])
            scored += len(ready[start : start + batch_size])
        return scored

    def _score(self, batch: list[Dropped]) -> None:
        images, readable = [], []
        for dropped in batch:
            try:
                images.append(load_image(dropped.path))
                readable.append(dropped)
            except DataError as exc:
                self._record(dropped, {"decision": "error", "error": str(exc)})
        if not readable:
            return
        loaded = self.loaded
        for dropped, image, result in zip(readable, images, predict_images(loaded.detector, images)):
            record = {**result_fields(result), "overlay": None}
            if result.decision == "NG":
                record["overlay"] = self._write_overlay(dropped, image, result, loaded)
            self._record(dropped, record)

    def _write_overlay(self, dropped: Dropped, image, result: Result, loaded: LoadedModel) -> str:
        name = Path("overlays") / f"{dropped.name}.png"
        save_png(self.output / name, overlay_picture(image, result, f"{dropped.name}  {caption(result, loaded.id)}"))
        return name.as_posix()

    def _record(self, dropped: Dropped, fields: dict) -> None:
        rel, size, mtime_ns = dropped.key
        record = {"file": rel, "size": size, "mtime_ns": mtime_ns, "model": self.loaded.id,
                  "scored_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **fields}
        self.journal.append(record)
        shown = fields.get("error") or f"{fields['decision']} raw {fields['raw_score']:.3f}"
        self.report(f"{rel}: {shown}")
        self._mark_done(dropped)

    def _mark_done(self, dropped: Dropped) -> None:
        """With ``--move-done``, move the file there (same sub-folders); else the journal line is the mark."""
        if self.move_done is None:
            return
        target = self.move_done / dropped.name
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(dropped.path, target)
        except FileNotFoundError:
            pass
