"""`TextClassification`: labelled single texts or text pairs -> dynamically padded batches for a classifier.

Each split comes from `data/splits.py` (a file, a directory's train/dev/test file, or a hub split), its labels are
encoded by `data/labels.py`, and it is tokenized once with the backbone's tokenizer into an atomic hash-keyed cache
entry (like the pretraining corpus); batches are padded to their own longest example, never to `max_length`.
"""

from __future__ import annotations

import logging
import time
from functools import cached_property
from pathlib import Path

import datasets
import lightning as L
from torchdata.stateful_dataloader import StatefulDataLoader
from transformers import PreTrainedTokenizerBase

from lightning_pretrain.data import cache
from lightning_pretrain.data import tokenizers as toks
from lightning_pretrain.data.contract import DataContract
from lightning_pretrain.data.labels import Task, check_label_names, encode_labels, label_vocabulary, labelled
from lightning_pretrain.data.loaders import DynamicPadding, check_loader_options, rank_and_world, stateful_loader
from lightning_pretrain.data.splits import Splits
from lightning_pretrain.data.tables import Column, TableSource
from lightning_pretrain.errors import InputError

log = logging.getLogger(__name__)

FORMAT_VERSION = 1


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
            source: a hub dataset 'id[:config][@split]' (e.g. 'imdb', 'glue:sst2', 'nyu-mll/multi_nli'; '@split'
                names the training split), or a local directory with train.* / dev.* / test.* files
                (.csv/.tsv/.jsonl/.json/.parquet).
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
        check_label_names(labels)
        if max_train_examples is not None and max_train_examples < 1:
            raise InputError(f"max_train_examples must be positive, got {max_train_examples}")
        check_loader_options(num_workers, batch_size=batch_size, eval_batch_size=eval_batch_size)
        cache_root = cache.resolve_root(cache_dir)
        if not any((source, train_file, val_file, test_file, predict_file)):
            raise InputError("no data: pass --data.source (a hub id or a directory) or --data.train_file / "
                             "--data.val_file")
        self.save_hyperparameters(ignore=["tokenizer"])
        given = [c for c in (text_column, text_pair_column, label_column) if c is not None]
        self.header = header if header is not None else not all(isinstance(c, int) for c in given)
        # where each split's rows come from (files, a directory, a hub dataset), read untokenized
        self.inputs = Splits(source, {"train": train_file, "val": val_file, "test": test_file, "predict": predict_file},
                             {"train": train_split, "val": val_split, "test": test_split}, text_column,
                             text_pair_column, label_column, self.header, val_fraction, seed, max_train_examples)
        self.text_column, self.text_pair_column, self.label_column = text_column, text_pair_column, label_column
        self.task, self.labels, self.label_offset = task, labels, label_offset
        self.max_train_examples = max_train_examples
        self.tokenizer_spec = tokenizer
        self.max_length, self.batch_size = max_length, batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.cache_root = cache_root
        self.seed = seed
        self.splits: dict[str, datasets.Dataset] = {}  # the tokenized splits of the current stage

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

    def split_source(self, split: str) -> TableSource | None:
        """Where `split` ('train', 'val', 'test', 'predict') comes from, or None when nowhere."""
        return self.inputs.source_of(split)

    # -- tokenized splits ---------------------------------------------------------------------------------------
    def _entry(self, split: str) -> tuple[Path, dict]:
        """The cache entry of a tokenized split (built on first use) and its metadata."""
        names = None if split == "train" or self.task == "regression" else self.label_names
        with cache.rooted(self.cache_root):  # file digests are remembered under this cache
            identity = self.inputs.identity(split)
        key = cache.cache_key("downstream", FORMAT_VERSION, split == "predict", identity,
                              self.header, self.text_column, self.text_pair_column, self.label_column, self.task,
                              self.labels, names, self.label_offset,
                              self.max_train_examples if split == "train" else None, self.seed,
                              self.tokenizer_fingerprint, self.max_length)
        entry = self.cache_root / "downstream" / key

        def build(tmp: Path) -> dict:
            t0 = time.perf_counter()
            dataset, meta = self._encode(self.inputs.rows(split), split, names)
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
        where = self.inputs.describe(split)
        meta: dict = {"rows": len(rows["text"]), "labelled": "label" in rows}
        if split == "train" and self.task == "classification":
            names = list(self.labels) if self.labels else label_vocabulary(rows["label"], where, rows.get("where"))
            meta["label_names"] = names
        columns: dict[str, list] = {}
        if "label" in rows:
            targets = encode_labels(rows["label"], names, self.task, self.label_offset, where, rows.get("where"))
            # all rows labelled, or (test, predict: e.g. GLUE's test files, label -1) none; none is refused by test
            meta["labelled"] = labelled(rows["label"], targets, self.task, split in ("test", "predict"), where,
                                        rows.get("where"))
            if meta["labelled"]:
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
                raise InputError(f"the test split ({self.inputs.describe('test')}) has no labels: `test` needs "
                                 f"them; use `predict` for unlabelled texts, or pass a labelled --data.test_file")
            self.splits[split] = datasets.load_from_disk(str(entry / "data"))

    # -- loaders ------------------------------------------------------------------------------------------------
    def _loader(self, split: str, shuffle: bool) -> StatefulDataLoader:
        rank, world_size = rank_and_world(self.trainer)
        return stateful_loader(self.splits[split], self.batch_size if shuffle else self.eval_batch_size,
                               shuffle=shuffle, num_workers=self.num_workers, seed=self.seed, rank=rank,
                               world_size=world_size, collate_fn=DynamicPadding(self.tokenizer))

    def train_dataloader(self):
        return self._loader("train", shuffle=True)

    def val_dataloader(self):
        return self._loader("val", shuffle=False)

    def test_dataloader(self):
        return self._loader("test", shuffle=False)

    def predict_dataloader(self):
        return self._loader("predict", shuffle=False)
