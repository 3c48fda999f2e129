"""The house rules of the module map (docs/architecture.md), checked on the source with ``ast``.

- The core (``ltc_control`` except ``cli.py`` and the ``agents`` / ``envs`` layers above it) never imports
  ``ltc_control.agents`` or ``ltc_control.envs``: not at module level, not inside a function, not by a string
  given to ``importlib.import_module`` / ``__import__``, and it holds no string naming such a module.
- ``ltc_control.envs`` never imports ``ltc_control.agents`` (the env sits below the closed-loop code).
- No import cycle between project modules. Every import counts (module level or inside a function), except
  those under ``if TYPE_CHECKING:`` and the edges from a package's ``__init__`` to its own sub-modules (the
  re-export facade: importing ``ltc_control.checkpoint`` from ``ltc_control/__init__.py`` is not a dependency
  of the design, and without this rule every ``from ltc_control import __version__`` would count as a cycle).
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "ltc_control"
UPPER_LAYERS = ("ltc_control.agents", "ltc_control.envs")
_UPPER_RE = re.compile(r"^ltc_control\.(agents|envs)(\.\w+)*(:\w+)?$")


def _project_modules() -> dict[str, Path]:
    """Module name -> file, walking ``ltc_control/`` (through the agents/envs links)."""
    modules: dict[str, Path] = {}
    base = ROOT / PACKAGE
    for path in sorted(base.rglob("*.py")):
        rel = path.relative_to(base)
        if "__pycache__" in rel.parts:
            continue
        parts = [PACKAGE, *rel.with_suffix("").parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    # rglob does not always descend into symlinked folders: add the two layers explicitly.
    for layer in ("agents", "envs"):
        for path in sorted((ROOT / layer).rglob("*.py")):
            rel = path.relative_to(ROOT / layer)
            if "__pycache__" in rel.parts:
                continue
            parts = [PACKAGE, layer, *rel.with_suffix("").parts]
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules.setdefault(".".join(parts), path)
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _walk_runtime(tree: ast.AST) -> Iterator[ast.AST]:
    """Every node except the bodies of ``if TYPE_CHECKING:`` blocks."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                stack.extend(child.orelse)
                continue
            stack.append(child)


def _docstring_nodes(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                ids.add(id(body[0].value))
    return ids


def _imports(module: str, path: Path, known: dict[str, Path]) -> list[tuple[str, int, str]]:
    """(imported project-or-other module, line, how) for every runtime import in the file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"
    package = module if is_package else module.rpartition(".")[0]
    docstrings = _docstring_nodes(tree)
    found: list[tuple[str, int, str]] = []
    for node in _walk_runtime(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno, "import") for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")
                base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                found.append((candidate if candidate in known else base, node.lineno, "from-import"))
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name in ("import_module", "__import__") and node.args:
                arg = node.args[0]
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    found.append((arg.value, node.lineno, f"{name}(string)"))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            if _UPPER_RE.match(node.value):
                found.append((node.value.split(":")[0], getattr(node, "lineno", 0), "string"))
    return found


def _resolve(name: str, known: dict[str, Path]) -> str | None:
    """The longest project module that ``name`` refers to (None for third-party)."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in known:
            return candidate
        parts.pop()
    return None


def _in_layer(module: str, layer: str) -> bool:
    return module == layer or module.startswith(layer + ".")


def _is_core(module: str) -> bool:
    return module != "ltc_control.cli" and not any(_in_layer(module, layer) for layer in UPPER_LAYERS)


MODULES = _project_modules()


def test_walk_sees_every_layer():
    assert "ltc_control.policy" in MODULES
    assert any(m.startswith("ltc_control.agents.") for m in MODULES)
    assert any(m.startswith("ltc_control.envs.") for m in MODULES)


def test_core_never_imports_agents_or_envs():
    offences = []
    for module, path in MODULES.items():
        if not _is_core(module):
            continue
        for name, line, how in _imports(module, path, MODULES):
            if any(_in_layer(name, layer) for layer in UPPER_LAYERS):
                offences.append(f"{path.relative_to(ROOT)}:{line}: {how} {name}")
    assert not offences, "the core imports the layers above it:\n" + "\n".join(offences)


def test_envs_never_import_agents():
    offences = []
    for module, path in MODULES.items():
        if not _in_layer(module, "ltc_control.envs"):
            continue
        for name, line, how in _imports(module, path, MODULES):
            if _in_layer(name, "ltc_control.agents"):
                offences.append(f"{path.relative_to(ROOT)}:{line}: {how} {name}")
    assert not offences, "the envs import the agents layer:\n" + "\n".join(offences)


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for module, path in MODULES.items():
        is_package = path.name == "__init__.py"
        for name, _, _ in _imports(module, path, MODULES):
            target = _resolve(name, MODULES)
            if target is None or target == module:
                continue
            if is_package and target.startswith(module + "."):
                continue  # a package's facade re-exporting its own sub-modules
            graph[module].add(target)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles():
    cycles = _cycles(_graph())
    assert not cycles, "import cycles between modules:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


@pytest.mark.parametrize(
    "source, expected",
    [
        ("import ltc_control.agents.episode\n", "ltc_control.agents.episode"),
        ("def f():\n    from ltc_control.envs import lane_keeping\n", "ltc_control.envs.lane_keeping"),
        ("import importlib\nimportlib.import_module('ltc_control.agents.evaluation')\n", "string"),
        ("ENTRY = 'ltc_control.envs.bench:main'\n", "string"),
    ],
)
def test_detector_catches_every_form(tmp_path, source, expected):
    path = tmp_path / "probe.py"
    path.write_text(source)
    found = _imports("ltc_control.probe", path, MODULES)
    names = [name for name, _, _ in found]
    hows = [how for _, _, how in found]
    assert any(_in_layer(n, "ltc_control.agents") or _in_layer(n, "ltc_control.envs") for n in names)
    if expected == "string":
        assert any("string" in h for h in hows)
    else:
        assert expected in names


def test_type_checking_imports_do_not_count(tmp_path):
    path = tmp_path / "probe.py"
    path.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import ltc_control.agents\n")
    assert not [n for n, _, _ in _imports("ltc_control.probe", path, MODULES) if "agents" in n]
