"""Sphinx extension: the API reference, one page per public module, written at each build.

Every public name (``public_api.walk``) is documented once, on the page of the public module
that defines it (``fnlearn.callbacks.ModelCheckpoint``, not its shortcut
``fnlearn.ModelCheckpoint``): signature, docstring (Google style: Args, Returns, Raises) and a
link to its source (``sphinx.ext.viewcode``). Each page opens with a table of all the
module's public names, shortcuts included, linking to where each is documented. The pages
are generated under ``api/`` (ignored by git) before Sphinx reads the sources, so a new public
name or module needs no edit here; after the build, a public name the reference lacks is
a warning, hence an error in the strict build.
"""

from __future__ import annotations

import collections
import shutil
from pathlib import Path

import public_api
from sphinx.application import Sphinx
from sphinx.util import logging

logger = logging.getLogger(__name__)
FOLDER = "api"


def identity(entry: public_api.Name):
    """What makes two public names the same object: the object, or for a constant (whose
    value may equal another's) the module whose ``#:`` comment documents it, and its name."""
    if entry.kind == "data":
        return ("data", home_module(entry), entry.name)
    return id(entry.obj)


def canonical_names(names: list[public_api.Name]) -> dict:
    """``{identity: qualified name}``: where each public object is documented.

    An object exposed by several public modules is documented in the one whose name is
    the longest prefix of the module that defines it (the first in walk order if none).
    The map also holds ``(module, name)`` of every public constant, for lookups by name.
    """
    by_object: dict = collections.defaultdict(list)
    for entry in names:
        if entry.kind != "module":
            by_object[identity(entry)].append(entry)
    chosen = {}
    for key, entries in by_object.items():
        home = home_module(entries[0])

        def rank(entry, home=home):
            inside = home == entry.module or home.startswith(entry.module + ".")
            return (not inside, -len(entry.module) if inside else 0)

        chosen[key] = min(entries, key=rank).qualified
        if entries[0].kind == "data":
            chosen.update({(entry.module, entry.name): chosen[key] for entry in entries})
    return chosen


def home_module(entry: public_api.Name) -> str:
    """The name of the module that defines an object (for a constant, its ``#:`` comment)."""
    try:
        return public_api.defining_module(entry).__name__
    except LookupError:
        return entry.module


def summary(entry: public_api.Name) -> str:
    """The first line of a name's docstring, for the module tables."""
    paragraph = public_api.docstring(entry).strip().split("\n\n")[0]
    return " ".join(paragraph.split())


def directive(entry: public_api.Name) -> list[str]:
    """The reST that documents one public name where it is canonical."""
    if entry.kind == "function":
        return [f".. autofunction:: {entry.qualified}", ""]
    if entry.kind == "exception":
        return [f".. autoexception:: {entry.qualified}", "   :show-inheritance:", ""]
    if entry.kind == "class":
        return [f".. autoclass:: {entry.qualified}", "   :members:",
                "   :exclude-members: count, index", ""]
    value = repr(entry.obj)
    lines = [f".. py:data:: {entry.name}", f"   :module: {entry.module}"]
    if isinstance(entry.obj, (int, float, str, tuple)) and len(value) <= 70:
        lines.append(f"   :value: {value}")
    lines.append("")
    lines += ["   " + line for line in public_api.docstring(entry).splitlines()]
    return lines + [""]


def module_page(module, names: list[public_api.Name], canonical: dict[int, str]) -> str:
    """The reST page of one public module: its docstring, a table of names, their entries."""
    title = f"``{module.__name__}``"
    lines = [title, "=" * len(title), "", f".. automodule:: {module.__name__}", "",
             f".. currentmodule:: {module.__name__}", ""]
    if names:
        lines += [".. list-table::", "   :widths: 30 70", ""]
        for entry in names:
            if entry.kind == "module":
                link = f":py:mod:`{entry.name} <{entry.obj.__name__}>`"
                text = summary(entry)
            else:
                target = canonical[identity(entry)]
                role = "py:exc" if entry.kind == "exception" else "py:obj"
                link = f":{role}:`{entry.name} <{target}>`"
                text = summary(entry) if target == entry.qualified else \
                    f"Same as :{role}:`{target}`. {summary(entry)}"
            lines += [f"   * - {link}", f"     - {text}"]
        lines.append("")
    for entry in names:
        if entry.kind != "module" and canonical[identity(entry)] == entry.qualified:
            lines += directive(entry)
    return "\n".join(lines) + "\n"


def index_page(modules, names) -> str:
    """The reference's front page: the count and a toctree of the module pages."""
    documented = len({id(entry.obj) for entry in names if entry.kind != "module"})
    lines = ["API reference", "=============", "",
             f"Every public name of fnlearn: {len(names)} names in {len(modules)} public "
             f"modules ({documented} distinct objects). ``fnlearn.__all__`` and each public "
             "module's ``__all__`` decide what is here; each entry links to its source.", "",
             ".. toctree::", "   :maxdepth: 1", ""]
    lines += [f"   {module.__name__}" for module in modules]
    return "\n".join(lines) + "\n"


def write_pages(folder: Path) -> tuple[list, list[public_api.Name]]:
    """Write ``index.rst`` and one page per public module into ``folder`` (emptied first).

    Returns:
      The public modules and the public names written.
    """
    modules = public_api.public_modules()
    names = public_api.walk()
    canonical = canonical_names(names)
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    by_module = collections.defaultdict(list)
    for entry in names:
        by_module[entry.module].append(entry)
    for module in modules:
        (folder / f"{module.__name__}.rst").write_text(
            module_page(module, by_module[module.__name__], canonical))
    (folder / "index.rst").write_text(index_page(modules, names))
    return modules, names


def generate(app: Sphinx) -> None:
    """builder-inited: write the pages before Sphinx looks for sources."""
    app.fnlearn_api = write_pages(Path(app.srcdir) / FOLDER)


def check(app: Sphinx, exception) -> None:
    """build-finished: warn for each public name the built reference has no entry for."""
    if exception is not None or not hasattr(app, "fnlearn_api"):
        return
    modules, names = app.fnlearn_api
    objects = app.env.get_domain("py").objects
    canonical = canonical_names(names)
    missing = sorted({canonical[identity(entry)] for entry in names if entry.kind != "module"}
                     - set(objects))
    missing += sorted(m.__name__ for m in modules if m.__name__ not in objects)
    for name in missing:
        logger.warning("public name %s has no entry in the API reference", name)
    logger.info("API reference: %d public names documented (%d distinct objects, "
                "%d module pages)", len(names) - len(missing),
                len(set(canonical.values())), len(modules))


def setup(app: Sphinx) -> dict:
    """Register the generator and the check."""
    app.connect("builder-inited", generate)
    app.connect("build-finished", check)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
