"""The results journal of ``fapm watch``: ``results.jsonl``, one JSON line per scored file, the
only record of what is done.

A line is appended with one ``write`` on a file opened with ``O_APPEND``, then ``fsync``: a
process killed (even ``kill -9``) leaves every line whole; a line cut by a crash of the machine
has no newline and is removed when the journal is opened again (its file is then scored
again, once). A file's key is its path relative to the watched folder, its size and its
modification time (ns): a file written again under the same name is a new part.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..errors import DataError

Key = tuple[str, int, int]


def key_of(record: dict[str, Any]) -> Key:
    return (record["file"], int(record["size"]), int(record["mtime_ns"]))


class Journal:
    """``results.jsonl`` in ``folder``: the keys already recorded, and appends that survive kills."""

    NAME = "results.jsonl"

    def __init__(self, folder: str | os.PathLike) -> None:
        self.path = Path(folder) / self.NAME
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.keys: set[Key] = set()
        self.records = 0
        self.cut_bytes = self._recover()

    def _recover(self) -> int:
        """Read the recorded keys; drop a last line without its newline. The bytes dropped."""
        if not self.path.exists():
            return 0
        data = self.path.read_bytes()
        whole = data.rfind(b"\n") + 1
        if whole < len(data):
            with open(self.path, "r+b") as fh:
                fh.truncate(whole)
                os.fsync(fh.fileno())
        for number, line in enumerate(data[:whole].splitlines(), 1):
            if not line.strip():
                continue
            try:
                self.keys.add(key_of(json.loads(line)))
            except (ValueError, KeyError, TypeError):
                raise DataError(f"{self.path}:{number}: not a results line of fapm watch; move the file away "
                                "or give another --output") from None
            self.records += 1
        return len(data) - whole

    def __contains__(self, key: Key) -> bool:
        return key in self.keys

    def append(self, record: dict[str, Any]) -> None:
        """Append ``record`` (with ``file``, ``size``, ``mtime_ns``) as one line, durably."""
        line = (json.dumps(record, sort_keys=True) + "\n").encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            written = os.write(fd, line)
            if written != len(line):  # a regular file takes a short line whole; a full disk may not
                raise OSError(f"{self.path}: short write ({written} of {len(line)} bytes; disk full?)")
            os.fsync(fd)
        finally:
            os.close(fd)
        self.keys.add(key_of(record))
        self.records += 1
