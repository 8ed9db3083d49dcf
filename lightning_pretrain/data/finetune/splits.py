"""Where each split of a fine-tuning task comes from (a file, a directory's train/dev/test file, a hub split), and
its raw rows: the text (and pair) and label columns, the held-out validation rows, the seeded training subset."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import cached_property

import torch

from lightning_pretrain.data.sources import formats, tables, validate
from lightning_pretrain.data.sources import text as sources
from lightning_pretrain.data.sources.tables import Column, TableSource
from lightning_pretrain.errors import InputError

# file stems that name a split in a local directory (GLUE: train.tsv, dev.tsv, test.tsv; MNLI: dev_matched.tsv)
SPLIT_STEMS = {
    "train": ("train",),
    "val": ("dev", "validation", "val", "valid", "dev_matched"),
    "test": ("test", "test_matched"),
}
# split names of hub datasets, in order of preference (IMDb and AG News have no validation split: their test is it)
HUB_SPLITS = {
    "train": ("train",),
    "val": ("validation", "validation_matched", "dev", "valid", "test"),
    "test": ("test", "test_matched"),
}


@dataclass
class Splits:
    """The rows of 'train', 'val', 'test' and 'predict', read from `files` (one per split) or else from `source`:
    a hub dataset 'id[:config][@split]' (`@split`: the training split) or a directory of train.* / dev.* / test.*."""

    source: str | None
    files: dict[str, str | None]
    hub_split_names: dict[str, str | None]
    text_column: Column = "text"
    text_pair_column: Column | None = None
    label_column: Column = "label"
    header: bool = True
    val_fraction: float = 0.1
    seed: int = 1234
    max_train_examples: int | None = None
    _hub_spec: str | None = field(init=False, default=None)

    def __post_init__(self):
        if not self.source or os.path.isdir(os.path.expanduser(self.source)) or sources.looks_local(self.source):
            return
        dataset_id, config, split = sources.parse_hub(self.source)
        if split and self.hub_split_names.get("train") not in (None, split):
            raise InputError(
                f"--data.source {self.source} names the training split '{split}' and --data.train_split "
                f"names '{self.hub_split_names['train']}': give one"
            )
        self._hub_spec = dataset_id + (f":{config}" if config else "")
        self.hub_split_names = {**self.hub_split_names, "train": self.hub_split_names.get("train") or split}

    @cached_property
    def _hub_available(self) -> list[str]:
        return list(tables.hub_splits(self._hub_spec))

    def source_of(self, split: str) -> TableSource | None:
        """Where `split` ('train', 'val', 'test', 'predict') comes from, or None when nowhere."""
        if self.files.get(split):
            path = os.path.abspath(os.path.expanduser(self.files[split]))
            if not os.path.isfile(path):
                raise InputError(f"--data.{split}_file: file not found: {self.files[split]}")
            return TableSource("file", path)
        if split == "predict":
            return self.source_of("test")
        if not self.source:
            return None
        directory = os.path.expanduser(self.source)
        if os.path.isdir(directory):
            found = (os.path.join(directory, stem + suffix) for stem in SPLIT_STEMS[split] for suffix in formats.TABLES)
            path = next((p for p in found if os.path.isfile(p)), None)
            return TableSource("file", os.path.abspath(path)) if path else None
        if self._hub_spec is None:
            raise InputError(
                f"--data.source {self.source} is not a directory (nor a hub id); give a single file "
                f"as --data.train_file / --data.val_file"
            )
        wanted, available = self.hub_split_names.get(split), self._hub_available
        if wanted and wanted not in available:
            raise InputError(f"hub dataset '{self._hub_spec}' has no split '{wanted}' (it has {', '.join(available)})")
        name = wanted or next((s for s in HUB_SPLITS[split] if s in available), None)
        return TableSource("hub", self._hub_spec, name) if name else None

    def held_out(self) -> bool:
        """No validation data anywhere: `val_fraction` of the training rows become the validation split."""
        return self.source_of("val") is None and self.source_of("train") is not None

    def _required(self, split: str) -> TableSource:
        src = self.source_of(split)
        if src is None:
            raise InputError(f"no {split} data: pass --data.{split}_file or a --data.source that has a {split} split")
        return src

    def identity(self, split: str) -> str:
        """Changes whenever the split's rows could (a cache key part)."""
        if split == "val" and self.held_out():
            return f"holdout:{self.source_of('train').identity(self.header)}:{self.val_fraction}:{self.seed}"
        suffix = f":minus-holdout:{self.val_fraction}:{self.seed}" if split == "train" and self.held_out() else ""
        return self._required(split).identity(self.header) + suffix

    def describe(self, split: str) -> str:
        if split == "val" and self.held_out():
            return f"held-out validation rows of {self.source_of('train').describe()}"
        src = self.source_of(split)
        return src.describe() if src else split

    def rows(self, split: str) -> dict[str, list]:
        """{'text': [...], 'text_pair': [...] (pairs), 'label': [...] (when labelled), 'where': [...]} of one split,
        untokenized; `where` holds each row's place in its file ("line 17") for messages. Texts must be strings,
        non-blank except for `predict` (`validate.texts`)."""
        if split == "val" and self.held_out():
            return self._holdout(self.rows("train_all"), "val")
        src = self._required("train" if split == "train_all" else split)
        if src.is_lines:
            if split != "predict":
                raise InputError(f"{src.spec}: a .txt file has no labels; it can only be a --data.predict_file")
            table = src.read(self.header)
            return {"text": table.values("text"), "where": table.where}
        where, table = src.describe(), src.read(self.header)
        text, pair, label = (
            tables.resolve_column(ref, table.columns)
            for ref in (self.text_column, self.text_pair_column, self.label_column)
        )
        for ref, found in ((self.text_column, text), (self.text_pair_column, pair)):
            if ref is not None and found is None:
                raise InputError(
                    f"column {ref!r} not found in {where}; available: {', '.join(table.columns)} (set "
                    f"--data.text_column / --data.text_pair_column by name or 0-based index)"
                )
        if label is None and split in ("train", "train_all", "val"):
            raise InputError(
                f"label column {self.label_column!r} not found in {where}; available: "
                f"{', '.join(table.columns)} (set --data.label_column by name or 0-based index)"
            )
        blank_ok = split == "predict"  # a prediction per row, also for a blank one; a labelled example needs text
        rows = {"text": validate.texts(table.values(text), text, where, table.where, blank_ok)}
        if pair is not None:
            rows["text_pair"] = validate.texts(table.values(pair), pair, where, table.where, blank_ok)
        if label is not None:
            rows["label"] = list(table.values(label))
        rows["where"] = list(table.where)
        if split == "train" and self.held_out():
            rows = self._holdout(rows, "train")
        if split == "train" and self.max_train_examples and self.max_train_examples < len(rows["text"]):
            pick = torch.randperm(len(rows["text"]), generator=torch.Generator().manual_seed(self.seed))
            rows = {k: [v[i] for i in sorted(pick[: self.max_train_examples].tolist())] for k, v in rows.items()}
        return rows

    def _holdout(self, rows: dict[str, list], part: str) -> dict[str, list]:
        return holdout(rows, part, self.val_fraction, self.seed, self.source_of("train").describe(), "row")


def holdout(rows: dict[str, list], part: str, val_fraction: float, seed: int, what: str, unit: str) -> dict[str, list]:
    """The seeded `val_fraction` of the training `rows` (columns of equal length) held out for validation
    (`part='val'`), or the rest (`'train'`), each in the original order."""
    n = len(next(iter(rows.values())))
    n_val = max(1, round(n * val_fraction))
    if n_val >= n:
        raise InputError(
            f"{what} has {n} {unit}{'s' if n != 1 else ''}: too few to hold out "
            f"val_fraction={val_fraction} for validation; pass --data.val_file"
        )
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    keep = sorted(order[:n_val] if part == "val" else order[n_val:])
    return {k: [v[i] for i in keep] for k, v in rows.items()}
