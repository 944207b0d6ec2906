"""The page at ``/`` in headless Chromium (Debian's, via Selenium): it loads the model's normal
scores into the histogram, an image uploaded through the file input comes back as its calibrated
overlay with its decision, the last-parts table and the NG count follow; no request leaves the
service (the page has no external reference).

Skipped with a reason when Chromium is missing, except under CI (``CI=true``): a failure there."""
from __future__ import annotations

import os
import re
from collections.abc import Iterator

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from fapm_lib.service.http_app import STATIC, ServiceSettings, create_app
from fapm_lib.service.http_server import BackgroundServer
from fapm_lib.service.model_slot import ModelSlot, load_model
from tests.browser_support import make_driver, missing_browser
from tests.service_support import sample_images

pytestmark = pytest.mark.browser

STATE = """
const img = document.getElementById('overlay');
return {decision: document.getElementById('decision').textContent,
        overlay: img.src.slice(0, 22), complete: img.complete, width: img.naturalWidth,
        shown: img.getBoundingClientRect().width,
        rows: document.querySelectorAll('#recent tbody tr').length,
        ng: document.getElementById('ng-count').textContent,
        total: document.getElementById('total-count').textContent,
        bars: document.querySelectorAll('#histogram rect.bar').length,
        threshold: document.querySelectorAll('#histogram line.threshold').length,
        ticks: document.querySelectorAll('#histogram line.tick').length,
        model: document.getElementById('model-id').textContent,
        error: document.getElementById('error').textContent};"""


@pytest.fixture(scope="module")
def driver(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    browser = missing_browser()
    if browser is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"page browser test under CI, but Chromium is {browser}")
        pytest.skip(f"Chromium is {browser} (apt-get install chromium chromium-driver)")
    chrome = make_driver(tmp_path_factory.mktemp("chromium-profile"), page_timeout=60)
    try:
        yield chrome
    finally:
        chrome.quit()


def test_the_page_has_no_external_reference() -> None:
    for path in STATIC.iterdir():
        assert not re.search(r"(src|href)=\"(https?:)?//", path.read_text()), path.name
        assert "fetch(\"http" not in path.read_text() and "cdn" not in path.read_text().lower(), path.name


def test_an_uploaded_image_shows_its_overlay_and_decision(driver, service_models) -> None:
    root, model_file, _ = service_models
    slot = ModelSlot(load_model(model_file))
    token = "page-token"
    images = sample_images(root)  # crack first, then good
    with BackgroundServer(create_app(slot, ServiceSettings(token=token))) as server:
        driver.get(f"{server.url}/#token={token}")
        wait = WebDriverWait(driver, 60)
        wait.until(lambda d: d.execute_script(STATE)["bars"] > 0)
        state = driver.execute_script(STATE)
        assert state["model"] == slot.current.id and state["threshold"] == 1 and state["error"] == ""
        upload = driver.find_element(By.ID, "file")
        upload.send_keys(str(images[0]))
        wait.until(lambda d: d.execute_script(STATE)["total"] == "1" and d.execute_script(STATE)["complete"])
        state = driver.execute_script(STATE)
        assert state["decision"] == "NG" and state["overlay"] == "data:image/png;base64,"
        assert state["width"] > 64 and state["shown"] > 0  # decoded and laid out
        assert state["rows"] == 1 and state["ng"] == "1" and state["ticks"] == 1
        upload.send_keys(str(images[-1]))
        wait.until(lambda d: d.execute_script(STATE)["total"] == "2")
        state = driver.execute_script(STATE)
        assert state["decision"] == "OK" and state["ng"] == "1" and state["rows"] == 2 and state["ticks"] == 2
        assert state["error"] == ""
        logs = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
        assert logs == []
