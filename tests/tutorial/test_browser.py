"""The widget explorer of notebook 3 in a real browser: JupyterLab in headless Chromium runs the
notebook on a small generated category; moving the ratio and multiplier sliders redraws the
heatmaps, and a k larger than the smallest bank is refused in the status line.

Needs Debian's ``chromium`` and ``chromium-driver``: skipped when they are missing, except under
CI (``CI=true``), whose script installs them, where a missing browser is a failure.
"""
from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import papermill
import pytest
from selenium.webdriver import Chrome
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

from fapm_lib.data.synthetic import generate_category
from tests.browser_support import JupyterLab, diagnose_failure, make_driver, missing_browser, start_jupyterlab
from tests.helpers import REPO

pytestmark = pytest.mark.browser

NOTEBOOK = REPO / "notebooks" / "03_adaptive_coreset.ipynb"
CATEGORY = "vial"
UPDATED = re.compile(r"updated in (\d+\.\d\d) s$")
RUN_TIMEOUT = 300.0      # the whole notebook, on 2 loaded cores
SLIDER_TIMEOUT = 120.0   # one refit + rescore + redraw

# JupyterLab state through the app object (--expose-app-in-browser). The notebook is the main area's
# widget with a session: `shell.currentWidget` follows the focus, which a headless window may never
# give (it stays null in JupyterLab 4.6 under headless Chromium).
JS_NOTEBOOK = "[...window.jupyterapp.shell.widgets('main')].find(w => w.sessionContext)"
JS_KERNEL_STATUS = """
const panel = window.jupyterapp && """ + JS_NOTEBOOK + """;
const kernel = panel && panel.sessionContext && panel.sessionContext.session && panel.sessionContext.session.kernel;
return kernel ? kernel.status : null;"""
JS_RUN_STATE = """
const panel = """ + JS_NOTEBOOK + """;
const cells = [...panel.content.model.cells].filter(c => c.type === 'code');
for (const cell of cells) {
  for (let j = 0; j < cell.outputs.length; j++) {
    const out = cell.outputs.get(j).toJSON();
    if (out.output_type === 'error') return {error: out.ename + ': ' + out.evalue};
  }
}
return {done: cells.every(c => c.executionCount !== null)};"""


@pytest.fixture(autouse=True)
def require_chromium() -> None:
    """Skip without Debian's Chromium and chromedriver, except under CI where that is a failure."""
    reason = missing_browser()
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"browser test under CI, but Chromium is {reason}")
        pytest.skip(f"Chromium is {reason} (apt-get install chromium chromium-driver)")


@pytest.fixture
def notebook(tmp_path: Path) -> Path:
    """Notebook 3 with parameters injected (not executed) for one small generated category."""
    data = tmp_path / "data"
    generate_category(data, CATEGORY, size=256, n_train=10, n_test_good=3, n_per_defect=3)
    out = tmp_path / "lab" / NOTEBOOK.name
    out.parent.mkdir()
    papermill.execute_notebook(str(NOTEBOOK), str(out), prepare_only=True, progress_bar=False,
                               parameters={"data_root": str(data), "category": CATEGORY,
                                           "backbone": "tf_efficientnet_lite0", "fast": True,
                                           # k acts through the re-weighted score only (the default is max)
                                           "image_score": "reweighted", "k": 4})
    return out


@pytest.fixture
def lab(notebook: Path, tmp_path: Path) -> Iterator[JupyterLab]:
    server = start_jupyterlab(notebook.parent, tmp_path / "jupyter")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def driver(lab: JupyterLab, tmp_path: Path) -> Iterator[Chrome]:
    chrome = make_driver(tmp_path / "chromium-profile")
    try:
        yield chrome
    finally:
        chrome.quit()


def wait(driver: Chrome, timeout: float, condition: Callable[[Chrome], Any], message: str,
         poll: float = 0.1) -> Any:
    """``WebDriverWait(...).until(condition)`` with a message naming what was awaited."""
    return WebDriverWait(driver, timeout, poll_frequency=poll).until(condition, message)


def run_state(driver: Chrome) -> bool:
    """True once every code cell ran and the kernel is idle; AssertionError on a cell error."""
    state = driver.execute_script(JS_RUN_STATE)
    assert "error" not in state, f"notebook cell failed: {state['error']}"
    return state["done"] and driver.execute_script(JS_KERNEL_STATUS) == "idle"


def kernel_idle(driver: Chrome) -> bool:
    return driver.execute_script(JS_KERNEL_STATUS) == "idle"


def run_all_cells(driver: Chrome) -> None:
    """Run > Run All Cells through JupyterLab's menu bar."""
    menu = wait(driver, 30, ec.element_to_be_clickable(
        (By.XPATH, "//li[contains(@class, 'lm-MenuBar-item')][.//div[text()='Run']]")), "the Run menu")
    menu.click()
    wait(driver, 30, ec.element_to_be_clickable(
        (By.CSS_SELECTOR, ".lm-Menu-item[data-command='runmenu:run-all']")), "Run All Cells").click()


