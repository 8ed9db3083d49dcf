"""Tokenize once, pack documents into fixed-length blocks, and read them back memory-mapped.

Packing (GPT-2 / RoBERTa style): every document's ids followed by one separator id (EOS, or SEP for BERT-style
tokenizers) are concatenated into one stream, which is cut into `seq_len` blocks; the final partial block is
dropped. No padding ever enters pretraining, and the number of blocks is exactly `stream_length // seq_len`.

Blocks are stored as one flat little-endian array per split (`uint16` when the vocabulary fits, else `uint32`),
so the loader maps the file and slices rows; nothing is re-tokenized after the first run. Memory stays bounded on
huge documents: texts are encoded in calls of at most BATCH_CHARS characters, a longer one in pieces cut at
whitespace (`pieces`), and long preparations log their progress every ~10 s (`Progress`).
"""

from __future__ import annotations

import itertools
import logging
import re
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

FORMAT_VERSION = 1  # bump when the on-disk layout or the packing rule changes: old cache entries stop matching
PIECE_CHARS = 1 << 16  # a longer text is encoded in pieces of at most this many characters
BATCH_CHARS = 1 << 20  # characters per tokenizer call (its encodings take ~150 bytes a character: ~150 MB)
BATCH_DOCS = 1000  # texts per tokenizer call (the Rust pool encodes them in parallel)
# a cut: before a space, tab or newline that is followed by a non-space (the last whitespace of a run)
_CUT = re.compile(r"(?<=\S)[ \t\n\r]")  # searched in the reversed text: a later cut is found first

log = logging.getLogger(__name__)


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= np.iinfo(np.uint16).max + 1 else np.dtype(np.uint32)


def pack_stream(docs: Iterable[Sequence[int]], sep_id: int, seq_len: int, dtype=np.int64,
                chunk_docs: int = 4096) -> Iterator[np.ndarray]:
    """Yield arrays of shape `(k, seq_len)` holding the packed stream, `sep_id` after every document."""
    carry = np.empty(0, dtype=dtype)
    docs = iter(docs)
    while chunk := list(itertools.islice(docs, chunk_docs)):
        flat, _ = separated(chunk, sep_id, dtype)
        stream = np.concatenate([carry, flat]) if carry.size else flat
        n_full = stream.size // seq_len
        if n_full:
            yield stream[: n_full * seq_len].reshape(n_full, seq_len)
        carry = stream[n_full * seq_len:]


def separated(docs: Sequence[Sequence[int]], sep_id: int, dtype=np.int64) -> tuple[np.ndarray, np.ndarray]:
    """`(ids, lengths)`: the documents' ids each followed by `sep_id` in one array, and each one's length with it."""
    lengths = np.fromiter((len(d) + 1 for d in docs), dtype=np.int64, count=len(docs))
    if any(isinstance(d, np.ndarray) for d in docs):  # a long document's ids (`encode_texts`): no per-id iteration
        sep = np.array([sep_id], dtype=dtype)
        return np.concatenate([a for d in docs for a in (np.asarray(d, dtype=dtype), sep)]), lengths
    # one C-level pass over all ids (a per-document np.concatenate is ~5x slower)
    flat = np.fromiter(itertools.chain.from_iterable(itertools.chain(d, (sep_id,)) for d in docs), dtype=dtype,
                       count=int(lengths.sum()))
    return flat, lengths


def pack(docs: Iterable[Sequence[int]], sep_id: int, seq_len: int) -> np.ndarray:
    """All blocks at once (the pure function the tests check; the cache writes `pack_stream` to disk)."""
    parts = list(pack_stream(docs, sep_id, seq_len))
    return np.concatenate(parts) if parts else np.empty((0, seq_len), dtype=np.int64)


def encode_batches(tokenizer, texts: Iterable[list[str]], progress: Progress | None = None
                   ) -> Iterator[Sequence[int]]:
    """Ids of each text of the batches, no special tokens (`encode_texts`)."""
    return encode_texts(tokenizer.backend_tokenizer, itertools.chain.from_iterable(texts), progress)


def pieces(text: str, size: int | None = None) -> list[str]:
    """`text` cut into pieces of at most `size` characters, each cut before the last whitespace of a run (a piece
    starts " word"). Tokenizers that pre-tokenize at whitespace (byte-level BPE's GPT-2 pattern, BERT's, WordPiece,
    Unigram/Metaspace) give the pieces the same ids as the whole text; a run of `size` characters without such a
    cut is cut anyway, and only there may the ids differ (so may they where a pretrained tokenizer normalizes the
    whole text, e.g. prepends "▁" once: each piece then gets its own)."""
    out, start, size = [], 0, size or PIECE_CHARS
    while len(text) - start > size:
        m = _CUT.search(text[start + 1:start + size][::-1])
        cut = start + size - 1 - m.start() if m else start + size
        out.append(text[start:cut])
        start = cut
    out.append(text[start:])
    return out


