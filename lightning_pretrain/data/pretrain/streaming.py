"""`StreamingCorpus`: pretraining on text too large to tokenize up front.

Documents are read lazily with `datasets` streaming, tokenized and packed into `seq_len` blocks on the fly in the
DataLoader workers; each rank x worker reads its own shard, shuffles within windows and cycles endlessly until
`trainer.max_steps`; a worker's resumable state is a few numbers. Validation: the first `val_documents` documents
of `val_source` (default: of each source, which training then skips). Each source (one, or the several of a
weighted mixture, interleaved by mixture_stream.py) is a `StreamedSource`. In detail: docs/design/data.md.
"""

from __future__ import annotations

import logging
import warnings
from functools import cached_property
from pathlib import Path
from typing import Literal

import datasets
import numpy as np
from torchdata.stateful_dataloader import StatefulDataLoader
from transformers import PreTrainedTokenizerBase

from lightning_pretrain.data import cache, encoding
from lightning_pretrain.data import tokenizers as toks
from lightning_pretrain.data.loaders import check_loader_options, check_val_interval, rank_and_world, stateful_loader
from lightning_pretrain.data.pretrain import blocks
from lightning_pretrain.data.pretrain.base import PretrainData
from lightning_pretrain.data.pretrain.block_stream import BlockStream, doc_hash, documents, open_stream
from lightning_pretrain.data.pretrain.mixture import run_length
from lightning_pretrain.data.pretrain.mixture_stream import MixtureStream, first_exhausted, stream_passes
from lightning_pretrain.data.sources.text import TextSource
from lightning_pretrain.errors import InputError

log = logging.getLogger(__name__)


class StreamedSource:
    """One source of a `StreamingCorpus`: its stream, the documents a trained tokenizer learns from, and (`hold_out`)
    its validation blocks and the held-out documents training skips."""

    def __init__(self, spec: str, source: TextSource, tokenizer_documents: int, cache_root: Path):
        self.spec, self.source, self.cache_root = spec, source, cache_root
        self.tokenizer_documents = tokenizer_documents
        self.exclude: frozenset[bytes] = frozenset()
        self.val_blocks: np.ndarray | None = None

    @cached_property
    def stream(self) -> datasets.IterableDataset:
        return open_stream(self.source, self.cache_root)

    def hold_out(
        self,
        val_spec: str | None,
        val_source: TextSource | None,
        n: int,
        tokenizer: PreTrainedTokenizerBase,
        seq_len: int,
    ) -> None:
        """Validation blocks of the first `n` documents of `val_source`, else of this source (skipped in training)."""
        val = list(documents(open_stream(val_source, self.cache_root) if val_source else self.stream, take=n))
        if not val:
            raise InputError(f"corpus '{val_spec or self.spec}' is empty (no non-blank text)")
        if val_source is None:
            self.exclude = frozenset(map(doc_hash, val))
        ids = encoding.encode_batches(tokenizer, [val], encoding.Progress("tokenizing validation"))
        self.val_blocks = blocks.pack(ids, toks.document_separator(tokenizer), seq_len)
        if len(self.val_blocks) == 0:
            raise InputError(
                f"the {len(val)} validation documents hold fewer than seq_len={seq_len} tokens: "
                f"raise val_documents or lower seq_len"
            )


