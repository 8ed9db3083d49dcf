"""`BlockStream`: endless packed token blocks of one rank x worker's shard of a text stream, tokenized on the fly;
shuffled within windows, cycling pass after pass, resumable from a few numbers (`state_dict`). `StreamingCorpus`
(streaming.py) reads each of its sources through one (a mixture's interleaved by mixture_stream.py).
In detail: docs/design/data.md.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import datasets
import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info
from transformers import PreTrainedTokenizerBase

from lightning_pretrain.data import cache, encoding
from lightning_pretrain.data import tokenizers as toks
from lightning_pretrain.data.pretrain import blocks
from lightning_pretrain.data.sources import text as sources
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


def documents(ds: datasets.IterableDataset, skip: int = 0, take: int | None = None, batch: int = 1000) -> Iterator[str]:
    """Non-blank texts of a stream, after the first `skip` of them, at most `take`."""
    texts = (t for rows in ds.iter(batch_size=batch) for t in rows["text"] if t and t.strip())
    return itertools.islice(texts, skip, None if take is None else skip + take)


class BlockStream(IterableDataset):
    """Endless packed token blocks of one rank's shards of a text stream; resumable with `state_dict`."""

    def __init__(
        self,
        stream: datasets.IterableDataset,
        tokenizer: PreTrainedTokenizerBase,
        seq_len: int,
        rank: int = 0,
        world_size: int = 1,
        shard_by: Literal["rows", "files"] = "rows",
        shuffle_window: int = 2048,
        seed: int = 1234,
        exclude: frozenset[bytes] = frozenset(),
        length: int | None = None,
    ):
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
            raise InputError(
                f"shard_by='files' needs at least as many files as ranks x workers ({n_shards}); the "
                f"source has {self.stream.num_shards}: use shard_by='rows'"
            )
        return copy.deepcopy(self.stream).shard(num_shards=n_shards, index=shard, contiguous=True)

    def windows(
        self, shard: int, n_shards: int, pass_: int = 0, window: int = 0, position: dict | None = None
    ) -> Iterator[tuple[int, dict | None, list[str]]]:
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

    @property
    def passes(self) -> int:
        """Completed passes over the shard before the next block (read without copying the state)."""
        return (self._cursor or self._start or {}).get("pass", 0)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._start = copy.deepcopy(state) or None
        self._cursor = None  # until a block is drawn, the state is the one loaded

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
            raise InputError(
                f"the checkpoint's stream position was written with {start['n_shards']} shards (ranks x "
                f"loader workers) and this run has {n_shards}: resume with the same devices and "
                f"num_workers"
            )
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
                    chunk = docs[c0 : c0 + ENCODE_DOCS]
                    flat, lengths = blocks.separated(list(encoding.encode_texts(backend, chunk)), self.sep)
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
                        self._cursor = {
                            "pass": p,
                            "window": w_,
                            "stream": pos,
                            "doc": d,
                            "offset": int(end - starts[j]),
                            "n_shards": n_shards,
                        }
                        yield pending[end - self.seq_len : end]
                    used = n_full * self.seq_len
                    pending, starts = pending[used:], starts - used
                    keep = max(int(np.searchsorted(starts, 0, side="right")) - 1, 0)  # drop finished documents
                    starts, places = starts[keep:], places[keep:]
                first_doc = 0
            if tokens_this_pass == 0 and whole_pass:
                raise InputError(
                    f"shard {shard} of {n_shards} (ranks x loader workers) holds no documents: use "
                    f"fewer workers or devices, or a larger corpus"
                )
            pass_, window, position = pass_ + 1, 0, None
