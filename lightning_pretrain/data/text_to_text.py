"""`TextToText`: source -> target pairs (translation, summarization, T5-style tasks) as dynamically padded batches.

A split is a table's source and target columns (a file, a directory's train/dev/test file or a hub split) or two
parallel plain-text files, one example per line (`train_file: train.en` with `train_target_file: train.de`): read
and checked by `data/pair_splits.py`. Sources get the optional task `prefix`; both sides end with the tokenizer's end
token (EOS, else SEP: its template's, or appended once) and are cut to their maximum length keeping it. Each split is
tokenized once into an atomic hash-keyed cache entry; labels are padded with -100, inputs with the pad id.
"""

from __future__ import annotations

import logging
import time
from functools import cached_property
from pathlib import Path

import datasets
import lightning as L
import torch
from torchdata.stateful_dataloader import StatefulDataLoader
from transformers import PreTrainedTokenizerBase

from lightning_pretrain.data import cache
from lightning_pretrain.data import tokenizers as toks
from lightning_pretrain.data.contract import DataContract
from lightning_pretrain.data.loaders import check_loader_options, check_val_interval, rank_and_world, stateful_loader
from lightning_pretrain.data.pair_splits import PairSplits
from lightning_pretrain.data.windows import training_windows
from lightning_pretrain.data.tables import Column
from lightning_pretrain.errors import InputError

log = logging.getLogger(__name__)

FORMAT_VERSION = 1