class StreamingCorpus(PretrainData):
    streaming = True

    def __init__(
        self,
        val_documents: int = 500,
        tokenizer_documents: int = 50_000,
        num_workers: int = 2,
        shard_by: Literal["rows", "files"] = "rows",
        shuffle_window: int = 2048,
        **kwargs,
    ):
        """
        Args:
            val_documents: documents of the validation text that are tokenized for validation.
            tokenizer_documents: documents a trained tokenizer learns from.
            num_workers: DataLoader workers per device; they tokenize and pack, so they set the throughput
                (0 tokenizes in the training process).
            shard_by: 'rows' (document i to shard i mod ranks x workers: equal shards) or 'files' (each shard
                reads only its own files; needs at least ranks x workers files).
            shuffle_window: documents per shard shuffled together (1: stream order).
        """
        check_loader_options(
            num_workers,
            val_documents=val_documents,
            tokenizer_documents=tokenizer_documents,
            shuffle_window=shuffle_window,
        )
        super().__init__(num_workers=num_workers, **kwargs)
        self.val_documents, self.tokenizer_documents = val_documents, tokenizer_documents
        self.shard_by, self.shuffle_window = shard_by, shuffle_window
        # a mixture's trained tokenizer learns from each source's weighted share of the documents
        shares = [max(1, int(np.ceil(tokenizer_documents * w))) for w in self.weights] or [tokenizer_documents]
        self.parts = [
            StreamedSource(spec, text, n, self.cache_root) for spec, text, n in zip(self.specs, self.inputs, shares)
        ]
        self.val_blocks: np.ndarray | None = None

    # -- tokenizer ----------------------------------------------------------------------------------------------
    @property
    def _skip(self) -> int:
        return 0 if self.val_source else self.val_documents  # held-out documents are no training text

    def training_texts(self):
        return (d for p in self.parts for d in documents(p.stream, self._skip, p.tokenizer_documents))

    def training_identity(self) -> list[str]:
        with cache.rooted(self.cache_root):  # file digests are remembered under this cache
            if not self.mixed:
                return [self.parts[0].source.identity(), f"stream:skip{self._skip}:first{self.tokenizer_documents}"]
            return [f"{p.source.identity()}:stream:skip{self._skip}:first{p.tokenizer_documents}" for p in self.parts]

    # -- Lightning hooks ----------------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if stage == "predict":  # prompts only (`predict_dataloader`)
            return
        tok = self.tokenizer  # validation: every source's held-out documents, or the shared val_source once
        for part in self.parts[:1] if self.val_source else self.parts:
            part.hold_out(self.val_spec, self.val_source, self.val_documents, tok, self.seq_len)
        held = [p.val_blocks for p in self.parts if p.val_blocks is not None]
        self.val_blocks = held[0] if len(held) == 1 else np.concatenate(held)

    def train_dataset(self) -> BlockStream | MixtureStream:
        trainer = self.trainer
        rank, world = rank_and_world(trainer)
        if not self.mixed:
            length = None
            if trainer is not None:
                if trainer.max_steps < 0:
                    raise InputError("a streaming corpus is endless: set trainer.max_steps (the run's length)")
                length = trainer.max_steps * trainer.accumulate_grad_batches * self.batch_size
            return self._stream(self.parts[0], rank, world, length)
        if self.exhaustion == "stop" and world > 1:
            raise InputError(
                "exhaustion='stop' of a streaming mixture runs on one device only: each rank's shards "
                "run out at a different batch; use 'repeat' or the cached PretrainCorpus"
            )
        length = run_length(trainer, self.batch_size, self.exhaustion)
        return MixtureStream(
            [self._stream(p, rank, world) for p in self.parts],
            self.weights,
            self.names,
            self.seed,
            self.exhaustion,
            length,
        )

    def _stream(self, part: StreamedSource, rank: int, world: int, length: int | None = None) -> BlockStream:
        workers = max(self.num_workers, 1)
        log.info(
            "streaming %s: rank %d of %d reads shards %d-%d of %d (by %s)",
            part.spec,
            rank,
            world,
            rank * workers,
            (rank + 1) * workers - 1,
            world * workers,
            self.shard_by,
        )
        return BlockStream(
            part.stream,
            self.tokenizer,
            self.seq_len,
            rank,
            world,
            self.shard_by,
            self.shuffle_window,
            self.seed,
            part.exclude,
            length,
        )

    def train_dataloader(self) -> StatefulDataLoader:
        # Lightning warns about any sized IterableDataset in case its workers yield duplicates; ours read disjoint
        # shards, and the size is the run's length by design (docs/design/data.md, Stopping)
        warnings.filterwarnings("ignore", message="Your `IterableDataset` has `__len__` defined")
        loader = stateful_loader(
            self.train_dataset(), self.batch_size, num_workers=self.num_workers, seed=self.seed, collate_fn=self.collate
        )
        check_val_interval(self.trainer, loader, "this streaming run (max_steps x accumulate_grad_batches)")
        return loader

    def val_dataloader(self) -> StatefulDataLoader:
        rank, world_size = rank_and_world(self.trainer)  # in memory: no workers needed
        return stateful_loader(
            blocks.BlockDataset(self.val_blocks),
            self.batch_size,
            seed=self.seed,
            rank=rank,
            world_size=world_size,
            collate_fn=self.collate,
        )

    def source_epochs(self, counts, loader) -> list[float]:
        """Completed passes of each source (the fewest over this rank's workers)."""
        return stream_passes(loader, len(self.parts))

    def exhausted_source(self, loader) -> int | None:
        return first_exhausted(loader)
