"""Whole-word masking for each tokenizer family: word boundaries, every piece of a chosen word masked together, the
word-level rate and the per-word 80/10/10 split."""

import re

import pytest
import torch
from conftest import ENGLISH, minilm_dir
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoTokenizer, BertConfig, PreTrainedTokenizerFast

from lightning_pretrain.data import tokenizers as toks
from lightning_pretrain.data.contract import IGNORE_INDEX, DataContract
from lightning_pretrain.data.sources.text import builtin_documents
from lightning_pretrain.errors import InputError
from lightning_pretrain.objectives.masked_lm import MaskedLM, mask_tokens
from lightning_pretrain.objectives.word_boundaries import word_boundaries, word_index

SENTENCE = "Hello, world! The tokenizers' 1990s prizes weren't unbelievable; they were predictable."
FAMILIES = ["bpe", "wordpiece", "unigram", "minilm"]


@pytest.fixture(scope="module")
def texts():
    return builtin_documents()[:400] + ENGLISH * 5 + [SENTENCE] * 5


@pytest.fixture(scope="module")
def tokenizers(texts):
    trained = {name: toks.TRAINERS[name](texts, 2000) for name in ("bpe", "wordpiece", "unigram")}
    return trained


def get(tokenizers, family):
    if family == "minilm":  # a real BERT vocabulary, loaded as users load theirs
        return AutoTokenizer.from_pretrained(minilm_dir())
    return tokenizers[family]


def word_spans(tok, text):
    """Character spans of the words `word_index` finds (pieces' offsets joined, surrounding whitespace dropped)."""
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    index = word_index(torch.tensor(enc.input_ids), *word_boundaries(tok)).tolist()
    spans = {}
    for w, (a, b) in zip(index, enc.offset_mapping):
        spans[w] = (spans.get(w, (a, b))[0], b)
    out = []
    for a, b in spans.values():
        piece = text[a:b]
        out.append((a + len(piece) - len(piece.lstrip()), b - (len(piece) - len(piece.rstrip()))))
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_words_never_split_and_never_cross_whitespace(tokenizers, family):
    tok = get(tokenizers, family)
    ours = word_spans(tok, SENTENCE)
    # BERT's words: letter/digit runs and single punctuation marks
    reference = [m.span() for m in re.finditer(r"\w+|[^\w\s]", SENTENCE)]
    assert all(any(a <= r0 and r1 <= b for a, b in ours) for r0, r1 in reference)  # no word cut in two
    assert not any(re.search(r"\s", SENTENCE[a:b]) for a, b in ours)  # no word spans a space
    # a word is bigger than BERT's only where one piece itself spans a boundary (GPT-2's "'t", a learnt "n't")
    cuts = {x for span in reference for x in span}
    pieces = tok(SENTENCE, add_special_tokens=False, return_offsets_mapping=True).offset_mapping
    for a, b in set(ours) - set(reference):
        assert any(a <= p0 and p1 <= b and any(p0 < x < p1 for x in cuts) for p0, p1 in pieces), SENTENCE[a:b]
    assert len(set(ours) & set(reference)) >= len(reference) - 3


def test_byte_level_keeps_multibyte_characters_in_their_word(tokenizers):
    text = "café naïve Übermensch\nNext"
    assert [text[a:b] for a, b in word_spans(tokenizers["bpe"], text)] == ["café", "naïve", "Übermensch", "", "Next"]


def corrupt_blocks(tok, texts, seed, rows=128, length=128, **kw):
    ids = [
        i for t in texts for i in tok(t, add_special_tokens=False).input_ids + [tok.sep_token_id or tok.eos_token_id]
    ]
    g = torch.Generator().manual_seed(seed)
    start = int(torch.randint(0, len(ids) - rows * length, (1,), generator=g))
    blocks = torch.tensor(ids[start : start + rows * length]).view(rows, length)
    words = word_index(blocks, *word_boundaries(tok))
    specials = torch.tensor(sorted(set(tok.all_special_ids)))
    vocab = torch.arange(len(tok))
    inputs, labels = mask_tokens(
        blocks, tok.mask_token_id, specials, vocab[~torch.isin(vocab, specials)], generator=g, word_ids=words, **kw
    )
    return blocks, words, inputs, labels, specials


def per_word(values, words, reduce):
    """Reduce a per-position bool tensor to one value per (row, word)."""
    out = torch.full(words.shape, reduce == "amin", dtype=torch.bool)
    return out.scatter_reduce(1, words, values, reduce=reduce, include_self=False)


