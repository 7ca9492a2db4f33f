"""The package's import graph: no cycles, and the core never imports a task module."""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def module_level_imports(path: Path, modules: set[str]) -> set[str]:
    """epochal modules imported at module level (TYPE_CHECKING blocks included; imports inside functions are
    deferred on purpose and can't form an import-time cycle)."""
    found = set()
    body = ast.parse(path.read_text()).body
    nodes = [n for n in body] + [inner for n in body if isinstance(n, ast.If) for inner in n.body]
    for node in nodes:
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            submodules = [f"{node.module}.{alias.name}" for alias in node.names]
            names = [name for name in submodules if name in modules] or [node.module]
        found |= {name for name in names if name in modules}
    return found


def graph() -> dict[str, set[str]]:
    paths = {module_name(p): p for p in (SRC / "epochal").rglob("*.py")}
    modules = set(paths)
    return {name: module_level_imports(path, modules) for name, path in paths.items()}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycles():
    cycle = find_cycle(graph())
    assert cycle is None, " -> ".join(cycle)


def test_core_modules_never_import_a_task():
    core = {name: deps for name, deps in graph().items() if not name.startswith("epochal.tasks")
            and name not in ("epochal.scratch.task",)}
    offenders = {name: sorted(d for d in deps if d.startswith("epochal.tasks.")) for name, deps in core.items()}
    assert {name: deps for name, deps in offenders.items() if deps} == {}
