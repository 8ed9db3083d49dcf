"""`TextClassification`: labelled single texts or text pairs -> dynamically padded batches for a classifier.

Where the examples come from, per split:
  * ``--data.source`` — a hub dataset ``id[:config]`` (``imdb``, ``glue:sst2``, ``nyu-mll/multi_nli``) whose
    splits are found by name (validation: ``validation``, ``validation_matched``, ``dev``, else ``test``), or a
    local directory holding ``train.*`` / ``dev.*`` / ``test.*`` files (the GLUE layout);
  * ``--data.train_file`` / ``val_file`` / ``test_file`` — local ``.csv`` / ``.tsv`` / ``.jsonl`` / ``.json`` /
    ``.parquet`` files; a file given for a split replaces what ``source`` offers for it. Columns are named, or
    given by 0-based index (header-less CSV/TSV: ``--data.text_column 3``); TSV is read without quote processing,
    as GLUE's files need (MRPC sentences start with a bare ``"``). A ``.json`` file may hold a list of records or
    an object of records (``{"0": {...}, "1": {...}}``).
Labels: class names in id order come from ``--data.labels`` or, when unset, from the sorted distinct training
labels; hub ``ClassLabel`` columns are matched by name, and integer labels are ids (minus ``label_offset``).
Regression (``--data.task regression``, e.g. STS-B) keeps float targets. Each split is tokenized once with the
backbone's tokenizer into an atomic hash-keyed cache entry (like the pretraining corpus) and padded per batch to
its longest sequence, never to ``max_length``.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Literal

import datasets
import lightning as L
import pandas as pd
import torch
from torchdata.stateful_dataloader import StatefulDataLoader
from transformers import DataCollatorWithPadding, PreTrainedTokenizerBase

from lightning_pretrain.data import cache
from lightning_pretrain.data import tokenizers as toks
from lightning_pretrain.data.sources import _first_line, check_utf8
from lightning_pretrain.errors import InputError
from lightning_pretrain.data.contract import DataContract

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
SUFFIXES = (".tsv", ".csv", ".jsonl", ".json", ".parquet")
# file stems that name a split in a local directory (GLUE: train.tsv, dev.tsv, test.tsv; MNLI: dev_matched.tsv)
SPLIT_STEMS = {"train": ("train",), "val": ("dev", "validation", "val", "valid", "dev_matched"),
               "test": ("test", "test_matched")}
# split names of hub datasets, in order of preference (IMDb and AG News have no validation split: their test is it)
HUB_SPLITS = {"train": ("train",), "val": ("validation", "validation_matched", "dev", "valid", "test"),
              "test": ("test", "test_matched")}
MISSING = (None, "", "-1", -1)  # unlabelled rows: blank cells, and hub test splits' label -1
Column = int | str
Task = Literal["classification", "regression"]


# -- labels -----------------------------------------------------------------------------------------------------
def label_vocabulary(values: list) -> list[str]:
    """Class names in id order inferred from training labels: sorted, numerically when every label is an integer."""
    present = {str(v) for v in values if v not in MISSING}
    if not present:
        raise InputError("the training split has no labels")
    if all(_is_int(v) for v in present):
        return sorted(present, key=int)
    return sorted(present)


def encode_labels(values: list, names: list[str] | None, task: Task, offset: int = 0, where: str = "") -> list:
    """Targets for `values`: class ids for classification (by name, else integer minus `offset`), floats for
    regression. Unlabelled rows get -1 (classification) or NaN (regression)."""
    out: list = []
    index = {n: i for i, n in enumerate(names or [])}
    for row, v in enumerate(values):
        if v in MISSING or (isinstance(v, float) and math.isnan(v)):
            out.append(math.nan if task == "regression" else -1)
        elif task == "regression":
            try:
                out.append(float(v))
            except (TypeError, ValueError):
                raise InputError(f"{where} row {row}: regression target {v!r} is not a number") from None
        elif str(v) in index:
            out.append(index[str(v)])
        elif _is_int(v) and 0 <= int(v) - offset < len(index):
            out.append(int(v) - offset)
        else:
            raise InputError(f"{where} row {row}: label {v!r} is not one of {names}"
                             f"{f' (nor an id {offset}..{offset + len(index) - 1})' if names else ''}; "
                             f"set --data.labels (and --data.label_offset for 1-based ids)")
    return out


def _is_int(v) -> bool:
    try:
        return float(v) == int(float(v)) and not isinstance(v, bool)
    except (TypeError, ValueError):
        return False


# -- reading a split --------------------------------------------------------------------------------------------
def read_table(path: str, header: bool) -> pd.DataFrame:
    """A local file as a DataFrame of strings (CSV/TSV) or JSON values; header-less columns are named "0", "1", ..."""
    suffix = Path(path).suffix.lower()
    if suffix not in SUFFIXES:
        raise InputError(f"unsupported file type {path} (expected one of {', '.join(SUFFIXES)})")
    if not os.path.isfile(path):
        raise InputError(f"file not found: {path}")
    if suffix != ".parquet":
        check_utf8(path)
    try:
        if suffix in (".csv", ".tsv"):
            tsv = suffix == ".tsv"
            df = pd.read_csv(path, sep="\t" if tsv else ",", header=0 if header else None,
                             quoting=csv.QUOTE_NONE if tsv else csv.QUOTE_MINIMAL, dtype=str,
                             keep_default_na=False, encoding="utf-8-sig")  # utf-8-sig: MRPC starts with a BOM
        elif suffix == ".parquet":
            df = pd.read_parquet(path)
        elif suffix == ".jsonl":
            df = pd.DataFrame.from_records([json.loads(line) for line in open(path, encoding="utf-8") if line.strip()])
        else:
            df = pd.DataFrame.from_records(_json_records(json.loads(Path(path).read_text(encoding="utf-8")), path))
    except InputError:
        raise
    except Exception as e:  # parser errors name the line but not the file
        raise InputError(f"could not read {path}: {_first_line(e)}") from e
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


def _text(v) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v)


@dataclass(frozen=True)
class SplitSource:
    """One split's rows: a local file, or a split of a hub dataset."""

    kind: Literal["file", "hub"]
    spec: str  # absolute file path, or hub 'id[:config]'
    split: str = ""  # hub split name

    def identity(self) -> str:
        """Changes whenever the rows could: the file's content hash, or the hub dataset's own fingerprint."""
        if self.kind == "file":
            with open(self.spec, "rb") as fh:
                return f"file:{Path(self.spec).name}:{hashlib.file_digest(fh, 'sha256').hexdigest()}"
        return f"hub:{self.spec}:{self.split}:{getattr(load_hub(self.spec)[self.split], '_fingerprint', '')}"

    def describe(self) -> str:
        return self.spec if self.kind == "file" else f"{self.spec}@{self.split}"


