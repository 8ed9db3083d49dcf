"""The package as a user gets it from a wheel: configs travel inside it, so `lightning-pretrain-glue` runs from any
directory without a checkout (its task and mode YAMLs are found in the installed package)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO
from test_finetune_modes import tiny_backbone  # noqa: F401 (fixture)


@pytest.fixture(scope="module")
def installed_wheel(tmp_path_factory) -> Path:
    """The project built as a wheel and installed (without dependencies: the test's own are used) into a folder."""
    root = tmp_path_factory.mktemp("wheel")
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(root / "dist"),
            str(REPO),
        ],
        capture_output=True,
        text=True,
    )
    assert build.returncode == 0, build.stderr
    wheel = next((root / "dist").glob("lightning_pretrain-*.whl"))
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(root / "site"), str(wheel)],
        capture_output=True,
        text=True,
    )
    assert install.returncode == 0, install.stderr
    return root / "site"


def test_configs_ship_in_the_wheel(installed_wheel):
    configs = installed_wheel / "lightning_pretrain" / "configs"
    assert configs.is_dir() and not configs.is_symlink()
    shipped = {p.relative_to(configs) for p in configs.rglob("*.yaml")}
    assert shipped == {p.relative_to(REPO / "configs") for p in (REPO / "configs").rglob("*.yaml")}


def test_glue_runner_from_a_wheel_install(installed_wheel, tiny_backbone, tmp_path):  # noqa: F811
    cola = tmp_path / "glue" / "CoLA"
    cola.mkdir(parents=True)
    rows = "".join(
        f"src\t{i % 2}\t\t{'The cat sat on the mat.' if i % 2 else 'Cat the mat on sat.'} {i}\n" for i in range(16)
    )
    for split in ("train", "dev"):
        (cola / f"{split}.tsv").write_text(rows)
    elsewhere = tmp_path / "elsewhere"  # no configs/ anywhere near: they must come from the installed package
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(installed_wheel), "OMP_NUM_THREADS": "1"}
    where = subprocess.run(
        [sys.executable, "-c", "import lightning_pretrain; print(lightning_pretrain.__file__)"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
    )
    assert where.stdout.startswith(str(installed_wheel)), where.stdout + where.stderr
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "lightning_pretrain.finetune.glue",
            "--backbone",
            str(tiny_backbone),
            "--tasks",
            "cola",
            "--glue_dir",
            str(tmp_path / "glue"),
            "--out",
            "runs",
            "--trainer.max_epochs",
            "1",
            "--trainer.enable_progress_bar",
            "false",
            "--trainer.enable_model_summary",
            "false",
        ],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    table = json.loads((elsewhere / "runs" / "glue_full.json").read_text())
    assert table["tasks"]["cola"]["score"] is not None
