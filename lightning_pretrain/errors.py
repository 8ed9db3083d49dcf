"""The exception types every command ends in, and what counts as the user's input.

`InputError`: bad input, the user's to fix (a missing file, a column that does not exist, a sequence longer than the
model's positions, ...): one `error: ...` line, exit status 2. `RunStopped`: a run that cannot go on (a non-finite
loss): one line, exit 1, with a resumable checkpoint. `refused_values`: a library refusing what the user configured
(a config with zero heads, a truncated weights file) becomes an `InputError`. Anything else is a bug and keeps its
traceback. `entry.console` turns these into exit statuses for every console script.
"""

from __future__ import annotations

import contextlib
from pathlib import Path


class InputError(Exception):
    """Bad input, reported to the user as one line and a non-zero exit."""


class RunStopped(Exception):
    """The run cannot go on (not the user's input): the CLI prints it as one `error:` line and exits 1."""


# the libraries that build models and read weights from what the user names; an error raised inside one of them
# while doing so is about the user's config or files, not about this package's code
LIBRARIES = ("transformers", "safetensors", "tokenizers", "huggingface_hub", "torch")
REFUSALS = (
    ValueError,
    TypeError,
    ZeroDivisionError,
    AssertionError,
    KeyError,
    IndexError,
    RuntimeError,
    OSError,
    EOFError,
    ImportError,  # a configured value that needs a package not installed (an accelerator, an attention kernel)
)


def library_cause(e: BaseException | None, libraries: tuple[str, ...] = LIBRARIES) -> tuple[BaseException, str] | None:
    """The first exception of `e`'s cause chain whose innermost frame is in one of `libraries`, with that module."""
    while e is not None:
        tb = e.__traceback__
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        if tb is not None:
            parts = Path(tb.tb_frame.f_code.co_filename).with_suffix("").parts
            at = next((i for i, part in enumerate(parts) if part in libraries), None)
            if at is not None and "lightning_pretrain" not in parts:
                return e, ".".join(parts[at:])
        e = e.__cause__
    return None


def first_line(e: BaseException) -> str:
    """The message on one line: its lines joined (jsonargparse puts the reason below a generic first line)."""
    text = " ".join(line.strip() for line in str(e).splitlines() if line.strip())
    return f"{type(e).__name__}: {text[:300]}" if text else type(e).__name__


@contextlib.contextmanager
def refused_values(what: str, libraries: tuple[str, ...] = LIBRARIES):
    """Within this block, an error that a model/weights library raises (`LIBRARIES`; e.g. `ZeroDivisionError` from a
    config with zero attention heads, `SafetensorError` from a truncated file) is an `InputError` about `what`.
    Errors raised in this package's own code stay bugs."""
    try:
        yield
    except InputError:
        raise
    except Exception as e:  # narrowed by what it is and where it was raised
        ours = e.__cause__ or e.__context__
        while ours is not None and not isinstance(ours, InputError):  # ours, wrapped by a library on its way out
            ours = ours.__cause__ or ours.__context__
        if ours is not None:
            raise ours from e
        found = library_cause(e, libraries)
        if found is not None and (isinstance(found[0], REFUSALS) or type(found[0]).__module__.startswith(libraries)):
            raise InputError(f"{what}: {first_line(found[0])} (in {found[1]})") from e
        raise
