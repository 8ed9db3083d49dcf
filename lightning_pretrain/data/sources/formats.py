"""The file formats data/ reads, in one table: a suffix's `Format` says how every reader takes the file.

The corpus loads a file with its `datasets` builder (sources/text.py), the fine-tuning tables and the validation layer
read its rows (sources/records.py, sources/tables.py, sources/validate.py), prompts refuse tables (sources/prompts.py)
and a directory's split files are searched in the table's order (finetune/splits.py). A new suffix of a known kind
is one row here; a new kind is one row here and its reader in records.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Format:
    """How a suffix is read."""

    builder: str  # the `datasets` packaged builder of the corpus: 'text', 'json', 'csv' or 'parquet'
    delimiter: str | None = None  # CSV-like files: the field separator
    quoting: bool = True  # fine-tuning tables: double quotes enclose fields (TSV: no, as GLUE's files need)
    lines: bool = False  # JSON: one object per line, always (a .json file is JSON Lines only when it looks so)

    @property
    def table(self) -> bool:
        """Rows of named columns (a table), not plain text."""
        return self.builder != "text"

    @property
    def records(self) -> bool:
        """Read row by row as text records by `records.py` (CSV-like and JSON files; parquet is columnar)."""
        return self.builder in ("csv", "json")


TEXT = Format("text")
# tables first, in the order a directory's train/dev/test file is searched for (GLUE's .tsv first)
FORMATS: dict[str, Format] = {
    ".tsv": Format("csv", delimiter="\t", quoting=False),
    ".csv": Format("csv", delimiter=","),
    ".jsonl": Format("json", lines=True),
    ".json": Format("json"),
    ".parquet": Format("parquet"),
    ".txt": TEXT,
    ".text": TEXT,
    ".raw": TEXT,
    ".tokens": TEXT,
    ".md": TEXT,
    ".rst": TEXT,
}
LINES = ".txt"  # fine-tuning: plain text of one input per line (a prompt or source to predict for)
TABLES = tuple(suffix for suffix, fmt in FORMATS.items() if fmt.table)
RECORDS = tuple(suffix for suffix, fmt in FORMATS.items() if fmt.records)


def suffix(path: str) -> str:
    return Path(path).suffix.lower()


def format_of(path: str) -> Format:
    """The format of a file by its suffix; plain text when the suffix is not a known one."""
    return FORMATS.get(suffix(path), TEXT)


def is_table(path: str) -> bool:
    return format_of(path).table
