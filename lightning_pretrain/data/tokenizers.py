"""Tokenizers: load a pretrained one, or train the objective's natural one on the corpus with `tokenizers`.

`--data.tokenizer` is a trainable family — ``bpe`` (byte-level, GPT-2 / RoBERTa), ``wordpiece`` (BERT's lower-cased,
[CLS] … [SEP] template), ``unigram`` (SentencePiece-style, T5's special ids first; span corruption adds its
sentinels itself) — or a local directory / hub id for `AutoTokenizer` (fast tokenizers only; no remote code).
Every tokenizer returned is a `PreTrainedTokenizerFast` with the special tokens the objectives need (pad, eos or
sep, mask, cls/bos), so `save_pretrained` writes files that `transformers` loads unchanged.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from lightning_pretrain.data import cache, encoding
from lightning_pretrain.errors import InputError

log = logging.getLogger(__name__)

# RoBERTa's special tokens: <s>/</s> double as bos/eos for causal LMs and cls/sep for masked LMs
_BPE_SPECIALS = {
    "bos_token": "<s>",
    "pad_token": "<pad>",
    "eos_token": "</s>",
    "unk_token": "<unk>",
    "mask_token": "<mask>",
    "cls_token": "<s>",
    "sep_token": "</s>",
}
_WORDPIECE_SPECIALS = {
    "pad_token": "[PAD]",
    "unk_token": "[UNK]",
    "cls_token": "[CLS]",
    "sep_token": "[SEP]",
    "mask_token": "[MASK]",
}


def train_bpe(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = list(dict.fromkeys(_BPE_SPECIALS.values()))
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer=trainer)
    # no post-processor: packing inserts the document separator itself, and generation must not get a stray </s>
    return PreTrainedTokenizerFast(tokenizer_object=tok, **_BPE_SPECIALS)


def train_wordpiece(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    specials = list(_WORDPIECE_SPECIALS.values())
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    # the BERT template, so fill-mask / classification pipelines on the export see [CLS] ... [SEP]
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    # segment ids are model inputs, as for BERT's own tokenizer: sentence-pair pretraining and pair fine-tuning
    # (MRPC, MNLI, ...) feed them to the token-type embeddings
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, model_input_names=["input_ids", "token_type_ids", "attention_mask"], **_WORDPIECE_SPECIALS
    )


# T5's order (pad 0, eos 1, unk 2): a T5 config's default ids then already name the right tokens
_UNIGRAM_SPECIALS = {
    "pad_token": "<pad>",
    "eos_token": "</s>",
    "unk_token": "<unk>",
    "bos_token": "<s>",
    "mask_token": "<mask>",
    "cls_token": "<s>",
    "sep_token": "</s>",
}


def train_unigram(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A Unigram LM tokenizer laid out like T5's `spiece.model` (the pipeline of HF's `T5Tokenizer`)."""
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    # WhitespaceSplit first: runs of spaces/newlines collapse to one word boundary, as in SentencePiece
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.WhitespaceSplit(),
            pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True),
        ]
    )
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    specials = list(dict.fromkeys(_UNIGRAM_SPECIALS.values()))
    trainer = trainers.UnigramTrainer(
        vocab_size=vocab_size, special_tokens=specials, unk_token="<unk>", show_progress=False
    )
    tok.train_from_iterator(texts, trainer=trainer)
    # no post-processor, as for BPE: packing inserts separators itself; objectives that want a template add it
    return PreTrainedTokenizerFast(tokenizer_object=tok, **_UNIGRAM_SPECIALS)


TRAINERS = {"bpe": train_bpe, "wordpiece": train_wordpiece, "unigram": train_unigram}
# the least vocabulary each family can hold: its special tokens, plus the 256 byte symbols for byte-level BPE (and,
# for wordpiece / unigram, every character of the training text, which only training tells: `_learn`)
MIN_VOCAB = {"bpe": 256 + 5, "wordpiece": 5 + 1, "unigram": 5 + 1}


def check_vocab_size(kind: str, vocab_size: int) -> None:
    """Refuse a `vocab_size` below what a trained `kind` tokenizer needs (a pretrained one ignores it)."""
    if kind in MIN_VOCAB and vocab_size < MIN_VOCAB[kind]:
        need = "256 byte symbols and 5 special tokens" if kind == "bpe" else "5 special tokens and a character"
        raise InputError(
            f"vocab_size={vocab_size} is below the minimum of {MIN_VOCAB[kind]} for a '{kind}' tokenizer "
            f"({need}); pass --data.vocab_size {MIN_VOCAB[kind]} or more (thousands, for a useful one)"
        )


