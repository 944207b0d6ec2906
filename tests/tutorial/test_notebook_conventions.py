"""What the book needs of the notebooks' sources (no execution): code lines that fit the book's
code cells (88 characters; at most ten longer ones in all), the paper's protocol (resize 256,
centre crop 224) declared and passed to every configuration in notebooks 1 to 4 and 6 while 5 and
7 use the library's defaults, and one default image score for the whole tutorial."""
from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest

from tests.helpers import REPO
from tests.tutorial.test_notebooks import parameters_of

NOTEBOOKS = sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))
#: The book's code cells show 88 characters without scrolling at a 1280 px window.
LINE = 88
PAPER_PROTOCOL = ("01", "02", "03", "04", "06")


def code_lines(path: Path) -> list[str]:
    nb = nbformat.read(path, as_version=4)
    return [line for cell in nb.cells if cell.cell_type == "code" for line in cell.source.splitlines()]


def test_code_lines_fit_the_books_code_cells() -> None:
    long = [f"{path.name}: {len(line)}: {line.strip()[:60]}" for path in NOTEBOOKS for line in code_lines(path)
            if len(line) > LINE]
    assert len(long) <= 10, f"{len(long)} code lines over {LINE} characters:\n" + "\n".join(long)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_the_paper_protocol_where_the_notebook_follows_it(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    params = parameters_of(nb)
    source = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    configs = re.findall(r"\b(?:FAPMConfig|Transform)\((.*?)\)", source, re.S)
    if path.name[:2] in PAPER_PROTOCOL:
        assert (params.get("resize"), params.get("crop_size")) == (256, 224), f"{path.name}: {params}"
        assert configs, f"{path.name}: builds no FAPMConfig"
        for arguments in configs:
            assert "resize=resize" in arguments and "crop_size=crop_size" in arguments, \
                f"{path.name}: FAPMConfig({arguments.strip()}) without the protocol's resize and crop_size"
        assert "paper's protocol" in nb.cells[0].source, f"{path.name}: the text does not say so"
    else:
        assert "resize" not in params and "crop_size" not in params, f"{path.name} follows the library's defaults"
        assert "library's default" in nb.cells[0].source, f"{path.name}: the text does not say so"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_one_default_image_score(path: Path) -> None:
    params = parameters_of(nbformat.read(path, as_version=4))
    assert params.get("image_score", "max") == "max", f"{path.name}: image_score={params['image_score']!r}"
