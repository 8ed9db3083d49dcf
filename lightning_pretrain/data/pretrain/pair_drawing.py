"""From text to NSP / SOP sentence pairs as token offsets, for `SentencePairCorpus`: documents split into sentences
(`split_sentences`), tokenized into flat arrays (`TokenizedDocs`), and BERT's pair rule (`make_pairs`, after
google-research/bert's `create_instances_from_document`). Functions of the text, the tokenizer and an RNG (no cache,
no DataModule), testable on hand-made arrays; changing the pair rule bumps `sentence_pairs.FORMAT_VERSION`.
"""

from __future__ import annotations

import itertools
import random
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import numpy as np
from transformers import PreTrainedTokenizerBase

from lightning_pretrain.data import encoding
from lightning_pretrain.data.pretrain import blocks
from lightning_pretrain.data.sources import text as sources
from lightning_pretrain.errors import InputError

Task = Literal["nsp", "sop"]

_SENTENCE_END = re.compile(r"""[.!?]["')\]]*(?=\s+["'(\[]?[A-Z0-9])""")


def split_sentences(doc: str) -> list[str]:
    """Sentences of a document; their concatenation is the document (whitespace opens the next sentence)."""
    cuts = [m.end() for m in _SENTENCE_END.finditer(doc)]
    pieces = [doc[a:b] for a, b in zip([0, *cuts], [*cuts, len(doc)])]
    return [p for p in pieces if p.strip()]


@dataclass
class TokenizedDocs:
    """A tokenized corpus as flat arrays: the ids of sentence `s` are `tokens[sentence_starts[s]:sentence_starts[s+1]]`,
    and document `d` holds the sentences `doc_starts[d]` to `doc_starts[d+1] - 1`."""

    tokens: np.ndarray
    sentence_starts: np.ndarray
    doc_starts: np.ndarray

    @property
    def n_docs(self) -> int:
        return len(self.doc_starts) - 1


def tokenize_documents(
    tokenizer: PreTrainedTokenizerBase, texts: Iterable[list[str]], progress: encoding.Progress | None = None
) -> TokenizedDocs:
    """Split batches of source rows into documents and sentences, and tokenize every sentence (no special tokens)."""
    backend = tokenizer.backend_tokenizer
    dtype = blocks.token_dtype(len(tokenizer))
    token_parts, sentence_lengths, doc_sizes = [], [], []
    for batch in texts:
        sentences, per_doc = [], []
        for text in batch:
            for doc in sources.paragraphs(text or ""):  # a row of JSON or CSV may hold several documents
                found = split_sentences(doc)
                sentences += found
                per_doc.append(len(found))
        encoded = encoding.encode_texts(backend, sentences, progress)  # bounded memory, also for a 50 MB "sentence"
        ids = []
        for n in per_doc:
            kept = [enc for enc in itertools.islice(encoded, n) if len(enc)]  # a sentence of no token is no sentence
            if kept:
                ids += kept
                doc_sizes.append(len(kept))
        sentence_lengths += [len(s) for s in ids]
        token_parts.append(np.fromiter(itertools.chain.from_iterable(ids), dtype=dtype, count=sum(map(len, ids))))
    tokens = np.concatenate(token_parts) if token_parts else np.empty(0, dtype=dtype)
    return TokenizedDocs(
        tokens,
        np.concatenate([[0], np.cumsum(sentence_lengths, dtype=np.int64)]),
        np.concatenate([[0], np.cumsum(doc_sizes, dtype=np.int64)]),
    )


def make_pairs(
    docs: TokenizedDocs, max_tokens: int, task: Task, rng: random.Random, short_seq_prob: float = 0.1
) -> np.ndarray:
    """`(n, 5)` int64 rows `(a_start, a_end, b_start, b_end, label)`: token offsets of A and B into `docs.tokens`,
    `len(A) + len(B) <= max_tokens`, label 0 = B truly follows A, 1 = negative (random B for nsp, swapped for sop)."""
    starts, doc_starts = docs.sentence_starts.tolist(), docs.doc_starts.tolist()
    # documents that can give a positive (two sentences or more); a negative B is drawn from them only
    pool = [d for d in range(docs.n_docs) if doc_starts[d + 1] - doc_starts[d] >= 2]
    if task == "nsp" and len(pool) < 2:
        raise InputError(
            "next-sentence prediction needs at least two documents of two or more sentences "
            "(negatives come from another one)"
        )
    position = {d: k for k, d in enumerate(pool)}
    out: list[tuple[int, int, int, int, int]] = []
    for d in range(docs.n_docs):
        first, end = doc_starts[d], doc_starts[d + 1]
        target = max_tokens if rng.random() >= short_seq_prob else rng.randint(2, max_tokens)
        chunk, i = first, first  # the chunk holds the whole sentences chunk..i-1
        while chunk < end:
            while i < end and (i == chunk or starts[i + 1] - starts[chunk] <= target):
                i += 1  # take sentence i while the chunk stays within the target (at least one sentence)
            if i - chunk >= 2:  # two sentences or more (within the target): one pair
                a_end = rng.randint(chunk + 1, i - 1)  # A = sentences chunk..a_end-1, B = a_end..i-1
                a, b = (starts[chunk], starts[a_end]), (starts[a_end], starts[i])
                negative = rng.random() < 0.5
                if negative and task == "nsp":
                    b = _random_segment(
                        starts,
                        doc_starts,
                        pool,
                        position[d],
                        a[1] - a[0],
                        max_tokens,
                        max(1, target - (a[1] - a[0])),
                        rng,
                    )
                    i = a_end  # the sentences after A go back into the next chunk
                elif negative:
                    a, b = b, a
                out.append((*a, *b, int(negative)))
            chunk = i
    return np.asarray(out, dtype=np.int64).reshape(-1, 5)


def _random_segment(
    starts: list[int],
    doc_starts: list[int],
    pool: list[int],
    avoid: int,
    len_a: int,
    max_tokens: int,
    target: int,
    rng: random.Random,
    tries: int = 10,
) -> tuple[int, int]:
    """Token offsets of whole sentences of another document of `pool` (not `pool[avoid]`): up to `target` tokens,
    from a random sentence after the document's first, i.e. where a true B could start. Only the topic and the
    continuity then tell a negative from a positive, never a heading, a one-line document or an opening sentence."""
    for attempt in range(tries):
        k = rng.randrange(len(pool) - 1)
        d = pool[k + (k >= avoid)]
        s = rng.randint(doc_starts[d] + 1, doc_starts[d + 1] - 1)
        if starts[s + 1] - starts[s] <= max_tokens - len_a or attempt == tries - 1:
            break
    e = s + 1
    while e < doc_starts[d + 1] and starts[e + 1] - starts[s] <= target:
        e += 1
    # a sentence longer than the room left (after `tries` draws): cut, the only place a pair is ever truncated
    return starts[s], min(starts[e], starts[s] + max_tokens - len_a)
