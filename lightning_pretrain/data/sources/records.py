"""A table file's records, each with the place it came from ("line 17"), or one InputError naming that place.

`records(path)` reads a .csv/.tsv/.jsonl/.json file and refuses what cannot be read as rows: not UTF-8 text
(`check_encoding`: UTF-16/32 named, with the `iconv` command; binary; latin-1), malformed JSON, a record that is not
an object, a CSV/TSV row with more or fewer fields than the header, a duplicate column name, a file without rows.
The pretraining corpus and the fine-tuning tables both read through it (`validate.py`, `tables.py`), so both see a
file the same way and name the same line when it is wrong.
"""

from __future__ import annotations

import codecs
import csv
import json
import numbers
from collections.abc import Iterator
from pathlib import Path

from lightning_pretrain.data.sources import formats
from lightning_pretrain.errors import InputError

# byte-order marks of the encodings `iconv` knows by these names (UTF-32's first: its LE mark starts like UTF-16's)
_BOMS = (
    (codecs.BOM_UTF32_LE, "UTF-32"),
    (codecs.BOM_UTF32_BE, "UTF-32"),
    (codecs.BOM_UTF16_LE, "UTF-16"),
    (codecs.BOM_UTF16_BE, "UTF-16"),
)
# (name, bytes per unit, the bytes of a unit that are NUL for ASCII text) of BOM-less wide encodings
_WIDE = (("UTF-32LE", 4, (1, 2, 3)), ("UTF-32BE", 4, (0, 1, 2)), ("UTF-16LE", 2, (1,)), ("UTF-16BE", 2, (0,)))


