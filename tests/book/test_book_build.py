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
