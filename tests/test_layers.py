"""The package's layers, held by walking every import (at the top of a module and inside functions): a module
imports only its own layer and the layers below it, and no chain of imports leads back to where it started."""

from __future__ import annotations

import ast
from pathlib import Path

import roberta_deploy

PACKAGE = Path(roberta_deploy.__file__).resolve().parent
SHARED = "shared ground"

# What each layer may import besides itself (docs/architecture.md draws the same table).
MAY_IMPORT = {
    SHARED: set(),
    "backends": {SHARED},
    "runtime": {SHARED, "backends"},
    "build": {SHARED, "backends", "runtime"},
    "train": {SHARED, "backends", "runtime", "build"},
    "serve": {SHARED, "backends", "runtime"},
    "jobs": {SHARED, "backends", "runtime", "build", "train", "serve"},
    "cli": {SHARED, "backends", "runtime", "build", "train", "serve", "jobs"},
}
ENTRY_POINTS = {"roberta_deploy", "roberta_deploy.__main__"}  # the package's face: may import any layer, lazily


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in MAY_IMPORT) else SHARED


def type_checking_only(node: ast.If) -> bool:
    return isinstance(node.test, (ast.Name, ast.Attribute)) and "TYPE_CHECKING" in ast.unparse(node.test)


def imported_modules(path: Path, known: set[str]) -> set[str]:
    """Every roberta_deploy module `path` imports, wherever the import statement stands."""
    module = module_name(path)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped = {id(child) for node in ast.walk(tree) if isinstance(node, ast.If) and type_checking_only(node)
               for statement in node.body for child in ast.walk(statement)}
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = ".".join(base[:len(base) - node.level + 1])
                source = f"{base}.{node.module}" if node.module else base
            else:
                source = node.module or ""
            # `from . import hf` names a module; `from .errors import X` names a module's attribute
            targets = [f"{source}.{alias.name}" if f"{source}.{alias.name}" in known else source
                       for alias in node.names]
        else:
            continue
        found.update(target for target in targets if target in known and target != module)
    return found


def import_graph() -> dict[str, set[str]]:
    paths = sorted(PACKAGE.rglob("*.py"))
    known = {module_name(path) for path in paths}
    return {module_name(path): imported_modules(path, known) for path in paths}


def test_no_module_imports_a_layer_above_its_own():
    graph = import_graph()
    assert len(graph) > 60, "the walk found too few modules to mean anything"
    wrong = [f"{module} ({layer_of(module)}) imports {target} ({layer_of(target)})"
             for module, targets in graph.items() if module not in ENTRY_POINTS
             for target in sorted(targets)
             if layer_of(target) != layer_of(module) and layer_of(target) not in MAY_IMPORT[layer_of(module)]]
    assert not wrong, "\n".join(wrong)


def test_no_import_circle():
    graph = import_graph()
    state: dict[str, str] = {}
    circles = []

    def visit(module: str, trail: list[str]) -> None:
        state[module] = "open"
        for target in sorted(graph[module]):
            if target in ENTRY_POINTS:
                continue
            # a package's __init__ that re-exports its modules is the package itself, not a step in a circle
            if module.startswith(target + "."):
                continue
            if state.get(target) == "open":
                circles.append(" -> ".join(trail[trail.index(target):] + [target]) if target in trail
                               else f"{module} -> {target}")
            elif target not in state:
                visit(target, trail + [target])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state and module not in ENTRY_POINTS:
            visit(module, [module])
    assert not circles, "\n".join(circles)


def test_the_walk_sees_imports_inside_functions():
    """The checks above are only as good as the walk: it must find a lazy import (cli/build.py imports the
    build layer inside its command) and resolve relative imports to modules."""
    graph = import_graph()
    assert "roberta_deploy.build.export" in graph["roberta_deploy.cli.build"]
    assert "roberta_deploy.errors" in graph["roberta_deploy.runtime.engine"]
