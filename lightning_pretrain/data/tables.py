"""Labelled tables: a local .csv/.tsv/.jsonl/.json/.parquet file (or .txt lines) or a hub dataset split, as columns.

TSV is read without quote processing (GLUE's files: MRPC sentences start with a bare `"`); header-less columns are
named "0", "1", ...; a .json file holds a list of records, an object of records or one list field. Files are
identified by `sources.content_digest` (remembered across runs), hub splits by the dataset's own fingerprint.
"""

from __future__ import annotations

import csv
import functools
import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import datasets
import pandas as pd

from lightning_pretrain.data import sources
from lightning_pretrain.errors import InputError

SUFFIXES = (".tsv", ".csv", ".jsonl", ".json", ".parquet")
Column = int | str


def read_table(path: str, header: bool) -> pd.DataFrame:
    """A local file as a DataFrame of strings (CSV/TSV) or JSON values; header-less columns are named "0", "1", ..."""
    suffix = Path(path).suffix.lower()
    if suffix not in SUFFIXES:
        raise InputError(f"unsupported file type {path} (expected one of {', '.join(SUFFIXES)})")
    if not os.path.isfile(path):
        raise InputError(f"file not found: {path}")
    if suffix != ".parquet":
        sources.check_utf8(path)
    try:
        if suffix in (".csv", ".tsv"):
            tsv = suffix == ".tsv"
            df = pd.read_csv(path, sep="\t" if tsv else ",", header=0 if header else None,
                             quoting=csv.QUOTE_NONE if tsv else csv.QUOTE_MINIMAL, dtype=str,
                             keep_default_na=False, encoding="utf-8-sig")  # utf-8-sig: MRPC starts with a BOM
        elif suffix == ".parquet":
            df = pd.read_parquet(path)
        elif suffix == ".jsonl":
            with open(path, encoding="utf-8") as fh:
                df = pd.DataFrame.from_records([json.loads(line) for line in fh if line.strip()])
        else:
            df = pd.DataFrame.from_records(_json_records(json.loads(Path(path).read_text(encoding="utf-8")), path))
    except sources.READ_ERRORS as e:  # parser errors name the line but not the file
        raise InputError(f"could not read {path}: {sources.first_line(e)}") from e
    df.columns = [str(c) for c in df.columns]
    return df


def _json_records(obj, path: str) -> list[dict]:
    if isinstance(obj, list):
        return obj
    if isinstance(obj, dict) and obj and all(isinstance(v, dict) for v in obj.values()):
        return list(obj.values())  # {"0": {...}, "1": {...}} (the MNLI subsets)
    if isinstance(obj, dict):
        lists = [v for v in obj.values() if isinstance(v, list)]
        if len(lists) == 1:
            return lists[0]  # {"data": [...]}
    raise InputError(f"{path}: expected a list of records, an object of records, or one list field")


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


def text(v) -> str:
    """A cell as text (a missing cell is empty)."""
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v)


@functools.lru_cache(maxsize=4)
def hub_splits(spec: str) -> datasets.DatasetDict:
    """Every split of the hub dataset 'id[:config]' (loaded once per process)."""
    dataset_id, config, _ = sources.parse_hub(spec)
    return sources.load_hub(dataset_id, config, hint="; offline, pass local files (--data.train_file / "
                                                     "--data.val_file) or a directory as --data.source")


@dataclass(frozen=True)
class Table:
    """A table's column names and `values(column)`, the column's cells as a list."""

    columns: list[str]
    values: Callable[[str], list]


@dataclass(frozen=True)
class TableSource:
    """One table: a local file, or a split of a hub dataset."""

    kind: Literal["file", "hub"]
    spec: str  # absolute file path, or hub 'id[:config]'
    split: str = ""  # hub split name

    def identity(self) -> str:
        """Changes whenever the rows could: the file's content digest, or the hub dataset's own fingerprint."""
        if self.kind == "file":
            return f"file:{Path(self.spec).name}:{sources.content_digest(self.spec)}"
        return f"hub:{self.spec}:{self.split}:{getattr(hub_splits(self.spec)[self.split], '_fingerprint', '')}"

    def describe(self) -> str:
        return self.spec if self.kind == "file" else f"{self.spec}@{self.split}"

    @property
    def is_lines(self) -> bool:
        """A .txt file: one unlabelled text per line."""
        return self.kind == "file" and self.spec.lower().endswith(".txt")

    def read(self, header: bool) -> Table:
        """The rows; hub class ids become their names, so --data.labels may order the classes freely."""
        if self.is_lines:
            sources.check_utf8(self.spec)
            with open(self.spec, encoding="utf-8") as fh:
                lines = [line.rstrip("\r\n") for line in fh if line.strip()]
            return Table(["text"], lambda column: lines)
        if self.kind == "file":
            df = read_table(self.spec, header)
            return Table(list(df.columns), lambda column: df[column].tolist())
        ds = hub_splits(self.spec)[self.split]

        def values(column: str) -> list:
            feature = ds.features.get(column)
            if isinstance(feature, datasets.ClassLabel):
                return [feature.int2str(v) if v >= 0 else None for v in ds[column]]
            return ds[column]

        return Table(list(ds.column_names), values)
