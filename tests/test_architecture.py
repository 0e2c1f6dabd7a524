"""The architecture of ../shared/DESIGN.md, enforced on the source tree by walking its AST.

- no import cycle between collabvit modules (imports at module level; the
  lazy imports inside functions are how the CLI loads its commands);
- every import arrow is one DESIGN.md allows (checked for imports anywhere in a
  module, lazy ones included);
- torch and timm only where the design puts them;
- no module over 400 lines (wire.py: 600), no function over 80 lines.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

import collabvit

ROOT = Path(collabvit.__file__).parent
PURE = {"attention", "selection", "gating", "cost", "wire", "_arrays"}

# module group -> the collabvit groups it may import (besides itself and errors)
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "_arrays": set(),
    "attention": {"_arrays"},
    "selection": {"_arrays"},
    "gating": {"_arrays"},
    "cost": {"_arrays"},
    "wire": {"_arrays"},
    "onnx_edge": {"selection", "gating", "wire", "_arrays"},  # the torch-free edge
    "data": {"labels"},
    "labels": set(),
    "metrics": {"cost", "_arrays"},
    "calibration": {"metrics", "cost", "_arrays"},
    "models": {"attention", "cost", "data"},
    "pipeline": {"models", "attention", "selection", "gating", "data", "_arrays"},
    "workers": set(),  # how many loader processes fit: cores, shared memory
    "loader": {"data", "wire", "workers"},  # the torch DataLoader over data's samples
    "engine": {"pipeline", "metrics", "data", "loader", "workers", "wire", "models"},
    "sweep": {
        "loader",
        "workers",
        "calibration",
        "pipeline",
        "models",
        "data",
        "metrics",
        "gating",
        "selection",
        "attention",
        "wire",
        "cost",
        "_arrays",
    },
    "report": {"sweep", "metrics", "attention", "selection", "gating", "cost", "_arrays"},
    "server": {"models", "wire", "data"},
    "client": {
        "pipeline",
        "wire",
        "data",
        "metrics",
        "models",
        "selection",
        "_arrays",
        "onnx_edge",
    },
    "fmnist": {"data"},
    "training": {"models", "selection", "attention", "fmnist", "data", "_arrays"},
    "visualize": {"pipeline", "models", "data", "selection", "gating", "attention", "report"},
    "cli": {"*"},
    "commands": {"*"},
    "__init__": {"*"},
}
# third-party packages a group may not import at all
FORBIDDEN_THIRD_PARTY: dict[str, set[str]] = {
    **{m: {"torch", "timm", "torchvision"} for m in PURE},
    "metrics": {"torch", "timm", "torchvision"},
    "calibration": {"torch", "timm", "torchvision"},
    "errors": {"torch", "timm", "torchvision"},
    "report": {"torch", "timm", "torchvision"},
    "data": {"timm"},
    "labels": {"torch", "timm", "torchvision"},
    "onnx_edge": {"torch", "timm", "torchvision"},
    "pipeline": {"timm"},
    "engine": {"timm"},
    "loader": {"timm"},
    "workers": {"torch", "timm", "torchvision"},
    "sweep": {"timm"},
    "server": {"timm"},
    "client": {"timm"},
    "visualize": {"timm"},
}
# timm may be imported by models/ (the adapter) and by training (it builds the shipped pair)
TIMM_ALLOWED = {"models", "training"}

MAX_LINES = {"wire": 600}
DEFAULT_MAX_LINES = 400
MAX_FUNCTION_LINES = 80


def _modules() -> dict[str, Path]:
    """Dotted name (without ``collabvit.``) -> file."""
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _group(module: str) -> str:
    return module.split(".")[0]


def _package_of(module: str) -> list[str]:
    path = MODULES[module]
    parts = module.split(".") if module != "__init__" else []
    return parts if path.name == "__init__.py" else parts[:-1]


def _resolve(module: str, node: ast.ImportFrom) -> list[str]:
    """The collabvit modules an ``from ... import`` names (relative or absolute)."""
    if node.level:
        base = _package_of(module)
        if node.level > 1:
            base = base[: len(base) - (node.level - 1)]
        target = [*base, *(node.module.split(".") if node.module else [])]
    elif node.module and node.module.split(".")[0] == "collabvit":
        target = node.module.split(".")[1:]
    else:
        return []
    name = ".".join(target) or "__init__"
    found = []
    for alias in node.names:  # `from . import wire` names a module
        sub = f"{name}.{alias.name}" if name != "__init__" else alias.name
        if sub in MODULES:
            found.append(sub)
    if not found and name in MODULES:
        found.append(name)
    return found


def _in_type_checking(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return True
    return False


def _imports(module: str) -> Iterator[tuple[str, str, bool]]:
    """(kind, target, at_module_level) per import; kind is 'collabvit' or 'third-party'."""
    tree = ast.parse(MODULES[module].read_text())
    parents = {child: parent for parent in ast.walk(tree) for child in ast.iter_child_nodes(parent)}
    for node in ast.walk(tree):
        top = parents.get(node) is tree
        if isinstance(node, ast.Import):
            for alias in node.names:
                first = alias.name.split(".")[0]
                if first == "collabvit":
                    yield "collabvit", ".".join(alias.name.split(".")[1:]) or "__init__", top
                else:
                    yield "third-party", first, top
        elif isinstance(node, ast.ImportFrom):
            if _in_type_checking(node, parents):
                continue
            targets = _resolve(module, node)
            if targets:
                for t in targets:
                    yield "collabvit", t, top
            elif not node.level and node.module:
                yield "third-party", node.module.split(".")[0], top


def test_every_module_has_a_rule() -> None:
    missing = sorted({_group(m) for m in MODULES} - set(ALLOWED))
    assert not missing, f"modules without an import rule in this test: {missing}"


def test_import_arrows_follow_design() -> None:
    bad = []
    for module in MODULES:
        group = _group(module)
        allowed = ALLOWED[group]
        for kind, target, _top in _imports(module):
            if kind != "collabvit":
                continue
            tgroup = _group(target)
            if tgroup in {group, "errors"} or "*" in allowed:
                continue
            if tgroup in {"cli", "commands"}:
                bad.append(f"{module} -> {target} (nothing imports the CLI)")
            elif tgroup not in allowed:
                bad.append(f"{module} -> {target}")
    assert not bad, "imports that ../shared/DESIGN.md forbids:\n" + "\n".join(bad)


def test_torch_and_timm_stay_where_the_design_puts_them() -> None:
    bad = []
    for module in MODULES:
        group = _group(module)
        forbidden = FORBIDDEN_THIRD_PARTY.get(group, set())
        for kind, target, _top in _imports(module):
            if kind != "third-party":
                continue
            if target in forbidden or (target == "timm" and group not in TIMM_ALLOWED):
                bad.append(f"{module} imports {target}")
    assert not bad, "\n".join(bad)


def test_no_import_cycle() -> None:
    graph = {
        m: {t for kind, t, top in _imports(m) if kind == "collabvit" and top and t != m}
        for m in MODULES
    }
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for t in sorted(graph.get(m, ())):
            if state.get(t) == 1:
                return [*stack[stack.index(t) :], t]
            if t not in state:
                cycle = visit(t)
                if cycle:
                    return cycle
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state:
            cycle = visit(m)
            assert cycle is None, "import cycle: " + " -> ".join(cycle)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_module_and_function_sizes(module: str) -> None:
    text = MODULES[module].read_text()
    limit = MAX_LINES.get(module, DEFAULT_MAX_LINES)
    lines = len(text.splitlines())
    assert lines <= limit, f"{module} has {lines} lines (limit {limit})"
    long = [
        f"{node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for node in ast.walk(ast.parse(text))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and node.end_lineno is not None
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert not long, f"{module}: functions over {MAX_FUNCTION_LINES} lines: {long}"


def test_the_walker_sees_a_forbidden_arrow(tmp_path: Path) -> None:
    """The checks can fail: a pure module importing models is caught."""
    fake = "from .models import LoadedModel\nimport torch\n"
    tree = ast.parse(fake)
    node = tree.body[0]
    assert isinstance(node, ast.ImportFrom)
    assert _resolve("selection", node) == ["models"]
    assert "models" not in ALLOWED["selection"]
    assert "torch" in FORBIDDEN_THIRD_PARTY["selection"]
