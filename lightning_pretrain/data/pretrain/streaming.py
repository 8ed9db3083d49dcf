"""`StreamingCorpus`: pretraining on text too large to tokenize up front.

Documents are read lazily with `datasets` streaming, tokenized and packed into `seq_len` blocks on the fly in the
DataLoader workers; each rank x worker reads its own shard, shuffles within windows and cycles endlessly until
`trainer.max_steps`; a worker's resumable state is a few numbers. Validation: the first `val_documents` documents
of `val_source` (default: of `source`, which training then skips). In detail: docs/design/data.md.
"""

from __future__ import annotations

import logging
import warnings
from functools import cached_property
from typing import Literal

import datasets
import lightning as L
import numpy as np
from torch.utils.data import IterableDataset
from torchdata.stateful_dataloader import StatefulDataLoader
from transformers import PreTrainedTokenizerBase

from lightning_pretrain.data import cache

from lightning_pretrain.data.pretrain import blocks

from lightning_pretrain.data.pretrain import mixture

from lightning_pretrain.data.pretrain import mixture_stream

from lightning_pretrain.data.sources import text as sources
from lightning_pretrain.data import tokenizers as toks
from lightning_pretrain.data.pretrain.block_stream import BlockStream, doc_hash, documents, open_stream  # noqa: F401
from lightning_pretrain.data.contract import DataContract
from lightning_pretrain.data.loaders import check_loader_options, check_val_interval, rank_and_world, stateful_loader
from lightning_pretrain.data.sources.prompts import prompt_loader
from lightning_pretrain.data.sources.text import resolve as resolve_source
from lightning_pretrain.errors import InputError

log = logging.getLogger(__name__)