def load_hub(spec: str) -> datasets.DatasetDict:
    dataset_id, _, config = spec.partition(":")
    try:
        return datasets.load_dataset(dataset_id, config or None)
    except Exception as e:  # offline, unknown id or config: all user-fixable
        raise InputError(f"could not load hub dataset '{spec}': {_first_line(e)}; offline, pass local files "
                         f"(--data.train_file / --data.val_file) or a directory as --data.source") from e


# -- batching ---------------------------------------------------------------------------------------------------
class DynamicPadding:
    """Pad each batch to its own longest sequence (not to max_length); text fields travel along as lists."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase):
        self.pad = DataCollatorWithPadding(tokenizer, return_tensors="pt")

    def __call__(self, rows: list[dict]) -> dict:
        rows = [dict(r) for r in rows]
        texts = {k: [r.pop(k) for r in rows] for k in ("text", "text_pair") if k in rows[0]}
        return {**self.pad(rows), **texts}


class TextClassification(L.LightningDataModule):
    def __init__(
        self,
        source: str | None = None,
        train_file: str | None = None,
        val_file: str | None = None,
        test_file: str | None = None,
        predict_file: str | None = None,
        text_column: Column = "text",
        text_pair_column: Column | None = None,
        label_column: Column = "label",
        header: bool | None = None,
        task: Task = "classification",
        labels: list[str] | None = None,
        label_offset: int = 0,
        train_split: str | None = None,
        val_split: str | None = None,
        test_split: str | None = None,
        val_fraction: float = 0.1,
        max_train_examples: int | None = None,
        tokenizer: str | None = None,
        max_length: int = 128,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        cache_dir: str | None = None,
        seed: int = 1234,
    ):
        """
        Args:
            source: a hub dataset 'id[:config]' (e.g. 'imdb', 'glue:sst2', 'nyu-mll/multi_nli'), or a local
                directory with train.* / dev.* / test.* files (.csv/.tsv/.jsonl/.json/.parquet).
            train_file: local training file; replaces the source's training split.
            val_file: local validation file; replaces the source's validation split.
            test_file: local test file (labelled for `test`, or unlabelled for `predict`).
            predict_file: texts to predict: a .txt file (one text per line) or a table with the text column(s);
                default: the test split.
            text_column: column of the (first) text: a name, or a 0-based index (header-less CSV/TSV files).
            text_pair_column: column of the second text of a pair (NLI, paraphrase); unset for single texts.
            label_column: column of the label (class name, integer id, or a number for regression).
            header: whether CSV/TSV files have a header line; default: header-less exactly when every column is
                given by index.
            task: 'classification' (cross-entropy over the classes) or 'regression' (one float target, MSE).
            labels: class names in id order (e.g. [negative, positive]); labels in the data may be these names or
                integer ids. Default: the sorted distinct training labels.
            label_offset: subtracted from integer labels, e.g. 1 for AG News's 1-based class column.
            train_split: hub split used for training (default 'train').
            val_split: hub split used for validation (default: the first of validation, validation_matched, dev,
                test).
            test_split: hub split used by `test` and `predict` (default: test, test_matched).
            val_fraction: share of the training rows held out for validation when there is no validation data.
            max_train_examples: train on a seeded random subset of this many examples (quick CPU runs).
            tokenizer: tokenizer directory or hub id; default: the model's backbone (the CLI fills it in).
            max_length: longest tokenized input (pairs are truncated longest-first); batches are padded only to
                their own longest example.
            batch_size: training examples per batch on each device.
            eval_batch_size: validation / test / predict batch size (default: batch_size).
            num_workers: DataLoader worker processes.
            cache_dir: where tokenized splits live; default $LIGHTNING_PRETRAIN_CACHE or ~/.cache/lightning_pretrain.
            seed: seed of the held-out validation rows, of the training subset and of the shuffling order.
        """
        super().__init__()
        if max_length < 2:
            raise InputError(f"max_length must be at least 2, got {max_length}")
        if not 0.0 < val_fraction < 1.0:
            raise InputError(f"val_fraction must be in (0, 1), got {val_fraction}")
        if task == "regression" and labels:
            raise InputError("--data.labels names classes, and a regression task has none")
        if max_train_examples is not None and max_train_examples < 1:
            raise InputError(f"max_train_examples must be positive, got {max_train_examples}")
        if not any((source, train_file, val_file, test_file, predict_file)):
            raise InputError("no data: pass --data.source (a hub id or a directory) or --data.train_file / "
                             "--data.val_file")
        self.save_hyperparameters(ignore=["tokenizer"])
        self.source = source
        self.files = {"train": train_file, "val": val_file, "test": test_file, "predict": predict_file}
        given = [c for c in (text_column, text_pair_column, label_column) if c is not None]
        self.header = header if header is not None else not all(isinstance(c, int) for c in given)
        self.text_column, self.text_pair_column, self.label_column = text_column, text_pair_column, label_column
        self.task, self.labels, self.label_offset = task, labels, label_offset
        self.hub_splits = {"train": train_split, "val": val_split, "test": test_split}
        self.val_fraction, self.max_train_examples = val_fraction, max_train_examples
        self.tokenizer_spec = tokenizer
        self.max_length, self.batch_size = max_length, batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.cache_root = Path(cache_dir).expanduser() if cache_dir else cache.default_root()
        self.seed = seed
        self.splits: dict[str, datasets.Dataset] = {}

    # -- tokenizer ----------------------------------------------------------------------------------------------
    @cached_property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        """The backbone's tokenizer (GPT-style tokenizers without a pad token pad with EOS)."""
        if not self.tokenizer_spec:
            raise InputError("TextClassification needs --data.tokenizer (the CLI uses --model.backbone by default)")
        tok = toks.load_pretrained(self.tokenizer_spec)
        if tok.pad_token is None:
            if tok.eos_token is None:
                raise InputError(f"tokenizer '{self.tokenizer_spec}' has neither a pad nor an EOS token to pad with")
            tok.pad_token = tok.eos_token
        # taken now: encoding with truncation changes the Rust tokenizer's settings, and so its serialisation
        self._tokenizer_fingerprint = toks.fingerprint(tok)
        return tok

    @property
    def tokenizer_fingerprint(self) -> str:
        """Hash of the tokenizer as loaded (a cache key part)."""
        _ = self.tokenizer  # loading it takes the fingerprint
        return self._tokenizer_fingerprint

    # -- labels -------------------------------------------------------------------------------------------------
    @property
    def label_names(self) -> list[str] | None:
        """Class names in id order (None for regression): `labels`, else inferred from the training split."""
        if self.task == "regression":
            return None
        if self.labels:
            return list(self.labels)
        return self._entry("train")[1]["label_names"]

    @property
    def num_labels(self) -> int:
        return 1 if self.task == "regression" else len(self.label_names)

    @property
    def contract(self) -> DataContract:
        """What the classifier needs: tokenizer, task, label names (read from the training split when not given)
        and the longest example."""
        names = self.label_names
        return DataContract(self.tokenizer, max_length=self.max_length, task=self.task,
                            label_names=tuple(names) if names is not None else None)

    # -- where each split comes from ----------------------------------------------------------------------------
    @cached_property
    def _hub(self) -> datasets.DatasetDict | None:
        local = self.source and (os.path.isdir(os.path.expanduser(self.source)) or _looks_local(self.source))
        return None if not self.source or local else load_hub(self.source)

    def split_source(self, split: str) -> SplitSource | None:
        """Where `split` ('train', 'val', 'test', 'predict') comes from, or None when nowhere."""
        if self.files.get(split):
            path = os.path.abspath(os.path.expanduser(self.files[split]))
            if not os.path.isfile(path):
                raise InputError(f"--data.{split}_file: file not found: {self.files[split]}")
            return SplitSource("file", path)
        if split == "predict":
            return self.split_source("test")
        if not self.source:
            return None
        directory = os.path.expanduser(self.source)
        if os.path.isdir(directory):
            found = (os.path.join(directory, stem + suffix) for stem in SPLIT_STEMS[split] for suffix in SUFFIXES)
            path = next((p for p in found if os.path.isfile(p)), None)
            return SplitSource("file", os.path.abspath(path)) if path else None
        if self._hub is None:
            raise InputError(f"--data.source {self.source} is not a directory (nor a hub id); give a single file "
                             f"as --data.train_file / --data.val_file")
        wanted, available = self.hub_splits.get(split), list(self._hub)
        if wanted and wanted not in available:
            raise InputError(f"hub dataset '{self.source}' has no split '{wanted}' (it has {', '.join(available)})")
        name = wanted or next((s for s in HUB_SPLITS[split] if s in available), None)
        return SplitSource("hub", self.source, name) if name else None

    def _held_out(self) -> bool:
        """No validation data anywhere: `val_fraction` of the training rows become the validation split."""
        return self.split_source("val") is None and self.split_source("train") is not None

    def _identity(self, split: str) -> str:
        if split == "val" and self._held_out():
            return f"holdout:{self.split_source('train').identity()}:{self.val_fraction}:{self.seed}"
        src = self.split_source(split)
        if src is None:
            raise InputError(f"no {split} data: pass --data.{split}_file or a --data.source that has a {split} split")
        suffix = f":minus-holdout:{self.val_fraction}:{self.seed}" if split == "train" and self._held_out() else ""
        return src.identity() + suffix

    # -- raw rows -----------------------------------------------------------------------------------------------
    def rows(self, split: str) -> dict[str, list]:
        """{'text': [...], 'text_pair': [...] (pairs), 'label': [...] (when labelled)} of one split, untokenized."""
        if split == "val" and self._held_out():
            return self._holdout(self.rows("train_all"), "val")
        src = self.split_source("train" if split == "train_all" else split)
        if src is None:
            raise InputError(f"no {split} data: pass --data.{split}_file or a --data.source that has a {split} split")
        if src.kind == "file" and src.spec.lower().endswith(".txt"):
            if split != "predict":
                raise InputError(f"{src.spec}: a .txt file has no labels; it can only be a --data.predict_file")
            check_utf8(src.spec)
            return {"text": [line.rstrip("\r\n") for line in open(src.spec, encoding="utf-8") if line.strip()]}
        where = src.describe()
        names, values = self._open(src)
        text, pair, label = (resolve_column(ref, names) for ref in (self.text_column, self.text_pair_column,
                                                                     self.label_column))
        for ref, found in ((self.text_column, text), (self.text_pair_column, pair)):
            if ref is not None and found is None:
                raise InputError(f"column {ref!r} not found in {where}; available: {', '.join(names)} (set "
                                 f"--data.text_column / --data.text_pair_column by name or 0-based index)")
        if label is None and split in ("train", "train_all", "val"):
            raise InputError(f"label column {self.label_column!r} not found in {where}; available: "
                             f"{', '.join(names)} (set --data.label_column by name or 0-based index)")
        rows = {"text": [_text(v) for v in values(text)]}
        if pair is not None:
            rows["text_pair"] = [_text(v) for v in values(pair)]
        if label is not None:
            rows["label"] = list(values(label))
        if split == "train" and self._held_out():
            rows = self._holdout(rows, "train")
        if split == "train" and self.max_train_examples and self.max_train_examples < len(rows["text"]):
            pick = torch.randperm(len(rows["text"]), generator=torch.Generator().manual_seed(self.seed))
            rows = {k: [v[i] for i in sorted(pick[:self.max_train_examples].tolist())] for k, v in rows.items()}
        return rows

    def _open(self, src: SplitSource):
        """(column names, values(column) -> list); hub class ids become their names, so --data.labels may order
        the classes freely."""
        if src.kind == "file":
            df = read_table(src.spec, self.header)
            return list(df.columns), lambda column: df[column].tolist()
        ds = self._hub[src.split]

        def values(column: str) -> list:
            feature = ds.features.get(column)
            if isinstance(feature, datasets.ClassLabel):
                return [feature.int2str(v) if v >= 0 else None for v in ds[column]]
            return ds[column]

        return list(ds.column_names), values

    def _holdout(self, rows: dict[str, list], part: str) -> dict[str, list]:
        n = len(rows["text"])
        n_val = max(1, round(n * self.val_fraction))
        order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed)).tolist()
        keep = sorted(order[:n_val] if part == "val" else order[n_val:])
        return {k: [v[i] for i in keep] for k, v in rows.items()}

    # -- tokenized splits ---------------------------------------------------------------------------------------
    def _entry(self, split: str) -> tuple[Path, dict]:
        """The cache entry of a tokenized split (built on first use) and its metadata."""
        names = None if split == "train" or self.task == "regression" else self.label_names
        key = cache.cache_key("downstream", FORMAT_VERSION, split == "predict", self._identity(split), self.header,
                              self.text_column, self.text_pair_column, self.label_column, self.task, self.labels,
                              names, self.label_offset, self.max_train_examples if split == "train" else None,
                              self.seed, self.tokenizer_fingerprint, self.max_length)
        entry = self.cache_root / "downstream" / key

        def build(tmp: Path) -> dict:
            t0 = time.perf_counter()
            rows = self.rows(split)
            dataset, meta = self._encode(rows, split, names)
            quiet = datasets.utils.are_progress_bars_disabled()
            datasets.disable_progress_bars()  # a bar per tiny shard write is noise
            try:
                dataset.save_to_disk(str(tmp / "data"))
            finally:
                if not quiet:
                    datasets.enable_progress_bars()
            return {**meta, "seconds": round(time.perf_counter() - t0, 3)}

        entry, reused = cache.get_or_build(entry, build, lambda e, m: (e / "data").is_dir() and "rows" in m)
        meta = cache.read_meta(entry)
        if not reused:
            log.info("tokenized the %s split: %d examples (%d truncated to %d tokens) in %.1fs -> %s", split,
                     meta["rows"], meta["truncated"], self.max_length, meta["seconds"], entry)
        return entry, meta

    def _encode(self, rows: dict[str, list], split: str, names: list[str] | None) -> tuple[datasets.Dataset, dict]:
        where = f"{self._describe(split)}"
        meta: dict = {"rows": len(rows["text"]), "labelled": "label" in rows}
        if split == "train" and self.task == "classification":
            names = list(self.labels) if self.labels else label_vocabulary(rows["label"])
            meta["label_names"] = names
        columns: dict[str, list] = {}
        if "label" in rows:
            targets = encode_labels(rows["label"], names, self.task, self.label_offset, where)
            unlabelled = sum(1 for t in targets if (t == -1 if self.task == "classification" else math.isnan(t)))
            if unlabelled == len(targets) and split in ("test", "predict"):
                meta["labelled"] = False  # e.g. GLUE test splits (label -1): fine for predict, refused by test
            elif unlabelled:
                raise InputError(f"{where}: {unlabelled} of {len(targets)} rows have no label")
            else:
                columns["labels"] = targets
                if names:
                    meta["label_counts"] = {n: targets.count(i) for i, n in enumerate(names)}
        enc: dict[str, list] = {}
        pairs = rows.get("text_pair")
        for start in range(0, len(rows["text"]), 2000):
            stop = start + 2000
            part = self.tokenizer(rows["text"][start:stop], pairs[start:stop] if pairs else None, truncation=True,
                                  max_length=self.max_length)
            for k, v in part.items():
                enc.setdefault(k, []).extend(v)
        meta["truncated"] = sum(1 for ids in enc["input_ids"] if len(ids) >= self.max_length)
        columns = {**enc, **columns, "example_id": list(range(len(rows["text"])))}
        if split == "predict":  # predictions are written next to their text
            columns.update({k: rows[k] for k in ("text", "text_pair") if k in rows})
        return datasets.Dataset.from_dict(columns), meta

    def _describe(self, split: str) -> str:
        if split == "val" and self._held_out():
            return f"held-out validation rows of {self.split_source('train').describe()}"
        src = self.split_source(split)
        return src.describe() if src else split

    # -- Lightning hooks ----------------------------------------------------------------------------------------
    STAGE_SPLITS = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("predict",)}

    def prepare_data(self) -> None:
        """Tokenize the splits this run needs once (rank 0); later runs with the same settings reuse the cache."""
        stage = getattr(getattr(self.trainer, "state", None), "fn", None) if self.trainer else None
        for split in self.STAGE_SPLITS.get(str(stage.value) if stage else "fit", ("train", "val")):
            self._entry(split)

    def setup(self, stage: str | None = None) -> None:
        for split in self.STAGE_SPLITS.get(stage or "fit", ("train", "val")):
            entry, meta = self._entry(split)  # built here when prepare_data ran on another node only
            if split == "test" and not meta["labelled"]:
                raise InputError(f"the test split ({self._describe('test')}) has no labels: `test` needs them; "
                                 f"use `predict` for unlabelled texts, or pass a labelled --data.test_file")
            self.splits[split] = datasets.load_from_disk(str(entry / "data"))

    # -- loaders ------------------------------------------------------------------------------------------------
    def _loader(self, split: str, shuffle: bool) -> StatefulDataLoader:
        # StatefulDataLoader: Lightning checkpoints its position, so a mid-epoch resume continues with the exact
        # next batch instead of restarting the epoch (a plain DataLoader cannot)
        return StatefulDataLoader(
            self.splits[split], batch_size=self.batch_size if shuffle else self.eval_batch_size, shuffle=shuffle,
            collate_fn=DynamicPadding(self.tokenizer), num_workers=self.num_workers,
            pin_memory=torch.cuda.is_available(), persistent_workers=self.num_workers > 0,
            generator=torch.Generator().manual_seed(self.seed) if shuffle else None)

    def train_dataloader(self):
        return self._loader("train", shuffle=True)

    def val_dataloader(self):
        return self._loader("val", shuffle=False)

    def test_dataloader(self):
        return self._loader("test", shuffle=False)

    def predict_dataloader(self):
        return self._loader("predict", shuffle=False)


def _looks_local(spec: str) -> bool:
    path = os.path.expanduser(spec)
    return os.path.exists(path) or path.startswith((".", "/", "~")) or Path(path).suffix.lower() in (*SUFFIXES, ".txt")