@pytest.mark.parametrize("family", FAMILIES)
def test_whole_words_rate_and_80_10_10_per_word(tokenizers, texts, family):
    tok = get(tokenizers, family)
    counts = torch.zeros(4)  # selectable words, selected, [MASK] words, unchanged words
    multi_piece = 0
    for seed in range(3):
        blocks, words, inputs, labels, specials = corrupt_blocks(tok, texts, seed)
        selected = labels != IGNORE_INDEX
        n_words = words.max(1).values + 1
        exists = torch.arange(words.shape[1])[None, :] < n_words[:, None]
        # all pieces of a word share the decision: selected in all or in none
        all_sel, any_sel = per_word(selected, words, "amin"), per_word(selected, words, "amax")
        assert torch.equal(all_sel[exists], any_sel[exists])
        selectable = per_word(~torch.isin(blocks, specials), words, "amax") & exists
        masked = per_word(inputs == tok.mask_token_id, words, "amax")
        all_masked = per_word((inputs == tok.mask_token_id) | ~selected, words, "amin")
        unchanged = per_word((inputs == blocks) | ~selected, words, "amin")
        chosen = any_sel & exists
        assert torch.equal(masked[chosen], all_masked[chosen])  # a [MASK] word is [MASK] in every piece
        counts += torch.tensor(
            [selectable.sum(), chosen.sum(), (masked & chosen).sum(), (unchanged & chosen & ~masked).sum()],
            dtype=torch.float,
        )
        sizes = torch.zeros(words.shape, dtype=torch.long).scatter_add_(1, words, torch.ones_like(words))
        multi_piece += (chosen & (sizes > 1)).sum().item()
        assert (labels[selected] == blocks[selected]).all() and (labels[~selected] == IGNORE_INDEX).all()
    selectable, chosen, as_mask, as_kept = counts.tolist()
    as_random = chosen - as_mask - as_kept  # a random piece equal to the original counts as random (rare)
    assert abs(chosen / selectable - 0.15) < 0.015
    assert abs(as_mask / chosen - 0.8) < 0.025 and abs(as_kept / chosen - 0.1) < 0.025
    assert abs(as_random / chosen - 0.1) < 0.025
    assert multi_piece > 100, multi_piece  # the test exercises words of several pieces


def test_token_level_masking_is_unchanged_by_the_option():
    """`word_ids=None` is the original per-token masking, draw for draw (identity word ids give the same result)."""
    ids = torch.randint(5, 1000, (8, 64), generator=torch.Generator().manual_seed(0))
    args = (4, torch.tensor([0, 1, 2, 3, 4]), torch.arange(5, 1000))
    plain = mask_tokens(ids, *args, generator=torch.Generator().manual_seed(1))
    identity = mask_tokens(
        ids, *args, generator=torch.Generator().manual_seed(1), word_ids=torch.arange(64).expand(8, 64)
    )
    assert all(torch.equal(a, b) for a, b in zip(plain, identity))


def test_masked_lm_option_masks_whole_words(tokenizers, texts):
    tok = tokenizers["wordpiece"]
    module = MaskedLM(
        model=BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64),
        data=DataContract(tok),
        whole_word_mask=True,
        mlm_probability=0.3,
    )
    ids = [i for t in texts[:60] for i in tok(t, add_special_tokens=False).input_ids]
    batch = torch.tensor(ids[: 8 * 64]).view(8, 64)
    inputs, labels = module.corrupt(batch, 0, 0)
    pieces = [tok.convert_ids_to_tokens(i) for i in batch[labels != IGNORE_INDEX].tolist()]
    selected = labels != IGNORE_INDEX
    # a selected "##" piece never follows an unselected piece of its word
    continuation = torch.tensor(
        [[tok.convert_ids_to_tokens(i).startswith("##") for i in row] for row in batch.tolist()]
    )
    assert not (continuation[:, 1:] & selected[:, 1:] & ~selected[:, :-1]).any()
    assert not (continuation[:, 1:] & ~selected[:, 1:] & selected[:, :-1]).any()
    assert any(p.startswith("##") for p in pieces) and module.mlm_loss(inputs, labels).isfinite()


def test_tokenizer_without_word_boundaries_is_refused():
    tok = Tokenizer(models.WordLevel({"[UNK]": 0, "[MASK]": 1, "a": 2}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", mask_token="[MASK]")
    with pytest.raises(InputError, match="word boundaries"):
        word_boundaries(fast)
