"""One validation layer for tabular and JSON input, shared by the pretraining corpus and the fine-tuning tables.

Files are read as records by `records.py` (encoding, JSON syntax, ragged rows, duplicate columns, no rows: each
refused naming the line); here a text column's values are checked: a number, null, list or object is not text,
a column of numbers only is not a text column, and a blank text is dropped by the corpus but refused in a labelled
fine-tuning split. `check_file` runs every check over a corpus file once per content (remembered on disk).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable

from lightning_pretrain.data import cache
from lightning_pretrain.data.sources import formats
from lightning_pretrain.data.sources.records import check_encoding, describe, records
from lightning_pretrain.errors import InputError

_NUMBER = re.compile(r"[+-]?(?:\d[\d_]*(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")


class TextColumn:
    """Checks the values of one text column as they stream past (`check(where, value)`, then `finish()`): a value
    must be a string; a blank one is refused unless `blank_ok` (the corpus drops blank documents); a column whose
    every non-blank value is a number is refused at the end (most likely an id or label column)."""

    def __init__(self, column: str, source: str, blank_ok: bool):
        self.column, self.source, self.blank_ok = column, source, blank_ok
        self.numbers_only, self.example, self.seen = True, None, 0

    def check(self, where: str, value) -> str:
        if not isinstance(value, str):
            missing = value is None or (isinstance(value, float) and value != value)  # (pandas: NaN)
            what = "missing or null" if missing else describe(value)
            raise InputError(
                f"{self.source} {where}: the text column {self.column!r} is {what}, not text (a text must be a string)"
            )
        if not value.strip():
            if not self.blank_ok:
                raise InputError(
                    f"{self.source} {where}: the text column {self.column!r} is empty; every labelled "
                    f"example needs its text"
                )
            return value
        self.seen += 1
        if self.numbers_only:
            if _NUMBER.fullmatch(value.strip()):
                self.example = self.example or (where, value)
            else:
                self.numbers_only = False
        return value

    def finish(self) -> None:
        if self.seen and self.numbers_only:
            where, value = self.example
            raise InputError(
                f"{self.source}: every value of the text column {self.column!r} is a number (e.g. "
                f"{where}: {value!r}); is it the text column? set --data.text_column"
            )


def texts(values: Iterable, column: str, source: str, where: list[str], blank_ok: bool) -> list[str]:
    """`values` checked by a `TextColumn`, as a list (`where[i]`: where the i-th value came from)."""
    check = TextColumn(column, source, blank_ok)
    out = [check.check(where[i], v) for i, v in enumerate(values)]
    check.finish()
    return out


def column_not_found(column: str, where: str, names) -> InputError:
    names = list(names)
    shown = [repr(n) if str(n) != str(n).strip() else str(n) for n in names]  # a blank around a name is visible
    shown = [n if len(n) <= 40 else n[:37] + "..." for n in shown[:20]] + (
        [f"... ({len(names)} in all)"] if len(names) > 20 else []
    )
    return InputError(
        f"column '{column}' not found in {where}; available columns: {', '.join(shown)} (set --data.text_column)"
    )


# the version of the checks in `check_file`: a file that passed older checks is checked again
CHECKS = "v1"
_passed: set[str] = set()  # memo keys of the files that passed in this process


def check_file(
    path: str, digest: str, text_column: str | None = None, header: bool = True, quoting: bool = True
) -> None:
    """Refuse a file that would train on garbage, naming the line: not UTF-8 text (UTF-16, binary, latin-1); a
    CSV/TSV row with more or fewer fields than the header (`header`: whether there is one; `quoting`: whether
    double quotes enclose fields); malformed JSON or a record that is not an object; no rows at all; and, given a
    `text_column` (the corpus), a text that is a number, null, a list or an object, or a column of numbers only.
    A file that passed is remembered by its content `digest` (under `<cache>/validated`): checked once, not at
    every start."""
    fmt, suffix = formats.format_of(path), formats.suffix(path)
    key = hashlib.sha256(f"{CHECKS}:{digest}:{suffix}:{text_column}:{header}:{quoting}".encode()).hexdigest()
    memo = cache.current_root() / "validated" / key
    if key in _passed or memo.exists():
        return
    if fmt.builder == "parquet":
        if text_column is not None:
            _check_parquet(path, text_column)
    elif not fmt.records:  # plain text
        check_encoding(path)
    elif text_column is None:
        for _ in records(path, header, quoting)[1]:
            pass
    else:
        _check_records(path, text_column)
    _passed.add(key)
    try:  # best effort: an unwritable cache only costs the next run a re-check
        cache.undo_if_refused(memo)
        memo.parent.mkdir(parents=True, exist_ok=True)
        memo.touch()
    except OSError:
        pass


def _check_records(path: str, column: str) -> None:
    """A corpus CSV/TSV (read with quotes, as `datasets` reads it) or JSON file and its text column."""
    columns, rows = records(path)
    if formats.format_of(path).builder == "csv" and column not in columns:
        raise column_not_found(column, path, columns)
    check, absent, keys = TextColumn(column, path, blank_ok=True), None, dict.fromkeys(columns)
    for where, record in rows:
        if column in record:
            check.check(where, record[column])
        else:
            absent = absent or where
            keys.update(dict.fromkeys(record))
    if absent and not check.seen:
        raise column_not_found(column, path, keys)
    if absent:
        raise InputError(f"{path} {absent}: the record has no {column!r} field (set --data.text_column)")
    check.finish()


def _check_parquet(path: str, column: str) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
        schema = pf.schema_arrow
        if column not in schema.names:
            raise column_not_found(column, path, schema.names)
        if schema.names.count(column) > 1:
            raise InputError(f"{path}: the column {column!r} appears {schema.names.count(column)} times")
        kind = schema.field(column).type
        kind = kind.value_type if pa.types.is_dictionary(kind) else kind
        if not (
            pa.types.is_string(kind)
            or pa.types.is_large_string(kind)
            or getattr(pa.types, "is_string_view", lambda t: False)(kind)
        ):
            raise InputError(
                f"{path}: the text column {column!r} holds {kind} values, not text (set --data.text_column)"
            )
        check, row = TextColumn(column, path, blank_ok=True), 0
        for batch in pf.iter_batches(columns=[column]):
            for value in batch.column(0).to_pylist():
                check.check(f"row {row}", value)
                row += 1
    except (OSError, KeyError, pa.ArrowException) as e:
        raise InputError(f"could not read {path} as parquet: {type(e).__name__}: {str(e).strip()[:200]}") from e
    if row == 0:
        raise InputError(f"{path} holds no rows")
    check.finish()
