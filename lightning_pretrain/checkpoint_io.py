"""Checkpoints that appear atomically: a run killed while writing one never leaves a truncated file in its place.

Lightning's writer moves a checkpoint into place from the system temporary directory, which on another filesystem
is a truncate-then-copy, never fsync'ed. `AtomicCheckpointIO` writes a local checkpoint to a hidden file next to its
target, fsyncs it, renames it over the target and fsyncs the directory: a reader sees the previous complete file
or the new one. Remote paths keep Lightning's behaviour. The CLI installs it; in Python:
`Trainer(plugins=[AtomicCheckpointIO()])`. Why: docs/design/reliability.md.
"""

from __future__ import annotations

import errno
import os
import pickle
import shutil
import uuid
import zipfile
from pathlib import Path
from typing import Any

import torch
from fsspec.implementations.local import LocalFileSystem
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.plugins.io import TorchCheckpointIO

from lightning_pretrain.errors import InputError


class AtomicCheckpointIO(TorchCheckpointIO):
    """`TorchCheckpointIO` whose local writes are write-to-temporary + fsync + rename (loading is unchanged)."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any | None = None
    ) -> None:
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
        except RuntimeError as e:  # torch's zip writer reports a full disk as "enforce fail ... file write failed"
            tmp.unlink(missing_ok=True)
            if shutil.disk_usage(path.parent).free < 64 << 20:
                raise OSError(errno.ENOSPC, "no space left on device while writing the checkpoint", str(path)) from e
            raise
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        fsync_dir(path.parent)  # make the rename itself durable

    def load_checkpoint(self, path, map_location=None, weights_only: bool | None = None) -> dict[str, Any]:
        return load_checkpoint_file(path, map_location)


def load_checkpoint_file(path, map_location=None, mmap: bool = False) -> dict[str, Any]:
    """`torch.load(path, weights_only=True)`, with every way a file can fail to be a checkpoint said in one line
    (`mmap`: map the tensors instead of reading them, a cheap check of a large file)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"checkpoint not found: {path}" if not path.exists() else f"{path} is not a checkpoint file")
    try:
        state = torch.load(path, map_location=map_location or "cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        if "weights only" in str(e).lower():  # weights_only refused an object: no code from the file has run
            raise InputError(
                f"{path} is not a trusted checkpoint: it holds Python objects that safe (weights_only) "
                f"loading refuses, so it was not written by lightning-pretrain; nothing in it was "
                f"run"
            ) from e
        raise unreadable(path, e) from e
    except OSError as e:  # torch's zip reader on a file cut short: "[Errno 22] Invalid argument"
        if e.errno in (errno.EACCES, errno.EPERM, errno.EISDIR):
            raise  # the CLI says these with the path
        raise unreadable(path, e) from e
    except (
        RuntimeError,
        EOFError,
        zipfile.BadZipFile,
        ValueError,
        KeyError,
        AttributeError,
        TypeError,
        IndexError,
        MemoryError,
        OverflowError,
    ) as e:  # what torch's readers raise on bytes that are not theirs
        raise unreadable(path, e) from e
    if not isinstance(state, dict):
        raise InputError(f"{path} holds a {type(state).__name__}, not a training checkpoint")
    return state


def unreadable(path: Path, e: BaseException) -> InputError:
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return InputError(f"{path} is not a readable checkpoint (truncated, or not a PyTorch file): {first[:300]}")


def check_checkpoint_fits(module: torch.nn.Module, checkpoint: dict[str, Any], what: str = "the checkpoint") -> None:
    """Refuse, in one line, a checkpoint whose weights do not fit `module` (another architecture or size), before
    Lightning's strict `load_state_dict` fails with a page of key names."""
    saved = checkpoint.get("state_dict")
    if not isinstance(saved, dict):
        return  # a sharded (distributed) checkpoint: its strategy loads and checks it
    own = module.state_dict()
    missing = [k for k in own if k not in saved]
    unexpected = [k for k in saved if k not in own]
    shapes = [
        f"{k} {tuple(saved[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in saved and tuple(saved[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or shapes:
        detail = "; ".join(
            part
            for part in (
                f"{len(missing)} missing (e.g. {missing[0]})" if missing else "",
                f"{len(unexpected)} unexpected (e.g. {unexpected[0]})" if unexpected else "",
                f"{len(shapes)} of another shape (e.g. {shapes[0]})" if shapes else "",
            )
            if part
        )
        raise InputError(f"{what} does not fit this model (another architecture or size?): {detail}")


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
