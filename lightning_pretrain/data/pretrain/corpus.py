"""`PretrainCorpus`: raw text in, batches of packed token blocks out (and, for `predict`, the untokenized prompts of
`predict_file`: data/prompts.py). It knows nothing of objectives."""

from __future__ import annotations

import logging
import time
from functools import cached_property
from pathlib import Path
from typing import Literal

import lightning as L
import numpy as np
from torchdata.stateful_dataloader import StatefulDataLoader
from transformers import PreTrainedTokenizerBase

from lightning_pretrain.data import cache

from lightning_pretrain.data.pretrain import blocks

from lightning_pretrain.data.pretrain import mixture
from lightning_pretrain.data import tokenizers as toks
from lightning_pretrain.data.contract import DataContract
from lightning_pretrain.data.loaders import check_loader_options, check_val_interval, rank_and_world, stateful_loader
from lightning_pretrain.data.sources.prompts import prompt_loader
from lightning_pretrain.data.sources.text import resolve as resolve_source
from lightning_pretrain.errors import InputError

log = logging.getLogger(__name__)


class PretrainCorpus(L.LightningDataModule):
    def __init__(
        self,
        source: str = "builtin",
        val_source: str | None = None,
        val_fraction: float = 0.05,
        text_column: str = "text",
        tokenizer: str = "bpe",
        vocab_size: int = 8192,
        seq_len: int = 128,
        batch_size: int = 32,
        num_workers: int = 0,
        cache_dir: str | None = None,
        seed: int = 1234,
        predict_file: str | None = None,
        cross_document_attention: bool = True,
        document_delimiter: str | None = None,
        sources: list[mixture.MixtureSource] | None = None,
        exhaustion: Literal["repeat", "stop"] = "repeat",
    ):
        """
        Args:
            source: 'builtin' (CPython's documentation, ~1.8 MB, offline), a local .txt/.jsonl/.json/.csv/.tsv/.parquet
                file, directory or glob, or a hub dataset 'id[:config][@split]'.
            val_source: validation text in the same forms; when unset, `val_fraction` of the documents is held out.
            val_fraction: fraction of documents held out for validation when `val_source` is unset.
            text_column: column holding the text in jsonl/csv/parquet/hub sources.
            tokenizer: 'bpe' (byte-level BPE) or 'wordpiece' to train one on the training text, or a local
                tokenizer directory / hub id of a pretrained fast tokenizer.
            vocab_size: vocabulary size of a tokenizer trained here (ignored for pretrained tokenizers).
            seq_len: tokens per example (the model's sequence length): a packed block, or a sentence pair with
                its [CLS] and [SEP] tokens (padded).
            batch_size: examples (blocks or pairs) per batch on each device.
            num_workers: DataLoader worker processes (reads are memory-mapped slices, so 0-2 suffice on CPU).
            cache_dir: where tokenized corpora and trained tokenizers live; default $LIGHTNING_PRETRAIN_CACHE or
                ~/.cache/lightning_pretrain.
            seed: seed of the train/validation document split and of the shuffling order.
            predict_file: prompts for `predict`: a UTF-8 text file, one prompt per line (blank lines are skipped);
                the objective says what a prompt is (a text to continue, or one with mask tokens / sentinels).
            cross_document_attention: True: a packed block is one sequence (GPT-2's and RoBERTa's training). False:
                each document in a block attends only to itself (block-diagonal attention, block-causal for causal
                LMs), its position ids restart at 0, and no label is predicted across a boundary; batches carry
                `position_ids` (objectives that support it: CausalLM, MaskedLM). Boundaries are the separator tokens.
            document_delimiter: plain-text files: a line holding only this string ends a document (e.g.
                '<|endoftext|>'); unset: documents are separated by blank lines. Such files are read whole.
            sources: a weighted data mixture, replacing `source`: a list of {source, weight, name} (any source
                form; weights > 0, normalised; name: its key in the logs, default derived from the source). Each is
                tokenized and cached on its own, with its own validation hold-out (or the shared `val_source`);
                training draws each sample's source with the weights, a pure function of (seed, sample index).
                Needs trainer.max_steps unless exhaustion='stop'.
            exhaustion: what a mixture source whose blocks are all used does: 'repeat' (a new seeded order, its
                epochs logged as train/epochs/<name>) or 'stop' (the run ends there).
        """
        super().__init__()
        if seq_len < 2:
            raise InputError(f"seq_len must be at least 2, got {seq_len}")
        if not 0.0 < val_fraction < 1.0 and val_source is None:
            raise InputError(f"val_fraction must be in (0, 1), got {val_fraction}")
        check_loader_options(num_workers, batch_size=batch_size)
        toks.check_vocab_size(tokenizer, vocab_size)
        self.save_hyperparameters()
        self.source = resolve_source(source, text_column, delimiter=document_delimiter)
        self.val_source = (resolve_source(val_source, text_column, delimiter=document_delimiter)
                           if val_source else None)
        self.cross_document_attention = cross_document_attention
        self.tokenizer_spec = tokenizer
        self.vocab_size = vocab_size
        self.seq_len = seq_len
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.val_fraction = val_fraction
        self.cache_root = cache.resolve_root(cache_dir)
        self.seed = seed
        self.predict_file = predict_file
        self.train_blocks: np.ndarray | None = None
        self.val_blocks: np.ndarray | None = None
        self.exhaustion = exhaustion
        self.parts: list[PretrainCorpus] = []  # a mixture: one corpus per source (data/mixture.py)
        if sources is not None:
            self.sources, self.mixture_names, self.mixture_weights = mixture.check_sources(sources)
            self.parts = mixture.cached_parts(self, self.sources)

    # -- text ---------------------------------------------------------------------------------------------------
    @cached_property
    def _splits(self):
        """{'train': Dataset, 'val': Dataset} of documents (loaded only on a cache miss)."""
        with cache.rooted(self.cache_root):  # file digests are remembered under this cache
            return self._load_splits()

    def _load_splits(self):
        ds = self.source.load().filter(lambda b: [bool(t and t.strip()) for t in b["text"]], batched=True)
        if len(ds) == 0:
            raise InputError(f"corpus '{self.hparams.source}' is empty (no non-blank text)")
        if self.val_source is not None:
            val = self.val_source.load().filter(lambda b: [bool(t and t.strip()) for t in b["text"]], batched=True)
            if len(val) == 0:
                raise InputError(f"validation corpus '{self.hparams.val_source}' is empty (no non-blank text)")
            return {"train": ds, "val": val}
        if len(ds) < 2:
            raise InputError(f"corpus '{self.hparams.source}' has a single document: nothing to hold out for "
                             f"validation; pass --data.val_source")
        split = ds.train_test_split(test_size=self.val_fraction, seed=self.seed, shuffle=True)
        return {"train": split["train"], "val": split["test"]}

    def _texts(self, split: str, batch: int = 1000):
        for rows in self._splits[split].iter(batch_size=batch):
            yield rows["text"]

    def _text_identity(self) -> list[str]:
        return self._identity

    @cached_property
    def _identity(self) -> list[str]:
        # a local source's identity hashes every byte of it: once per process, not once per cache lookup
        with cache.rooted(self.cache_root):  # file digests are remembered under this cache
            val = self.val_source.identity() if self.val_source else f"holdout:{self.val_fraction}:{self.seed}"
            return [self.source.identity(), val]

    # -- tokenizer ----------------------------------------------------------------------------------------------
    @cached_property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        """The tokenizer (trained on the training split and cached on first use)."""
        if self.tokenizer_spec not in toks.TRAINERS:
            tok = toks.load_pretrained(self.tokenizer_spec)
        elif self.parts:  # a mixture's tokenizer learns from every source's training text
            tok = toks.trained(self.tokenizer_spec, self.vocab_size,
                               lambda: (t for p in self.parts for batch in p._texts("train") for t in batch),
                               [i for p in self.parts for i in p._text_identity()], self.cache_root)
        else:
            return toks.trained(self.tokenizer_spec, self.vocab_size,
                                lambda: (t for batch in self._texts("train") for t in batch),
                                self._text_identity(), self.cache_root)
        mixture.share_tokenizer(self.parts, tok)
        return tok

    @property
    def contract(self) -> DataContract:
        """What the model needs: the tokenizer and the block length."""
        return DataContract(self.tokenizer, seq_len=self.seq_len,
                            cross_document_attention=self.cross_document_attention)

    @property
    def collate(self) -> blocks.BlockCollate:
        """Stacks blocks; with documents kept apart, adds the position ids that restart at each of them."""
        return blocks.BlockCollate(None if self.cross_document_attention
                                   else toks.document_separator(self.tokenizer))

    # -- blocks -------------------------------------------------------------------------------------------------
    @property
    def cache_entry(self) -> Path:
        key = cache.cache_key("blocks", blocks.FORMAT_VERSION, *self._text_identity(),
                              toks.fingerprint(self.tokenizer), self.seq_len)
        return self.cache_root / "blocks" / key

    def prepare_data(self) -> None:
        """Tokenize and pack both splits once (rank 0); later runs with the same settings reuse the cache."""
        if self.predicting:  # prompts are read as they are, no block is needed
            return
        if self.parts:
            mixture.share_tokenizer(self.parts, self.tokenizer)
            for part in self.parts:
                part.prepare_data()
            return
        tok = self.tokenizer
        sep, dtype = toks.document_separator(tok), blocks.token_dtype(len(tok))

        def build(tmp: Path) -> dict:
            meta = {"seq_len": self.seq_len, "dtype": dtype.str, "splits": {}}
            for split in ("train", "val"):
                t0 = time.perf_counter()
                progress = blocks.Progress(f"tokenizing the {split} split")
                n = blocks.write_blocks(tmp / f"{split}.bin", blocks.encode_batches(tok, self._texts(split), progress),
                                        sep, self.seq_len, dtype)
                meta["splits"][split] = {"n_blocks": n, "seconds": round(time.perf_counter() - t0, 3)}
                if n == 0:
                    raise InputError(f"the {split} split has fewer than seq_len={self.seq_len} tokens: it yields no "
                                     f"block; use a larger corpus, a smaller seq_len"
                                     f"{' or a larger val_fraction' if split == 'val' else ''}")
            return meta

        entry, reused = cache.get_or_build(self.cache_entry, build, self._entry_is_complete)
        log.info("%s token blocks at %s", "reusing" if reused else "built", entry)

    def _entry_is_complete(self, entry: Path, meta: dict) -> bool:
        itemsize = np.dtype(meta.get("dtype", "<u2")).itemsize
        try:
            return meta["seq_len"] == self.seq_len and all(
                (entry / f"{s}.bin").stat().st_size == info["n_blocks"] * self.seq_len * itemsize
                for s, info in meta["splits"].items())
        except (KeyError, OSError):
            return False

    @property
    def predicting(self) -> bool:
        return self.trainer is not None and self.trainer.predicting

    def setup(self, stage: str | None = None) -> None:
        if stage == "predict":
            return
        if self.parts:
            mixture.share_tokenizer(self.parts, self.tokenizer)
            for part in self.parts:
                part.setup(stage)
            return
        entry = self.cache_entry
        meta = cache.lookup(entry, self._entry_is_complete)
        if meta is None:
            self.prepare_data()  # prepare_data is skipped when Trainer(prepare_data_per_node=False) on non-zero ranks
            meta = cache.read_meta(entry)
        for split in ("train", "val"):
            arr = blocks.open_blocks(entry / f"{split}.bin", meta["splits"][split]["n_blocks"], self.seq_len,
                                     meta["dtype"])
            setattr(self, f"{split}_blocks", arr)

    # -- loaders ------------------------------------------------------------------------------------------------
    def _loader(self, arr: np.ndarray, shuffle: bool) -> StatefulDataLoader:
        rank, world_size = rank_and_world(self.trainer)
        return stateful_loader(blocks.BlockDataset(arr), self.batch_size, shuffle=shuffle, drop_last=shuffle,
                               collate_fn=self.collate,
                               num_workers=self.num_workers, seed=self.seed, rank=rank, world_size=world_size)

    def train_dataloader(self):
        if self.parts:
            return self._mixture_loader()
        if len(self.train_blocks) < self.batch_size:
            raise InputError(f"the training split has {len(self.train_blocks)} blocks of {self.seq_len} tokens, fewer "
                             f"than one batch of {self.batch_size}; lower batch_size or seq_len")
        loader = self._loader(self.train_blocks, shuffle=True)
        check_val_interval(self.trainer, loader, f"an epoch ({len(self.train_blocks)} blocks of {self.seq_len} tokens)")
        return loader

    def val_dataloader(self):
        if self.parts:
            rank, world_size = rank_and_world(self.trainer)
            return stateful_loader(mixture.val_dataset(self.parts, self.val_source is not None), self.batch_size,
                                   collate_fn=self.collate, num_workers=self.num_workers, seed=self.seed, rank=rank,
                                   world_size=world_size)
        return self._loader(self.val_blocks, shuffle=False)

    def _mixture_loader(self) -> StatefulDataLoader:
        rank, world_size = rank_and_world(self.trainer)
        dataset = mixture.MixtureBlocks([p.train_blocks for p in self.parts])
        sampler = mixture.MixtureSampler(dataset, self.mixture_weights, self.batch_size, seed=self.seed, rank=rank,
                                         world_size=world_size, exhaustion=self.exhaustion, names=self.mixture_names,
                                         length=mixture.run_length(self.trainer, self.batch_size, self.exhaustion))
        loader = stateful_loader(dataset, self.batch_size, sampler=sampler, drop_last=True, collate_fn=self.collate,
                                 num_workers=self.num_workers, seed=self.seed)
        check_val_interval(self.trainer, loader, "this mixture run")
        return loader

    def mixture_epochs(self, counts, loader=None) -> list[float]:
        """Epochs of each mixture source after `counts` samples of each."""
        return [c / len(p.train_blocks) for c, p in zip(counts, self.parts)]

    def mixture_exhausted(self, loader) -> str | None:
        """The name of the source that ran out (exhaustion='stop'), None while none has."""
        s = getattr(getattr(loader, "sampler", None), "ran_out", None)
        return None if s is None else self.mixture_names[s]

    def test_dataloader(self):
        return self.val_dataloader()

    def predict_dataloader(self):
        return prompt_loader(self.predict_file, self.batch_size, self.trainer)
