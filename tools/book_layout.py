"""Measure the built book's notebook pages as a reader sees them: headless Chromium at a given
window width (1280 px by default) opens every notebook page over a loopback server, with every
host name but the loopback's unresolvable (so a page that needs the network shows it), and
reports per page the content column, every figure's rendered against its natural width, the
code cells and text outputs that scroll sideways, the tables whose columns do not fit, the
widget outputs and what they rendered, and every resource the page loaded from elsewhere.

    python tools/book_layout.py                       # build/book/site -> build/book/layout/
    python tools/book_layout.py --width 1920 --no-screenshots

It writes ``layout.json`` and, unless ``--no-screenshots``, one full-page PNG per notebook page
into ``build/book/layout/``. ``tests/book/test_book_layout.py`` checks the same measurements.
"""
from __future__ import annotations

import argparse
import base64
import contextlib
import functools
import http.server
import json
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SITE = ROOT / "build" / "book" / "site"

#: Chromium resolves no host name but the loopback's: a page that loads anything from the
#: network shows it broken, as offline (the resources it tried are listed by the page itself).
OFFLINE_FLAG = "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1, EXCLUDE localhost"

#: Everything measured on one page. A code cell or text output "scrolls" when its content is
#: wider than its box; a table "clips" when its columns are wider than the box it scrolls in.
JS_LAYOUT = r"""
const cellOf = el => el.closest('.jp-Cell[id]');
const label = el => {
  const cell = cellOf(el);
  const prompt = cell && cell.querySelector('.jp-InputPrompt');
  return (prompt && prompt.innerText.trim()) || (cell && cell.id) || '?';
};
const box = el => el.getBoundingClientRect();
const article = document.querySelector('article') || document.body;
const right = box(article).right - parseFloat(getComputedStyle(article).paddingRight);
const figures = [...document.querySelectorAll('.jp-OutputArea-output img')].map(img => ({
  cell: label(img), natural: img.naturalWidth, rendered: Math.round(box(img).width),
  height: Math.round(box(img).height), complete: img.complete,
  ratio: img.naturalWidth ? +(box(img).width / img.naturalWidth).toFixed(3) : 0}));
const scrolls = sel => [...document.querySelectorAll(sel)]
  .filter(el => el.scrollWidth > el.clientWidth + 4 || box(el).right > right + 4)
  .map(el => ({cell: label(el), content: el.scrollWidth, box: el.clientWidth}));
const code = document.querySelectorAll('.jp-InputArea-editor pre').length;
const tables = [...document.querySelectorAll('.jupyter-wrapper table')].map(t => ({
  cell: label(t),
  content: Math.max(t.scrollWidth, Math.round(box(t).width + Math.max(0, box(t).right - right))),
  box: Math.min(t.clientWidth, Math.round(right - box(t).left)),
  columns: t.rows.length ? t.rows[0].cells.length : 0}));
const widgets = [...document.querySelectorAll('script[type="application/vnd.jupyter.widget-view+json"]')]
  .map(script => {
    const host = script.parentElement;
    const view = host.querySelector('.jupyter-widgets, .widget-container, .lm-Widget');
    const img = host.querySelector('img');
    return {cell: label(script), rendered: !!view,
            height: view ? Math.round(box(view).height) : 0,
            image: img ? {natural: img.naturalWidth, rendered: Math.round(box(img).width)} : null,
            text: view ? view.innerText.slice(0, 600) : ''};
  });
const origin = location.origin;
const external = performance.getEntriesByType('resource').map(e => e.name)
  .filter(name => !name.startsWith(origin) && !name.startsWith('data:') && !name.startsWith('blob:'));
const tagged = [...document.querySelectorAll('script[src], link[href][rel~="stylesheet"], img[src], iframe[src]')]
  .map(el => el.getAttribute('src') || el.getAttribute('href'))
  .filter(url => /^(https?:)?\/\//i.test(url));
const outputArea = document.querySelector('.jp-OutputArea-output');
const codeBox = document.querySelector('.jp-InputArea-editor pre');
return {window: innerWidth, column: Math.round(box(article).width),
        output_width: outputArea ? Math.round(box(outputArea).width) : 0,
        code_width: codeBox ? codeBox.clientWidth : 0,
        page_scrolls: document.documentElement.scrollWidth > document.documentElement.clientWidth,
        figures, code_cells: code, code_scrolling: scrolls('.jp-InputArea-editor pre'),
        output_scrolling: scrolls('.jp-OutputArea-output pre'), tables,
        tables_clipped: tables.filter(t => t.content > t.box + 4), widgets,
        external: [...new Set([...external, ...tagged])], height: document.documentElement.scrollHeight};
"""


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        pass


