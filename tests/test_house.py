"""The house rules the code must keep, checked by parsing it: no import cycles, imports flow down the layers listed
once below, private attributes of other libraries are touched only in compat.py, and ruff passes. Each checker is
also run on a planted violation, so a checker that silently finds nothing fails here."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

PACKAGE = REPO / "lightning_pretrain"

# lower layers never import higher ones (a module may import its own layer); the longest matching prefix wins
LAYERS = [
    ("errors", "compat", "quiet", "allocator", "entry", "config_checks"),
    ("architecture", "document_attention", "generation", "optim", "checkpoint_io", "runs", "parallel", "muon"),
    ("data",),
    ("objectives", "finetune"),
    ("export",),
    ("evaluate",),
    ("callbacks",),
    ("cli", "finetune.glue", "finetune.superglue", "finetune.suite", "__main__", "__init__"),
]


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(root: Path) -> dict[str, set[str]]:
    """Every module of the package `root` -> the package's modules it imports (also inside functions)."""
    pkg = root.name
    modules = {module_name(p, root): p for p in root.rglob("*.py") if "configs" not in p.parts}
    graph = {}
    for name, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
            else:
                continue
            for t in targets:
                while t and t.startswith(pkg) and t not in modules:
                    t = t.rpartition(".")[0]
                if t and t in modules and t != name and not modules[t].name == "__init__.py":
                    found.add(t)
        graph[name] = found
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles of `graph` (one path per strongly connected component with more than one module)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def layer(name: str) -> int:
    rest = name.split(".", 1)[1] if "." in name else "__init__"
    matches = [
        (len(prefix), i)
        for i, prefixes in enumerate(LAYERS)
        for prefix in prefixes
        if rest == prefix or rest.startswith(prefix + ".")
    ]
    assert matches, f"{name} is in no layer: add it to LAYERS"
    return max(matches)[1]


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return [
        f"{a} (layer {layer(a)}) imports {b} (layer {layer(b)})"
        for a, targets in sorted(graph.items())
        for b in sorted(targets)
        if layer(b) > layer(a)
    ]


def private_accesses(root: Path, allowed: tuple[str, ...] = ("compat.py",)) -> list[str]:
    """`obj._name` where `_name` is defined nowhere in the package (so it belongs to another library), outside
    `allowed` files. Dunders are public protocol; `self._x` of our own classes is ours."""
    files = [p for p in root.rglob("*.py") if "configs" not in p.parts]
    trees = {p: ast.parse(p.read_text()) for p in files}
    ours = set()
    for tree in trees.values():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                ours.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                ours.add(node.attr)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                ours.add(node.id)
            elif isinstance(node, ast.arg):
                ours.add(node.arg)
            elif isinstance(node, ast.keyword) and node.arg:
                ours.add(node.arg)  # dataclass fields and our own constructors' private keywords
    found = []
    for path, tree in trees.items():
        if path.name in allowed:
            continue
        for node in ast.walk(tree):
            attr = node.attr if isinstance(node, ast.Attribute) else None
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id in ("getattr", "setattr", "hasattr")
                and len(node.args) > 1
                and isinstance(node.args[1], ast.Constant)
            ):
                attr = node.args[1].value if isinstance(node.args[1].value, str) else None
            if (
                attr
                and attr.startswith("_")
                and not (attr.startswith("__") and attr.endswith("__"))
                and attr not in ours
            ):
                found.append(f"{path.relative_to(root.parent)}:{node.lineno}: .{attr}")
    return sorted(found)


# -- the package itself --------------------------------------------------------------------------------------------
def test_no_import_cycles():
    assert cycles(imports(PACKAGE)) == []


def test_imports_flow_down_the_layers():
    assert upward_imports(imports(PACKAGE)) == []


def test_private_attributes_of_other_libraries_only_in_compat():
    assert private_accesses(PACKAGE) == []


def test_ruff_lint_and_format_pass():
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is not installed (it is in the dev extras)")
    for args in (["check"], ["format", "--check"]):
        out = subprocess.run(
            [ruff, *args, "lightning_pretrain", "tests", "benchmarks"], cwd=REPO, capture_output=True, text=True
        )
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]


# -- the checkers find what they look for ------------------------------------------------------------------------
@pytest.fixture
def planted(tmp_path):
    root = tmp_path / "lightning_pretrain"
    for sub in ("data", "callbacks"):
        (root / sub).mkdir(parents=True)
        (root / sub / "__init__.py").write_text("")
    (root / "__init__.py").write_text("")
    (root / "compat.py").write_text("def epoch(trainer):\n    return trainer._private_epoch\n")
    (root / "data" / "a.py").write_text(
        "import lightning_pretrain.data.b\n\n\nclass A:\n    def __init__(self):\n"
        "        self._ours = 1\n\n    def get(self):\n        return self._ours\n"
    )
    (root / "data" / "b.py").write_text(
        "def f():\n    from lightning_pretrain.data import a\n"
        "    from lightning_pretrain.callbacks.c import g\n    return a, g\n"
    )
    (root / "callbacks" / "c.py").write_text(
        "def g(trainer):\n    return trainer._results, getattr(trainer, '_hidden', None)\n"
    )
    return root


def test_the_checkers_catch_planted_violations(planted):
    graph = imports(planted)
    assert cycles(graph) == [["lightning_pretrain.data.a", "lightning_pretrain.data.b"]]
    assert upward_imports(graph) == [
        "lightning_pretrain.data.b (layer 2) imports lightning_pretrain.callbacks.c (layer 6)"
    ]
    assert private_accesses(planted) == [
        "lightning_pretrain/callbacks/c.py:2: ._hidden",
        "lightning_pretrain/callbacks/c.py:2: ._results",
    ]
