"""MkDocs hooks of the book (``hooks:`` in book/mkdocs.yml; tools/build_book.py passes this file's
absolute path).

- A notebook page's table of contents points at its headings' real ids and keeps their inline
  code ("Loading with MVTecDataset", not "Loading with").
- Notebook pages are wide: no right-hand table of contents (it moves into the left navigation,
  under the page), the content takes the window's width (``book/extra.css``, ``fapm-notebook``).
- A notebook's relative links to the repository's pages (``../docs/serve.md``, another
  ``.ipynb``) open their rendered pages in the site (``.html``), as the Markdown pages' links do.
- Nothing is loaded from the network: the widget renderer comes from the book itself
  (``extra.widget_renderer``, fetched from the npm registry by the build), the unused mermaid and
  MathJax loaders of the notebook template are dropped, and a page that still refers to a
  remote script or style fails the build.
"""
from __future__ import annotations

import html
import posixpath
import re

from mkdocs.exceptions import PluginError

#: A heading with its id and its inner HTML, as nbconvert renders a notebook's Markdown headings.
HEADING = re.compile(r"""<h([1-6])\b[^>]*?\bid=["']([^"']+)["'][^>]*>(.*?)</h\1>""", re.I | re.S)
#: The pilcrow link nbconvert appends to every heading.
ANCHOR_LINK = re.compile(r"""<a class=["']anchor-link["'].*?</a>""", re.S)
#: The notebook template's widget renderer URLs (a CDN: unpkg.com), replaced by the book's copy.
WIDGET_CDN = re.compile(r"https://unpkg\.com/@jupyter-(?:widgets/html-manager|js-widgets)@[^'\"]*?"
                        r"/dist/embed(?:-amd)?\.js")
#: The notebook template's mermaid loader (a module script importing from cdnjs): no notebook
#: has a mermaid diagram.
MERMAID = re.compile(r"""<script type="module">(?:(?!</script>).)*?mermaid(?:(?!</script>).)*?</script>""",
                     re.S)
#: MathJax: the template's empty loader (``src=""``) and its configuration; no notebook has maths.
MATHJAX = re.compile(r"""<!-- Load mathjax -->.*?<!-- End of mathjax configuration -->""", re.S)
#: What a page must not load from elsewhere: scripts, style sheets, module imports.
REMOTE = re.compile(r"""<script\b[^>]*\bsrc=["']((?:https?:)?//[^"']+)"""
                    r"""|<link\b[^>]*\bhref=["']((?:https?:)?//[^"']+)["'][^>]*>"""
                    r"""|import\(\s*["']((?:https?:)?//[^"']+)"""
                    r"""|@import\s+(?:url\()?["']?((?:https?:)?//[^"')]+)""", re.I)
#: A relative link of a notebook's Markdown to a page of the repository: ``.md`` or ``.ipynb``,
#: with an optional anchor (mkdocs-jupyter leaves them as written).
PAGE_LINK = re.compile(r"""(<a\b[^>]*?\bhref=["'])(?![a-z][a-z0-9+.-]*:|/|#)([^"'#?]+)\.(?:md|ipynb)(?=["'#])""",
                       re.I)


def _entries(items):
    for item in items:
        yield item
        yield from _entries(item.children)


def _is_notebook(page) -> bool:
    return page.file.src_uri.endswith(".ipynb")


def heading_text(inner_html: str) -> str:
    """A heading's text for the table of contents: its inner HTML without the anchor link and
    the tags, inline code kept as text, HTML-escaped."""
    text = re.sub(r"<[^>]+>", "", ANCHOR_LINK.sub("", inner_html))
    return html.escape(html.unescape(text).strip(), quote=False)


def on_page_content(html_text, page, config, files):
    """Point a notebook page's table of contents at its headings' real ids, with their full
    titles, and hide the right-hand table of contents of notebook pages.

    mkdocs-jupyter builds the table of contents from the notebook's Markdown with the headings'
    inline code left out ("Loading with `MVTecDataset`" -> ``#loading-with``, title "Loading
    with"), while nbconvert gives the heading itself the id with the code
    (``loading-with-mvtecdataset``). The entries and the headings come in the same order: each
    entry takes the id and the text of the next heading of its level."""
    if not _is_notebook(page):
        return html_text
    page.meta["hide"] = sorted(set(page.meta.get("hide", [])) | {"toc"})
    if page.toc is None:
        return html_text
    headings = [(int(level), anchor, inner) for level, anchor, inner in HEADING.findall(html_text)]
    position = 0
    for entry in _entries(page.toc):
        while position < len(headings) and headings[position][0] != entry.level:
            position += 1
        if position == len(headings):
            break
        _, anchor, inner = headings[position]
        entry.id = anchor
        entry.title = heading_text(inner) or entry.title
        position += 1
    return html_text


def remote_references(html_text: str) -> list[str]:
    """The remote scripts, style sheets and module imports an HTML page refers to."""
    return sorted({next(url for url in match.groups() if url) for match in REMOTE.finditer(html_text)})


def site_page_links(html_text: str) -> str:
    """A notebook page's relative links to ``.md`` / ``.ipynb`` pages pointed at their ``.html``
    (``../docs/serve.md#api`` -> ``../docs/serve.html#api``); the book mirrors the repository's layout."""
    return PAGE_LINK.sub(lambda m: f"{m.group(1)}{m.group(2)}.html", html_text)


def on_post_page(output, page, config):
    """Notebook pages: links to the site's pages, the widget renderer from the book, no mermaid
    or MathJax loader, the wide layout's marks. Every page: fail on a remaining remote script or
    style sheet."""
    if _is_notebook(page):
        output = site_page_links(output)
        renderer = config["extra"].get("widget_renderer")
        if WIDGET_CDN.search(output):
            if not renderer:
                raise PluginError(f"{page.file.src_uri}: widget output, but no extra.widget_renderer "
                                  "(tools/build_book.py sets it)")
            local = posixpath.relpath(renderer, posixpath.dirname(page.url) or ".")
            output = WIDGET_CDN.sub(local, output)
        output = MERMAID.sub("", output)
        output = MATHJAX.sub("", output)
        output = re.sub(r"<body\b", '<body data-fapm-page="notebook"', output, count=1)
        output = output.replace('class="md-nav md-nav--primary"',
                                'class="md-nav md-nav--primary md-nav--integrated"', 1)
    remote = remote_references(output)
    if remote:
        raise PluginError(f"{page.file.src_uri} loads from the network: {', '.join(remote)} "
                          "(the book must work offline)")
    return output
