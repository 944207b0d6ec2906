"""The rendered book (``make book`` -> build/book/site) in a real browser: headless Chromium
opens every notebook page over a loopback HTTP server and checks that each figure the executed
notebook holds is rendered (an <img> with a non-zero natural size), that no cell shows an error
and that no page shows a path of the building machine; the home page carries the README's
notebooks, results and links to the pages of docs/, each of which opens, and the reference pages
their content. (The same site read as files, every link and anchor: test_book_site.py.)

Skipped with a reason when the book is not built or Chromium is missing, except under CI
(``CI=true``), whose script builds the book first and installs Chromium: there both are failures.
"""
from __future__ import annotations

import functools
import http.server
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import nbformat
import pytest
from selenium.webdriver import Chrome

from tests.book_support import BOOK, MACHINE_PATH, SITE
from tests.browser_support import make_driver, missing_browser
from tests.helpers import REPO

pytestmark = pytest.mark.browser

ROOT = REPO
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))

# Every output <img> of the page with its load state and natural size, and the text of every
# error output (nbconvert renders an error as a stderr output holding the traceback).
JS_PAGE_STATE = """
const images = [...document.querySelectorAll('.jp-OutputArea-output img')].map(img => ({
  src: img.getAttribute('src').slice(0, 40), complete: img.complete,
  width: img.naturalWidth, height: img.naturalHeight}));
const errors = [...document.querySelectorAll('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]')]
  .map(el => el.innerText).filter(text => /Traceback/.test(text));
const cells = document.querySelectorAll('.jp-Cell').length;
const article = document.querySelector('article');
return {images, errors, cells, title: document.title, text: article ? article.innerText : ''};"""


def _under_ci() -> bool:
    return os.environ.get("CI") == "true"


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
        if _under_ci():
            pytest.fail("book test under CI, but " + "; ".join(reasons))
        pytest.skip("; ".join(reasons))


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        pass


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    """The site served on a free loopback port; yields its base URL."""
    handler = functools.partial(_QuietHandler, directory=str(SITE))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture(scope="module")
def driver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chrome]:
    chrome = make_driver(tmp_path_factory.mktemp("chromium-profile"), page_timeout=60)
    try:
        yield chrome
    finally:
        chrome.quit()


def _figures_in(executed: Path) -> int:
    nb = nbformat.read(executed, as_version=4)
    return sum(1 for c in nb.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {}))


def _open(driver: Chrome, url: str) -> dict:
    driver.get(url)
    driver.execute_script("window.scrollTo(0, document.body.scrollHeight);")  # no lazy image left unloaded
    return driver.execute_script(JS_PAGE_STATE)


def test_every_notebook_has_a_page_and_an_executed_copy() -> None:
    for path in NOTEBOOKS:
        assert (SITE / "notebooks" / f"{path.stem}.html").is_file(), f"no book page for {path.name}"
        executed = BOOK / "docs" / "notebooks" / path.name
        nb = nbformat.read(executed, as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert all(c.execution_count is not None for c in code), f"{executed}: not every cell was executed"
        assert not [o for c in code for o in c.outputs if o.output_type == "error"], f"{executed}: a cell failed"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_page_shows_its_figures_and_no_error(path: Path, server: str, driver: Chrome) -> None:
    expected = _figures_in(BOOK / "docs" / "notebooks" / path.name)
    assert expected >= 1, f"{path.name}: the executed notebook holds no figure"
    state = _open(driver, f"{server}/notebooks/{path.stem}.html")
    assert state["cells"] > 0, f"{path.stem}: no notebook cells on the page ({state['title']!r})"
    shown = len(state["images"])
    assert shown >= expected, f"{path.stem}: {shown} figures shown, {expected} in the notebook"
    broken = [img for img in state["images"] if not (img["complete"] and img["width"] > 0 and img["height"] > 0)]
    assert not broken, f"{path.stem}: figures not rendered: {broken}"
    assert not state["errors"], f"{path.stem}: error output on the page: {state['errors'][0][:300]}"
    paths = MACHINE_PATH.findall(state["text"])
    assert not paths, f"{path.stem}: the page shows machine paths ({paths[:3]})"


def test_home_and_reference_pages(server: str, driver: Chrome) -> None:
    driver.get(f"{server}/index.html")
    home = driver.find_element("tag name", "article").text
    for heading in ("Two commands", "The notebooks", "Results", "Read more"):
        assert heading in home, f"home page lacks the README section {heading!r}"
    driver.get(f"{server}/api.html")
    api = driver.find_element("tag name", "article").text
    for name in ("FAPM", "FAPMConfig", "FAPMModel", "split_regions", "upsample_official"):
        assert name in api, f"API page lacks {name}"
    driver.get(f"{server}/cli.html")
    cli = driver.find_element("tag name", "article").text
    for command in ("fapm evaluate", "fapm benchmark", "--data-root"):
        assert command in cli, f"CLI page lacks {command}"


def test_home_links_open_every_page_of_docs(server: str, driver: Chrome) -> None:
    driver.get(f"{server}/index.html")
    links = {a.get_attribute("href") for a in driver.find_elements("css selector", "article a[href]")}
    for page in sorted((ROOT / "docs").glob("*.md")):
        url = f"{server}/docs/{page.stem}.html"
        assert url in links, f"the home page does not link {page.name} ({url})"
        driver.get(url)
        article = driver.find_element("tag name", "article").text
        title = page.read_text(encoding="utf-8").splitlines()[0].lstrip("# ").split(":")[0]
        assert title in article, f"{url}: the page does not show its title {title!r}"
        assert not MACHINE_PATH.findall(article), f"{url}: the page shows machine paths"
