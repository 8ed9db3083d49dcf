"""`FineTuneData`: what the fine-tuning DataModules (`TextClassification`, `TextToText`, `SFTData`) share: the options
naming each split's data (files, a directory, a hub dataset), the held-out validation rows and training subset, the
tokenizer, the cache of tokenized splits and the stateful loaders. A subclass takes only the options it adds, builds
`self.inputs` (its split reader) and `contract`, and fills in the hooks below: how its tokenizer is checked, a split
is tokenized (and keyed in the cache), what the contract reports of the tokenized data (`measure`, run once by
`publish`) and a batch is collated.
"""

from __future__ import annotations

import logging
import time
from functools import cached_property
from pathlib import Path
from typing import ClassVar

import datasets
import lightning as L
from torchdata.stateful_dataloader import StatefulDataLoader
from transformers import PreTrainedTokenizerBase

from lightning_pretrain.data import cache
from lightning_pretrain.data import tokenizers as toks
from lightning_pretrain.data.contract import DataContract
from lightning_pretrain.data.loaders import check_loader_options, check_val_interval, rank_and_world, stateful_loader
from lightning_pretrain.data.sources.tables import Column
from lightning_pretrain.data.windows import training_windows
from lightning_pretrain.errors import InputError


class FineTuneData(L.LightningDataModule):
    cache_name: ClassVar[str]  # the cache folder of its tokenized splits
    format_version: ClassVar[int] = 1  # bump when the tokenized rows change: old cache entries stop matching
    # what "no data" and "needs --data.tokenizer" errors add
    no_data_hint: ClassVar[str] = "pass --data.source (a hub id or a directory) or --data.train_file / --data.val_file"
    tokenizer_hint: ClassVar[str] = " (the model's tokenizer directory or hub id)"
    STAGE_SPLITS: ClassVar[dict] = {
        "fit": ("train", "val"),
        "validate": ("val",),
        "test": ("test",),
        "predict": ("predict",),
    }

    def __init__(
        self,
        source: str | None = None,
        train_file: str | None = None,
        val_file: str | None = None,
        test_file: str | None = None,
        predict_file: str | None = None,
        header: bool | None = None,
        train_split: str | None = None,
        val_split: str | None = None,
        test_split: str | None = None,
        val_fraction: float = 0.1,
        max_train_examples: int | None = None,
        tokenizer: str | None = None,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        cache_dir: str | None = None,
        seed: int = 1234,
    ):
        """
        Args:
            source: a hub dataset 'id[:config][@split]' (e.g. 'imdb', 'glue:sst2', 'wmt16:de-en'; '@split' names
                the training split), or a local directory with train.* / dev.* / test.* files
                (.csv/.tsv/.jsonl/.json/.parquet).
            train_file: local training file; replaces the source's training split.
            val_file: local validation file; replaces the source's validation split.
            test_file: local test file: labelled (labels, targets, completions: the references of `test`), or
                unlabelled for `predict`.
            predict_file: inputs to predict for: a table with the input column(s), or plain text with one input per
                line (a .txt file; for TextToText any suffix that is not a table's); default: the test split.
            header: whether CSV/TSV files have a header line; default: header-less exactly when every column is
                given by index.
            train_split: hub split used for training (default 'train').
            val_split: hub split used for validation (default: the first of validation, validation_matched, dev,
                valid, test).
            test_split: hub split used by `test` and `predict` (default: test, test_matched).
            val_fraction: share of the training rows held out for validation when there is no validation data.
            max_train_examples: train on a seeded random subset of this many examples (quick CPU runs).
            tokenizer: the model's tokenizer: a directory (e.g. a run's export `logs/<name>/version_N/hf`) or hub
                id; default: the model's pretrained backbone (the CLI fills it in).
            batch_size: training examples per batch on each device.
            eval_batch_size: validation / test / predict batch size (default: batch_size).
            num_workers: DataLoader worker processes.
            cache_dir: where tokenized splits live; default $LIGHTNING_PRETRAIN_CACHE or ~/.cache/lightning_pretrain.
            seed: seed of the held-out validation rows, of the training subset and of the shuffling order.
        """
        super().__init__()
        if not 0.0 < val_fraction < 1.0:
            raise InputError(f"val_fraction must be in (0, 1), got {val_fraction}")
        if max_train_examples is not None and max_train_examples < 1:
            raise InputError(f"max_train_examples must be positive, got {max_train_examples}")
        check_loader_options(num_workers, seed, batch_size=batch_size, eval_batch_size=eval_batch_size)
        self.cache_root = cache.resolve_root(cache_dir)
        if not any((source, train_file, val_file, test_file, predict_file)):
            raise InputError(f"no data: {self.no_data_hint}")
        self.save_hyperparameters(ignore=["tokenizer"])
        self.source, self.header = source, header  # header: None until `resolve_header`
        self.files = {"train": train_file, "val": val_file, "test": test_file, "predict": predict_file}
        self.hub_splits = {"train": train_split, "val": val_split, "test": test_split}
        self.val_fraction, self.max_train_examples = val_fraction, max_train_examples
        self.tokenizer_spec = tokenizer
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size or batch_size
        self.num_workers, self.seed = num_workers, seed
        self.splits: dict[str, datasets.Dataset] = {}  # the tokenized splits of the current stage
        self.facts: dict | None = None  # what `measure` found, once `publish` ran

    def resolve_header(self, *columns: Column | None) -> bool:
        """`header` as given, else True unless every given column (of the subclass's) is a 0-based index."""
        if self.header is None:
            self.header = not all(isinstance(c, int) for c in columns if c is not None)
        return self.header

    # -- tokenizer ----------------------------------------------------------------------------------------------
    @cached_property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        """The model's tokenizer, checked and completed by `configure_tokenizer`."""
        if not self.tokenizer_spec:
            raise InputError(f"{type(self).__name__} needs --data.tokenizer{self.tokenizer_hint}")
        tok = toks.load_pretrained(self.tokenizer_spec)
        self.configure_tokenizer(tok)
        # taken now: encoding with truncation changes the Rust tokenizer's settings, and so its serialisation
        self._tokenizer_fingerprint = toks.fingerprint(tok)
        return tok

    @property
    def tokenizer_fingerprint(self) -> str:
        """Hash of the tokenizer as loaded (a cache key part)."""
        _ = self.tokenizer  # loading it takes the fingerprint
        return self._tokenizer_fingerprint

    def configure_tokenizer(self, tok: PreTrainedTokenizerBase) -> None:
        """Refuse a tokenizer the task cannot use, and set what it needs (a pad token, a chat template)."""

    # -- the contract -------------------------------------------------------------------------------------------
    def measure(self) -> dict:
        """The facts of the tokenized data that `contract` reports (e.g. the longest example); reading the splits
        they come from tokenizes them (cached). Run by `publish`, once."""
        return {}

    def publish(self) -> DataContract:
        """The one step that makes the contract known: loads the tokenizer and runs `measure`; the CLI link runs it
        once, before the model is built (data/contract.py). Returns `contract`, a value built from `facts`."""
        _ = self.tokenizer
        self.facts = self.measure()
        return self.contract

    def measured(self) -> dict:
        """`facts`, refused before `publish` ran (the contract reports them, and finding them takes work)."""
        if self.facts is None:
            raise RuntimeError(
                f"{type(self).__name__}.contract reports facts of the tokenized data, which publish() "
                f"measures: call it first (the CLI does)"
            )
        return self.facts

    # -- tokenized splits ---------------------------------------------------------------------------------------
    def cache_parts(self, split: str) -> tuple:
        """The task's settings that change the tokenized `split` (cache key parts besides the shared ones)."""
        return ()

    def encode(self, split: str) -> tuple[datasets.Dataset, dict]:
        """The tokenized `split` and its metadata ('rows' and what `summary` reports)."""
        raise NotImplementedError

    def summary(self, meta: dict) -> str:
        """What the log says of a freshly tokenized split, e.g. '40 examples (2 truncated to 128 tokens)'."""
        return f"{meta['rows']} examples"

    def _entry(self, split: str) -> tuple[Path, dict]:
        """The cache entry of a tokenized split (built on first use) and its metadata."""
        with cache.rooted(self.cache_root):  # file digests are remembered under this cache
            identity = self.inputs.identity(split)
        key = cache.cache_key(
            self.cache_name,
            self.format_version,
            split == "predict",
            identity,
            self.header,
            self.max_train_examples if split == "train" else None,
            self.seed,
            self.tokenizer_fingerprint,
            *self.cache_parts(split),
        )

        def build(tmp: Path) -> dict:
            t0 = time.perf_counter()
            dataset, meta = self.encode(split)
            quiet = datasets.utils.are_progress_bars_disabled()
            datasets.disable_progress_bars()  # a bar per tiny shard write is noise
            try:
                dataset.save_to_disk(str(tmp / "data"))
            finally:
                if not quiet:
                    datasets.enable_progress_bars()
            return {**meta, "seconds": round(time.perf_counter() - t0, 3)}

        entry, reused = cache.get_or_build(
            self.cache_root / self.cache_name / key, build, lambda e, m: (e / "data").is_dir() and "rows" in m
        )
        meta = cache.read_meta(entry)
        if not reused:  # logged as the subclass's module, where users look for it
            logging.getLogger(type(self).__module__).info(
                "tokenized the %s split: %s in %.1fs -> %s", split, self.summary(meta), meta["seconds"], entry
            )
        return entry, meta

    # -- Lightning hooks ----------------------------------------------------------------------------------------
    def prepare_data(self) -> None:
        """Tokenize the splits this run needs once (rank 0); later runs with the same settings reuse the cache."""
        stage = getattr(getattr(self.trainer, "state", None), "fn", None) if self.trainer else None
        for split in self.STAGE_SPLITS.get(str(stage.value) if stage else "fit", ("train", "val")):
            self._entry(split)

    def setup(self, stage: str | None = None) -> None:
        for split in self.STAGE_SPLITS.get(stage or "fit", ("train", "val")):
            entry, meta = self._entry(split)  # built here when prepare_data ran on another node only
            self.check_split(split, meta)
            self.splits[split] = datasets.load_from_disk(str(entry / "data"))

    def check_split(self, split: str, meta: dict) -> None:
        """Refuse a tokenized split the stage cannot use (e.g. a `test` split without labels)."""

    # -- loaders ------------------------------------------------------------------------------------------------
    def collate(self, train: bool):
        """The collate function of training (`train`) or evaluation batches."""
        raise NotImplementedError

    def loader(self, rows, train: bool = False, token_counts=None) -> StatefulDataLoader:
        """Training rows (shuffled; given their label `token_counts`, batches carry `window_tokens`: the label tokens
        of their accumulation window), else an evaluation split."""
        rank, world_size = rank_and_world(self.trainer)
        windows = {"token_counts": token_counts, **training_windows(self.trainer)} if token_counts is not None else {}
        return stateful_loader(
            rows,
            self.batch_size if train else self.eval_batch_size,
            shuffle=train,
            num_workers=self.num_workers,
            seed=self.seed,
            rank=rank,
            world_size=world_size,
            collate_fn=self.collate(train),
            **windows,
        )

    def windowed_loader(self, rows, token_counts, what: str) -> StatefulDataLoader:
        """The training loader with `window_tokens`, refused in one line when validation would never run."""
        loader = self.loader(rows, train=True, token_counts=token_counts)
        check_val_interval(self.trainer, loader, f"an epoch ({len(rows)} {what})")
        return loader

    def train_dataloader(self):
        return self.loader(self.splits["train"], train=True)

    def val_dataloader(self):
        return self.loader(self.splits["val"])

    def test_dataloader(self):
        return self.loader(self.splits["test"])

    def predict_dataloader(self):
        return self.loader(self.splits["predict"])
