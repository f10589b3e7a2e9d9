"""Sphinx extension: inline code that names fnlearn links to the API reference, or fails.

Pages are plain Markdown, readable on their own, so they write `fl.fit(...)` or
`fnlearn.export.export_model`, not Sphinx roles. This extension reads each such literal's
dotted name (``fl.`` is ``fnlearn.``), resolves it by importing it, and links it to where
the reference documents that object (``fl.ModelCheckpoint`` to
``fnlearn.callbacks.ModelCheckpoint``). A name that does not exist is a warning (an error
in the strict build): the pages cannot drift from the code. A name that exists but is not
public (``fl.step.step_key``) stays plain code. Type hints naming an object by the module
that defines it (``fnlearn.nn.core.Layer``) resolve the same way.
"""

from __future__ import annotations

import importlib
import inspect
import re
import types

import public_api
from api_pages import canonical_names
from docutils import nodes
from sphinx import addnodes
from sphinx.application import Sphinx
from sphinx.transforms import SphinxTransform
from sphinx.util import logging

logger = logging.getLogger(__name__)
NAME = re.compile(r"^(?:fl|fnlearn)((?:\.[A-Za-z_]\w*)+)(?![\w*.])")
_MISSING = object()


def targets() -> dict[int, str]:
    """``{id(object): reference target}`` for every public object and module."""
    names = public_api.walk()
    found = canonical_names(names)
    found.update({id(module): module.__name__ for module in public_api.public_modules()})
    return found


def resolve(dotted: str, known: dict[int, str]) -> str | None:
    """The reference target of ``fnlearn.a.b.c``: None if not public.

    Raises:
      LookupError: the name does not exist (naming the first part that is missing).
    """
    parts = dotted.split(".")
    obj: object = importlib.import_module(parts[0])
    target = known.get(id(obj))
    for i, part in enumerate(parts[1:], start=1):
        owner, owner_target = obj, target
        obj = getattr(owner, part, _MISSING)
        if obj is _MISSING and isinstance(owner, types.ModuleType):
            try:
                obj = importlib.import_module(".".join(parts[: i + 1]))
            except ModuleNotFoundError:
                obj = _MISSING
        if obj is _MISSING:
            raise LookupError(f"{'.'.join(parts[:i])} has no attribute {part!r}")
        target = known.get((owner.__name__, part)) if isinstance(owner, types.ModuleType) \
            and public_api.kind_of(obj) == "data" else known.get(id(obj))
        if target is None and inspect.isclass(owner) and owner_target and \
                not part.startswith("_") and inspect.getdoc(getattr(owner, part)):
            target = f"{owner_target}.{part}"
    return target


class LinkCode(SphinxTransform):
    """Wrap each inline literal naming a public fnlearn object in a reference to it."""

    default_priority = 700

    def apply(self, **kwargs) -> None:
        """Visit the document's inline literals."""
        known = getattr(self.app, "fnlearn_targets", None)
        if known is None:
            known = self.app.fnlearn_targets = targets()
        for node in list(self.document.findall(nodes.literal)):
            if isinstance(node.parent, (nodes.reference, addnodes.pending_xref)) or \
                    "xref" in node.get("classes", []):
                continue
            match = NAME.match(node.astext())
            if not match:
                continue
            dotted = "fnlearn" + match.group(1)
            try:
                target = resolve(dotted, known)
            except LookupError as error:
                logger.warning("`%s` names no fnlearn object: %s", node.astext(), error,
                               location=node)
                continue
            if target is None:
                continue
            reference = addnodes.pending_xref(
                "", refdomain="py", reftype="obj", reftarget=target, refexplicit=True,
                refwarn=True, refdoc=self.env.docname)
            node.replace_self(reference)
            reference += node


def resolve_hint(dotted: str, known: dict[int, str]):
    """The reference target of a hint's full path (``fnlearn.nn.summary.Row``, where a module
    path wins over a same-named attribute); None if not public, ``_MISSING`` if absent."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for part in parts[cut:]:
            obj = getattr(obj, part, _MISSING)
            if obj is _MISSING:
                return _MISSING
        return known.get(id(obj))
    return _MISSING


def missing_reference(app: Sphinx, env, node, contnode):
    """missing-reference: a hint such as ``fnlearn.nn.core.Layer`` goes to its public name."""
    target = node.get("reftarget", "")
    if node.get("refdomain") != "py" or not target.startswith("fnlearn."):
        return None
    known = getattr(app, "fnlearn_targets", None)
    if known is None:
        known = app.fnlearn_targets = targets()
    public = resolve_hint(target, known)
    if public is _MISSING:
        return None
    if public is None:
        return contnode  # it exists, under a module the reference does not cover
    if public == target:
        return None
    return env.get_domain("py").resolve_xref(env, node["refdoc"], app.builder, "obj", public,
                                             node, contnode)


def setup(app: Sphinx) -> dict:
    """Register the transform and the hint resolver."""
    app.add_transform(LinkCode)
    app.connect("missing-reference", missing_reference)
    return {"parallel_read_safe": False, "parallel_write_safe": True}
