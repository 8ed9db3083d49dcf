"""Perplexity of a long text with a rolling window, reported per token, per word and in bits per byte (total NLL /
(ln 2 x UTF-8 bytes): the number that compares across tokenizers).

Windows follow HF's perplexity guide: window k starts at k x stride and holds at most `max_length` tokens; it
scores only the tokens no earlier window scored, so every token is scored exactly once and, after the first
window, with at least `max_length - stride` tokens of context. One change: a causal window never starts at its
first scored token (it starts one earlier), so no token loses its prediction when stride >= max_length.
Causal LMs are scored exactly (the text follows the BOS/EOS token, so its first token is scored too); masked LMs
by pseudo-log-likelihood over the same windows, both sides of the window visible (not a probability of the text).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch

from lightning_pretrain.architecture import max_positions
from lightning_pretrain.errors import InputError
from lightning_pretrain.evaluate.windows import MASKED_WINDOW, Window, windows


@torch.no_grad()
def causal_token_nll(model, stream: list[int], wins: list[Window], batch_size: int = 8) -> torch.Tensor:
    """NLL (nats, float64) of every scored position of `stream`, in order; windows of equal length are batched."""
    device = next(model.parameters()).device
    # one preallocated result: thousands of small tensors kept alive between the large freed logits would
    # fragment the heap (RSS grew ~1.5 GB per 1,000 windows that way)
    nll = torch.empty(sum(w.end - w.score_from for w in wins), dtype=torch.float64)
    done = i = 0
    while i < len(wins):
        group = [wins[i]]
        while (
            i + len(group) < len(wins)
            and len(group) < batch_size
            and wins[i + len(group)].end - wins[i + len(group)].begin == wins[i].end - wins[i].begin
        ):
            group.append(wins[i + len(group)])
        i += len(group)
        ids = torch.tensor([stream[w.begin : w.end] for w in group], device=device)
        keep = max(w.end - w.score_from for w in group) + 1  # logits of the positions that predict scored tokens
        try:
            logits = model(input_ids=ids, logits_to_keep=keep).logits
        except TypeError:  # an architecture without `logits_to_keep`
            logits = model(input_ids=ids).logits
        logits = logits[:, -keep:]  # (a model that ignores `logits_to_keep` returns them all)
        logp = logits[:, :-1].float().log_softmax(-1)  # row j predicts window position (width - keep + 1 + j)
        width = ids.shape[1]
        for r, w in enumerate(group):
            first = w.score_from - w.begin - (width - keep + 1)
            targets = ids[r, w.score_from - w.begin :]
            nll[done : done + len(targets)] = -logp[r, first:].gather(1, targets[:, None])[:, 0].cpu()
            done += len(targets)
    return nll


@dataclass
class TextScore:
    nll: float  # total, nats
    tokens: int  # scored tokens
    bytes: int  # UTF-8 bytes of the text
    words: int  # whitespace-separated words
    method: str  # "exact" (causal) or "pseudo-log-likelihood" (masked)
    max_length: int
    stride: int

    @property
    def bits_per_byte(self) -> float:
        return self.nll / (math.log(2) * self.bytes)

    @property
    def token_perplexity(self) -> float:
        return math.exp(self.nll / self.tokens)

    @property
    def word_perplexity(self) -> float:
        return math.exp(self.nll / self.words)

    def metrics(self) -> dict[str, float]:
        return {
            "bits_per_byte": self.bits_per_byte,
            "token_perplexity": self.token_perplexity,
            "word_perplexity": self.word_perplexity,
        }


def score_text(
    model,
    tokenizer,
    text: str,
    kind: str,
    max_length: int | None = None,
    stride: int | None = None,
    batch_size: int = 8,
) -> TextScore:
    """Score `text` with a causal LM (exact) or a masked LM (PLL). `max_length` defaults to the model's positions
    for a causal LM and to at most 128 for a masked LM (PLL runs one window-long forward per token); `stride` to
    half a window (causal) or a whole one (masked)."""
    if not text.strip():
        raise InputError("the text to score is empty")
    limit = max_positions(model.config) or tokenizer.model_max_length
    max_length = min(max_length or (limit if kind != "masked" else min(limit, MASKED_WINDOW)), limit)
    ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
    words, n_bytes = len(re.findall(r"\S+", text)), len(text.encode("utf-8"))
    if kind == "masked":  # imported here: pll.py brings in lm-eval, needed only for masked LMs
        from lightning_pretrain.evaluate.pll import PseudoLogLikelihood

        scorer = PseudoLogLikelihood(model, tokenizer, batch_size=batch_size, max_length=max_length, progress=True)
        stride = stride or scorer.max_length
        nll = -sum(scorer.rolling(ids, max_length, stride))
        return TextScore(nll, len(ids), n_bytes, words, "pseudo-log-likelihood", max_length, stride)
    if kind != "causal":
        raise InputError(f"bits per byte needs a causal or masked LM, not a {kind} model")
    stride = stride or max(1, max_length // 2)
    prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if prefix is None:
        raise InputError("the tokenizer has no BOS or EOS token to condition the text's first token on")
    stream = [prefix, *ids]
    nll = causal_token_nll(model, stream, windows(len(stream), max_length, stride, 1, 1), batch_size)
    return TextScore(float(nll.sum()), len(ids), n_bytes, words, "exact", max_length, stride)
