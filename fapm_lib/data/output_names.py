"""The output names ``fapm predict`` gives the images named on its command line."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from ..errors import DataError
from .folders import scan_folder


def output_names(inputs: Iterable[str | os.PathLike]) -> NamedInputs:
    """Output names for files and folders given on a command line.

    A name is the end of the image's path, with its extension: below a folder argument, the
    folder's own name and the path inside it (``test/crack/000.png``); for a file argument, its
    parent folder and its name (``crack/000.png``). Where two different files would get the
    same name (``a/good/1.png`` and ``b/good/1.png``), both take parent folders in front until
    the names differ (``a/good/1.png``, ``b/good/1.png``). ``part1.png`` and ``part1.jpg`` keep
    apart by their extensions. A file given twice is scored once (listed in ``repeats``)."""
    found: list[tuple[Path, int]] = []  # (image path as given, parts of its resolved path the name keeps)
    named = NamedInputs()
    for item in map(Path, inputs):
        if item.is_dir():
            images, others = scan_folder(item)
            found += [(p, len(p.relative_to(item).parts) + 1) for p in images]
            named.skipped += others
        elif item.is_file():
            found.append((item, 2))
        else:
            raise DataError(f"{item}: no such file or folder")
    given: dict[Path, Path] = {}  # resolved -> as given (the first time)
    depth: dict[Path, int] = {}
    for path, parts in found:
        resolved = path.resolve()
        if resolved in depth:
            named.repeats.append(path)
        else:
            given[resolved], depth[resolved] = path, parts
    while True:
        names: dict[tuple[str, ...], list[Path]] = {}
        for resolved, parts in depth.items():
            names.setdefault(resolved.parts[-parts:], []).append(resolved)
        clashes = [paths for paths in names.values() if len(paths) > 1]
        if not clashes:
            break
        for resolved in (p for paths in clashes for p in paths):  # distinct paths differ below the root
            depth[resolved] = min(depth[resolved] + 1, len(resolved.parts) - 1)
    named.pairs = [(given[resolved], Path(*resolved.parts[-parts:])) for resolved, parts in depth.items()]
    return named


@dataclass
class NamedInputs:
    """Images given on a command line: ``pairs`` (image path, output name), ``repeats`` (files
    given more than once, scored once) and ``skipped`` (non-image files inside folders)."""

    pairs: list[tuple[Path, Path]] = field(default_factory=list)
    repeats: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