def encode_texts(backend, texts: Iterable[str], progress: Progress | None = None) -> Iterator[Sequence[int]]:
    """Ids of each text, no special tokens, through the Rust tokenizer's batched encoder (parallel, no offsets), in
    calls of about BATCH_CHARS characters at most; a text longer than PIECE_CHARS is encoded piece by piece
    (`pieces`) and its ids come as one `uint32` array, so memory stays bounded on a single-line 50 MB document."""
    batch: list[str] = []
    chars = 0

    def flush() -> list[list[int]]:
        ids = [enc.ids for enc in backend.encode_batch_fast(batch, add_special_tokens=False)]
        if progress is not None:
            progress.add(len(ids), sum(map(len, ids)))
        batch.clear()
        return ids

    for text in texts:
        if len(text) > PIECE_CHARS:
            if batch:
                yield from flush()
            chars = 0
            yield _encode_long(backend, text, progress)
            continue
        batch.append(text)
        chars += len(text)
        if chars >= BATCH_CHARS or len(batch) >= BATCH_DOCS:
            yield from flush()
            chars = 0
    if batch:
        yield from flush()


def _encode_long(backend, text: str, progress: Progress | None) -> np.ndarray:
    parts: list[np.ndarray] = []
    cut, per_call = pieces(text), max(1, BATCH_CHARS // PIECE_CHARS)
    for c0 in range(0, len(cut), per_call):
        ids = [np.asarray(enc.ids, dtype=np.uint32)
               for enc in backend.encode_batch_fast(cut[c0:c0 + per_call], add_special_tokens=False)]
        parts += ids
        if progress is not None:
            progress.add(0, sum(map(len, ids)))
    if progress is not None:
        progress.add(1, 0)
    return np.concatenate(parts)


class Progress:
    """A log line every EVERY seconds while data is prepared: documents and tokens done so far, and the rate."""

    EVERY = 10.0

    def __init__(self, what: str, unit: str = "tokens", items: str = "documents"):
        self.what, self.unit, self.items, self.docs, self.tokens = what, unit, items, 0, 0
        self.start = self.last = time.perf_counter()

    def add(self, docs: int, tokens: int) -> None:
        self.docs, self.tokens = self.docs + docs, self.tokens + tokens
        now = time.perf_counter()
        if now - self.last >= self.EVERY:
            self.last = now
            log.info("%s: %d %s, %d %s so far (%.0f %s/s)", self.what, self.docs, self.items, self.tokens, self.unit,
                     self.tokens / max(now - self.start, 1e-9), self.unit)


def write_blocks(path: Path, docs: Iterable[Sequence[int]], sep_id: int, seq_len: int, dtype: np.dtype) -> int:
    """Pack `docs` into `path`; return the number of blocks written."""
    n_blocks = 0
    with open(path, "wb") as fh:
        for blocks in pack_stream(docs, sep_id, seq_len):
            fh.write(blocks.astype(dtype.newbyteorder("<"), copy=False).tobytes())
            n_blocks += len(blocks)
    return n_blocks


def open_blocks(path: Path, n_blocks: int, seq_len: int, dtype: str) -> np.ndarray:
    if n_blocks == 0:
        return np.empty((0, seq_len), dtype=dtype)
    return np.memmap(path, dtype=np.dtype(dtype).newbyteorder("<"), mode="r", shape=(n_blocks, seq_len))


class BlockDataset(Dataset):
    """Rows of a memory-mapped block array as `int64` tensors."""

    def __init__(self, blocks: np.ndarray):
        self.blocks = blocks

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.from_numpy(self.blocks[i].astype(np.int64))

    def __getitems__(self, idx: list[int]) -> list[torch.Tensor]:
        # one fancy-index read of the memmap per batch instead of one per row
        rows = self.blocks[np.asarray(idx)].astype(np.int64)
        return list(torch.from_numpy(rows))


def document_positions(ids: torch.Tensor, sep_id: int) -> torch.Tensor:
    """Position ids that restart at 0 where a document starts: at each row's first token and after every
    separator (the separator ends its document, so it keeps the document's positions). The block then tells the
    model where its documents are: torchtitan and HF's `DataCollatorWithFlattening` read boundaries the same way."""
    length = ids.shape[-1]
    index = torch.arange(length, device=ids.device).expand_as(ids)
    starts = torch.zeros_like(ids, dtype=torch.bool)
    starts[..., 0] = True
    starts[..., 1:] = ids[..., :-1] == sep_id
    return index - torch.where(starts, index, 0).cummax(-1).values


class BlockCollate:
    """Rows of blocks -> a batch. Plain blocks stack to a `[B, L]` tensor; with `separator` (documents kept apart:
    `cross_document_attention: false`) the batch is `{"input_ids", "position_ids"}`; rows that come as
    `(block, source index)` (data mixtures) add `"mixture_source"`, a `[B]` tensor of the source of each row."""

    def __init__(self, separator: int | None = None):
        self.separator = separator

    def __call__(self, rows: list) -> torch.Tensor | dict[str, torch.Tensor]:
        mixed = isinstance(rows[0], tuple)
        ids = torch.stack([r[0] for r in rows] if mixed else rows)
        if self.separator is None and not mixed:
            return ids
        batch = {"input_ids": ids}
        if self.separator is not None:
            batch["position_ids"] = document_positions(ids, self.separator)
        if mixed:
            batch["mixture_source"] = torch.tensor([r[1] for r in rows], dtype=torch.long)
        return batch
