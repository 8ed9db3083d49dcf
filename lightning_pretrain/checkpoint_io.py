"""Checkpoints that appear atomically: a run killed while writing one never leaves a truncated file in its place.

Lightning's `TorchCheckpointIO` serialises the checkpoint into memory and writes it through an `fsspec` transaction.
On a local disk that transaction writes into the *system* temporary directory and `shutil.move`s the file into
place at commit. When `/tmp` is another filesystem (tmpfs, a container's overlay, a node-local disk next to a network
volume) the move is a copy that first truncates the destination, and nothing is ever fsync'ed: a kill, an OOM or a
power cut during the copy leaves `last.ckpt` truncated, and the previous good checkpoint is gone with it.

`AtomicCheckpointIO` writes a local checkpoint to a hidden temporary file *next to* its target, fsyncs it, renames
it over the target (`os.replace` is atomic within a filesystem) and fsyncs the directory, so a reader sees either
the previous complete file or the new complete file. The checkpoint streams straight to disk instead of through a
second in-memory copy. Remote paths (s3://, gs://, ...) keep Lightning's behaviour: object stores publish an object
only once its upload completed. The CLI installs it in place of Lightning's default; in Python:
`Trainer(plugins=[AtomicCheckpointIO()])`.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import torch
from fsspec.implementations.local import LocalFileSystem
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.plugins.io import TorchCheckpointIO


class AtomicCheckpointIO(TorchCheckpointIO):
    """`TorchCheckpointIO` whose local writes are write-to-temporary + fsync + rename (loading is unchanged)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
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
