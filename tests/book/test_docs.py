"""The repository's text, without building anything (fast): no merge-conflict marker and no path
of a developer's machine in any tracked text file, the README within 200 lines, every relative
link of the README and the pages of docs/ pointing at a file (and heading) that exists, and every
dotted ``fapm_lib`` name in the pages, the notebooks, the docstrings and the comments resolving."""
from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import io
import json
import re
import shutil
import subprocess
import tokenize
from pathlib import Path

import pytest

from tests.book_support import MACHINE_PATH
from tests.helpers import REPO

#: The Markdown pages whose links are checked: the front page, the book pages, the book's API page.
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), REPO / "data" / "README.md",
         REPO / "book" / "api.md"]
#: Markdown links and images: ``[text](target)`` / ``![alt](target)``.
LINK = re.compile(r"!?\[([^\]\n]*)\]\(([^)\s]+)\)")

# Built from pieces so that this file matches neither check itself.
CONFLICT = re.compile("^(" + "<" * 7 + " |" + "=" * 7 + "$|" + ">" * 7 + " )", re.M)
#: Tracked files allowed to hold a machine path, each with the reason. Empty today: the book's
#: build script replaces such paths in what it renders, and examples use relative paths
#: (``../shared/data/mvtec_ad_256``, ``runs/``) or ``$FAPM_SHARED_DATA``. A shell snippet that
#: writes to a temp folder on purpose would be listed here, with its reason.
MACHINE_PATH_EXEMPT: dict[str, str] = {}


def tracked_text_files() -> dict[str, str]:
    """Every file git tracks (as in the index) that decodes as UTF-8 text without NUL bytes:
    path -> text. Skips when this is not a git checkout (a source archive)."""
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout: no tracked files to read")
    names = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    files = {}
    for name in filter(None, names.decode().split("\0")):
        path = REPO / name
        if not path.is_file():  # deleted in the working tree, not yet in the index
            continue
        data = path.read_bytes()
        if b"\0" in data[:8192]:
            continue
        try:
            files[name] = data.decode("utf-8")
        except UnicodeDecodeError:
            continue
    return files


def test_no_merge_conflict_marker_in_any_tracked_file() -> None:
    found = [f"{name}:{text.count(chr(10), 0, m.start()) + 1}: {m.group(0)!r}"
             for name, text in tracked_text_files().items() for m in CONFLICT.finditer(text)]
    assert not found, "merge-conflict markers:\n" + "\n".join(found)


def test_no_machine_path_in_any_tracked_file() -> None:
    found = [f"{name}:{text.count(chr(10), 0, m.start()) + 1}: "
             f"{text[text.rfind(chr(10), 0, m.start()) + 1:text.find(chr(10), m.start())].strip()[:120]}"
             for name, text in tracked_text_files().items() if name not in MACHINE_PATH_EXEMPT
             for m in MACHINE_PATH.finditer(text)]
    assert not found, "paths of a developer's machine (write them relative to the repository):\n" + "\n".join(found)


def test_machine_path_pattern_catches_what_it_should() -> None:
    for text in ("/" + "work/main/x", "/" + "root/.cache", "/" + "home/ada/repo", "/" + "tmp/out"):
        assert MACHINE_PATH.search(text), text
    for text in ("../shared/data/mvtec_ad_256", "runs/bottle", "$FAPM_SHARED_DATA", "/shared/mvtec"):
        assert not MACHINE_PATH.search(text), text
    assert CONFLICT.search("x\n" + "<" * 7 + " HEAD\n") and CONFLICT.search("=" * 7 + "\n")
    assert not CONFLICT.search("=" * 8 + "\n") and not CONFLICT.search("a " + ">" * 7 + " b")


def test_readme_is_at_most_200_lines() -> None:
    lines = (REPO / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines; move the details to a page of docs/"


def prose(text: str) -> str:
    """Markdown without fenced code blocks and inline code (links there are not links)."""
    text = re.sub(r"^(```|~~~).*?^\1", "", text, flags=re.M | re.S)
    return re.sub(r"`[^`\n]*`", "", text)


def github_slug(heading: str) -> str:
    """The anchor GitHub (and MkDocs, for headings of plain words) gives a heading."""
    text = re.sub(r"`|\*", "", heading.strip()).lower()
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = prose(path.read_text(encoding="utf-8"))
    return {github_slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*$", text, re.M)}


def links(page: Path) -> list[str]:
    return [m.group(2) for m in LINK.finditer(prose(page.read_text(encoding="utf-8")))]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_resolves(page: Path) -> None:
    broken = []
    for target in links(page):
        if re.match(r"[a-z][a-z0-9+.-]*:", target, re.I):
            continue  # https:, mailto:
        file, _, anchor = target.partition("#")
        path = (page.parent / file).resolve() if file else page
        if not path.exists():
            broken.append(f"{target}: no such file")
        elif anchor and path.suffix == ".md" and anchor not in anchors(path):
            broken.append(f"{target}: no heading #{anchor} in {path.name}")
        elif path.is_relative_to(REPO / "build"):
            broken.append(f"{target}: points into build/ (not in a fresh clone)")
    assert not broken, f"{page.relative_to(REPO)}: " + "; ".join(broken)


def test_readme_links_every_docs_page() -> None:
    readme = links(REPO / "README.md")
    missing = [p.name for p in sorted((REPO / "docs").glob("*.md")) if f"docs/{p.name}" not in readme]
    assert not missing, f"README.md does not link these pages of docs/: {missing}"


def test_module_paths_named_in_the_docs_exist() -> None:
    """Every ``fapm_lib/...`` path and ``tests/...py`` file the pages name exists in the tree."""
    missing = set()
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for name in re.findall(r"\b((?:fapm_lib|tests|tools)/[\w/]+(?:\.py)?/?)", text):
            if not (REPO / name).exists():
                missing.add(f"{page.relative_to(REPO)}: {name}")
    assert not missing, "paths that do not exist:\n" + "\n".join(sorted(missing))


# ---- dotted names --------------------------------------------------------------------------------
#: ``fapm_lib.<module>[.<name>...]`` as the pages, docstrings and comments write it (``:mod:``,
#: ``:func:`~...```, plain text): dotted identifiers, not a file name (``fapm_lib.egg-info``).
DOTTED = re.compile(r"\bfapm_lib(?:\.[A-Za-z_]\w*)+(?![\w-])")


def prose_and_notebook_texts() -> list[tuple[str, str]]:
    """(file, text) of the README, the pages of docs/ and book/, and every cell of the notebooks."""
    pages = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), *sorted((REPO / "book").glob("*.md"))]
    texts = [(str(page.relative_to(REPO)), page.read_text(encoding="utf-8")) for page in pages]
    for notebook in sorted((REPO / "notebooks").glob("*.ipynb")):
        cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
        for i, cell in enumerate(cells):
            source = cell["source"] if isinstance(cell["source"], str) else "".join(cell["source"])
            texts.append((f"{notebook.relative_to(REPO)} cell {i}", source))
    return texts