def panel_state(driver: Chrome) -> tuple[str, str]:
    """(heatmap ``src``, status line) of the explorer panel."""
    image = driver.find_element(By.CSS_SELECTOR, ".fapm-explorer img.fapm-heatmap")
    line = driver.find_element(By.CSS_SELECTOR, ".fapm-explorer .fapm-status").text.strip()
    return image.get_attribute("src"), line


def new_image(before: tuple[str, str], now: tuple[str, str]) -> bool:
    return now[0] != before[0]


def refused(before: tuple[str, str], now: tuple[str, str]) -> bool:
    return now[1].startswith("error")


def accepted(before: tuple[str, str], now: tuple[str, str]) -> bool:
    return not now[1].startswith("error")


def move_slider(driver: Chrome, name: str, key: str,
                until: Callable[[tuple[str, str], tuple[str, str]], bool]) -> dict[str, Any]:
    """Press ``key`` on the noUiSlider handle of slider ``fapm-<name>``, wait for
    ``until(before, now)`` on the panel state, then for the kernel to go idle. Returns the slider
    readouts, whether the image changed, the status line and both response times (s)."""
    slider = driver.find_element(By.CSS_SELECTOR, f".fapm-explorer .fapm-{name}")
    handle = slider.find_element(By.CSS_SELECTOR, ".noUi-handle")
    readout = slider.find_element(By.CSS_SELECTOR, ".widget-readout")
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", slider)
    value, before = readout.text, panel_state(driver)
    start = time.perf_counter()
    handle.send_keys(key)
    wait(driver, SLIDER_TIMEOUT, lambda d: until(before, panel_state(d)), f"the panel after moving {name}", poll=0.02)
    browser_seconds = time.perf_counter() - start
    wait(driver, SLIDER_TIMEOUT, kernel_idle, f"the kernel to finish the {name} update")
    src, line = panel_state(driver)
    match = UPDATED.search(line)
    assert match, f"status after moving {name}: {line!r}"
    return {"before": value, "after": readout.text, "image_changed": src != before[0], "status": line,
            "python_seconds": float(match.group(1)), "browser_seconds": browser_seconds}


def test_explorer_sliders_redraw_heatmaps(lab: JupyterLab, driver: Chrome, notebook: Path, tmp_path: Path) -> None:
    started = time.perf_counter()
    with diagnose_failure(driver, lab, tmp_path / "diagnostics"):
        driver.get(lab.url(f"lab/tree/{notebook.name}"))
        wait(driver, 120, kernel_idle, "the notebook's kernel to start")
        assert [s["kernel"]["name"] for s in lab.api("sessions")] == ["python3"]
        assert lab.kernel_pythons() == [sys.executable]
        run_all_cells(driver)
        wait(driver, RUN_TIMEOUT, run_state, "all cells to run", poll=0.5)
        notebook_seconds = time.perf_counter() - started

        panel = driver.find_element(By.CSS_SELECTOR, ".fapm-explorer")
        for name in ("ratio", "multiplier", "grid", "k"):
            assert panel.find_elements(By.CSS_SELECTOR, f".fapm-{name} .noUi-handle"), f"no slider fapm-{name}"
        image = panel.find_element(By.CSS_SELECTOR, "img.fapm-heatmap")
        assert driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth;", image) > 0
        line = panel_state(driver)[1]
        assert UPDATED.search(line) and not line.startswith("error"), line

        moves = {"ratio": move_slider(driver, "ratio", Keys.PAGE_UP, new_image),
                 "multiplier": move_slider(driver, "multiplier", Keys.ARROW_RIGHT, new_image)}
        for move in moves.values():
            assert float(move["after"]) > float(move["before"]) and not move["status"].startswith("error"), move
        # k = 8 exceeds the smallest bank of the fast run (stride 16: 10 images x 2 x 2 positions per
        # region, ratio 0.15 keeps 6): refused in the status line, the last picture stays.
        moves["k (refused)"] = refusal = move_slider(driver, "k", Keys.END, refused)
        assert refusal["after"] == "8" and "k=8 exceeds" in refusal["status"], refusal
        assert not refusal["image_changed"], refusal
        moves["k"] = move_slider(driver, "k", Keys.HOME, accepted)
        assert moves["k"]["after"] == "2", moves["k"]  # the re-weighted score needs k >= 2
        assert moves["k"]["image_changed"], moves["k"]  # k acts through the re-weighted image scores

    for name, move in moves.items():
        print(f"{name} {move['before']} -> {move['after']}: updated in {move['python_seconds']:.2f} s (kernel), "
              f"browser saw the result {move['browser_seconds']:.2f} s after the key press")
    print(f"notebook open + run all: {notebook_seconds:.1f} s; whole browser session "
          f"{time.perf_counter() - started:.1f} s")
