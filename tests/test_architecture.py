"""The layout's rules, read from the source: imports run one way, and units stay small."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "rvm_node"
MAX_MODULE_LINES, MAX_FUNCTION_LINES = 600, 90


def _modules() -> dict[str, Path]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The rvm_node modules ``name`` imports anywhere in its file (inside functions and typing-only
    blocks too); an imported name that is no module counts as its module."""

    def module_of(dotted: str) -> str | None:
        while dotted and dotted not in modules:
            dotted = dotted.rpartition(".")[0]
        return dotted or None

    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            targets = [f"{base}.{alias.name}" for alias in node.names]
        for target in targets:
            module = module_of(target) if target.startswith("rvm_node") else None
            if module is not None and module != name:
                found.add(module)
    return found


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The graph's strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(graph[node]):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return circles


def test_the_circle_finder_finds_a_circle() -> None:
    assert _circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _circles({"a": {"b"}, "b": set()}) == []


def test_no_import_circle_among_the_modules() -> None:
    modules = _modules()
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    assert graph["rvm_node.engine.backend"] >= {"rvm_node.engine.session", "rvm_node.engine.chunks"}
    assert _circles(graph) == []


def test_the_engine_imports_nothing_above_it() -> None:
    modules = _modules()
    above = (
        "rvm_node.io",
        "rvm_node.convert",
        "rvm_node.node",
        "rvm_node.client",
        "rvm_node.farm",
        "rvm_node.cli",
    )
    for name, path in modules.items():
        if name.startswith("rvm_node.engine"):
            climbing = sorted(m for m in _imports(name, path, modules) if m.startswith(above))
            assert not climbing, f"{name} imports {climbing}"


def _sources() -> list[Path]:
    plugins = [p for p in (ROOT / "plugins").rglob("*.py") if "site-packages" not in p.parts]
    return [p for p in [*PACKAGE.rglob("*.py"), *plugins] if not p.name.endswith(("_pb2.py", "_pb2_grpc.py"))]


def test_modules_and_functions_stay_small() -> None:
    too_long = []
    for path in _sources():
        text = path.read_text()
        if len(text.splitlines()) > MAX_MODULE_LINES:
            too_long.append(f"{path.relative_to(ROOT)}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text, str(path))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno is not None:
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    too_long.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.name}, {lines} lines")
    assert not too_long, (
        f"modules over {MAX_MODULE_LINES} lines, functions over {MAX_FUNCTION_LINES}: {too_long}"
    )


def test_no_test_module_imports_another() -> None:
    """Tests stand on the support modules (``tests/helpers.py``, ``node_support.py``, ``conftest.py``...)."""
    leaning = []
    for path in sorted((ROOT / "tests").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tests.test_"):
                leaning.append(f"{path.name}: from {node.module}")
            elif isinstance(node, ast.Import):
                leaning += [
                    f"{path.name}: import {a.name}" for a in node.names if a.name.startswith("tests.test_")
                ]
    assert not leaning


def test_every_script_uses_the_commands_one_cache() -> None:
    """The scripts cache where the commands look: ``$RVM_NODE_CACHE_DIR``, else ``cache_dir()``'s default."""
    settings = []
    for script in sorted((ROOT / "scripts").iterdir()):
        for line in script.read_text(errors="replace").splitlines():
            if "RVM_NODE_CACHE_DIR=" in line and not line.lstrip().startswith("#"):
                settings.append((script.name, line.strip()))
    assert settings, "the scripts say where the cache is"
    for name, line in settings:
        assert "cache_dir()" in line and ".cache/rvm-node" not in line, (name, line)
