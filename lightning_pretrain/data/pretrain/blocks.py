"""Tokenize once, pack documents into fixed-length blocks, and read them back memory-mapped.

Packing (GPT-2 / RoBERTa style): every document's ids followed by one separator id (EOS, or SEP for BERT-style
tokenizers) are concatenated into one stream, which is cut into `seq_len` blocks; the final partial block is
dropped. No padding ever enters pretraining, and the number of blocks is exactly `stream_length // seq_len`.

Blocks are stored as one flat little-endian array per split (`uint16` when the vocabulary fits, else `uint32`),
so the loader maps the file and slices rows; nothing is re-tokenized after the first run. The ids come from
data/encoding.py (bounded memory on huge documents, progress lines).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

FORMAT_VERSION = 1  # bump when the on-disk layout or the packing rule changes: old cache entries stop matching


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= np.iinfo(np.uint16).max + 1 else np.dtype(np.uint32)


def pack_stream(
    docs: Iterable[Sequence[int]], sep_id: int, seq_len: int, dtype=np.int64, chunk_docs: int = 4096
) -> Iterator[np.ndarray]:
    """Yield arrays of shape `(k, seq_len)` holding the packed stream, `sep_id` after every document."""
    carry = np.empty(0, dtype=dtype)
    docs = iter(docs)
    while chunk := list(itertools.islice(docs, chunk_docs)):
        flat, _ = separated(chunk, sep_id, dtype)
        stream = np.concatenate([carry, flat]) if carry.size else flat
        n_full = stream.size // seq_len
        if n_full:
            yield stream[: n_full * seq_len].reshape(n_full, seq_len)
        carry = stream[n_full * seq_len :]


def separated(docs: Sequence[Sequence[int]], sep_id: int, dtype=np.int64) -> tuple[np.ndarray, np.ndarray]:
    """`(ids, lengths)`: the documents' ids each followed by `sep_id` in one array, and each one's length with it."""
    lengths = np.fromiter((len(d) + 1 for d in docs), dtype=np.int64, count=len(docs))
    if any(isinstance(d, np.ndarray) for d in docs):  # a long document's ids (`encode_texts`): no per-id iteration
        sep = np.array([sep_id], dtype=dtype)
        return np.concatenate([a for d in docs for a in (np.asarray(d, dtype=dtype), sep)]), lengths
    # one C-level pass over all ids (a per-document np.concatenate is ~5x slower)
    flat = np.fromiter(
        itertools.chain.from_iterable(itertools.chain(d, (sep_id,)) for d in docs),
        dtype=dtype,
        count=int(lengths.sum()),
    )
    return flat, lengths


def pack(docs: Iterable[Sequence[int]], sep_id: int, seq_len: int) -> np.ndarray:
    """All blocks at once (the pure function the tests check; the cache writes `pack_stream` to disk)."""
    parts = list(pack_stream(docs, sep_id, seq_len))
    return np.concatenate(parts) if parts else np.empty((0, seq_len), dtype=np.int64)


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
