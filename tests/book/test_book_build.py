"""The book's build script without building (fast): the README links every numbered notebook to
its book page, the home page turns those links into the rendered notebooks, the CLI page holds
every subcommand's help, and the settings ask for nothing from the network."""
from __future__ import annotations

import importlib.util
import re

import yaml
from tests.helpers import REPO

ROOT = REPO
spec = importlib.util.spec_from_file_location("build_book", ROOT / "tools" / "build_book.py")
build_book = importlib.util.module_from_spec(spec)
spec.loader.exec_module(build_book)


def test_readme_links_every_notebook_to_its_book_page() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    home = build_book.readme_page()
    for path in build_book.numbered_notebooks():
        assert f"(build/book/site/notebooks/{path.stem}.html)" in readme, f"README: no book link for {path.name}"
        assert f"(notebooks/{path.stem}.ipynb)" in home
    assert "build/book/site/notebooks/" not in home


def test_every_notebook_has_book_settings_that_it_declares() -> None:
    import nbformat

    for path in build_book.numbered_notebooks():
        params = build_book.BOOK_PARAMETERS.get(path.stem, {})
        cell = next(c for c in nbformat.read(path, as_version=4).cells if "parameters" in c.metadata.get("tags", []))
        declared = set(re.findall(r"^(\w+)\s*=", cell.source, re.M))
        assert set(params) <= declared, f"{path.name}: book parameters {set(params) - declared} are not declared"


def test_cli_page_holds_every_subcommand() -> None:
    page = build_book.cli_page()
    from fapm_lib.cli.main import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction").choices
    for name in commands:
        assert f"## fapm {name}" in page and f"usage: fapm {name}" in page


def test_book_settings_need_no_network() -> None:
    config = yaml.safe_load((ROOT / "book" / "mkdocs.yml").read_text(encoding="utf-8"))
    assert config["theme"]["font"] is False  # no Google Fonts
    plugins = [p if isinstance(p, str) else next(iter(p)) for p in config["plugins"]]
    assert "social" not in plugins and "privacy" not in plugins
    jupyter = next(p["mkdocs-jupyter"] for p in config["plugins"] if isinstance(p, dict) and "mkdocs-jupyter" in p)
    assert jupyter["execute"] is False  # executed by papermill with the book's parameters
    python = next(p["mkdocstrings"] for p in config["plugins"] if isinstance(p, dict) and "mkdocstrings" in p)
    assert "inventories" not in python["handlers"]["python"]  # no remote objects.inv
