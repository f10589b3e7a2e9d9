"""Every public name has documentation for the API reference.

``docs/_ext/public_api.py`` walks ``fnlearn.__all__`` and every public module's ``__all__``;
the site's reference pages (``docs/_ext/api_pages.py``) are written from the same walk, so
a name is in the reference exactly when it is in the walk. What can still go wrong is a
public name with nothing to show: no docstring, or a constant without its ``#:`` comment.
"""

import sys
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "docs" / "_ext"))

import public_api  # noqa: E402 - after its folder is on the path


def undocumented(names) -> list[str]:
    return [entry.qualified for entry in names if not public_api.docstring(entry).strip()]


def test_every_public_name_is_documented():
    names = public_api.walk()
    assert len(names) > 300
    modules = {entry.module for entry in names}
    assert {"fnlearn", "fnlearn.nn", "fnlearn.parity", "fnlearn.serve"} <= modules
    kinds = {entry.kind for entry in names}
    assert {"function", "class", "exception", "module", "data"} <= kinds
    assert undocumented(names) == []


def test_a_name_without_documentation_is_caught(tmp_path):
    source = tmp_path / "pkg_undocumented.py"
    source.write_text("#: documented\nGOOD = 1\nBAD = 2\n\n"
                      "def documented():\n    '''Does it.'''\n\n\ndef bare():\n    pass\n")
    sys.path.insert(0, str(tmp_path))
    try:
        import pkg_undocumented as module
    finally:
        sys.path.remove(str(tmp_path))
    names = [public_api.Name(module.__name__, name, public_api.kind_of(getattr(module, name)),
                             getattr(module, name)) for name in ("GOOD", "BAD", "documented",
                                                                 "bare")]
    assert isinstance(module, types.ModuleType)
    assert undocumented(names) == ["pkg_undocumented.BAD", "pkg_undocumented.bare"]