@contextlib.contextmanager
def serve(site: Path) -> Iterator[str]:
    """``site`` served on a free loopback port; yields its base URL."""
    handler = functools.partial(_QuietHandler, directory=str(site))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def wait_for_widgets(driver, timeout: float = 20.0) -> None:
    """Until every widget output of the page has rendered (or ``timeout`` seconds passed)."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    js = """return [...document.querySelectorAll('script[type="application/vnd.jupyter.widget-view+json"]')]
              .every(s => s.parentElement.querySelector('.jupyter-widgets, .widget-container, .lm-Widget'));"""
    with contextlib.suppress(TimeoutException):
        WebDriverWait(driver, timeout, poll_frequency=0.2).until(lambda d: d.execute_script(js))


def measure_page(driver, url: str) -> dict:
    """Open ``url``, scroll it through (no lazy image left unloaded), wait for its widgets and
    return :data:`JS_LAYOUT`'s measurements."""
    driver.get(url)
    driver.execute_script("window.scrollTo(0, document.body.scrollHeight);")
    wait_for_widgets(driver)
    driver.execute_script("window.scrollTo(0, 0);")
    return driver.execute_script(JS_LAYOUT)


def full_page_png(driver, path: Path, width: int) -> None:
    """The whole page, ``width`` px wide, as one PNG (Chrome DevTools' capture beyond the viewport)."""
    height = driver.execute_script("return document.documentElement.scrollHeight;")
    shot = driver.execute_cdp_cmd("Page.captureScreenshot", {
        "format": "png", "captureBeyondViewport": True,
        "clip": {"x": 0, "y": 0, "width": width, "height": height, "scale": 1}})
    path.write_bytes(base64.b64decode(shot["data"]))


def summary_line(stem: str, page: dict) -> str:
    """One line per page: column, worst figure ratio, scrolling code cells, clipped tables, widgets."""
    ratios = [f["ratio"] for f in page["figures"]]
    worst = min(ratios) if ratios else None
    widgets = [("ok" if w["rendered"] and w["height"] > 0 else "EMPTY") for w in page["widgets"]]
    return (f"{stem:24s} column {page['column']:4d} px | figures {len(ratios):2d}, smallest ratio "
            f"{'-' if worst is None else f'{worst:.2f}'} | code cells scrolling {len(page['code_scrolling'])}/"
            f"{page['code_cells']} | outputs scrolling {len(page['output_scrolling'])} | tables clipped "
            f"{len(page['tables_clipped'])}/{len(page['tables'])} | widgets {','.join(widgets) or '-'} | "
            f"external {len(page['external'])}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--site", default=str(DEFAULT_SITE), help="the built site (default build/book/site)")
    parser.add_argument("--width", type=int, default=1280, help="window width, px (default 1280)")
    parser.add_argument("--output", help="folder for layout.json and the screenshots (default <site>/../layout)")
    parser.add_argument("--no-screenshots", action="store_true")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from tests.browser_support import make_driver

    site = Path(args.site).resolve()
    out = Path(args.output).resolve() if args.output else site.parent / "layout"
    out.mkdir(parents=True, exist_ok=True)
    pages = sorted((site / "notebooks").glob("[0-9][0-9]_*.html"))
    profile = tempfile.TemporaryDirectory(prefix="book-layout-")
    driver = make_driver(Path(profile.name), page_timeout=60, extra_flags=(OFFLINE_FLAG,))
    report = {}
    try:
        driver.set_window_size(args.width, 1000)
        with serve(site) as base:
            for page in pages:
                report[page.stem] = measure_page(driver, f"{base}/notebooks/{page.name}")
                print(summary_line(page.stem, report[page.stem]), flush=True)
                if not args.no_screenshots:
                    full_page_png(driver, out / f"{page.stem}_{args.width}.png", args.width)
    finally:
        driver.quit()
        profile.cleanup()
    (out / "layout.json").write_text(json.dumps({"width": args.width, "pages": report}, indent=1), encoding="utf-8")
    print(f"[layout] {out / 'layout.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
