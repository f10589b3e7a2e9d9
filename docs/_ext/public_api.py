"""fnlearn's public names, walked from ``fnlearn.__all__``: what the API reference documents.

A module's public names are its ``__all__``; a module without one (``fnlearn.losses`` is a
plain module of functions) exposes the functions, classes and documented constants it
defines itself, minus ``_private`` ones. A public name that is a module (``fnlearn.nn``,
``fnlearn.data.idx``) gets a page of its own, walked the same way, as does each subpackage
of fnlearn that declares ``__all__`` (``fnlearn.serve``). The site's reference pages
(``api_pages.py``) and ``tests/test_docs_api.py`` both read this walk, so a name added to
an ``__all__`` appears in the reference, or fails the test for want of a docstring, with
nothing to register by hand.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import pkgutil
import types

ROOT = "fnlearn"


@dataclasses.dataclass(frozen=True)
class Name:
    """One public name: where it is documented and what it is.

    Args:
      module: the public module that exposes it (``fnlearn.nn``).
      name: the name in that module (``Dense``).
      kind: "module", "class", "exception", "function" or "data".
      obj: the object itself.
    """

    module: str
    name: str
    kind: str
    obj: object

    @property
    def qualified(self) -> str:
        """``module.name``, the name readers import and the reference's target."""
        return f"{self.module}.{self.name}"


def kind_of(obj: object) -> str:
    """The reference's kind of a public object: module, exception, class, function or data."""
    if isinstance(obj, types.ModuleType):
        return "module"
    if isinstance(obj, types.GenericAlias):
        return "data"  # a type alias: documented by its #: comment, as a constant
    if inspect.isclass(obj):  # a typing.Protocol too
        return "exception" if issubclass(obj, BaseException) else "class"
    if type(obj).__module__ == "typing":
        return "data"  # a typing construct (a Union alias): as a constant
    if callable(obj) and hasattr(obj, "__name__") and hasattr(obj, "__module__"):
        return "function"
    return "data"


def own_names(module: types.ModuleType) -> list[str]:
    """The public names of a module without ``__all__``: what it defines, not what it imports."""
    names = []
    for name, obj in vars(module).items():
        if name.startswith("_") or isinstance(obj, types.ModuleType):
            continue
        defined_here = getattr(obj, "__module__", None) == module.__name__
        if kind_of(obj) == "data":
            if name in constant_docs(module):
                names.append(name)
        elif defined_here:
            names.append(name)
    return sorted(names)


def constant_docs(module: types.ModuleType) -> dict[str, str]:
    """``{name: text}`` of the ``#:`` comments above a module's constants (Sphinx's convention)."""
    from sphinx.pycode import ModuleAnalyzer

    try:
        analyzer = ModuleAnalyzer.for_module(module.__name__)
        analyzer.analyze()
    except Exception:  # noqa: BLE001 - a module without source has no comments to read
        return {}
    return {name: "\n".join(lines).strip()
            for (scope, name), lines in analyzer.attr_docs.items() if scope == ""}


def public_names(module: types.ModuleType) -> list[str]:
    """A module's public names: ``__all__`` if it has one, else `own_names`."""
    declared = getattr(module, "__all__", None)
    return list(declared) if declared is not None else own_names(module)


def public_modules() -> list[types.ModuleType]:
    """Every public module, fnlearn first, then depth-first in the order ``__all__`` lists them.

    Subpackages of fnlearn that declare ``__all__`` and are named in no ``__all__``
    (``fnlearn.serve``, run as ``python -m fnlearn.serve``) are public too.
    """
    found: dict[str, types.ModuleType] = {}

    def visit(module: types.ModuleType) -> None:
        if module.__name__ in found:
            return
        found[module.__name__] = module
        for name in public_names(module):
            obj = getattr(module, name)
            if isinstance(obj, types.ModuleType) and obj.__name__.startswith(ROOT + "."):
                visit(obj)

    root = importlib.import_module(ROOT)
    visit(root)
    for info in pkgutil.iter_modules(root.__path__, ROOT + "."):
        if info.ispkg and not info.name.rsplit(".", 1)[1].startswith("_"):
            package = importlib.import_module(info.name)
            if hasattr(package, "__all__"):
                visit(package)
    return list(found.values())


def walk() -> list[Name]:
    """Every public name of every public module, in page order.

    Raises:
      AttributeError: an ``__all__`` names something its module does not have.
    """
    names = []
    for module in public_modules():
        for name in public_names(module):
            if name == "__version__":
                continue
            obj = getattr(module, name)
            names.append(Name(module.__name__, name, kind_of(obj), obj))
    return names


def defining_module(entry: Name) -> types.ModuleType:
    """The module whose source holds the object's definition (or its ``#:`` comment).

    Raises:
      LookupError: a constant whose defining module cannot be found.
    """
    if entry.kind not in ("data",):
        return importlib.import_module(getattr(entry.obj, "__module__", None) or entry.module)
    candidates = [entry.module] + [m.__name__ for m in public_modules()]
    for name in candidates:
        module = importlib.import_module(name)
        for submodule in [module, *submodules(module)]:
            if getattr(submodule, entry.name, _MISSING) is entry.obj and \
                    entry.name in constant_docs(submodule):
                return submodule
    raise LookupError(f"{entry.qualified}: no module documents it with a #: comment")


_MISSING = object()


def submodules(module: types.ModuleType) -> list[types.ModuleType]:
    """The already imported modules inside a package (none for a plain module)."""
    import sys

    prefix = module.__name__ + "."
    return [m for n, m in sorted(sys.modules.items())
            if n.startswith(prefix) and m is not None]


def docstring(entry: Name) -> str:
    """The text the reference shows for a name: its docstring, or a constant's ``#:`` comment."""
    if entry.kind == "data":
        try:
            return constant_docs(defining_module(entry)).get(entry.name, "")
        except LookupError:
            return ""
    return inspect.getdoc(entry.obj) or ""
