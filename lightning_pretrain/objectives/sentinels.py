"""T5's sentinel tokens `<extra_id_0..N-1>` outside the corruption itself: a tokenizer given the sentinels it lacks
(ids descending from the last, as in T5's vocabulary) and an EOS template (`with_sentinels`), and a generated
target read back into the ids that follow each sentinel (`target_spans`, for span corruption's `predict`).
"""

from __future__ import annotations

import copy

from tokenizers import processors
from transformers import PreTrainedTokenizerBase

from lightning_pretrain.errors import InputError


def sentinel_tokens(n: int) -> list[str]:
    return [f"<extra_id_{i}>" for i in range(n)]


def with_sentinels(tokenizer: PreTrainedTokenizerBase, n: int) -> tuple[PreTrainedTokenizerBase, int]:
    """The tokenizer itself when it has `<extra_id_0..n-1>` and appends EOS (T5's), else a copy that does.

    Missing sentinels are appended as special tokens in reverse, so `<extra_id_0>` gets the last id as in T5, and
    every id the corpus was tokenized with keeps its meaning. Returns `(tokenizer, number of ids added)`.
    """
    vocab = tokenizer.get_vocab()
    missing = [t for t in sentinel_tokens(n) if t not in vocab]
    probe = tokenizer("probe").input_ids
    needs_eos = not probe or probe[-1] != tokenizer.eos_token_id
    if not missing and not needs_eos:
        return tokenizer, 0
    tokenizer = copy.deepcopy(tokenizer)  # the data module keeps its own: the corpus ids do not change
    before = len(tokenizer)
    if missing:
        if len(missing) != n:
            raise InputError(
                f"the tokenizer has only some of the sentinels <extra_id_0..{n - 1}>; "
                f"set num_sentinels to the number it has"
            )
        tokenizer.add_special_tokens({"additional_special_tokens": missing[::-1]})
    if needs_eos:
        # T5's template: an encoded prompt ends with </s>, as every training input does
        eos = (tokenizer.eos_token, tokenizer.eos_token_id)
        tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
            single=f"$A {eos[0]}", pair=f"$A {eos[0]} $B {eos[0]}", special_tokens=[eos]
        )
    return tokenizer, len(tokenizer) - before


def target_spans(target: list[int], sentinels: dict[int, str], stop: set[int]) -> dict[str, list[int]]:
    """The ids that follow each sentinel in a generated target `<extra_id_0> ids <extra_id_1> ids ... </s>`, up to
    the first `stop` id (EOS, padding); ids before the first sentinel belong to none."""
    found, current = {}, None
    for t in target:
        if t in stop:
            break
        if t in sentinels:
            current = found.setdefault(sentinels[t], [])
        elif current is not None:
            current.append(t)
    return found
