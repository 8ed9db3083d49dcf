"""Labelled tables: a local .csv/.tsv/.jsonl/.json/.parquet file (or .txt lines) or a hub dataset split, as columns.

Files are read by `records.py`, as the corpus reads them, so a ragged row, malformed JSON or a file without rows is
refused naming its line, and every row keeps its place for later messages. TSV is read without quote processing
(GLUE's files: MRPC sentences start with a bare `"`); header-less columns are named "0", "1", ...; a .json file
holds JSON Lines, a list of records, an object of records or one list field. Files are identified by
`sources.content_digest` (remembered across runs), hub splits by the dataset's own fingerprint.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import datasets
import pandas as pd

from lightning_pretrain import compat
from lightning_pretrain.data.sources import formats, records, validate
from lightning_pretrain.data.sources import text as sources
from lightning_pretrain.errors import InputError

Column = int | str


def _read_table(path: str, header: bool) -> tuple[pd.DataFrame, list[str]]:
    """A local file as a DataFrame of strings (CSV/TSV) or JSON values (header-less columns are named "0", "1",
    ...), and where each row came from ("line 17", "record 3", "row 5")."""
    fmt = formats.format_of(path)
    if not fmt.table:
        raise InputError(f"unsupported file type {path} (expected one of {', '.join(formats.TABLES)})")
    if not os.path.isfile(path):
        raise InputError(f"file not found: {path}")
    if fmt.builder == "parquet":
        try:
            df = pd.read_parquet(path)
        except sources.READ_ERRORS as e:
            raise InputError(f"could not read {path}: {sources.first_line(e)}") from e
        if len(set(map(str, df.columns))) < len(df.columns):
            raise InputError(f"{path}: a column name appears twice ({', '.join(map(str, df.columns))})")
        if len(df) == 0:
            raise InputError(f"{path} holds no rows")
        where = [f"row {i}" for i in range(len(df))]
    else:  # TSV without quote processing (GLUE)
        columns, rows = records.records(path, header, quoting=fmt.quoting)
        where, values = [], []
        for place, record in rows:
            where.append(place)
            values.append(record)
            columns.extend(k for k in record if k not in columns)  # (JSON records may add keys)
        df = pd.DataFrame({c: pd.Series([r.get(c) for r in values], dtype=object) for c in columns})
    df.columns = [str(c) for c in df.columns]
    return df, where


def resolve_column(ref: Column | None, names: list[str]) -> str | None:
    """The column `ref` names: a column name, else a 0-based position (header-less files are named "0", "1", ...;
    a position also works with a header, e.g. MRPC's `#1 String`, which YAML would read as a comment)."""
    if ref is None:
        return None
    if str(ref) in names:
        return str(ref)
    if isinstance(ref, int) and 0 <= ref < len(names):
        return names[ref]
    return None


@functools.lru_cache(maxsize=4)
def hub_splits(spec: str) -> datasets.DatasetDict:
    """Every split of the hub dataset 'id[:config]' (loaded once per process)."""
    dataset_id, config, _ = sources.parse_hub(spec)
    return sources.load_hub(
        dataset_id,
        config,
        hint="; offline, pass local files (--data.train_file / --data.val_file) or a directory as --data.source",
    )


@dataclass(frozen=True)
class Table:
    """A table's column names, `values(column)` (the column's cells as a list) and `where`: each row's place in its
    file ("line 17"), for messages."""

    columns: list[str]
    values: Callable[[str], list]
    where: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class TableSource:
    """One table: a local file, or a split of a hub dataset."""

    kind: Literal["file", "hub"]
    spec: str  # absolute file path, or hub 'id[:config]'
    split: str = ""  # hub split name

    def identity(self, header: bool = True) -> str:
        """Changes whenever the rows could: the file's content digest, or the hub dataset's own fingerprint. A file
        is checked first (`validate.check_file`, read as `header` says), also when its cache entry exists: a file
        must pass today's checks to reuse entries built from it."""
        if self.kind == "file":
            digest = sources.content_digest(self.spec)
            validate.check_file(self.spec, digest, header=header, quoting=formats.format_of(self.spec).quoting)
            return f"file:{Path(self.spec).name}:{digest}"
        return f"hub:{self.spec}:{self.split}:{compat.dataset_fingerprint(hub_splits(self.spec)[self.split]) or ''}"

    def describe(self) -> str:
        return self.spec if self.kind == "file" else f"{self.spec}@{self.split}"

    @property
    def is_lines(self) -> bool:
        """A .txt file: one unlabelled text per line."""
        return self.kind == "file" and formats.suffix(self.spec) == formats.LINES

    def read(self, header: bool) -> Table:
        """The rows; hub class ids become their names, so --data.labels may order the classes freely."""
        if self.is_lines:
            records.check_encoding(self.spec)
            with open(self.spec, encoding="utf-8-sig") as fh:
                lines = [(f"line {i}", line.rstrip("\r\n")) for i, line in enumerate(fh, 1) if line.strip()]
            if not lines:
                raise InputError(f"{self.spec} holds no text (every line is blank)")
            return Table(["text"], lambda column: [t for _, t in lines], [w for w, _ in lines])
        if self.kind == "file":
            df, where = _read_table(self.spec, header)
            return Table(list(df.columns), lambda column: df[column].tolist(), where)
        ds = hub_splits(self.spec)[self.split]
        if len(ds) == 0:
            raise InputError(f"{self.describe()} holds no rows")

        def values(column: str) -> list:
            feature = ds.features.get(column)
            if isinstance(feature, datasets.ClassLabel):
                return [feature.int2str(v) if v >= 0 else None for v in ds[column]]
            return ds[column]

        return Table(list(ds.column_names), values, [f"row {i}" for i in range(len(ds))])
