"""Helpers for the browser test: a throwaway JupyterLab server on loopback and a headless
Chromium driven by Selenium, with Debian's browser and driver only (nothing is downloaded)."""
from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
from selenium import webdriver
from selenium.webdriver import Chrome
from selenium.webdriver.chrome.service import Service

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROME_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                "--no-first-run", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--disable-extensions", "--window-size=1500,1100")

# JupyterLab user settings: every cell rendered (no virtual scrolling, so widgets far down the
# notebook are in the DOM), no news or update checks.
LAB_SETTINGS = {"@jupyterlab/notebook-extension/tracker": {"windowingMode": "none"},
                "@jupyterlab/apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False}}


def missing_browser() -> str | None:
    """Why the browser test cannot run here (a missing executable), or None."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    return f"not installed: {', '.join(missing)}" if missing else None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class JupyterLab:
    """A running ``jupyter lab`` process serving ``root`` on ``127.0.0.1:port``; output in ``log``."""

    process: subprocess.Popen
    port: int
    token: str
    root: Path
    log: Path

    def url(self, path: str) -> str:
        """``http://127.0.0.1:port/<path>`` with the token as query parameter."""
        sep = "&" if "?" in path else "?"
        return f"http://127.0.0.1:{self.port}/{path.lstrip('/')}{sep}token={self.token}"

    def api(self, path: str, method: str = "GET", timeout: float = 5.0) -> object:
        """JSON answer of the REST API at ``/api/<path>`` (token in the header)."""
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}/api/{path}", method=method,
                                         headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            body = answer.read()
        return json.loads(body) if body else None

    def log_tail(self, lines: int = 60) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def kernel_pythons(self) -> list[str]:
        """The interpreter (first command-line word) of each running kernel process."""
        processes = psutil.Process(self.process.pid).children(recursive=True)
        return [p.cmdline()[0] for p in processes if "ipykernel_launcher" in p.cmdline()]

    def wait_ready(self, timeout: float) -> None:
        """Block until ``/api/status`` answers; RuntimeError (with the log tail) if the server
        exits or does not answer within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"jupyter lab exited with code {self.process.returncode}:\n{self.log_tail()}")
            try:
                self.api("status", timeout=2.0)
                return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.25)
        raise RuntimeError(f"jupyter lab did not answer /api/status in {timeout:.0f} s:\n{self.log_tail()}")

    def stop(self, timeout: float = 30.0) -> None:
        """Shut the server and its kernels down (REST shutdown, then SIGTERM, then SIGKILL),
        and kill any of its child processes still alive afterwards."""
        try:
            children = psutil.Process(self.process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            children = []
        if self.process.poll() is None:
            try:
                self.api("shutdown", method="POST")
            except (urllib.error.URLError, ConnectionError, TimeoutError, json.JSONDecodeError):
                self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)
        _, alive = psutil.wait_procs(children, timeout=5)
        for proc in alive:
            proc.kill()


def _lab_environment(home: Path) -> dict[str, str]:
    """Environment isolating the server from the user's Jupyter set-up (private config, data,
    runtime, IPython and lab settings dirs under ``home``) with this interpreter's folder first on
    PATH, so the ``python3`` kernel is this environment's Python."""
    dirs = {name: home / name.lower() for name in ("JUPYTER_CONFIG_DIR", "JUPYTER_DATA_DIR",
                                                    "JUPYTER_RUNTIME_DIR", "IPYTHONDIR")}
    for folder in dirs.values():
        folder.mkdir(parents=True, exist_ok=True)
    lab_config = {"LabApp": {"news_url": None, "check_for_updates_class": "jupyterlab.NeverCheckForUpdate",
                             "extension_manager": "readonly"}}
    (dirs["JUPYTER_CONFIG_DIR"] / "jupyter_lab_config.json").write_text(json.dumps(lab_config))
    for plugin, values in LAB_SETTINGS.items():
        path = home / "settings" / f"{plugin}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    env = {**os.environ, **{name: str(path) for name, path in dirs.items()}}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def start_jupyterlab(root: Path, home: Path, timeout: float = 120.0) -> JupyterLab:
    """Start JupyterLab with this interpreter (``python -m jupyterlab``, so kernels run it too)
    serving ``root`` on a free loopback port with a random token, no browser, no terminals;
    ``home`` receives its settings and log. Returns once ``/api/status`` answers."""
    port, token, env = free_port(), secrets.token_hex(16), _lab_environment(home)
    log = home / "jupyterlab.log"
    args = [sys.executable, "-m", "jupyterlab", "--no-browser", "--expose-app-in-browser",
            "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
            f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
            "--ServerApp.open_browser=False", "--ServerApp.terminals_enabled=False",
            f"--LabApp.workspaces_dir={home / 'workspaces'}", f"--LabApp.user_settings_dir={home / 'settings'}"]
    if os.geteuid() == 0:  # containers and CI runners often run as root
        args.append("--allow-root")
    with open(log, "wb") as out:
        process = subprocess.Popen(args, cwd=root, env=env, stdout=out,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    lab = JupyterLab(process, port, token, root, log)
    try:
        lab.wait_ready(timeout)
    except BaseException:
        lab.stop()
        raise
    return lab


def make_driver(profile: Path, page_timeout: float = 120.0, extra_flags: tuple[str, ...] = ()) -> Chrome:
    """Headless Chromium (Debian's binary and chromedriver, never Selenium Manager) with a fresh
    profile in ``profile`` and ``extra_flags``; the browser console is kept for diagnostics."""
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*CHROME_FLAGS, *extra_flags, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(page_timeout)
    return driver


def save_diagnostics(driver: Chrome, folder: Path) -> list[Path]:
    """Screenshot, DOM and browser console of the current page into ``folder``; the paths written."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    steps = {"screenshot.png": lambda p: driver.save_screenshot(str(p)),
             "page.html": lambda p: p.write_text(driver.page_source),
             "console.log": lambda p: p.write_text("\n".join(str(e) for e in driver.get_log("browser")))}
    for name, save in steps.items():
        try:
            save(folder / name)
            paths.append(folder / name)
        except Exception as exc:  # noqa: BLE001 - diagnostics must not hide the original failure
            print(f"could not save {name}: {exc}")
    return paths


@contextlib.contextmanager
def diagnose_failure(driver: Chrome, lab: JupyterLab, folder: Path) -> Iterator[None]:
    """On any exception inside: save screenshot, DOM and console to ``folder``, print their paths
    and the JupyterLab log tail, then re-raise."""
    try:
        yield
    except BaseException:
        paths = save_diagnostics(driver, folder)
        print("browser test failed; saved:", *map(str, paths), sep="\n  ")
        print(f"JupyterLab log ({lab.log}), last lines:\n{lab.log_tail()}")
        raise
