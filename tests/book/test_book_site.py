"""The built book (``make book`` -> build/book/site), read as files (no browser): every page of
docs/ is in the site, every relative link and anchor of every page resolves inside the site, and
no page shows a path of the machine that built it.

Skipped with a reason when the book is not built, except under CI (``CI=true``), whose script
builds the book first: there a missing book is a failure.
"""
from __future__ import annotations

import os
import re
import urllib.parse
from functools import lru_cache
from pathlib import Path

import pytest

from tests.book_support import MACHINE_PATH, SITE
from tests.helpers import REPO

PAGES = sorted(SITE.rglob("*.html")) if SITE.is_dir() else []
#: href / src attribute values; data: URIs (the notebooks' figures) are not links.
ATTRIBUTE = re.compile(r"""\b(?:href|src)=["']([^"']+)["']""")
DATA_URI = re.compile(r"""data:[^"')\s]+""")


@pytest.fixture(scope="module", autouse=True)
def require_book() -> None:
    if not (SITE / "index.html").is_file():
        reason = f"the book is not built ({SITE / 'index.html'} missing: run `make book`)"
        if os.environ.get("CI") == "true":
            pytest.fail("book test under CI, but " + reason)
        pytest.skip(reason)


@lru_cache(maxsize=None)
def ids(page: Path) -> set[str]:
    return set(re.findall(r"""\bid=["']([^"']+)["']""", page.read_text(encoding="utf-8")))


def test_every_page_of_docs_and_the_reference_is_in_the_site() -> None:
    expected = [f"docs/{p.stem}.html" for p in sorted((REPO / "docs").glob("*.md"))]
    expected += ["index.html", "api.html", "cli.html", "data/index.html"]
    expected += [f"notebooks/{p.stem}.html" for p in sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))]
    missing = [name for name in expected if not (SITE / name).is_file()]
    assert not missing, f"pages missing from the site: {missing}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(SITE)))
def test_every_link_resolves_in_the_site(page: Path) -> None:
    broken = []
    for target in ATTRIBUTE.findall(page.read_text(encoding="utf-8")):
        if re.match(r"[a-z][a-z0-9+.-]*:", target, re.I) or target.startswith("//"):
            continue  # https:, data:, mailto:
        file, _, anchor = urllib.parse.unquote(target).partition("#")
        file = file.split("?")[0]
        path = (SITE / file.lstrip("/")) if file.startswith("/") else (page.parent / file if file else page)
        path = path.resolve()
        if path.is_dir():
            path = path / "index.html"
        if not path.is_file() or not path.is_relative_to(SITE.resolve()):
            broken.append(f"{target}: no such file in the site")
        elif anchor and path.suffix == ".html" and anchor not in ids(path):
            broken.append(f"{target}: no element with id {anchor!r}")
    assert not broken, f"{page.relative_to(SITE)}: " + "; ".join(broken[:10])


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(SITE)))
def test_no_machine_path_in_the_page(page: Path) -> None:
    text = DATA_URI.sub("", page.read_text(encoding="utf-8"))
    found = sorted({text[max(0, m.start() - 40):m.end() + 40].replace("\n", " ") for m in MACHINE_PATH.finditer(text)})
    assert not found, f"{page.relative_to(SITE)} shows machine paths: {found[:5]}"
