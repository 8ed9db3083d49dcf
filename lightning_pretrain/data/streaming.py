"""`StreamingCorpus`: pretraining on text too large to tokenize up front.

Documents are read lazily with `datasets` streaming, tokenized and packed into `seq_len` blocks on the fly in the
DataLoader workers; each rank x worker reads its own shard, shuffles within windows and cycles endlessly until
`trainer.max_steps`; a worker's resumable state is a few numbers. Validation: the first `val_documents` documents
of `val_source` (default: of `source`, which training then skips). In detail: docs/design/data.md.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import logging
import os
import warnings
from collections.abc import Iterator
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import datasets
import lightning as L
import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info
from torchdata.stateful_dataloader import StatefulDataLoader
from transformers import PreTrainedTokenizerBase

from lightning_pretrain.data import blocks, cache, mixture, sources
from lightning_pretrain.data import tokenizers as toks
from lightning_pretrain.data.contract import DataContract
from lightning_pretrain.data.loaders import check_loader_options, check_val_interval, rank_and_world, stateful_loader
from lightning_pretrain.data.prompts import prompt_loader
from lightning_pretrain.data.sources import resolve as resolve_source
from lightning_pretrain.errors import InputError

log = logging.getLogger(__name__)

ENCODE_DOCS = 256  # documents per tokenizer call: big enough to amortise the call, small enough for a fast first batch


def doc_hash(text: str) -> bytes:
    """Content key of a held-out document (stable across processes, unlike `hash`)."""
    return hashlib.blake2b(text.encode(), digest_size=8).digest()


def open_stream(source: sources.TextSource, cache_root: Path) -> datasets.IterableDataset:
    if isinstance(source, sources.BuiltinSource):
        # collecting CPython's docstrings parses the whole standard library (seconds): once per Python, then a file
        def build(tmp: Path) -> dict:
            source.load().to_parquet(tmp / "docs.parquet")
            return {"identity": source.identity()}

        entry, _ = cache.get_or_build(cache_root / "builtin" / cache.cache_key(source.identity()), build)
        return datasets.load_dataset("parquet", data_files=str(entry / "docs.parquet"), split="train", streaming=True)
    with cache.rooted(cache_root):  # file digests are remembered under this cache
        ds = source.load()
    return ds.to_iterable_dataset() if isinstance(ds, datasets.Dataset) else ds


def documents(ds: datasets.IterableDataset, skip: int = 0, take: int | None = None,
              batch: int = 1000) -> Iterator[str]:
    """Non-blank texts of a stream, after the first `skip` of them, at most `take`."""
    texts = (t for rows in ds.iter(batch_size=batch) for t in rows["text"] if t and t.strip())
    return itertools.islice(texts, skip, None if take is None else skip + take)


class BlockStream(IterableDataset):
    """Endless packed token blocks of one rank's shards of a text stream; resumable with `state_dict`."""

    def __init__(self, stream: datasets.IterableDataset, tokenizer: PreTrainedTokenizerBase, seq_len: int,
                 rank: int = 0, world_size: int = 1, shard_by: Literal["rows", "files"] = "rows",
                 shuffle_window: int = 2048, seed: int = 1234, exclude: frozenset[bytes] = frozenset(),
                 length: int | None = None):
        """`length`: blocks this rank will draw in the run (the loader's reported size); None: unsized."""
        self.stream, self.tokenizer, self.seq_len = stream, tokenizer, seq_len
        self.rank, self.world_size, self.shard_by = rank, world_size, shard_by
        self.shuffle_window, self.seed, self.exclude, self.length = max(1, shuffle_window), seed, exclude, length
        self.sep = toks.document_separator(tokenizer)
        self._start: dict[str, Any] | None = None  # a state to resume from (load_state_dict)
        self._cursor: dict[str, Any] | None = None  # where the next block begins (state_dict)

    def __len__(self) -> int:
        if self.length is None:
            raise TypeError("an endless stream has no length")
        return self.length

    # -- sharding -----------------------------------------------------------------------------------------------
    def shard(self) -> tuple[int, int]:
        """(this worker's shard, number of shards) over all ranks and loader workers."""
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info else (1, 0)
        return self.rank * workers + worker, self.world_size * workers

    def _open(self, shard: int, n_shards: int) -> datasets.IterableDataset:
        # a private copy: a `datasets` stream keeps a loaded position for all its later iterations
        if self.shard_by == "rows":
            return copy.deepcopy(self.stream)
        if self.stream.num_shards < n_shards:
            raise InputError(f"shard_by='files' needs at least as many files as ranks x workers ({n_shards}); the "
                             f"source has {self.stream.num_shards}: use shard_by='rows'")
        return copy.deepcopy(self.stream).shard(num_shards=n_shards, index=shard, contiguous=True)

    def windows(self, shard: int, n_shards: int, pass_: int = 0, window: int = 0,
                position: dict | None = None) -> Iterator[tuple[int, dict | None, list[str]]]:
        """One pass over a shard: `(window, stream position of its first row, its documents shuffled)`, starting
        at `window`, whose first row is at `position` (a `datasets` state; None: the start of the pass)."""
        ds = self._open(shard, n_shards)
        if position is not None:
            ds.load_state_dict(position)
        rows = ds.iter(batch_size=self.shuffle_window * (n_shards if self.shard_by == "rows" else 1))
        for w, batch in enumerate(rows, start=window):
            texts = batch["text"]
            if self.shard_by == "rows":  # a window holds a multiple of n_shards rows, so row i -> shard i mod n
                texts = texts[shard::n_shards]
            docs = [t for t in texts if t and t.strip() and (not self.exclude or doc_hash(t) not in self.exclude)]
            order = np.random.default_rng([self.seed, pass_, w, shard]).permutation(len(docs))
            yield w, position, [docs[i] for i in order]
            position = copy.deepcopy(ds.state_dict())  # after this window: where the next one starts

    # -- resumable state ----------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return copy.deepcopy(self._cursor or self._start or {})

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._start = copy.deepcopy(state) or None

    # -- the blocks ---------------------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[torch.Tensor]:
        if get_worker_info() is not None:
            # the workers are the parallelism; the tokenizer's Rust pool may not have survived the fork
            os.environ["TOKENIZERS_PARALLELISM"] = "false"
        for block in self._blocks():
            yield torch.from_numpy(block.astype(np.int64))

    def _blocks(self) -> Iterator[np.ndarray]:
        shard, n_shards = self.shard()
        start, self._cursor = self._start or {}, None
        if start and start["n_shards"] != n_shards:
            raise InputError(f"the checkpoint's stream position was written with {start['n_shards']} shards (ranks x "
                             f"loader workers) and this run has {n_shards}: resume with the same devices and "
                             f"num_workers")
        pass_, window, first_doc, skip = (start.get(k, 0) for k in ("pass", "window", "doc", "offset"))
        position = start.get("stream")
        backend = self.tokenizer.backend_tokenizer
        # pending tokens (not yet in a block) and, for each document they belong to, where its token 0 lies in
        # `pending` (negative once its head went into a block) and its place (pass, window, position, document)
        pending, starts = np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
        places: list[tuple] = []
        while True:  # passes over the shard, endlessly
            tokens_this_pass, whole_pass = 0, position is None and not (window or first_doc or skip)
            for w, w_position, docs in self.windows(shard, n_shards, pass_, window, position):
                for c0 in range(first_doc, len(docs), ENCODE_DOCS):
                    chunk = docs[c0:c0 + ENCODE_DOCS]
                    flat, lengths = blocks.separated(list(blocks.encode_texts(backend, chunk)), self.sep)
                    doc_starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]) - skip
                    flat, skip = flat[skip:], 0  # resuming inside a document: its head is already trained on
                    tokens_this_pass += len(flat)
                    starts = np.concatenate([starts, len(pending) + doc_starts])
                    places += [(pass_, w, w_position, c0 + j) for j in range(len(chunk))]
                    pending = np.concatenate([pending, flat])
                    n_full = len(pending) // self.seq_len
                    for b in range(n_full):
                        end = (b + 1) * self.seq_len
                        j = int(np.searchsorted(starts, end, side="right")) - 1
                        p, w_, pos, d = places[j]
                        self._cursor = {"pass": p, "window": w_, "stream": pos, "doc": d,
                                        "offset": int(end - starts[j]), "n_shards": n_shards}
                        yield pending[end - self.seq_len:end]
                    used = n_full * self.seq_len
                    pending, starts = pending[used:], starts - used
                    keep = max(int(np.searchsorted(starts, 0, side="right")) - 1, 0)  # drop finished documents
                    starts, places = starts[keep:], places[keep:]
                first_doc = 0
            if tokens_this_pass == 0 and whole_pass:
                raise InputError(f"shard {shard} of {n_shards} (ranks x loader workers) holds no documents: use "
                                 f"fewer workers or devices, or a larger corpus")
            pass_, window, position = pass_ + 1, 0, None


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
            self.parts = mixture.streaming_parts(self, self.sources, self.mixture_weights)

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

    def train_dataset(self) -> BlockStream | mixture.MixtureStream:
        trainer = self.trainer
        rank, world = rank_and_world(trainer)
        if self.parts:
            if self.exhaustion == "stop" and world > 1:
                raise InputError("exhaustion='stop' of a streaming mixture runs on one device only: each rank's "
                                 "shards run out at a different batch; use 'repeat' or the cached PretrainCorpus")
            return mixture.interleave(self.parts, self.mixture_weights, self.mixture_names, self.seed,
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

    def mixture_epochs(self, counts) -> list[float]:
        """Completed passes of each mixture source (the fewest over this rank's workers)."""
        loaders = [dl for dl in (getattr(self.trainer, "train_dataloader", None),) if dl is not None]
        return mixture.stream_passes(loaders[0], len(self.parts)) if loaders else [0.0] * len(self.parts)

    def mixture_exhausted(self, loader) -> str | None:
        """The name of the source that ran out (exhaustion='stop'), None while none has."""
        s = mixture.first_exhausted(loader)
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
