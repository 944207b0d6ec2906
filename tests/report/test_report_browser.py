"""``report.html`` in a real browser: headless Chromium (Debian's, via Selenium) opens the page
``fapm predict --explain --report`` wrote, from the file alone (no server, no network), and every
thumbnail and explanation picture decodes and is laid out; the histogram draws its bars.

Skipped with a reason when Chromium is missing, except under CI (``CI=true``): a failure there."""
from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.browser_support import make_driver, missing_browser
from tests.helpers import run_main

pytestmark = [pytest.mark.browser, pytest.mark.usefixtures("cached_extractors")]

PAGE_STATE = """
const images = [...document.images].map(img => ({alt: img.alt, complete: img.complete,
  width: img.naturalWidth, height: img.naturalHeight, shown: img.getBoundingClientRect().width}));
const svg = document.querySelector('svg');
return {images, bars: svg ? svg.querySelectorAll('rect').length : 0,
        svgWidth: svg ? svg.getBoundingClientRect().width : 0,
        thumbs: document.querySelectorAll('figure.thumb').length, title: document.title};"""


@pytest.fixture(scope="module")
def driver(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    browser = missing_browser()
    if browser is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"report browser test under CI, but Chromium is {browser}")
        pytest.skip(f"Chromium is {browser} (apt-get install chromium chromium-driver)")
    chrome = make_driver(tmp_path_factory.mktemp("chromium-profile"), page_timeout=60)
    try:
        yield chrome
    finally:
        chrome.quit()


def test_every_picture_of_the_report_renders(capsys, driver, flat_folders: Path, flat_model_file: Path,
                                              tmp_path: Path) -> None:
    out = tmp_path / "pred"
    code, _, err = run_main(capsys, "predict", "--model", str(flat_model_file), str(flat_folders / "ok"),
                            str(flat_folders / "ng"),
                            "--explain", "--report", "--output", str(out), "--no-progress")
    assert code == 0, err
    page = tmp_path / "alone" / "report.html"  # moved away from every other output: it needs nothing beside it
    page.parent.mkdir()
    (out / "report.html").rename(page)
    driver.get(page.as_uri())
    state = driver.execute_script(PAGE_STATE)
    assert state["title"] == "fapm predict" and state["thumbs"] == 6
    assert len(state["images"]) == 12  # 6 thumbnails and 6 explanations
    broken = [i["alt"] for i in state["images"] if not i["complete"] or i["width"] == 0 or i["shown"] == 0]
    assert broken == []
    assert state["bars"] > 0 and state["svgWidth"] > 0
