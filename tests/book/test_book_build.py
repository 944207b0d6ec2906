"""The book's build script without building (fast): the README links every numbered notebook and
the home page keeps those links (they open the rendered notebooks), links are rewritten for the
site, machine paths are scrubbed from executed notebooks, the build folder and the render cache
stay out of the working tree, the CLI page holds every subcommand's help, and the settings ask
for nothing from the network."""
from __future__ import annotations

import importlib.util
import os
import re
import tempfile
from pathlib import Path

import nbformat
import pytest
import yaml

from tests.helpers import REPO

ROOT = REPO
spec = importlib.util.spec_from_file_location("build_book", ROOT / "tools" / "build_book.py")
build_book = importlib.util.module_from_spec(spec)
spec.loader.exec_module(build_book)


def test_readme_links_every_notebook_and_the_home_page_keeps_the_links() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    home = build_book.book_links(readme, "README.md")
    for path in build_book.numbered_notebooks():
        assert f"(notebooks/{path.name})" in readme, f"README: no link to {path.name}"
        assert f"(notebooks/{path.name})" in home  # in the site: the executed notebook's page
    assert "build/book/site" not in "".join(re.findall(r"\]\(([^)]*)\)", readme))  # no link into build/


def test_book_links_mirror_the_repository() -> None:
    text = ("[m](method.md#the-steps) [r](../README.md) [n](../notebooks/02_patch_layer_memory.ipynb) "
            "[d](../data/README.md) [src](../fapm_lib/method/fapm_model.py) [t](../tests/method/) "
            "[w](https://example.org/a.md) [a](#defaults) ![g](../assets/vial.gif)")
    page = build_book.book_links(text, "docs/usage.md")
    assert "[m](method.md#the-steps)" in page and "[r](../index.md)" in page
    assert "[n](../notebooks/02_patch_layer_memory.ipynb)" in page and "[d](../data/README.md)" in page
    assert " src " in page and " t " in page  # files the site does not hold: plain text
    assert "[w](https://example.org/a.md)" in page and "[a](#defaults)" in page and "![g](../assets/vial.gif)" in page
    home = build_book.book_links("[u](docs/usage.md) [c](configs/mvtec/bottle.yaml) ![v](assets/vial.gif)", "README.md")
    assert home == "[u](docs/usage.md) c ![v](assets/vial.gif)"
    api = build_book.book_links("[a](../docs/ARCHITECTURE.md)", "book/api.md")
    assert api == "[a](docs/ARCHITECTURE.md)"


def test_every_notebook_has_book_settings_that_it_declares_with_relative_paths(tmp_path: Path) -> None:
    for path in build_book.numbered_notebooks():
        params = build_book.notebook_parameters(path.stem, build_book.DEFAULT_BUILD)
        cell = next(c for c in nbformat.read(path, as_version=4).cells if "parameters" in c.metadata.get("tags", []))
        declared = set(re.findall(r"^(\w+)\s*=", cell.source, re.M))
        assert set(params) <= declared, f"{path.name}: book parameters {set(params) - declared} are not declared"
        for name, value in params.items():
            if isinstance(value, str):
                assert not os.path.isabs(value), f"{path.name}: {name}={value!r} would print a machine path"
                assert (build_book.NOTEBOOKS / value).resolve().is_relative_to(build_book.DEFAULT_BUILD)