def check_encoding(path: str, chunk: int = 1 << 20) -> None:
    """Refuse a file that is not UTF-8 text: UTF-16/32 (by byte-order mark, or every other byte NUL), binary (a NUL
    byte), or any other encoding (an invalid UTF-8 sequence), naming the byte offset."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            if offset == 0:
                for bom, name in _BOMS:
                    if block.startswith(bom):
                        raise InputError(
                            f"{path} is {name} (it starts with a byte-order mark); convert it to UTF-8, "
                            f"e.g. `iconv -f {name.lower()} -t utf-8 {path} > {_utf8_name(path)}`"
                        )
            if b"\x00" in block:
                wide = _wide_encoding(block[: 1 << 16]) if offset == 0 else None
                if wide:
                    raise InputError(
                        f"{path} looks like {wide} text (NUL bytes between the characters, no "
                        f"byte-order mark); convert it to UTF-8, e.g. `iconv -f {wide.lower()} -t utf-8 "
                        f"{path} > {_utf8_name(path)}`"
                    )
                raise InputError(f"{path} looks binary (NUL byte at offset {offset + block.index(0)}), not text")
            try:
                decoder.decode(block)
            except UnicodeDecodeError as e:
                raise InputError(
                    f"{path} is not valid UTF-8 (byte offset {offset + e.start}); "
                    f"convert it, e.g. `iconv -f latin1 -t utf-8`"
                ) from None
            offset += len(block)
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        raise InputError(f"{path} is not valid UTF-8 (truncated character at the end)") from None


def _wide_encoding(sample: bytes) -> str | None:
    """UTF-16/32 without a byte-order mark: the NUL bytes of ASCII characters sit at fixed places in every unit."""
    for name, width, zeros in _WIDE:
        n = len(sample) // width * width
        if n == 0:
            continue
        lanes = [sample[i:n:width] for i in range(width)]
        share = [lane.count(0) / len(lane) for lane in lanes]
        if all(share[i] > 0.9 if i in zeros else share[i] < 0.1 for i in range(width)):
            return name
    return None


def _utf8_name(path: str) -> str:
    p = Path(path)
    return p.stem + ".utf8" + p.suffix


# a document (one CSV field) may be longer than the csv module's default limit of 128 KiB
csv.field_size_limit(max(csv.field_size_limit(), 2**31 - 1))


def records(path: str, header: bool = True, quoting: bool = True) -> tuple[list[str], Iterator[tuple[str, dict]]]:
    """The column names and an iterator of `(where, record)` of a .csv/.tsv/.jsonl/.json file.

    CSV/TSV: `header` says whether the first row names the columns (else they are "0", "1", ...); `quoting` whether
    double quotes enclose fields (fine-tuning reads TSV without, as GLUE's files need). Every row must have as many
    fields as the header (or the first row). JSON: JSON Lines (also in a .json file), or one document holding a list
    of records, an object of records or one list field; JSON columns are the keys of the first record. The iterator
    raises at its end when the file held no record at all."""
    check_encoding(path)
    fmt = formats.format_of(path)
    if not fmt.records:
        raise InputError(f"unsupported file type {path} (expected {', '.join(formats.RECORDS)})")
    if fmt.builder == "csv":
        return _csv_records(path, fmt.delimiter, header, quoting)
    return _json_records(path, lines=fmt.lines)


def _csv_records(path: str, delimiter: str, header: bool, quoting: bool):
    fh = open(path, newline="", encoding="utf-8-sig")  # utf-8-sig: a BOM (MRPC) is not part of the first name
    reader = csv.reader(fh, delimiter=delimiter, quoting=csv.QUOTE_MINIMAL if quoting else csv.QUOTE_NONE)
    rows = _numbered(reader, path)
    try:
        first = next(rows, None)
    except BaseException:
        fh.close()
        raise
    if first is None:
        fh.close()
        raise InputError(f"{path} is empty: no header, no rows")
    if header:
        columns = [name or f"Unnamed: {i}" for i, name in enumerate(first[2])]  # pandas' names for blank ones
        seen: dict[str, int] = {}
        for i, name in enumerate(columns):
            if name in seen:
                fh.close()
                raise InputError(
                    f"{path} line {first[0]}: the header names column {name!r} twice (columns "
                    f"{seen[name]} and {i}, 0-based); rename one"
                )
            seen[name] = i
    else:
        columns = [str(i) for i in range(len(first[2]))]

    def generate():
        try:
            n = 0
            for start, stop, fields in _chain(None if header else first, rows):
                if len(fields) != len(columns):
                    raise InputError(
                        _ragged(path, start, stop, len(fields), first, len(columns), delimiter, quoting, header)
                    )
                n += 1
                yield f"line {start}", dict(zip(columns, fields))
            if n == 0:
                raise InputError(f"{path} has a header (line {first[0]}) but no rows")
        finally:
            fh.close()

    return columns, generate()


def _numbered(reader, path: str) -> Iterator[tuple[int, int, list[str]]]:
    """(first line, last line, fields) of every non-blank row."""
    stop = 0
    try:
        for fields in reader:
            start, stop = stop + 1, reader.line_num
            if fields and fields != [""]:
                yield start, stop, fields
    except csv.Error as e:  # e.g. a NUL byte in a field
        raise InputError(f"{path} line {reader.line_num}: {e}") from None


def _chain(first, rows):
    if first is not None:
        yield first
    yield from rows


def _ragged(path, start, stop, n, first, expected, delimiter, quoting, header) -> str:
    ref = f"the {'header' if header else 'first row'} (line {first[0]}) has {expected}"
    fields = f"{n} field{'s' if n != 1 else ''}"
    if start != stop and quoting:
        return (
            f"{path} line {start}: a double quote opens a field that runs on to line {stop}, giving a row of "
            f'{fields} where {ref}; close the quote (a quote inside a quoted text is written twice: "")'
        )
    sep = "tab" if delimiter == "\t" else "comma"
    if n > expected:
        hint = f"a {sep} inside a text must be inside double quotes" if quoting else f"a text must not hold a {sep}"
    else:
        hint = "a field is missing" + (
            ", or a double quote joined two fields: a text holding quotes must be quoted whole, with its quotes doubled"
            if quoting
            else ""
        )
    return f"{path} line {start}: {fields} where {ref} ({hint})"


def json_lines(path: str) -> bool:
    """Whether a .jsonl/.json file is JSON Lines: a .jsonl file, or a .json file whose first line is a whole JSON
    object with more lines after it (else a .json file is one document)."""
    if formats.format_of(path).lines:
        return True
    with open(path, encoding="utf-8-sig") as fh:
        first = next((line for line in fh if line.strip()), "")
        if not first.lstrip().startswith("{"):
            return False
        try:
            json.loads(first)
        except ValueError:
            return False
        return any(line.strip() for line in fh)


def _json_records(path: str, lines: bool):
    if lines or json_lines(path):
        return _json_lines(path)
    with open(path, encoding="utf-8-sig") as fh:
        try:
            obj = json.load(fh)
        except json.JSONDecodeError as e:
            raise InputError(f"{path} line {e.lineno} column {e.colno}: not valid JSON ({e.msg})") from None
    if isinstance(obj, list):
        items = [(f"record {i}", r) for i, r in enumerate(obj)]
    elif isinstance(obj, dict) and obj and all(isinstance(v, dict) for v in obj.values()):
        items = [(f"record {k!r}", r) for k, r in obj.items()]  # {"0": {...}, "1": {...}} (the MNLI subsets)
    elif isinstance(obj, dict) and any(isinstance(v, list) for v in obj.values()):
        fields = [k for k, v in obj.items() if isinstance(v, list)]
        if len(fields) > 1:
            raise InputError(
                f"{path}: an object with {len(fields)} list fields ({', '.join(fields[:5])}); expected "
                f"a list of records, an object of records, or one list field"
            )
        items = [(f"record {fields[0]}[{i}]", r) for i, r in enumerate(obj[fields[0]])]  # {"data": [...]}
    elif isinstance(obj, dict):
        items = [("record 0", obj)]  # a single record
    else:
        raise InputError(
            f"{path}: the top level is {describe(obj)}; expected a list of records, an object of "
            f"records, or one JSON object per line"
        )
    for where, r in items:
        if not isinstance(r, dict):
            raise InputError(f"{path} {where}: {describe(r)}, not an object of fields")
    if not items:
        raise InputError(f"{path} holds no records")
    return (list(items[0][1]), iter(items))


def _json_lines(path: str):
    with open(path, encoding="utf-8-sig") as fh:
        first = next(((i, line) for i, line in enumerate(fh, 1) if line.strip()), None)
    if first is None:
        raise InputError(f"{path} is empty: no JSON records")
    columns = list(_json_line(path, *first))

    def generate():
        with open(path, encoding="utf-8-sig") as fh:
            for i, line in enumerate(fh, 1):
                if line.strip():
                    yield f"line {i}", _json_line(path, i, line)

    return columns, generate()


def _json_line(path: str, i: int, line: str) -> dict:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise InputError(
            f"{path} line {i}: not valid JSON ({e.msg}, column {e.colno}); a .jsonl file holds one JSON object per line"
        ) from None
    if not isinstance(obj, dict):
        raise InputError(f"{path} line {i}: {describe(obj)}, not a JSON object of fields")
    return obj


def describe(v) -> str:
    """What a value is, for a message: 'null', 'the number 3', 'a list', ..."""
    if v is None or (isinstance(v, float) and v != v):
        return "null" if v is None else "NaN"
    if isinstance(v, bool):
        return f"the boolean {str(v).lower()}"
    if isinstance(v, numbers.Number):
        return f"the number {v!r}"
    if isinstance(v, str):
        return f"the string {v[:40]!r}"
    if isinstance(v, (list, tuple)):
        return "a list"
    if isinstance(v, dict):
        return "an object"
    return f"a {type(v).__name__}"
