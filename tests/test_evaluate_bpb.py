"""Bits per byte and perplexity of a text: total NLL / (ln 2 x UTF-8 bytes), and the rolling window with stride
scores every token exactly once with the documented context (HF's perplexity-guide windows)."""

from __future__ import annotations

import math

import pytest
import torch
from test_evaluate_harness import sentences, tiny_causal  # noqa: F401 (fixture)

from lightning_pretrain.evaluate.rolling import causal_token_nll, score_text, windows


@pytest.mark.parametrize(
    "n,max_length,stride", [(50, 16, 8), (50, 16, 16), (50, 16, 20), (50, 16, 1), (7, 16, 8), (17, 16, 5)]
)
@pytest.mark.parametrize("causal", [True, False])
def test_windows_score_each_token_once_with_documented_context(n, max_length, stride, causal):
    first, min_context = (1, 1) if causal else (0, 0)
    wins = windows(n, max_length, stride, first, min_context)
    scored = [p for w in wins for p in range(w.score_from, w.end)]
    assert scored == list(range(first, n))  # each token once, in order
    for k, w in enumerate(wins):
        assert w.end - w.begin <= max_length and w.score_from - w.begin >= min_context
        if k == 0:
            assert w.begin == 0
        elif stride < max_length:  # HF's guide: window k starts at k x stride, >= max_length - stride context
            assert w.begin == k * stride and w.score_from - w.begin >= max_length - stride
        else:  # stride >= max_length: the window starts just before its first scored token (one token of context)
            assert w.begin == w.score_from - min_context


def test_bits_per_byte_is_total_nll_over_utf8_bytes(tiny_causal):  # noqa: F811
    model, tok, _ = tiny_causal
    text = " ".join(sentences(4)) + " — naïve café"  # multi-byte characters: bytes != characters
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert len(ids) + 1 <= 64
    stream = torch.tensor([[tok.eos_token_id, *ids]])  # the text follows EOS: its first token is scored too
    with torch.no_grad():
        logp = model(input_ids=stream).logits[0, :-1].log_softmax(-1)
    nll = -float(logp.gather(1, stream[0, 1:, None]).sum())
    score = score_text(model, tok, text, "causal")
    assert score.tokens == len(ids) and score.bytes == len(text.encode("utf-8")) > len(text)
    assert score.nll == pytest.approx(nll, rel=1e-5)
    assert score.bits_per_byte == pytest.approx(nll / (math.log(2) * len(text.encode("utf-8"))), rel=1e-5)
    assert score.token_perplexity == pytest.approx(math.exp(nll / len(ids)), rel=1e-5)
    assert score.word_perplexity == pytest.approx(math.exp(nll / len(text.split())), rel=1e-5)


@pytest.mark.parametrize("stride", [4, 12, 16])
def test_rolling_window_scores_each_token_with_its_windows_context(tiny_causal, stride):  # noqa: F811
    """Per token, the NLL the batched rolling computation reports is the model's NLL of that token given exactly
    the tokens from its window's start (computed one prefix at a time)."""
    model, tok, _ = tiny_causal
    ids = tok(" ".join(sentences(12)), add_special_tokens=False)["input_ids"]
    stream = [tok.eos_token_id, *ids]
    wins = windows(len(stream), 16, stride, 1, 1)
    got = causal_token_nll(model, stream, wins, batch_size=3)
    expected = []
    with torch.no_grad():
        for w in wins:
            for p in range(w.score_from, w.end):
                logits = model(input_ids=torch.tensor([stream[w.begin : p]])).logits[0, -1]
                expected.append(-float(logits.log_softmax(-1)[stream[p]]))
    assert len(got) == len(ids)
    assert got.tolist() == pytest.approx(expected, abs=1e-4)
    total = score_text(model, tok, " ".join(sentences(12)), "causal", max_length=16, stride=stride, batch_size=2)
    assert total.nll == pytest.approx(sum(expected), rel=1e-5)
