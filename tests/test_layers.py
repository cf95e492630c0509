"""The imports of vnp, read from the source (ast): every import points down a layer or within its
folder, and no chain of imports (importlib's included) comes back to where it started.

    commands (vnp/*.py)  ->  training  ->  results  ->  run  ->  seq, models  ->  support
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from tests.helpers import ROOT

# Each layer and the layers it may import (its own folder always may).
LAYERS = {
    "commands": {"training", "results", "run", "seq", "models", "support"},
    "training": {"results", "run", "seq", "models", "support"},
    "results": {"run", "seq", "support"},
    "run": {"seq", "models", "support"},
    "seq": {"support"},
    "models": {"support"},
    "support": set(),
}
FOLDERS = {"training", "results", "run", "seq", "models", "support"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted((ROOT / "vnp").rglob("*.py"))}


def layer(module: str) -> str | None:
    """The layer of a vnp module; None for the package itself (`vnp.__version__`)."""
    parts = module.split(".")
    if len(parts) == 1:
        return None
    return parts[1] if parts[1] in FOLDERS else "commands"


def resolve(name: str) -> str | None:
    """The vnp module that `import name` / `from name import x` loads (the longest that exists)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imports(module: str) -> set[str]:
    """Every vnp module `module` imports, at its top or inside a function, by an import statement
    or by importlib with a module name spelled in it (as vnp.cli does)."""
    tree = ast.parse(MODULES[module].read_text())
    found: set[str] = set()
    uses_importlib = False
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
            uses_importlib |= any(a.name == "importlib" for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.update(f"{node.module}.{a.name}" for a in node.names)  # a submodule, or a name in it
    if uses_importlib:
        found.update(n.value for n in ast.walk(tree) if isinstance(n, ast.Constant)
                     and isinstance(n.value, str) and n.value in MODULES)
    resolved = {resolve(name) for name in found if name == "vnp" or name.startswith("vnp.")}
    return {m for m in resolved if m and m != module and m != "vnp"}


GRAPH = {module: imports(module) for module in MODULES}


def test_the_graph_is_read():
    assert "vnp.predict" in GRAPH["vnp.cli"]  # through importlib
    assert "vnp.run.dist" in GRAPH["vnp.predict"]  # `from vnp.run import dist as vdist`
    assert {"vnp.support", "vnp.seq", "vnp.run", "vnp.results", "vnp.results.report", "vnp.training",
            "vnp.models"} <= set(MODULES)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_import_points_up_a_layer(module):
    mine = layer(module)
    if mine is None:
        return
    wrong = [m for m in GRAPH[module] if layer(m) not in LAYERS[mine] | {mine, None}]
    assert not wrong, f"{module} ({mine}) imports {wrong}"


def test_no_command_imports_the_dispatcher():
    assert [m for m, deps in GRAPH.items() if "vnp.cli" in deps and m != "vnp.__main__"] == []


def test_no_import_cycle():
    """Depth-first search for a back edge; the cycle found is named."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        path.append(module)
        for dep in sorted(GRAPH[module]):
            if state.get(dep) == 1:
                cycle = path[path.index(dep):] + [dep]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep)
        path.pop()
        state[module] = 2

    for module in sorted(GRAPH):
        if module not in state:
            visit(module)


def test_no_private_module_of_another_package_is_imported():
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            for name in names:
                if not name.startswith("vnp"):
                    assert not any(part.startswith("_") and part != "__future__" for part in name.split(".")), \
                        f"{module} imports {name}"


def test_architecture_lists_every_module_and_the_readme_every_folder():
    architecture = (ROOT / "docs" / "architecture.md").read_text()
    missing = [str(p.relative_to(ROOT)) for p in MODULES.values()
               if p.name != "__init__.py" and f"`{p.relative_to(ROOT)}`" not in architecture]
    assert missing == []
    rows = re.findall(r"^\| `([^`]+\.py)` \|", architecture, re.MULTILINE)
    assert [row for row in rows if not (ROOT / row).is_file()] == []  # no row of a module gone or moved
    layout = (ROOT / "README.md").read_text().split("## Layout", 1)[1]
    folders = {str(p.parent.relative_to(ROOT / "vnp")) for p in MODULES.values()} - {"."}
    assert [f for f in sorted(folders) if f"`{f}/`" not in layout] == []