def _learn(kind: str, texts: Callable[[], Iterable[str]], vocab_size: int) -> PreTrainedTokenizerBase:
    """Train on `texts()` fed in pieces (`encoding.pieces`: the same words are counted, in bounded memory)."""
    progress = encoding.Progress(f"training a {kind} tokenizer", unit="characters")

    def fed() -> Iterator[str]:
        for text in texts():
            for piece in encoding.pieces(text):
                progress.add(0, len(piece))
                yield piece
            progress.add(1, 0)

    try:
        tok = TRAINERS[kind](fed(), vocab_size)
    except Exception as e:  # the Rust trainers raise plain `Exception`s
        if "not large enough to contain all chars" not in str(e):
            raise
        tok = None
    need = _unigram_minimum(texts()) if tok is None else len(tok)
    if tok is None or len(tok) > vocab_size:  # the trainers keep the alphabet and the specials whatever the size
        raise InputError(
            f"vocab_size={vocab_size} is below the minimum of {need} for a '{kind}' tokenizer of this "
            f"corpus (its special tokens and every character of the training text); pass "
            f"--data.vocab_size {need} or more"
        )
    return tok


def _unigram_minimum(texts: Iterable[str]) -> int:
    """Unigram's least vocabulary: every non-space character after NFKC, the word boundary "▁" and the specials."""
    nfkc, chars = normalizers.NFKC(), set()
    for text in texts:
        for piece in encoding.pieces(text):
            chars.update(nfkc.normalize_str(piece))
    return len({c for c in chars if not c.isspace()}) + 1 + len(set(_UNIGRAM_SPECIALS.values()))


def trained(
    kind: str, vocab_size: int, texts: Callable[[], Iterable[str]], text_identity: list[str], cache_root: Path
) -> PreTrainedTokenizerBase:
    """A `kind` tokenizer trained on `texts()`, built once per (kind, size, text identity) and cached."""
    check_vocab_size(kind, vocab_size)
    entry = cache_root / "tokenizers" / cache.cache_key("tokenizer", kind, vocab_size, *text_identity)

    def build(tmp: Path) -> dict:
        t0 = time.perf_counter()
        tok = _learn(kind, texts, vocab_size)
        tok.save_pretrained(tmp)
        log.info("trained a %s tokenizer (%d tokens) in %.1fs", kind, len(tok), time.perf_counter() - t0)
        return {"kind": kind, "vocab_size": len(tok)}

    entry, _ = cache.get_or_build(entry, build, lambda e, m: (e / "tokenizer.json").exists())
    return load_pretrained(str(entry))


def load_pretrained(name_or_path: str) -> PreTrainedTokenizerBase:
    try:
        tok = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=False)
    except (OSError, ValueError) as e:  # not found, unreachable, not a tokenizer: the message names the fix
        raise InputError(
            f"could not load tokenizer '{name_or_path}': not a trainable family "
            f"({', '.join(TRAINERS)}), a local tokenizer directory, or a reachable hub id "
            f"({type(e).__name__})"
        ) from e
    if not tok.is_fast:
        raise InputError(f"tokenizer '{name_or_path}' has no fast (Rust) version; batched tokenization needs one")
    # some tokenizer.json files (sentence-transformers' among them) switch on padding to 128 and truncation in the
    # Rust tokenizer itself; corpora are tokenized with it directly (`encode_batch_fast`), where that would pad
    # every document and cut long ones. `tokenizer(...)` sets both per call anyway, so nothing else changes.
    tok.backend_tokenizer.no_padding()
    tok.backend_tokenizer.no_truncation()
    return tok


def fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """Hash of everything that decides which ids a text gets: the full Rust tokenizer plus the special tokens."""
    h = hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode())
    h.update(json.dumps(tokenizer.special_tokens_map, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def document_separator(tokenizer: PreTrainedTokenizerBase) -> int:
    """The id put between packed documents: EOS for causal tokenizers, else SEP (BERT has no EOS)."""
    sep = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    if sep is None:
        raise InputError("the tokenizer has neither an EOS nor a SEP token to separate packed documents")
    return sep


def batched(texts: Iterable[str], size: int = 1000) -> Iterator[list[str]]:
    batch: list[str] = []
    for t in texts:
        batch.append(t)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
