"""An on-disk cache whose entries appear atomically: a reader sees a complete entry or none at all.

An entry is a directory named by a hash of everything that decides its content. It is built under a private
temporary name in the same parent and renamed into place only after its `meta.json` (written last) is on disk,
so a run killed mid-build leaves a `.partial-*` directory that no reader ever takes for a valid entry (and a
later build sweeps it away). Two processes building the same entry at once both succeed; the first rename wins.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

META = "meta.json"


def cache_key(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


def default_root() -> Path:
    return Path(os.environ.get("LIGHTNING_PRETRAIN_CACHE", Path.home() / ".cache" / "lightning_pretrain"))


def read_meta(entry: Path) -> dict | None:
    try:
        return json.loads((entry / META).read_text())
    except (OSError, ValueError):
        return None


def get_or_build(entry: Path, build: Callable[[Path], dict], valid: Callable[[Path, dict], bool]) -> tuple[Path, bool]:
    """Return `(entry, reused)`. `build(tmp_dir)` fills a fresh directory and returns the metadata to seal it with.

    An existing entry that fails `valid` (files truncated or edited by hand) is moved aside and rebuilt.
    """
    meta = read_meta(entry)
    if meta is not None and valid(entry, meta):
        return entry, True
    entry.parent.mkdir(parents=True, exist_ok=True)
    if entry.exists():
        shutil.rmtree(entry, ignore_errors=True)
    _sweep_partials(entry)
    tmp = entry.parent / f".{entry.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        meta = build(tmp)
        _write_json_durably(tmp / META, meta)
        try:
            os.rename(tmp, entry)
        except OSError:  # another process sealed the same entry first: theirs is as good as ours
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return entry, False


def _write_json_durably(path: Path, obj: dict) -> None:
    with open(path, "w") as fh:
        json.dump(obj, fh, indent=1)
        fh.flush()
        os.fsync(fh.fileno())


def _sweep_partials(entry: Path) -> None:
    """Remove leftovers of builds whose process is gone (killed, crashed, machine rebooted)."""
    for p in entry.parent.glob(f".{entry.name}.partial-*"):
        try:
            pid = int(p.name.rsplit("-", 2)[-2])
            os.kill(pid, 0)  # still running: leave it alone
        except ProcessLookupError:
            shutil.rmtree(p, ignore_errors=True)
        except (ValueError, PermissionError):
            pass
