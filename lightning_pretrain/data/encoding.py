"""Token ids of texts in bounded memory, for every corpus and the tokenizer trainers.

Texts are encoded by the Rust tokenizer's batched encoder (parallel, no offsets) in calls of at most BATCH_CHARS
characters; a text longer than PIECE_CHARS is encoded in pieces cut at whitespace (`pieces`), so a single-line 50 MB
document never holds its encodings at once. Long preparations log their progress every ~10 s (`Progress`).
"""

from __future__ import annotations

import itertools
import logging
import re
import time
from collections.abc import Iterable, Iterator, Sequence

import numpy as np

PIECE_CHARS = 1 << 16  # a longer text is encoded in pieces of at most this many characters
BATCH_CHARS = 1 << 20  # characters per tokenizer call (its encodings take ~150 bytes a character: ~150 MB)
BATCH_DOCS = 1000  # texts per tokenizer call (the Rust pool encodes them in parallel)
# a cut: before a space, tab or newline that is followed by a non-space (the last whitespace of a run)
_CUT = re.compile(r"(?<=\S)[ \t\n\r]")  # searched in the reversed text: a later cut is found first

log = logging.getLogger(__name__)


def encode_batches(tokenizer, texts: Iterable[list[str]], progress: Progress | None = None) -> Iterator[Sequence[int]]:
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
        m = _CUT.search(text[start + 1 : start + size][::-1])
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
        ids = [
            np.asarray(enc.ids, dtype=np.uint32)
            for enc in backend.encode_batch_fast(cut[c0 : c0 + per_call], add_special_tokens=False)
        ]
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
            log.info(
                "%s: %d %s, %d %s so far (%.0f %s/s)",
                self.what,
                self.docs,
                self.items,
                self.tokens,
                self.unit,
                self.tokens / max(now - self.start, 1e-9),
                self.unit,
            )
