"""Sphinx extension: the site's navigation and the build's closing counts.

The sidebar lists every page with no list to maintain: ``index.md`` gets a hidden toctree
of the tutorials (``tutorials/*.md``), the guides (the other ``*.md`` pages) and the API
reference, each group in the order ``index.md`` first links its pages, then the pages it
does not link, by name. ``index.md`` itself stays plain Markdown, readable as it is.
At the end the build logs how many pages it wrote and how many code cells it executed.
"""

from __future__ import annotations

import re

from docutils import nodes
from sphinx.application import Sphinx
from sphinx.util import logging

logger = logging.getLogger(__name__)
GROUPS = (("Tutorials", "tutorials/"), ("Guides", ""), ("Reference", "api/"))


def ordered(docnames: list[str], index_text: str) -> list[str]:
    """Docnames in the order index.md first links them, then the unlinked ones by name."""
    linked = [m.group(1) for m in re.finditer(r"\]\(([\w/.-]+?)\.md\b", index_text)]
    first = {name: i for i, name in reversed(list(enumerate(linked)))}
    return sorted(docnames, key=lambda name: (first.get(name, len(first)), name))


def toctrees(found: set[str], index_text: str) -> str:
    """The hidden MyST toctrees appended to the home page."""
    text = []
    for caption, prefix in GROUPS:
        if prefix == "api/":
            pages = ["api/index"] if "api/index" in found else []
        elif prefix:
            pages = [d for d in found if d.startswith(prefix) and d.count("/") == 1]
        else:
            pages = [d for d in found if "/" not in d and d != "index"]
        if pages:
            text += ["", "```{toctree}", ":hidden:", f":caption: {caption}", ""]
            text += ordered(pages, index_text) + ["```", ""]
    return "\n".join(text)


def add_toctrees(app: Sphinx, docname: str, source: list[str]) -> None:
    """source-read: give the home page its (hidden) toctrees."""
    if docname == app.config.root_doc:
        source[0] += toctrees(set(app.env.found_docs), source[0])


def count_cells(app: Sphinx, doctree: nodes.document) -> None:
    """doctree-read: note how many code cells an executed page ran."""
    cells = [node for node in doctree.findall(nodes.container)
             if node.get("nb_element") == "cell_code"]
    if cells:
        app.env.fnlearn_cells = {**getattr(app.env, "fnlearn_cells", {}),
                                 app.env.docname: len(cells)}


def purge(app: Sphinx, env, docname: str) -> None:
    """env-purge-doc: forget a page's count before it is read again."""
    getattr(env, "fnlearn_cells", {}).pop(docname, None)


def report(app: Sphinx, exception) -> None:
    """build-finished: pages written, executed pages and cells."""
    if exception is not None:
        return
    cells = getattr(app.env, "fnlearn_cells", {})
    logger.info("fnlearn docs: %d pages, %d executed pages with %d code cells run",
                len(app.env.found_docs), len(cells), sum(cells.values()))


def setup(app: Sphinx) -> dict:
    """Register the toctree writer and the counters."""
    app.connect("source-read", add_toctrees)
    app.connect("doctree-read", count_cells)
    app.connect("env-purge-doc", purge)
    app.connect("build-finished", report)
    return {"parallel_read_safe": False, "parallel_write_safe": True}
