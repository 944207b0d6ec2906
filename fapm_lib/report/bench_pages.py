"""Generated tables inside hand-written pages: the text between ``<!-- bench:NAME -->`` and
``<!-- /bench:NAME -->`` is replaced by the fragment ``NAME`` (exactly, with one blank line on
each side), everything outside the markers is left as it is. Rewriting twice changes nothing."""
from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from ..errors import ConfigError
from ..system.atomic import write_text_atomic

#: A marker line: ``<!-- bench:speed -->`` opens the block ``speed``, ``<!-- /bench:speed -->`` closes it.
MARKER = re.compile(r"^<!-- (/?)bench:([A-Za-z0-9_-]+) -->$")


def open_marker(name: str) -> str:
    """The line that opens block ``name``."""
    return f"<!-- bench:{name} -->"


def close_marker(name: str) -> str:
    """The line that closes block ``name``."""
    return f"<!-- /bench:{name} -->"


def blocks(text: str, source: str = "page") -> dict[str, str]:
    """The blocks of ``text``: name -> the text between its markers. ConfigError (naming ``source``
    and the line) on a marker that is not closed, closed twice, nested or closed without opening."""
    found: dict[str, str] = {}
    lines = text.split("\n")
    current: tuple[str, int] | None = None
    for number, line in enumerate(lines, 1):
        match = MARKER.match(line.strip())
        if not match:
            if line.strip().startswith("<!--") and "bench:" in line:
                raise ConfigError(f"{source}:{number}: a bench marker must stand alone on its line: {line.strip()!r}")
            continue
        closing, name = match.group(1) == "/", match.group(2)
        if not closing:
            if current is not None:
                raise ConfigError(f"{source}:{number}: bench:{name} opens inside bench:{current[0]} "
                                  f"(opened on line {current[1]})")
            if name in found:
                raise ConfigError(f"{source}:{number}: bench:{name} appears twice")
            current = (name, number)
        elif current is None or current[0] != name:
            raise ConfigError(f"{source}:{number}: /bench:{name} closes a block that is not open")
        else:
            found[name] = "\n".join(lines[current[1]:number - 1])
            current = None
    if current is not None:
        raise ConfigError(f"{source}:{current[1]}: bench:{current[0]} is never closed ({close_marker(current[0])})")
    return found


def fill(text: str, fragments: Mapping[str, str], source: str = "page") -> tuple[str, list[str]]:
    """``text`` with every block that has a fragment replaced by it; also the names replaced.
    Blocks without a fragment stay as they are."""
    blocks(text, source)  # the markers are well formed
    for name, fragment in fragments.items():
        if re.search(r"<!-- /?bench:", fragment):
            raise ConfigError(f"fragment {name}: holds a bench marker itself")
    out, replaced, skip = [], [], False
    for line in text.split("\n"):
        match = MARKER.match(line.strip())
        if match and match.group(1) == "/":
            skip = False
        if not skip:
            out.append(line)
        if match and not match.group(1) and match.group(2) in fragments:
            name = match.group(2)
            out += ["", fragments[name].strip("\n"), ""]
            replaced.append(name)
            skip = True
    return "\n".join(out), replaced


def read_fragments(folder: Path, names: list[str] | None = None) -> dict[str, str]:
    """The fragments ``<folder>/<name>.md`` (all ``*.md`` there, or those of ``names`` that exist)."""
    paths = sorted(folder.glob("*.md")) if names is None else [folder / f"{n}.md" for n in names]
    return {p.stem: p.read_text(encoding="utf-8") for p in paths if p.is_file()}


def rewrite_pages(pages: list[Path], fragments: Mapping[str, str]) -> dict[str, list[str]]:
    """Fill the blocks of each page from ``fragments``, writing a page only when it changes;
    returns page -> the block names filled. Every page is checked before any is written."""
    texts = {page: page.read_text(encoding="utf-8") for page in pages}
    results = {page: fill(text, fragments, str(page)) for page, text in texts.items()}
    for page, (new, _) in results.items():
        if new != texts[page]:
            write_text_atomic(page, new)
    return {str(page): names for page, (_, names) in results.items()}
