"""The one exception type for bad user input.

Anything raised as `InputError` is the user's to fix (a missing file, a column that does not exist, a sequence
longer than the model's positions, ...). The CLI prints its message as a single `error: ...` line and exits with
status 2; every other exception is a bug and keeps its traceback.
"""


class InputError(Exception):
    """Bad input, reported to the user as one line and a non-zero exit."""
