"""Where each split's source -> target pairs come from, and their raw text: a table's two columns (a file, a
directory's train/dev/test file or a hub split, located by `splits.py`), or two parallel plain-text files where line
i of the target file is the target of line i of the source file; the held-out validation pairs, the training subset.
"""

from __future__ import annotations

import os

import torch

from lightning_pretrain.data.finetune.splits import Splits, holdout
from lightning_pretrain.data.sources import formats, records, tables, validate
from lightning_pretrain.data.sources.tables import Column, TableSource
from lightning_pretrain.errors import InputError


class PairSplits:
    """The pairs of 'train', 'val', 'test' and 'predict' (sources only): `files[split]` is a table, or the source
    side of parallel text when `targets[split]` names its target side; else `source` (a hub id or a directory)."""

    def __init__(
        self,
        source: str | None,
        files: dict[str, str | None],
        targets: dict[str, str | None],
        hub_split_names: dict[str, str | None],
        source_column: Column,
        target_column: Column,
        header: bool,
        drop_empty: bool,
        val_fraction: float,
        seed: int,
        max_train_examples: int | None,
    ):
        for split, target in targets.items():
            if target and not files.get(split):
                raise InputError(
                    f"--data.{split}_target_file needs --data.{split}_file: the source lines it pairs with"
                )
            if target and formats.is_table(files[split]):
                raise InputError(
                    f"--data.{split}_file {files[split]} is a table: name its target column "
                    f"(--data.target_column), or give plain text with --data.{split}_target_file"
                )
        self.inputs = Splits(
            source, files, hub_split_names, source_column, None, target_column, header, val_fraction, seed
        )
        self.targets = {k: os.path.abspath(os.path.expanduser(v)) for k, v in targets.items() if v}
        self.source_column, self.target_column, self.header = source_column, target_column, header
        self.drop_empty, self.val_fraction, self.seed = drop_empty, val_fraction, seed
        self.max_train_examples = max_train_examples

    def present(self, split: str) -> bool:
        return self.inputs.source_of(split) is not None

    def identity(self, split: str) -> str:
        """Changes whenever the split's pairs could (a cache key part): its file(s) or hub split."""
        part = "train" if split == "val" and self.inputs.held_out() else split
        target = self.targets.get(part) if split != "predict" else None
        return self.inputs.identity(split) + (
            f"|target:{TableSource('file', _existing(target, part)).identity()}" if target else ""
        )

    def rows(self, split: str) -> dict[str, list]:
        """{'source': [...], 'target': [...] (not for predict)} of one split, untokenized and checked."""
        if split == "val" and self.inputs.held_out():
            return self._holdout(self._read("train"), "val")
        rows = self._read(split)
        if not rows["source"]:
            raise InputError(f"{self.inputs.describe(split)} holds no example (every source is blank)")
        if split == "train" and self.inputs.held_out():
            rows = self._holdout(rows, "train")
        if split == "train" and self.max_train_examples and self.max_train_examples < len(rows["source"]):
            pick = torch.randperm(len(rows["source"]), generator=torch.Generator().manual_seed(self.seed))
            rows = {k: [v[i] for i in sorted(pick[: self.max_train_examples].tolist())] for k, v in rows.items()}
        return rows

    def _read(self, split: str) -> dict[str, list]:
        src = self.inputs.source_of(split)
        if src is None:
            raise InputError(f"no {split} data: pass --data.{split}_file or a --data.source that has a {split} split")
        plain = src.kind == "file" and not formats.is_table(src.spec)
        if split == "predict" and plain:  # one source per line; a blank line is no input
            return {"source": [t for _, t in _lines(src.spec) if t.strip()]}
        if split in self.targets:
            return _parallel(src.spec, _existing(self.targets[split], split), self.drop_empty)
        if plain:
            raise InputError(
                f"--data.{split}_file {src.spec} is plain text: give its targets line by line as "
                f"--data.{split}_target_file, or use a table ({'/'.join(formats.TABLES)})"
            )
        table, where = src.read(self.header), src.describe()
        wanted = (
            {"source": self.source_column}
            if split == "predict"
            else {"source": self.source_column, "target": self.target_column}
        )
        rows = {k: _cells(table, ref, where, f"--data.{k}_column") for k, ref in wanted.items()}
        for k, values in rows.items():
            check = validate.TextColumn(str(wanted[k]), where, blank_ok=self.drop_empty or split == "predict")
            # (no `finish`: a column of numbers is text here, as T5 writes STS-B scores as targets)
            rows[k] = [check.check(w, v) for w, v in zip(table.where, values)]
        keep = [i for i in range(len(rows["source"])) if all(v[i].strip() for v in rows.values())]
        return {k: [v[i] for i in keep] for k, v in rows.items()}

    def _holdout(self, rows: dict[str, list], part: str) -> dict[str, list]:
        return holdout(rows, part, self.val_fraction, self.seed, self.inputs.describe("train"), "example")


def _existing(path: str, split: str) -> str:
    if not os.path.isfile(path):
        raise InputError(f"--data.{split}_target_file: file not found: {path}")
    return path


def _lines(path: str) -> list[tuple[int, str]]:
    """(line number, text) of every line, split only at '\\n' (as `wc -l` counts; a '\\r' before it is dropped),
    so two parallel files stay aligned whatever other line separators (U+2028, a lone '\\r') their texts hold."""
    records.check_encoding(path)
    with open(path, encoding="utf-8-sig", newline="\n") as fh:
        return [(i, line.removesuffix("\n").removesuffix("\r")) for i, line in enumerate(fh, 1)]


def _parallel(source: str, target: str, drop_empty: bool) -> dict[str, list]:
    """Line i of `source` with line i of `target`; a blank line is refused (or, `drop_empty`, its pair dropped)."""
    left, right = _lines(source), _lines(target)
    if len(left) != len(right):
        raise InputError(
            f"parallel files differ in length: {source} has {len(left)} lines, {target} has "
            f"{len(right)}; line i of the target file must be the target of line i of the source file"
        )
    rows: dict[str, list] = {"source": [], "target": []}
    for (i, s), (_, t) in zip(left, right):
        if not s.strip() or not t.strip():
            if drop_empty:
                continue
            raise InputError(
                f"{source if not s.strip() else target} line {i}: empty line; every example needs its "
                f"source and target (or set --data.drop_empty true to skip such pairs)"
            )
        rows["source"].append(s)
        rows["target"].append(t)
    if not rows["source"]:
        raise InputError(f"{source} / {target} hold no pair with both sides non-blank: no examples")
    return rows


def _cells(table: tables.Table, ref: Column, where: str, option: str) -> list:
    """The values of the column `ref` names, or of field 'key' of a dict column for 'column.key'."""
    name = tables.resolve_column(ref, table.columns)
    if name is not None:
        return table.values(name)
    head, _, key = str(ref).partition(".")
    if key and tables.resolve_column(head, table.columns) is not None:
        return [v.get(key) if isinstance(v, dict) else None for v in table.values(head)]
    raise InputError(
        f"column {ref!r} not found in {where}; available: {', '.join(table.columns)} (set {option} by "
        f"name, 0-based index, or column.key for a field of a dict column)"
    )
