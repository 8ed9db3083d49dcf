"""Checkpoints that appear atomically: a run killed while writing one never leaves a truncated file in its place.

Lightning's writer moves a checkpoint into place from the system temporary directory, which on another filesystem
is a truncate-then-copy, never fsync'ed. `AtomicCheckpointIO` writes a local checkpoint to a hidden file next to its
target, fsyncs it, renames it over the target and fsyncs the directory: a reader sees the previous complete file
or the new one. Remote paths keep Lightning's behaviour. The CLI installs it; in Python:
`Trainer(plugins=[AtomicCheckpointIO()])`. Why: docs/design/reliability.md.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import torch
from fsspec.implementations.local import LocalFileSystem
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.plugins.io import TorchCheckpointIO


class AtomicCheckpointIO(TorchCheckpointIO):
    """`TorchCheckpointIO` whose local writes are write-to-temporary + fsync + rename (loading is unchanged)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any | None = None) -> None:
        if storage_options is not None or not isinstance(get_filesystem(path), LocalFileSystem):
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        sweep_partials(path)  # leftovers of writers that were killed (each as large as a checkpoint)
        tmp = path.with_name(f".{path.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        try:
            with open(tmp, "wb") as fh:
                torch.save(checkpoint, fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        fsync_dir(path.parent)  # make the rename itself durable


def sweep_partials(path: Path) -> None:
    """Delete `.NAME.partial-PID-*` files next to `path` whose writing process is gone."""
    for p in path.parent.glob(f".{path.name}.partial-*"):
        try:
            os.kill(int(p.name.rsplit("-", 2)[-2]), 0)  # still writing: leave it alone
        except ProcessLookupError:
            p.unlink(missing_ok=True)
        except (ValueError, PermissionError):
            pass


def fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # platforms that cannot open a directory: the rename is still atomic, only not yet durable
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
