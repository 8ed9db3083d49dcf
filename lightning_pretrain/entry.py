"""One door for every console script: `console(main)` turns what a command raises into one `error: ...` line and an
exit status: bad input (`InputError`, a usage error, an OS error that is the user's to fix) 2, a stopped run
(`RunStopped`) 1, a signal 128 + its number (SIGTERM 143; Ctrl-C 130, `fit` saving a resumable checkpoint first).
A bug keeps its traceback. `Parser` is argparse with usage errors as one line; `on_refusal` registers what a refused
command must undo (a run folder it created, an output folder)."""

from __future__ import annotations

import argparse
import errno
import functools
import signal
import sys
from collections.abc import Callable

from lightning_pretrain.errors import InputError, RunStopped


class UsageError(InputError):
    """A missing, unknown or malformed option (argparse / jsonargparse)."""


class Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one `error:` line and exit status 2 (not a usage block)."""

    def error(self, message: str):
        raise UsageError(f"{message} (see {self.prog} --help)")


_UNDO: list[Callable[[], None]] = []


def on_refusal(undo: Callable[[], None]) -> None:
    """Run `undo` if this command ends refused (bad input or Ctrl-C): it must leave nothing behind."""
    _UNDO.append(undo)


def _undo() -> None:
    while _UNDO:
        try:
            _UNDO.pop()()
        except OSError:
            pass


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def say(message: str) -> None:
    print(f"error: {' '.join(message.split()) if chr(10) in message else message}", file=sys.stderr)


def console(main: Callable) -> Callable:
    """Wrap a console script's `main(argv)` in the project's exit-status contract (see the module docstring)."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    @functools.wraps(main)
    def run(argv: list[str] | None = None):
        outer = _UNDO[:]  # a console script run inside another (the GLUE suite's runs) keeps the outer one's
        _UNDO.clear()
        try:
            return main(argv)
        except SIGTERMException as e:  # a run stopped by a signal: the guard saved a resumable checkpoint
            name = getattr(e, "signal_name", "SIGTERM")
            saved = getattr(e, "checkpoint", None)
            say(
                f"stopped by {'Ctrl-C (SIGINT)' if name == 'SIGINT' else name} at step {getattr(e, 'step', '?')}; "
                + (
                    f"resumable checkpoint: {saved} (continue with the same command and --ckpt_path last)"
                    if saved
                    else "no checkpoint was saved"
                )
            )
            sys.exit(128 + getattr(signal, name, signal.SIGTERM))
        except KeyboardInterrupt:
            _undo()
            say("interrupted (Ctrl-C) before anything was saved")
            sys.exit(128 + signal.SIGINT)
        except RunStopped as e:
            saved = getattr(e, "checkpoint", None)
            say(f"{e}" + (f"; resumable checkpoint of the weights before that step: {saved}" if saved else ""))
            sys.exit(1)
        except Exception as e:
            message = user_error(e)
            if message is None:
                raise  # a bug: keep the traceback
            _undo()
            say(message)
            sys.exit(2)
        finally:
            _UNDO[:] = outer

    return run


# OS errors that are the user's to fix (permissions, a full disk, a file where a folder belongs), said in one line
OS_ERRORS = {
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "read-only file system",
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.ENOTDIR: "not a directory",
    errno.EISDIR: "is a directory",
    errno.EEXIST: "file exists",
    errno.ENAMETOOLONG: "file name too long",
}


def user_error(e: BaseException | None) -> str | None:
    """The one-line message of an error that is the user's to fix, or None for a bug (which keeps its traceback).

    Follows explicit causes only (jsonargparse re-raises errors of instantiation `from` the original): an exception
    merely raised *while handling* an InputError is a bug, not bad input.
    """
    from lightning.pytorch.utilities.exceptions import MisconfigurationException

    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, InputError):
            return worker_message(str(e))
        if isinstance(e, OSError) and e.errno in OS_ERRORS:
            where = f": {e.filename}" if e.filename else ""
            return f"{OS_ERRORS[e.errno]}{where} ({e.strerror or e})"
        if isinstance(e, MisconfigurationException):  # Lightning's own check of the Trainer's settings
            return " ".join(str(e).split())
        seen.add(id(e))
        e = e.__cause__
    return None


def worker_message(message: str) -> str:
    """The original message of an error re-raised from a DataLoader worker ("Caught InputError in DataLoader worker
    process 0. Original Traceback ..." ends with the line "lightning_pretrain.errors.InputError: <message>")."""
    if message.startswith("Caught ") and "Original Traceback" in message:
        last = message.rstrip().splitlines()[-1]
        return last.split(": ", 1)[1] if ": " in last else last
    return message
