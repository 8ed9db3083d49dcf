"""Word boundaries for whole-word and span masking: which word each token belongs to (`word_index`), from per-vocabulary
tables read off the tokenizer family's own pieces (`word_boundaries`: WordPiece `##`, byte-level BPE `Ġ`,
SentencePiece `▁`). Kept apart from masked_lm.py, whose `mask_tokens` takes the word ids these give.
"""

from __future__ import annotations

import json

import torch
from transformers import PreTrainedTokenizerBase

from lightning_pretrain.errors import InputError


def word_index(input_ids: torch.Tensor, begins_word: torch.Tensor, joinable: torch.Tensor) -> torch.Tensor:
    """Index of the word each position belongs to, counted from 0 along the last dimension.

    A token continues the previous token's word unless it always begins one (`begins_word[id]`) or the previous
    token cannot be continued (`joinable[id]` false: punctuation, specials). The first position starts a word (a
    word cut by block packing becomes a shorter word).
    """
    continues = ~begins_word[input_ids]
    continues[..., 1:] &= joinable[input_ids[..., :-1]]
    continues[..., 0] = False
    return (~continues).long().cumsum(-1) - 1


def word_boundaries(tokenizer: PreTrainedTokenizerBase) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-vocabulary tables `(begins_word, joinable)` for `word_index`, read from a fast tokenizer's own pieces."""
    backend = json.loads(tokenizer.backend_tokenizer.to_str())
    pieces = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    special = set(tokenizer.all_special_ids)
    prefix = backend["model"].get("continuing_subword_prefix")
    if prefix:  # WordPiece (BERT): the pre-tokenizer already split words and punctuation; "##" continues one
        begins = [i in special or not p.startswith(prefix) for i, p in enumerate(pieces)]
        joinable = [i not in special for i in range(len(pieces))]
    else:
        layout = json.dumps([backend.get(k) for k in ("normalizer", "pre_tokenizer", "decoder")], ensure_ascii=False)
        if "ByteLevel" not in layout and "Metaspace" not in layout and "▁" not in layout:
            raise InputError(
                "whole-word masking needs word boundaries in the tokens: a WordPiece ('##'), byte-level "
                "BPE ('Ġ') or SentencePiece ('▁') tokenizer"
            )
        decoder = tokenizer.backend_tokenizer.decoder
        begins, joinable = [], []
        for i, p in enumerate(pieces):
            text = decoder.decode([p]) if decoder is not None else p
            body = text.lstrip()
            # a lone space piece ("▁" in SentencePiece, "Ġ" before a rare character in byte-level BPE) starts a word
            # whose letters follow in the next pieces; a line break ends one
            space_only = p != "" and (p.strip("▁") == "" or text.strip(" ") == "")
            starts_space = p.startswith("▁") or text[:1].isspace()
            begins.append(i in special or starts_space or not body or not _word_char(body[0]))
            joinable.append(i not in special and (space_only or (bool(body) and _word_char(body[-1]))))
    return torch.tensor(begins), torch.tensor(joinable)


def _word_char(c: str) -> bool:
    # U+FFFD: one byte of a multi-byte character split over byte-level pieces; a word never ends mid-character
    return c.isalnum() or c == "\ufffd"