@pytest.fixture(params=["here", "in_the_temp_folder", "in_the_home_folder"])
def repository(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The repository the scrubber is told it runs in: this checkout, or a clone directly in the
    system's temp folder or in the home folder, whose parent is then that folder (still ``..``)."""
    if request.param == "here":
        return ROOT
    parent = Path(tempfile.gettempdir()) if request.param == "in_the_temp_folder" else Path.home()
    clone = parent / "fapm-clone"
    monkeypatch.setattr(build_book, "ROOT", clone)
    return clone


def test_scrub_replaces_machine_paths_but_not_images(tmp_path: Path, repository: Path) -> None:
    build = tmp_path / "book"
    pairs = build_book.machine_paths(build)
    repo = str(repository)
    assert build_book.scrub_text(f"data root: {repo}/data/builtin", pairs) == "data root: data/builtin"
    assert build_book.scrub_text(f"'{repo}'", pairs) == "'.'"
    assert build_book.scrub_text(f"{build}/outputs/m.onnx", pairs) == "<book build>/outputs/m.onnx"
    assert build_book.scrub_text(f"{repository.parent}/shared/data", pairs) == "../shared/data"
    nb = nbformat.v4.new_notebook()
    code = nbformat.v4.new_code_cell("print(root)")
    image = "iVBORw0KGgo" + repo  # a stand-in for base64 data: never touched
    code.outputs = [nbformat.v4.new_output("stream", name="stdout", text=f"{repo}/data/builtin\n"),
                    nbformat.v4.new_output("display_data", data={"text/plain": f"{repo}/x", "image/png": image}),
                    nbformat.v4.new_output("error", ename="E", evalue=repo, traceback=[f"File {repo}/a.py"])]
    nb.cells = [code]
    nb.metadata["papermill"] = {"input_path": f"{repo}/notebooks/x.ipynb"}
    path = tmp_path / "x.ipynb"
    nbformat.write(nb, path)
    assert build_book.scrub_notebook(path, build) == 5
    out = nbformat.read(path, as_version=4)
    outputs = out.cells[0].outputs
    assert outputs[0].text == "data/builtin\n" and outputs[1].data["text/plain"] == "x"
    assert outputs[1].data["image/png"] == image
    assert outputs[2].evalue == "." and outputs[2].traceback == ["File a.py"]
    assert out.metadata["papermill"]["input_path"] == "notebooks/x.ipynb"


def test_output_folder_is_relative_to_the_repository_wherever_the_command_runs(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert build_book.resolve_output(None) == ROOT / "build" / "book"
    assert build_book.resolve_output("build/book") == ROOT / "build" / "book"
    assert build_book.resolve_output(str(tmp_path / "b")) == tmp_path / "b"


def test_config_keeps_the_render_cache_in_the_build_folder_and_lists_every_page(tmp_path: Path) -> None:
    pages = [p.relative_to(ROOT).as_posix() for p in build_book.doc_pages()]
    config = build_book.book_config(tmp_path, build_book.numbered_notebooks(), pages)
    jupyter = next(p["mkdocs-jupyter"] for p in config["plugins"] if isinstance(p, dict) and "mkdocs-jupyter" in p)
    assert Path(jupyter["cache_dir"]).is_relative_to(tmp_path)
    assert config["docs_dir"] == str(tmp_path / "docs") and config["site_dir"] == str(tmp_path / "site")
    nav = yaml.safe_dump(config["nav"])
    for page in sorted((ROOT / "docs").glob("*.md")):
        assert f"docs/{page.name}" in nav, f"{page.name} is not in the book's nav"
    assert "extra.css" in config["extra_css"] and (ROOT / "book" / "extra.css").is_file()
    assert config["hooks"] and all(Path(hook).is_absolute() and Path(hook).is_file() for hook in config["hooks"])


def test_cli_page_holds_every_subcommand() -> None:
    page = build_book.cli_page()
    from fapm_lib.cli.main import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction").choices
    for name in commands:
        assert f"## fapm {name}" in page and f"usage: fapm {name}" in page


def test_book_settings_need_no_network_and_fail_on_broken_links() -> None:
    config = yaml.safe_load((ROOT / "book" / "mkdocs.yml").read_text(encoding="utf-8"))
    assert config["theme"]["font"] is False  # no Google Fonts
    plugins = [p if isinstance(p, str) else next(iter(p)) for p in config["plugins"]]
    assert "social" not in plugins and "privacy" not in plugins
    jupyter = next(p["mkdocs-jupyter"] for p in config["plugins"] if isinstance(p, dict) and "mkdocs-jupyter" in p)
    assert jupyter["execute"] is False  # executed by papermill with the book's parameters
    python = next(p["mkdocstrings"] for p in config["plugins"] if isinstance(p, dict) and "mkdocstrings" in p)
    assert "inventories" not in python["handlers"]["python"]  # no remote objects.inv
    validation = config.get("validation", {})
    assert validation.get("anchors") == "warn" and validation.get("unrecognized_links") == "warn"


@pytest.mark.parametrize("ignored", [".cache/", "build/"])
def test_what_the_build_writes_is_ignored_by_git(ignored: str) -> None:
    lines = (ROOT / ".gitignore").read_text(encoding="utf-8").splitlines()
    assert ignored in lines or "/" + ignored in lines


def _hooks():
    spec = importlib.util.spec_from_file_location("book_hooks", ROOT / "book" / "hooks.py")
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)
    return hooks


class _Page:
    """What the hooks read of an MkDocs page."""

    def __init__(self, src_uri: str, url: str) -> None:
        self.file = type("File", (), {"src_uri": src_uri})()
        self.url, self.meta, self.toc = url, {}, None


NOTEBOOK_PAGE = """<html><head><script>var widgetRendererSrc = 'https://unpkg.com/@jupyter-widgets/html-manager@*/dist/embed-amd.js';
var old = 'https://unpkg.com/@jupyter-js-widgets@*/dist/embed.js';</script>
<!-- Load mathjax -->
<script src=""> </script>
<script type="text/x-mathjax-config">init_mathjax = function() {};</script>
<!-- End of mathjax configuration --><script type="module">
  document.addEventListener("DOMContentLoaded", async () => {
    const mermaid = (await import("https://cdnjs.cloudflare.com/ajax/libs/mermaid/11.10.0/mermaid.esm.min.mjs")).default;
  });
</script></head><body dir="ltr"><nav class="md-nav md-nav--primary" aria-label="Navigation"></nav>
<a href="https://example.org/paper">a link stays</a> <a href="../docs/serve.md#api">Serve</a>
<a href="04_x.ipynb">next</a> <a href="https://example.org/x.md">remote</a></body></html>"""


def test_notebook_pages_load_the_books_widget_renderer_and_nothing_from_the_network() -> None:
    hooks = _hooks()
    config = {"extra": {"widget_renderer": build_book.WIDGET_RENDERER}}
    page = hooks.on_post_page(NOTEBOOK_PAGE, _Page("notebooks/03_x.ipynb", "notebooks/03_x.html"), config)
    assert "unpkg.com" not in page and "mermaid" not in page and "mathjax" not in page.lower()
    assert f"'../{build_book.WIDGET_RENDERER}'" in page
    assert '<body data-fapm-page="notebook" dir="ltr">' in page and "md-nav--integrated" in page
    assert hooks.remote_references(page) == [] and "https://example.org/paper" in page  # links are not loads
    # the notebook's links to the repository's pages open the site's pages; remote ones stay
    assert all(link in page for link in ('href="../docs/serve.html#api"', 'href="04_x.html"',
                                         'href="https://example.org/x.md"'))
    with pytest.raises(Exception, match="extra.widget_renderer"):
        hooks.on_post_page(NOTEBOOK_PAGE, _Page("notebooks/03_x.ipynb", "notebooks/03_x.html"), {"extra": {}})
    remote = '<html><link rel="stylesheet" href="https://cdn.example/x.css"><script src="//cdn.example/y.js"></script>'
    with pytest.raises(Exception, match="loads from the network: //cdn.example/y.js, https://cdn.example/x.css"):
        hooks.on_post_page(remote, _Page("docs/usage.md", "docs/usage.html"), config)


def test_notebook_toc_entries_keep_their_inline_code_and_the_right_toc_is_hidden() -> None:
    hooks = _hooks()
    entry = type("Entry", (), {})
    first, second = entry(), entry()
    first.level, first.id, first.title, first.children = 2, "loading-with", "Loading with", []
    second.level, second.id, second.title, second.children = 2, "one-set", ": one set of vectors per region", []
    page = _Page("notebooks/01_x.ipynb", "notebooks/01_x.html")
    page.toc = [first, second]
    html = ('<h2 id="loading-with-mvtecdataset">Loading with <code>MVTecDataset</code><a class="anchor-link" '
            'href="#loading-with-mvtecdataset">¶</a></h2><h2 id="split_regions-one-set">'
            '<code>split_regions</code>: one set &amp; more<a class="anchor-link" href="#x">¶</a></h2>')
    hooks.on_page_content(html, page, {}, None)
    assert (first.id, first.title) == ("loading-with-mvtecdataset", "Loading with MVTecDataset")
    assert (second.id, second.title) == ("split_regions-one-set", "split_regions: one set &amp; more")
    assert page.meta["hide"] == ["toc"]


def test_the_widget_renderer_is_pinned_checked_and_refused_loudly_without_npm(tmp_path: Path, monkeypatch) -> None:
    assert re.fullmatch(r"@jupyter-widgets/html-manager@\d+\.\d+\.\d+", build_book.HTML_MANAGER)
    assert build_book.HTML_MANAGER_INTEGRITY.startswith("sha512-")
    config = build_book.book_config(tmp_path, build_book.numbered_notebooks(), [])
    assert config["extra"]["widget_renderer"] == build_book.WIDGET_RENDERER
    data = tmp_path / "x.bin"
    data.write_bytes(b"fapm")
    assert build_book.integrity(data) == ("sha512-" + __import__("base64").b64encode(
        __import__("hashlib").sha512(b"fapm").digest()).decode())
    monkeypatch.setattr(build_book.shutil, "which", lambda name: None)
    with pytest.raises(SystemExit, match=r"^build_book: npm not found: .*html-manager@") as refused:
        build_book.widget_renderer(tmp_path / "build", tmp_path / "docs")
    assert "\n" not in str(refused.value)  # one line


def test_the_books_kernels_talk_over_ipc_and_are_not_interrupted_before_shutdown() -> None:
    manager = build_book.book_kernel_manager()
    first, second = manager(), manager()
    assert first.transport == "ipc" and os.path.isabs(first.ip)
    assert first.ip != second.ip  # kernels side by side never share their sockets
    assert "_async_interrupt_kernel" in vars(manager)