class TextToText(L.LightningDataModule):
    def __init__(
        self,
        source: str | None = None,
        train_file: str | None = None,
        val_file: str | None = None,
        test_file: str | None = None,
        predict_file: str | None = None,
        train_target_file: str | None = None,
        val_target_file: str | None = None,
        test_target_file: str | None = None,
        source_column: Column = "source",
        target_column: Column = "target",
        header: bool | None = None,
        prefix: str = "",
        drop_empty: bool = False,
        train_split: str | None = None,
        val_split: str | None = None,
        test_split: str | None = None,
        val_fraction: float = 0.05,
        max_train_examples: int | None = None,
        tokenizer: str | None = None,
        max_source_length: int = 512,
        max_target_length: int = 128,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        cache_dir: str | None = None,
        seed: int = 1234,
    ):
        """
        Args:
            source: a hub dataset 'id[:config][@split]' (e.g. 'xsum', 'wmt16:de-en'; '@split' names the training
                split), or a local directory with train.* / dev.* / test.* tables (.csv/.tsv/.jsonl/.json/.parquet).
            train_file: local training table, or the source side of parallel text (with train_target_file).
            val_file: local validation table, or the source side of parallel text (with val_target_file).
            test_file: local test table, or the source side of parallel text (with test_target_file).
            predict_file: inputs to generate for: a table with the source column, or plain text (.txt or any
                suffix that is not a table's) holding one source per line; default: the test split's sources.
            train_target_file: makes train_file parallel text: line i of this file is the target of line i there
                (e.g. train.en / train.de); both files must have the same number of lines.
            val_target_file: the targets of a plain-text val_file, line by line.
            test_target_file: the targets of a plain-text test_file, line by line.
            source_column: column of the source text: a name, a 0-based index (header-less CSV/TSV), or
                'column.key' for a field of a dict column (hub translation sets: 'translation.en').
            target_column: column of the target text (same forms as source_column).
            header: whether CSV/TSV files have a header line; default: header-less exactly when both columns are
                given by index.
            prefix: task prefix prepended to every source before tokenization, e.g. 'translate English to German: '
                (the `source` text in batches and predictions excludes it).
            drop_empty: drop examples whose source or target is blank (a blank line of parallel text) instead of
                refusing them.
            train_split: hub split used for training (default 'train').
            val_split: hub split used for validation (default: the first of validation, dev, valid, test).
            test_split: hub split used by `test` and `predict` (default: test).
            val_fraction: share of the training examples held out for validation when there is no validation data.
            max_train_examples: train on a seeded random subset of this many examples (quick CPU runs).
            tokenizer: the model's tokenizer: a directory (e.g. a run's export `logs/<name>/version_N/hf`) or hub id.
            max_source_length: longest tokenized source (prefix and special tokens included); longer ones are cut,
                keeping their end token, and counted in the log.
            max_target_length: longest tokenized target (end token included); longer ones are cut likewise.
            batch_size: training examples per batch on each device.
            eval_batch_size: validation / test / predict batch size (default: batch_size).
            num_workers: DataLoader worker processes.
            cache_dir: where tokenized splits live; default $LIGHTNING_PRETRAIN_CACHE or ~/.cache/lightning_pretrain.
            seed: seed of the held-out validation examples, of the training subset and of the shuffling order.
        """
        super().__init__()
        for name, value in (("max_source_length", max_source_length), ("max_target_length", max_target_length)):
            if value < 2:
                raise InputError(f"{name} must be at least 2 (a token and the end token), got {value}")
        if not 0.0 < val_fraction < 1.0:
            raise InputError(f"val_fraction must be in (0, 1), got {val_fraction}")
        if max_train_examples is not None and max_train_examples < 1:
            raise InputError(f"max_train_examples must be positive, got {max_train_examples}")
        check_loader_options(num_workers, batch_size=batch_size, eval_batch_size=eval_batch_size)
        if not any((source, train_file, val_file, test_file, predict_file)):
            raise InputError("no data: pass --data.train_file (a table, or parallel text with "
                             "--data.train_target_file), or --data.source (a hub id or a directory)")
        self.save_hyperparameters(ignore=["tokenizer"])
        self.header = header if header is not None else not all(isinstance(c, int)
                                                                for c in (source_column, target_column))
        self.inputs = PairSplits(source, {"train": train_file, "val": val_file, "test": test_file,
                                          "predict": predict_file},
                                 {"train": train_target_file, "val": val_target_file, "test": test_target_file},
                                 {"train": train_split, "val": val_split, "test": test_split}, source_column,
                                 target_column, self.header, drop_empty, val_fraction, seed, max_train_examples)
        self.source_column, self.target_column = source_column, target_column
        self.prefix, self.drop_empty, self.max_train_examples = prefix, drop_empty, max_train_examples
        self.tokenizer_spec = tokenizer
        self.max_source_length, self.max_target_length = max_source_length, max_target_length
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size or batch_size
        self.num_workers, self.cache_root, self.seed = num_workers, cache.resolve_root(cache_dir), seed
        self.splits: dict[str, datasets.Dataset] = {}  # the tokenized splits of the current stage

    # -- tokenizer and contract ---------------------------------------------------------------------------------
    @cached_property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        """The model's tokenizer (one without a pad token pads with EOS: padding is masked, labels use -100)."""
        if not self.tokenizer_spec:
            raise InputError("TextToText needs --data.tokenizer: the model's tokenizer directory (a run's export "
                             "logs/<name>/version_N/hf holds one) or hub id")
        tok = toks.load_pretrained(self.tokenizer_spec)
        if tok.eos_token_id is None and tok.sep_token_id is None:
            raise InputError(f"tokenizer '{self.tokenizer_spec}' has neither an EOS nor a SEP token to end texts with")
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token if tok.eos_token is not None else tok.sep_token
        self._tokenizer_fingerprint = toks.fingerprint(tok)
        return tok

    @property
    def end_id(self) -> int:
        """The token every source and target ends with: EOS (T5, BART, GPT), else SEP (BERT's template)."""
        tok = self.tokenizer
        return tok.eos_token_id if tok.eos_token_id is not None else tok.sep_token_id

    @property
    def contract(self) -> DataContract:
        """Tokenizer and the longest tokenized source / target of the training data (train and val); without
        training data, of val and the predict sources (predict_file, else the test split's), so an unlabelled test
        table is not read for targets. With no targets anywhere, `max_target_length`."""
        names = ["train", "val"] if self.inputs.present("train") else [
            s for s in ("val", "predict") if self.inputs.present(s)]
        if not names:
            raise InputError("no data found: the --data.source directory has no train/dev/test file")
        metas = [self._entry(s)[1] for s in names]
        targets = [m["longest_target"] for m in metas if m.get("longest_target")]
        return DataContract(self.tokenizer, max_length=max(m["longest_source"] for m in metas),
                            max_target_length=max(targets) if targets else self.max_target_length,
                            task="text_to_text")

    # -- tokenized splits ---------------------------------------------------------------------------------------
    def _entry(self, split: str) -> tuple[Path, dict]:
        """The cache entry of a tokenized split (built on first use) and its metadata."""
        with cache.rooted(self.cache_root):  # file digests are remembered under this cache
            identity = self.inputs.identity(split)
        key = cache.cache_key("text_to_text", FORMAT_VERSION, split == "predict", identity, self.header,
                              self.source_column, self.target_column, self.prefix, self.drop_empty,
                              self.max_train_examples if split == "train" else None, self.seed,
                              self.tokenizer_fingerprint, self.max_source_length, self.max_target_length)

        def build(tmp: Path) -> dict:
            t0 = time.perf_counter()
            dataset, meta = self._encode(self.inputs.rows(split))
            quiet = datasets.utils.are_progress_bars_disabled()
            datasets.disable_progress_bars()  # a bar per tiny shard write is noise
            try:
                dataset.save_to_disk(str(tmp / "data"))
            finally:
                if not quiet:
                    datasets.enable_progress_bars()
            return {**meta, "seconds": round(time.perf_counter() - t0, 3)}

        entry, reused = cache.get_or_build(self.cache_root / "text_to_text" / key, build,
                                           lambda e, m: (e / "data").is_dir() and "rows" in m)
        meta = cache.read_meta(entry)
        if not reused:
            log.info("tokenized the %s split: %d examples (%d sources cut to %d tokens, %d targets to %d) in %.1fs "
                     "-> %s", split, meta["rows"], meta["truncated_sources"], self.max_source_length,
                     meta.get("truncated_targets", 0), self.max_target_length, meta["seconds"], entry)
        return entry, meta

    @property
    def tokenizer_fingerprint(self) -> str:
        _ = self.tokenizer  # loading it takes the fingerprint
        return self._tokenizer_fingerprint

    def _encode(self, rows: dict[str, list]) -> tuple[datasets.Dataset, dict]:
        ids, cut = self._tokenize([self.prefix + s for s in rows["source"]], self.max_source_length, False)
        meta = {"rows": len(ids), "truncated_sources": cut, "longest_source": max(map(len, ids))}
        columns = {"input_ids": ids, "example_id": list(range(len(ids))), "source": rows["source"]}
        if "target" in rows:
            labels, cut = self._tokenize(rows["target"], self.max_target_length, True)
            meta.update(truncated_targets=cut, longest_target=max(map(len, labels)))
            # label tokens per example: what the accumulation window's token count is summed from
            columns.update(labels=labels, n_labels=[len(x) for x in labels], target=rows["target"])
        return datasets.Dataset.from_dict(columns), meta

    def _tokenize(self, texts: list[str], limit: int, target: bool) -> tuple[list[list[int]], int]:
        """Token ids ending with exactly one end token (the template's, else appended), cut to `limit` keeping it;
        targets as `text_target` (tokenizers with target-specific processing), and the number cut."""
        end, out, cut = self.end_id, [], 0
        for start in range(0, len(texts), 2000):
            part = texts[start:start + 2000]
            ids_only = {"return_attention_mask": False, "return_token_type_ids": False}  # (built per batch)
            enc = self.tokenizer(text_target=part, **ids_only) if target else self.tokenizer(part, **ids_only)
            for x in enc["input_ids"]:
                x = x if x and x[-1] == end else [*x, end]
                if len(x) > limit:
                    x, cut = [*x[:limit - 1], end], cut + 1
                out.append(x)
        return out, cut

    # -- Lightning hooks ----------------------------------------------------------------------------------------
    STAGE_SPLITS = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("predict",)}

    def prepare_data(self) -> None:
        """Tokenize the splits this run needs once (rank 0); later runs with the same settings reuse the cache."""
        stage = getattr(getattr(self.trainer, "state", None), "fn", None) if self.trainer else None
        for split in self.STAGE_SPLITS.get(str(stage.value) if stage else "fit", ("train", "val")):
            self._entry(split)

    def setup(self, stage: str | None = None) -> None:
        for split in self.STAGE_SPLITS.get(stage or "fit", ("train", "val")):
            entry, _ = self._entry(split)  # built here when prepare_data ran on another node only
            self.splits[split] = datasets.load_from_disk(str(entry / "data"))

    def _loader(self, split: str, shuffle: bool) -> StatefulDataLoader:
        rank, world_size = rank_and_world(self.trainer)
        windows = {}
        if split == "train":  # batches carry `window_tokens`: the label tokens of their accumulation window
            windows = {"token_counts": self.splits[split]["n_labels"], **training_windows(self.trainer)}
        return stateful_loader(self.splits[split], self.batch_size if shuffle else self.eval_batch_size,
                               shuffle=shuffle, num_workers=self.num_workers, seed=self.seed, rank=rank,
                               world_size=world_size, collate_fn=PadPairs(self.tokenizer.pad_token_id), **windows)

    def train_dataloader(self):
        loader = self._loader("train", shuffle=True)
        check_val_interval(self.trainer, loader, f"an epoch ({len(self.splits['train'])} examples)")
        return loader

    def val_dataloader(self):
        return self._loader("val", shuffle=False)

    def test_dataloader(self):
        return self._loader("test", shuffle=False)

    def predict_dataloader(self):
        return self._loader("predict", shuffle=False)


class PadPairs:
    """A batch padded to its own longest source and target: input_ids with the pad id (attention_mask 0 there),
    labels with -100 exactly on padding; `example_id` as a tensor, `source` / `target` texts as lists."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, rows: list[dict]) -> dict:
        batch = {"input_ids": _pad([r["input_ids"] for r in rows], self.pad_id),
                 "attention_mask": _pad([[1] * len(r["input_ids"]) for r in rows], 0)}
        if "labels" in rows[0]:
            batch["labels"] = _pad([r["labels"] for r in rows], -100)
        batch["example_id"] = torch.tensor([r["example_id"] for r in rows], dtype=torch.long)
        return {**batch, **{k: [r[k] for r in rows] for k in ("source", "target") if k in rows[0]}}


def _pad(seqs: list[list[int]], value: int) -> torch.Tensor:
    out = torch.full((len(seqs), max(map(len, seqs))), value, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, :len(s)] = torch.tensor(s, dtype=torch.long)
    return out
