"""The package's shape, as README and the design promise it: the layout table is true, data flows one way, one
loader, private accesses only in compat.py, short module docstrings, small files."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from conftest import REPO

PACKAGE = REPO / "lightning_pretrain"
MODULES = sorted(p for p in PACKAGE.rglob("*.py") if "configs" not in p.parts)


def test_readme_layout_table_names_files_that_exist():
    readme = (REPO / "README.md").read_text()
    table = readme[readme.index("## Where things live") :]
    table = table[: table.index("\n## ", 5)]
    named = [p for row in table.splitlines()[2:] for p in re.findall(r"`([^`]+)`", row.split("|")[2])]
    paths = [p for p in named if p.endswith((".py", ".md", "/"))]
    assert len(paths) >= 20, paths
    for path in paths:
        candidates = [REPO / path, PACKAGE / path, PACKAGE / path.removeprefix("lightning_pretrain/")]
        assert any(c.exists() or list(c.parent.glob(c.name)) for c in candidates), path
    for module in MODULES:  # and every module of the package is in it (an __init__ is its folder's)
        rel = module.relative_to(PACKAGE)
        if module.name not in ("__init__.py", "__main__.py"):
            assert (
                any(
                    str(rel) in p
                    or (p.endswith("/") and str(rel).startswith(p.removeprefix("lightning_pretrain/")))
                    or module.name == Path(p).name
                    for p in paths
                )
                or f"`{module.name}`" in table
            ), rel


def test_models_never_read_the_data_module():
    for module in MODULES:
        if module.parent.name in ("objectives", "finetune"):
            assert "datamodule" not in module.read_text(), module


def test_one_stateful_loader():
    users = [m for m in MODULES if "StatefulDataLoader(" in m.read_text()]
    assert users == [PACKAGE / "data" / "loaders.py"], users


def test_private_framework_attributes_only_in_compat():
    private = (
        "_compiled_call_impl",
        "_combined_loader",
        "_ddp_kwargs",
        "_data_parallel_size",
        "_throughputs",
        "_plugin_to_compute_dtype",
        "_set_sampler_epoch",
        "_data_fetcher",
        "_main_snapshot",
    )
    for module in MODULES:
        if module.name != "compat.py":
            text = module.read_text()
            found = [p for p in private if re.search(rf"(?<![A-Za-z0-9]){p}", text)]
            assert not found, (module, found)


def test_no_seed_from_python_hash():
    for module in MODULES:
        assert not re.search(r"manual_seed\(hash\(|default_rng\(hash\(", module.read_text()), module


def test_module_docstrings_are_short_and_files_small():
    for module in MODULES:
        text = module.read_text()
        doc = ast.get_docstring(ast.parse(text), clean=False) or ""
        assert len(doc.splitlines()) <= 10, f"{module}: module docstring of {len(doc.splitlines())} lines"
        assert len(text.splitlines()) <= 300, f"{module}: {len(text.splitlines())} lines"
