"""The built book's notebook pages as a reader sees them, in headless Chromium at a 1280 px window
with every host name but the loopback's unresolvable (offline): every figure shown at no less
than 0.8 of its natural width and inside the column (no sideways scrolling), no code cell and no
table wider than its box, every widget output rendered (the explorer of notebook 3: its sliders,
its picture and its status line, drawn by the book's own copy of the widget renderer), and no
resource loaded from anywhere but the book. The measurements are tools/book_layout.py's.

Skipped with a reason when the book is not built or Chromium is missing, except under CI
(``CI=true``), whose script builds the book first and installs Chromium: there both are failures.
"""
from __future__ import annotations

import importlib.util
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium.webdriver import Chrome

from tests.browser_support import make_driver, missing_browser
from tests.helpers import REPO

pytestmark = pytest.mark.browser

BOOK = Path(os.environ.get("FAPM_BOOK_DIR", REPO / "build" / "book"))
SITE = BOOK / "site"
NOTEBOOKS = sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))
WINDOW = 1280
#: A figure is readable when shown at no less than this fraction of its natural width.
MIN_RATIO = 0.8

spec = importlib.util.spec_from_file_location("book_layout", REPO / "tools" / "book_layout.py")
book_layout = importlib.util.module_from_spec(spec)
spec.loader.exec_module(book_layout)


@pytest.fixture(scope="module", autouse=True)
def require_book_and_chromium() -> None:
    """Skip without a built book or without Debian's Chromium, except under CI (a failure there)."""
    reasons = []
    if not (SITE / "index.html").is_file():
        reasons.append(f"the book is not built ({SITE / 'index.html'} missing: run `make book`)")
    browser = missing_browser()
    if browser is not None:
        reasons.append(f"Chromium is {browser} (apt-get install chromium chromium-driver)")
    if reasons:
        if os.environ.get("CI") == "true":
            pytest.fail("book layout test under CI, but " + "; ".join(reasons))
        pytest.skip("; ".join(reasons))


@pytest.fixture(scope="module")
def pages() -> Iterator[dict[str, dict]]:
    """Every notebook page measured once, offline, at a 1280 px window: stem -> measurements."""
    with tempfile.TemporaryDirectory(prefix="book-layout-") as profile:
        driver: Chrome = make_driver(Path(profile), page_timeout=60, extra_flags=(book_layout.OFFLINE_FLAG,))
        try:
            driver.set_window_size(WINDOW, 1000)
            with book_layout.serve(SITE) as base:
                yield {path.stem: book_layout.measure_page(driver, f"{base}/notebooks/{path.stem}.html")
                       for path in NOTEBOOKS}
        finally:
            driver.quit()


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_figures_are_shown_at_a_readable_size_without_sideways_scrolling(path: Path, pages: dict) -> None:
    page = pages[path.stem]
    assert page["window"] == WINDOW, f"window {page['window']} px, not {WINDOW}"
    assert page["figures"], f"{path.stem}: no figure on the page"
    unloaded = [f for f in page["figures"] if not (f["complete"] and f["natural"] > 0)]
    assert not unloaded, f"{path.stem}: figures not loaded: {unloaded}"
    small = [f for f in page["figures"] if f["ratio"] < MIN_RATIO]
    assert not small, (f"{path.stem}: figures shrunk below {MIN_RATIO} of their natural width at {WINDOW} px "
                       f"(cell, natural -> rendered px): {[(f['cell'], f['natural'], f['rendered']) for f in small]}")
    assert not page["page_scrolls"], f"{path.stem}: the page scrolls sideways at {WINDOW} px"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_no_code_cell_or_table_is_wider_than_its_box(path: Path, pages: dict) -> None:
    page = pages[path.stem]
    assert page["code_cells"] > 0, f"{path.stem}: no code cell on the page"
    assert not page["code_scrolling"], f"{path.stem}: code cells scroll sideways: {page['code_scrolling']}"
    assert not page["tables_clipped"], f"{path.stem}: tables wider than the column: {page['tables_clipped']}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_nothing_is_loaded_from_the_network(path: Path, pages: dict) -> None:
    page = pages[path.stem]
    assert not page["external"], f"{path.stem} loads from outside the book: {page['external']}"


def test_the_explorer_renders_offline_from_its_saved_state(pages: dict) -> None:
    widgets = pages["03_adaptive_coreset"]["widgets"]
    assert widgets, "notebook 3's page holds no widget output"
    empty = [w for w in widgets if not (w["rendered"] and w["height"] > 100)]
    assert not empty, f"widget outputs not rendered (empty) in the book: {empty}"
    explorer = widgets[0]
    for label in ("base ratio r", "multiplier a", "region grid", "image AUROC", "updated in"):
        assert label in explorer["text"], f"the explorer lacks {label!r}: {explorer['text']!r}"
    image = explorer["image"]
    assert image and image["natural"] > 0, f"the explorer's picture is not drawn: {image}"
    assert image["rendered"] >= MIN_RATIO * image["natural"], f"the explorer's picture is shrunk: {image}"
