"""AtomicCheckpointIO: a checkpoint write that fails or is killed midway never replaces the previous good one."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO

from lightning_pretrain.callbacks.resume import ResumeState
from lightning_pretrain.checkpoint_io import AtomicCheckpointIO

WRITER = """
import importlib, itertools, sys, torch
module, name = sys.argv[2].rsplit(".", 1)
io, path = getattr(importlib.import_module(module), name)(), sys.argv[1]
io.save_checkpoint({"version": 0, "weights": torch.zeros(16_000_000)}, path)
print("ready", flush=True)
for v in itertools.count(1):  # 64 MB per write, until killed
    io.save_checkpoint({"version": v, "weights": torch.full((16_000_000,), float(v))}, path)
"""


def partials(folder: Path) -> list[Path]:
    return list(folder.glob(".*.partial-*"))


def test_a_failed_write_keeps_the_previous_checkpoint(tmp_path):
    path = tmp_path / "checkpoints" / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"step": 1, "w": torch.arange(1000)}, path)
    with pytest.raises(Exception, match="pickle"):  # pickling fails after the tensor bytes went out
        io.save_checkpoint({"step": 2, "w": torch.arange(1000) * 2, "bad": lambda: None}, path)
    loaded = io.load_checkpoint(path, weights_only=True)
    assert loaded["step"] == 1 and torch.equal(loaded["w"], torch.arange(1000))
    assert not partials(path.parent)


def start_writer(path: Path, io_class: str, tmpdir: str | None = None) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **({"TMPDIR": tmpdir} if tmpdir else {})}
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path), io_class],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
        start_new_session=True,
    )
    assert proc.stdout.readline().strip() == "ready"
    return proc


def kill_when(proc: subprocess.Popen, condition, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    try:
        while not condition():
            assert proc.poll() is None and time.monotonic() < deadline, "the moment to kill never came"
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()


def test_a_write_killed_midway_keeps_the_previous_checkpoint_loadable(tmp_path):
    path = tmp_path / "last.ckpt"
    proc = start_writer(path, "lightning_pretrain.checkpoint_io.AtomicCheckpointIO")
    # a write is under way, well into its 64 MB
    kill_when(proc, lambda: any(p.stat().st_size > 8_000_000 for p in partials(tmp_path) if p.exists()))
    assert partials(tmp_path), "the kill should have hit a write in progress"
    loaded = torch.load(path, weights_only=True)  # complete: the last write that finished before the kill
    assert torch.all(loaded["weights"] == loaded["version"])
    AtomicCheckpointIO().save_checkpoint({"version": -1}, path)  # the next save sweeps the dead writer's leftover
    assert not partials(tmp_path) and torch.load(path, weights_only=True)["version"] == -1


@pytest.mark.slow
def test_lightnings_default_writer_truncates_the_checkpoint_when_tmp_is_another_filesystem(tmp_path):
    """Why AtomicCheckpointIO exists: TorchCheckpointIO's fsspec transaction stages in $TMPDIR and *copies* into
    place across filesystems; killed during that copy, last.ckpt is left truncated and unloadable."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("needs a $TMPDIR on another filesystem than the checkpoint (/dev/shm)")
    path = tmp_path / "last.ckpt"
    staging = Path(tempfile.mkdtemp(dir=shm))  # the killed writer leaves its staged copy there: removed below
    try:
        proc = start_writer(path, "lightning.pytorch.plugins.io.TorchCheckpointIO", tmpdir=str(staging))
        full = path.stat().st_size

        def copying() -> bool:
            try:
                return 0 < path.stat().st_size < 0.8 * full
            except FileNotFoundError:
                return False

        kill_when(proc, copying)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    with pytest.raises(RuntimeError):
        torch.load(path, weights_only=True)


def test_the_cli_writes_checkpoints_atomically_and_exactly_resumably(tiny_corpus, workdir):
    from lightning_pretrain.cli import PretrainCLI

    cli = PretrainCLI(
        args=[
            "-c",
            str(REPO / "configs/pretrain/clm_tiny.yaml"),
            "--data.source",
            str(tiny_corpus),
            "--data.vocab_size",
            "300",
            "--trainer.logger",
            "false",
        ],
        run=False,
        subclass_mode_model=True,
        subclass_mode_data=True,
        auto_configure_optimizers=False,
    )
    assert type(cli.trainer.strategy.checkpoint_io) is AtomicCheckpointIO
    assert any(isinstance(cb, ResumeState) for cb in cli.trainer.callbacks)
