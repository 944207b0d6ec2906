"""MkDocs hooks of the book (``hooks:`` in book/mkdocs.yml; tools/build_book.py passes this file's
absolute path)."""
from __future__ import annotations

import re

#: A heading with its id, as nbconvert renders a notebook's Markdown headings.
HEADING = re.compile(r"""<h([1-6])\b[^>]*?\bid=["']([^"']+)["']""", re.I)


def _entries(items):
    for item in items:
        yield item
        yield from _entries(item.children)


def on_page_content(html, page, config, files):
    """Point a notebook page's table of contents at its headings' real ids.

    mkdocs-jupyter builds the table of contents from the notebook's Markdown with the headings'
    inline code left out ("Loading with `MVTecDataset`" -> ``#loading-with``), while nbconvert
    gives the heading itself the id with the code (``loading-with-mvtecdataset``), so such an
    entry links nowhere. The entries and the headings come in the same order: each entry takes
    the id of the next heading of its level."""
    if not page.file.src_uri.endswith(".ipynb") or page.toc is None:
        return html
    headings = [(int(level), anchor) for level, anchor in HEADING.findall(html)]
    ids = {anchor for _, anchor in headings}
    position = 0
    for entry in _entries(page.toc):
        while position < len(headings) and headings[position][0] != entry.level:
            position += 1
        if position == len(headings):
            break
        if entry.id not in ids:
            entry.id = headings[position][1]
        position += 1
    return html