class StreamingCorpus(L.LightningDataModule):
    def __init__(
        self,
        source: str = "builtin",
        val_source: str | None = None,
        val_documents: int = 500,
        text_column: str = "text",
        tokenizer: str = "bpe",
        vocab_size: int = 8192,
        tokenizer_documents: int = 50_000,
        seq_len: int = 128,
        batch_size: int = 32,
        num_workers: int = 2,
        shard_by: Literal["rows", "files"] = "rows",
        shuffle_window: int = 2048,
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
            source: a hub dataset 'id[:config][@split]' (streamed), a local .txt/.jsonl/.json/.csv/.tsv/.parquet
                file, directory or glob (read lazily), or 'builtin'.
            val_source: validation text in the same forms; when unset, the first `val_documents` documents of
                `source` are held out (training skips them).
            val_documents: documents of the validation text that are tokenized for validation.
            text_column: column holding the text in jsonl/csv/parquet/hub sources.
            tokenizer: 'bpe', 'wordpiece' or 'unigram' to train one on the first `tokenizer_documents` training
                documents (cached), or a local tokenizer directory / hub id of a pretrained fast tokenizer.
            vocab_size: vocabulary size of a tokenizer trained here (ignored for pretrained tokenizers).
            tokenizer_documents: documents a trained tokenizer learns from.
            seq_len: tokens per packed block (the model's sequence length).
            batch_size: blocks per batch on each device.
            num_workers: DataLoader workers per device; they tokenize and pack, so they set the throughput
                (0 tokenizes in the training process).
            shard_by: 'rows' (document i to shard i mod ranks x workers: equal shards) or 'files' (each shard
                reads only its own files; needs at least ranks x workers files).
            shuffle_window: documents per shard shuffled together (1: stream order).
            cache_dir: where trained tokenizers live; default $LIGHTNING_PRETRAIN_CACHE or
                ~/.cache/lightning_pretrain.
            seed: seed of the shuffling.
            predict_file: prompts for `predict`: a UTF-8 text file, one per line (blank lines are skipped).
            cross_document_attention: True: a packed block is one sequence (GPT-2's and RoBERTa's training). False:
                each document in a block attends only to itself (block-diagonal attention, block-causal for causal
                LMs), its position ids restart at 0, and no label is predicted across a boundary; batches carry
                `position_ids` (objectives that support it: CausalLM, MaskedLM). Boundaries are the separator tokens.
            document_delimiter: plain-text files: a line holding only this string ends a document (e.g.
                '<|endoftext|>'); unset: documents are separated by blank lines. Such files are read whole.
            sources: a weighted data mixture, replacing `source`: a list of {source, weight, name} (any source
                form; weights > 0, normalised; name: its key in the logs, default derived from the source). Each is
                streamed on its own (validation: its first `val_documents`, or the shared `val_source`) and each
                worker interleaves them by seeded draws with the weights; a trained tokenizer learns from each
                source's weighted share of `tokenizer_documents`.
            exhaustion: what a mixture source does at the end of its first pass: 'repeat' (passes logged as
                train/epochs/<name>) or 'stop' (the run ends there; one device only).
        """
        super().__init__()
        if seq_len < 2:
            raise InputError(f"seq_len must be at least 2, got {seq_len}")
        check_loader_options(num_workers, batch_size=batch_size, val_documents=val_documents,
                             tokenizer_documents=tokenizer_documents, shuffle_window=shuffle_window)
        toks.check_vocab_size(tokenizer, vocab_size)
        self.save_hyperparameters()
        self.source = resolve_source(source, text_column, streaming=True, delimiter=document_delimiter)
        self.val_source = (resolve_source(val_source, text_column, streaming=True, delimiter=document_delimiter)
                           if val_source else None)
        self.cross_document_attention = cross_document_attention
        self.tokenizer_spec, self.vocab_size, self.tokenizer_documents = tokenizer, vocab_size, tokenizer_documents
        self.val_documents, self.seq_len, self.batch_size = val_documents, seq_len, batch_size
        self.num_workers, self.shard_by, self.shuffle_window = num_workers, shard_by, shuffle_window
        self.cache_root = cache.resolve_root(cache_dir)
        self.seed, self.predict_file = seed, predict_file
        self.val_blocks: np.ndarray | None = None
        self.exclude: frozenset[bytes] = frozenset()
        self.exhaustion = exhaustion
        self.parts: list[StreamingCorpus] = []  # a mixture: one corpus per source (data/mixture.py)
        if sources is not None:
            self.sources, self.mixture_names, self.mixture_weights = mixture.check_sources(sources)
            self.parts = mixture_stream.streaming_parts(self, self.sources, self.mixture_weights)

    @cached_property
    def stream(self) -> datasets.IterableDataset:
        return open_stream(self.source, self.cache_root)

    @cached_property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        """Pretrained, or trained on the first `tokenizer_documents` training documents (cached)."""
        if self.tokenizer_spec not in toks.TRAINERS:
            tok = toks.load_pretrained(self.tokenizer_spec)
            mixture.share_tokenizer(self.parts, tok)
            return tok
        if self.parts:  # each source's share of the documents, one after the other
            skip = 0 if self.val_source else self.val_documents
            with cache.rooted(self.cache_root):
                identity = [f"{p.source.identity()}:stream:skip{skip}:first{p.tokenizer_documents}"
                            for p in self.parts]
            tok = toks.trained(self.tokenizer_spec, self.vocab_size,
                               lambda: (d for p in self.parts for d in documents(p.stream, skip, p.tokenizer_documents)),
                               identity, self.cache_root)
            mixture.share_tokenizer(self.parts, tok)
            return tok
        skip = 0 if self.val_source else self.val_documents
        with cache.rooted(self.cache_root):  # file digests are remembered under this cache
            identity = [self.source.identity(), f"stream:skip{skip}:first{self.tokenizer_documents}"]
        return toks.trained(self.tokenizer_spec, self.vocab_size,
                            lambda: documents(self.stream, skip, self.tokenizer_documents), identity, self.cache_root)

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

    def setup(self, stage: str | None = None) -> None:
        if stage == "predict":  # prompts only (`predict_dataloader`)
            return
        if self.parts:  # validation: every source's held-out documents, or the shared val_source once
            mixture.share_tokenizer(self.parts, self.tokenizer)
            for part in self.parts[:1] if self.val_source else self.parts:
                part.setup(stage)
            self.val_blocks = np.concatenate([p.val_blocks for p in self.parts if p.val_blocks is not None])
            return
        val = list(documents(open_stream(self.val_source, self.cache_root) if self.val_source else self.stream,
                             take=self.val_documents))
        if not val:
            raise InputError(f"corpus '{self.hparams.val_source or self.hparams.source}' is empty (no non-blank text)")
        if self.val_source is None:
            self.exclude = frozenset(map(doc_hash, val))
        tok = self.tokenizer
        self.val_blocks = blocks.pack(blocks.encode_batches(tok, [val], blocks.Progress("tokenizing validation")),
                                      toks.document_separator(tok), self.seq_len)
        if len(self.val_blocks) == 0:
            raise InputError(f"the {len(val)} validation documents hold fewer than seq_len={self.seq_len} tokens: "
                             f"raise val_documents or lower seq_len")

    def train_dataset(self) -> BlockStream | mixture_stream.MixtureStream:
        trainer = self.trainer
        rank, world = rank_and_world(trainer)
        if self.parts:
            if self.exhaustion == "stop" and world > 1:
                raise InputError("exhaustion='stop' of a streaming mixture runs on one device only: each rank's "
                                 "shards run out at a different batch; use 'repeat' or the cached PretrainCorpus")
            return mixture_stream.interleave(self.parts, self.mixture_weights, self.mixture_names, self.seed,
                                      self.exhaustion, mixture.run_length(trainer, self.batch_size, self.exhaustion),
                                      rank, world)
        length = None
        if trainer is not None:
            if trainer.max_steps < 0:
                raise InputError("a streaming corpus is endless: set trainer.max_steps (the run's length)")
            length = trainer.max_steps * trainer.accumulate_grad_batches * self.batch_size
        log.info("streaming %s: rank %d of %d reads shards %d-%d of %d (by %s)", self.hparams.source, rank, world,
                 rank * max(self.num_workers, 1), (rank + 1) * max(self.num_workers, 1) - 1,
                 world * max(self.num_workers, 1), self.shard_by)
        return BlockStream(self.stream, self.tokenizer, self.seq_len, rank, world, self.shard_by,
                           self.shuffle_window, self.seed, self.exclude, length)

    def train_dataloader(self) -> StatefulDataLoader:
        # Lightning warns about any sized IterableDataset in case its workers yield duplicates; ours read disjoint
        # shards, and the size is the run's length by design (docs/design/data.md, Stopping)
        warnings.filterwarnings("ignore", message="Your `IterableDataset` has `__len__` defined")
        loader = stateful_loader(self.train_dataset(), self.batch_size, num_workers=self.num_workers, seed=self.seed,
                                 collate_fn=self.collate)
        check_val_interval(self.trainer, loader, "this streaming run (max_steps x accumulate_grad_batches)")
        return loader

    def mixture_epochs(self, counts, loader) -> list[float]:
        """Completed passes of each mixture source (the fewest over this rank's workers)."""
        return mixture_stream.stream_passes(loader, len(self.parts))

    def mixture_exhausted(self, loader) -> str | None:
        """The name of the source that ran out (exhaustion='stop'), None while none has."""
        s = mixture_stream.first_exhausted(loader)
        return None if s is None else self.mixture_names[s]

    def val_dataloader(self) -> StatefulDataLoader:
        rank, world_size = rank_and_world(self.trainer)  # in memory: no workers needed
        return stateful_loader(blocks.BlockDataset(self.val_blocks), self.batch_size, seed=self.seed, rank=rank,
                               collate_fn=self.collate,
                               world_size=world_size)

    def test_dataloader(self) -> StatefulDataLoader:
        return self.val_dataloader()

    def predict_dataloader(self) -> StatefulDataLoader:
        return prompt_loader(self.predict_file, self.batch_size, self.trainer)
