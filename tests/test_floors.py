"""The house rules of fnlearn's layout, checked on the source: no import circles, no
private names used across modules, no module over 450 lines (docs/design.md)."""

from __future__ import annotations

import ast
import textwrap
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "fnlearn"
MAX_LINES = 450


def _modules(root: Path, package: str) -> dict[str, Path]:
    """Dotted module names of every ``.py`` file under ``root`` (``__init__`` is the package)."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = [package, *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _imports(path: Path, name: str, modules: dict[str, Path]) -> list[tuple[str, str | None]]:
    """``(module, imported name or None)`` for every import of the package's own modules,
    at any depth (function-level imports count)."""
    tree = ast.parse(path.read_text())
    is_package = path.name == "__init__.py"
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, None) for alias in node.names if alias.name in modules]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = name.split(".")[: len(name.split(".")) - node.level + is_package]
                base = ".".join([*parent, *([base] if base else [])])
            if base not in modules:
                continue
            for alias in node.names:
                target = f"{base}.{alias.name}"
                found.append((target, None) if target in modules else (base, alias.name))
    return found


def problems(root: Path, package: str) -> list[str]:
    """Every broken rule in the package at ``root``, one line each."""
    modules = _modules(root, package)
    found, edges = [], {name: set() for name in modules}
    for name, path in modules.items():
        lines = len(path.read_text().splitlines())
        if lines > MAX_LINES:
            found.append(f"{name} has {lines} lines (over {MAX_LINES})")
        for target, imported in _imports(path, name, modules):
            if imported and imported.startswith("_") and not imported.startswith("__"):
                found.append(f"{name} imports the private name {target}.{imported}")
            # A package importing its own submodules is how it lists them, not a floor.
            if target != name and not (path.name == "__init__.py"
                                       and target.startswith(name + ".")):
                edges[name].add(target)
    found += [f"import circle: {' -> '.join(cycle)}" for cycle in _cycles(edges)]
    return found


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """One cycle for each strongly connected group of two or more modules (Tarjan)."""
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(edges.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group) + [sorted(group)[0]])

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return groups


def test_fnlearn_keeps_its_floors():
    assert problems(PACKAGE, "fnlearn") == []


def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "pkg"
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root


def test_the_check_finds_a_circle_through_a_function_level_import(tmp_path):
    root = _package(tmp_path, {
        "__init__.py": "from pkg import low\n",
        "low.py": "def f():\n    from pkg.high import g\n    return g\n",
        "high.py": "from pkg.low import f\n\ndef g():\n    return f\n",
        "fine.py": "from pkg import low\n",
    })
    assert problems(root, "pkg") == ["import circle: pkg.high -> pkg.low -> pkg.high"]


def test_the_check_finds_private_names_and_long_modules(tmp_path):
    root = _package(tmp_path, {
        "__init__.py": "",
        "a.py": "_secret = 1\n" + "x = 1\n" * MAX_LINES,
        "b.py": "from .a import _secret, x\n",
        "sub/__init__.py": "from ..a import __doc__\n",
    })
    assert sorted(problems(root, "pkg")) == [
        f"pkg.a has {MAX_LINES + 1} lines (over {MAX_LINES})",
        "pkg.b imports the private name pkg.a._secret",
    ]


def test_a_custom_loop_needs_no_driver_module():
    # What fnlearn.step (init_state, train_step, epoch_batches) imports, at any depth:
    # neither the loop package nor the fit driver.
    modules = _modules(PACKAGE, "fnlearn")
    reached, todo = set(), ["fnlearn.step"]
    while todo:
        name = todo.pop()
        if name in reached:
            continue
        reached.add(name)
        todo += [target for target, _ in _imports(modules[name], name, modules)
                 if target in modules]
    assert "fnlearn.objectives" in reached and "fnlearn.nn.core" in reached
    assert not [m for m in reached if m.startswith(("fnlearn.loop", "fnlearn.train"))]


def test_the_package_version_is_the_project_version():
    import tomllib

    import fnlearn

    project = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())["project"]
    assert fnlearn.__version__ == project["version"] == "0.3.0"