def docstrings_and_comments(path: Path) -> list[tuple[int, str]]:
    """(line, text) of every string literal (docstrings among them) and comment of a Python file."""
    tokens = tokenize.generate_tokens(io.StringIO(path.read_text(encoding="utf-8")).readline)
    return [(tok.start[0], tok.string) for tok in tokens if tok.type in (tokenize.STRING, tokenize.COMMENT)]


def dotted_names() -> dict[str, list[str]]:
    """Every dotted fapm_lib name -> where it is written (``file:line``)."""
    found: dict[str, list[str]] = {}
    for where, text in prose_and_notebook_texts():
        for match in DOTTED.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            found.setdefault(match.group(0), []).append(f"{where}:{line}" if ".ipynb" not in where else where)
    for folder in ("fapm_lib", "tests", "tools"):
        for path in sorted((REPO / folder).rglob("*.py")):
            for line, text in docstrings_and_comments(path):
                for match in DOTTED.finditer(text):
                    row = line + text.count("\n", 0, match.start())
                    found.setdefault(match.group(0), []).append(f"{path.relative_to(REPO)}:{row}")
    return found


def has_attribute(obj: object, name: str) -> bool:
    """``getattr`` on modules, classes and functions; for a class also its dataclass fields and its
    annotated attributes (fields without a default are not class attributes)."""
    if hasattr(obj, name):
        return True
    if isinstance(obj, type):
        if dataclasses.is_dataclass(obj) and name in {f.name for f in dataclasses.fields(obj)}:
            return True
        return any(name in getattr(klass, "__annotations__", {}) for klass in obj.__mro__)
    return False


def resolves(name: str) -> bool:
    """Import the longest module prefix of ``name``, then look the rest up attribute by attribute."""
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        module_name = ".".join(parts[:cut])
        if parts[cut - 1] == "__main__":  # importing it would run the command: found is enough
            return cut == len(parts) and importlib.util.find_spec(module_name) is not None
        try:
            obj = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name is not None and (error.name == module_name or module_name.startswith(error.name + ".")):
                continue  # no such module: a shorter prefix, the rest as attributes
            raise  # the module exists but needs something missing: not the name's fault
        for attribute in parts[cut:]:
            if not has_attribute(obj, attribute):
                return False
            obj = getattr(obj, attribute, None)
        return True
    return False


def test_dotted_name_resolution_follows_modules_then_attributes() -> None:
    assert resolves("fapm_lib.method.coreset.GreedyKCenter.extend")  # module, class, method
    assert resolves("fapm_lib.config.FAPMConfig.coreset_ratio")  # a dataclass field
    assert resolves("fapm_lib.method")  # a package alone
    assert resolves("fapm_lib.__main__")  # found, not run
    # (built from pieces so that the scan of this file does not find them)
    assert not resolves("fapm_lib" + ".method.no_such_module")
    assert not resolves("fapm_lib" + ".method.coreset.GreedyKCenter.no_such_method")
    text = "see :func:`~fapm_lib.method.coreset.far_regions` and fapm_lib.decisions, not fapm_lib.egg-info."
    assert DOTTED.findall(text) == ["fapm_lib.method.coreset.far_regions", "fapm_lib.decisions"]


def test_every_dotted_name_in_the_docs_docstrings_and_comments_resolves() -> None:
    """A module or function that moves leaves no stale dotted ``fapm_lib`` name behind: in README.md,
    docs/, book/, the notebooks (markdown and code), and the docstrings and comments of fapm_lib/,
    tests/ and tools/."""
    stale = sorted((name, places) for name, places in dotted_names().items() if not resolves(name))
    assert not stale, "dotted names that do not resolve:\n" + "\n".join(
        f"{name}: {', '.join(places)}" for name, places in stale)
