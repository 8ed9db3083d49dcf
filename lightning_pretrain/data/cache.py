"""An on-disk cache whose entries appear atomically and heal: a reader sees a complete, undamaged entry or none.

An entry is a directory named by a hash of everything that decides its content. It is built under a private
temporary name in the same parent and renamed into place only after its `meta.json` (written last) is on disk,
so a run killed mid-build leaves a `.partial-*` directory that no reader ever takes for a valid entry (and a
later build sweeps it away). Two processes building the same entry at once both succeed; the first rename wins.
`meta.json` records every file's size and digest (`manifest`); a lookup checks them, and an entry whose files were
truncated, overwritten or deleted since (or that predates the record) is rebuilt. Why sampled digests: `_digest`.
Input files are known by their content (`content_digest`), remembered under the root across runs.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from lightning_pretrain import entry
from lightning_pretrain.errors import InputError

log = logging.getLogger(__name__)

META = "meta.json"
FILES = "cache_files"  # meta.json key: {path inside the entry: [size in bytes, digest]} of every file built
WHOLE = 4 << 20  # files up to this size are hashed whole, larger ones at SAMPLES windows of WINDOW bytes
WINDOW, SAMPLES = 64 << 10, 64

_ROOT: contextvars.ContextVar[Path | None] = contextvars.ContextVar("cache_root", default=None)


def cache_key(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


def default_root() -> Path:
    return Path(os.environ.get("LIGHTNING_PRETRAIN_CACHE", Path.home() / ".cache" / "lightning_pretrain"))


def resolve_root(cache_dir: str | None) -> Path:
    """`--data.cache_dir` (default: `default_root()`), refused in one line when it, or a folder above it, is a file."""
    root = Path(cache_dir).expanduser() if cache_dir else default_root()
    undo_if_refused(root)  # a refused run leaves nothing behind: not the cache folders it made either
    for p in (root, *root.parents):
        if p.exists() or p.is_symlink():
            if not p.is_dir():
                raise InputError(
                    f"cache_dir {root} is not a directory: {p} is a file (pass a folder as "
                    f"--data.cache_dir or $LIGHTNING_PRETRAIN_CACHE)"
                )
            break
    return root


def undo_if_refused(path: Path) -> None:
    """Before `path` is written: if this command ends refused, the run leaves nothing behind, not its cache entries
    either (a `--data.cache_dir` may be a folder of the user's own files): `path` and the folders made for it go."""
    made = [p for p in (path, *path.parents) if not (p.exists() or p.is_symlink())]
    if made:
        top = made[-1]
        entry.on_refusal(
            lambda: shutil.rmtree(top, ignore_errors=True) if top.is_dir() else top.unlink(missing_ok=True)
        )


def current_root() -> Path:
    """The cache root of the data module at work (`rooted`), else `default_root()`: where the file-digest memo lives."""
    return _ROOT.get() or default_root()


@contextlib.contextmanager
def rooted(root: Path) -> Iterator[None]:
    """Within this block, `current_root()` is `root` (a data module's `--data.cache_dir`)."""
    token = _ROOT.set(root)
    try:
        yield
    finally:
        _ROOT.reset(token)


def content_digest(path: str) -> str:
    """SHA-256 of a file's bytes, remembered under the file's (path, inode, size, mtime): a large corpus is read
    once, not at every start-up (hashing runs at ~1 GB/s), and any write to the file changes the stat key."""
    st = os.stat(path)
    key = hashlib.sha256(f"{os.path.abspath(path)}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()
    memo = current_root() / "digests"  # the cache of the data module at work (`cache.rooted`)
    try:
        return (memo / key).read_text().strip()
    except OSError:
        pass
    with open(path, "rb") as fh:
        digest = hashlib.file_digest(fh, "sha256").hexdigest()
    if time.time_ns() - st.st_mtime_ns < 2_000_000_000:
        # modified within the file system's timestamp granularity: a same-size rewrite in the same tick would keep
        # the stat key, so a digest of a file this fresh is not remembered (git's "racy" rule)
        return digest
    try:  # best effort: an unwritable cache only costs the next run a re-hash
        undo_if_refused(memo / key)
        memo.mkdir(parents=True, exist_ok=True)
        tmp = memo / f".{key}.{os.getpid()}"
        tmp.write_text(digest)
        os.replace(tmp, memo / key)
    except OSError:
        pass
    return digest


def read_meta(entry: Path) -> dict | None:
    try:
        meta = json.loads((entry / META).read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def _digest(path: Path, size: int) -> str:
    """BLAKE2b of a file: whole up to WHOLE bytes; of a larger one, SAMPLES evenly spaced windows (head and tail
    included). Checked at every lookup, so it must stay cheap (<= 4 MiB read a file, milliseconds) where a multi-GB
    block file hashed whole would cost seconds at every start: size catches truncation, the windows overwrites of
    headers, footers and any sampled region; a change confined to the unsampled middle of a large file is missed."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as fh:
        if size <= WHOLE:
            while block := fh.read(1 << 20):
                h.update(block)
        else:
            step = (size - WINDOW) / (SAMPLES - 1)
            for k in range(SAMPLES):
                fh.seek(int(k * step))
                h.update(fh.read(WINDOW))
    return h.hexdigest()


def manifest(folder: Path) -> dict[str, list]:
    """`{relative path: [size, digest]}` of every file under `folder` but `meta.json`."""
    files = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.relative_to(folder).as_posix() != META:
            size = p.stat().st_size
            files[p.relative_to(folder).as_posix()] = [size, _digest(p, size)]
    return files


def damage(entry: Path, meta: dict) -> str | None:
    """What is wrong with an entry's files (None: they are as built)."""
    files = meta.get(FILES)
    if not isinstance(files, dict):
        return "it records no file sizes and digests (built by an older version)"
    for rel, record in files.items():
        try:
            size, digest = record
            actual = (entry / rel).stat().st_size
            if actual != size:
                return f"{rel} has {actual} bytes, {size} were written"
            if _digest(entry / rel, size) != digest:
                return f"{rel} was changed after it was written"
        except (OSError, TypeError, ValueError) as e:
            return f"{rel} cannot be read ({type(e).__name__})"
    return None


def lookup(entry: Path, valid: Callable[[Path, dict], bool] | None = None) -> dict | None:
    """The metadata of an entry that exists, is undamaged and passes `valid`; else None."""
    meta = read_meta(entry)
    if meta is None:
        return None
    problem = damage(entry, meta)
    if problem is None and valid is not None and not valid(entry, meta):
        problem = "its content does not match its metadata"
    if problem is not None:
        log.warning("cache entry %s cannot be used (%s): rebuilding it", entry, problem)
        return None
    return meta


def get_or_build(
    entry: Path, build: Callable[[Path], dict], valid: Callable[[Path, dict], bool] | None = None
) -> tuple[Path, bool]:
    """Return `(entry, reused)`. `build(tmp_dir)` fills a fresh directory and returns the metadata to seal it with.

    An existing entry that is damaged or fails `valid` is removed and rebuilt.
    """
    if lookup(entry, valid) is not None:
        return entry, True
    undo_if_refused(entry)
    entry.parent.mkdir(parents=True, exist_ok=True)
    if entry.is_symlink() or entry.is_file():
        entry.unlink()
    elif entry.exists():
        shutil.rmtree(entry, ignore_errors=True)
    _sweep_partials(entry)
    tmp = entry.parent / f".{entry.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        meta = build(tmp)
        _write_json_durably(tmp / META, {**meta, FILES: manifest(tmp)})
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
