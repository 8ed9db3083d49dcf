"""SpanBERT's span masking and span-boundary objective (SBO), used by `MaskedLM(span_mask=True, sbo=...)`.

`span_mask_tokens` masks contiguous runs of whole words: span lengths in words from a geometric distribution
(p=0.2) restricted to 1..10 and renormalised, as SpanBERT's code (mean 3.8 words), start words uniform, until
`mlm_probability` of the row's non-special tokens are masked; the 80/10/10 choice is drawn once per span. Spans
never touch each other, specials or the row's ends, so each has an unmasked boundary token on either side: SBO
predicts every token of a span from those two (`span_boundaries`) and its offset in the span
(`SpanBoundaryHead`). The head lives outside the HF model: it trains with it but is not exported.
"""

from __future__ import annotations

import torch
from torch import nn

from lightning_pretrain.data.contract import IGNORE_INDEX


def span_length_probs(p: float, max_words: int) -> torch.Tensor:
    """P(length = 1..max_words) of a Geometric(p) restricted to 1..max_words (renormalised)."""
    probs = p * (1 - p) ** torch.arange(max_words, dtype=torch.float64)
    return probs / probs.sum()


def span_mask_tokens(
    input_ids: torch.Tensor,
    mask_token_id: int,
    special_ids: torch.Tensor,
    replacement_ids: torch.Tensor,
    word_ids: torch.Tensor,
    mlm_probability: float = 0.15,
    mask_fraction: float = 0.8,
    random_fraction: float = 0.1,
    span_p: float = 0.2,
    max_span_words: int = 10,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return `(inputs, labels)` as `mask_tokens` does, selecting whole-word spans (`word_ids` from `word_index`).

    Per row the budget is `round(mlm_probability * non-special tokens)`. Spans are added one at a time: a length,
    then a start word drawn uniformly among the places where the span fits (only non-special words, one free word
    on each side inside the row). The last span is kept whole: once fewer tokens than a mean span remain, another
    span is drawn with probability remaining / mean, so the masked share is the budget on average and no span is
    cut short (the kept lengths follow the target distribution).
    """
    B, T = input_ids.shape
    device = input_ids.device
    selectable = ~torch.isin(input_ids, special_ids)
    # word-level tables (a row has at most T words): tokens per word, and whether every token is non-special
    tokens = torch.zeros(B, T, dtype=torch.long, device=device).scatter_add_(1, word_ids, torch.ones_like(word_ids))
    special = torch.zeros_like(tokens).scatter_add_(1, word_ids, (~selectable).long())
    word_ok = (tokens > 0) & (special == 0)
    ok_before = torch.nn.functional.pad(word_ok.long().cumsum(1), (1, 0))  # ok words in [0, w)
    budget = (selectable.sum(1) * mlm_probability).round()
    probs = span_length_probs(span_p, max_span_words)
    mean_span = (probs * torch.arange(1, max_span_words + 1, dtype=torch.float64)).sum().item()
    mean_span_tokens = mean_span * selectable.sum(1) / word_ok.sum(1).clamp(min=1)
    cdf = probs.cumsum(0).float().to(device)
    w = torch.arange(T, device=device).expand(B, T)
    masked = torch.zeros(B, T, dtype=torch.bool, device=device)
    n_masked = torch.zeros(B, device=device)
    done = budget <= 0
    for _ in range(4 * int(budget.max().item() if B else 0) + 8):  # ample: each step usually adds a span per row
        if done.all():
            break
        length = (
            torch.searchsorted(cdf, torch.rand(B, device=device, generator=generator)).clamp(max=max_span_words - 1)[
                :, None
            ]
            + 1
        )
        end = (w + length).clamp(max=T - 1)  # the word after the span: it must exist (the right boundary)
        masked_before = torch.nn.functional.pad(masked.long().cumsum(1), (1, 0))
        fits = (
            (w >= 1)
            & (w + length <= T - 1)
            & (tokens.gather(1, end) > 0)
            & (ok_before.gather(1, end) - ok_before[:, :T] == length)
            & (masked_before.gather(1, end + 1) - masked_before[:, :T].roll(1, 1) == 0)
        )  # [w-1, end] free
        scores = torch.rand(B, T, device=device, generator=generator).masked_fill(~fits, -1)
        start = scores.argmax(1, keepdim=True)
        # under a mean span from the budget: one last span with probability remaining / mean (decided before its
        # length is known, so the lengths kept stay unbiased), which fills the budget on average
        last = budget - n_masked < mean_span_tokens
        done |= torch.rand(B, device=device, generator=generator) >= (budget - n_masked) / mean_span_tokens
        place = fits.any(1) & ~done
        span = (w >= start) & (w < start + length) & place[:, None]
        masked |= span
        n_masked += (tokens * span).sum(1)
        done |= (last & place) | (n_masked >= budget)
    chosen = masked.gather(1, word_ids) & selectable
    labels = torch.where(chosen, input_ids, IGNORE_INDEX)
    # one draw per span: the draw at the span's first token
    first = chosen & ~torch.nn.functional.pad(chosen, (1, 0))[:, :T]
    pos = torch.arange(T, device=device).expand(B, T)
    span_start = torch.where(first, pos, 0).cummax(1).values
    u = torch.rand(B, T, device=device, generator=generator).gather(1, span_start)
    to_mask = chosen & (u < mask_fraction)
    to_random = chosen & (u >= mask_fraction) & (u < mask_fraction + random_fraction)
    random_tokens = replacement_ids[torch.randint(len(replacement_ids), (B, T), device=device, generator=generator)]
    inputs = torch.where(to_mask, mask_token_id, input_ids)
    inputs = torch.where(to_random, random_tokens, inputs)
    return inputs, labels


def span_boundaries(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """For every labelled position, in `labels[labels != IGNORE_INDEX]` order: `(row, left, right, offset)`: its row,
    the positions just before and after its span (a maximal run of labelled positions) and its offset in the span
    (0 for the first token). Boundaries are clamped to the row for runs touching its ends (span masking has none)."""
    chosen = labels != IGNORE_INDEX
    B, T = chosen.shape
    pos = torch.arange(T, device=labels.device).expand(B, T)
    first = chosen & ~torch.nn.functional.pad(chosen, (1, 0))[:, :T]
    last = chosen & ~torch.nn.functional.pad(chosen, (0, 1))[:, 1:]
    start = torch.where(first, pos, 0).cummax(1).values
    end = torch.where(last, pos, T - 1).flip(1).cummin(1).values.flip(1)
    rows = torch.arange(B, device=labels.device)[:, None].expand(B, T)
    return (rows[chosen], (start - 1).clamp(min=0)[chosen], (end + 1).clamp(max=T - 1)[chosen], (pos - start)[chosen])


class SpanBoundaryHead(nn.Module):
    """SBO's `f(x_{s-1}, x_{e+1}, p_i)`: the two boundary states and a relative position embedding through two
    Linear-GeLU-LayerNorm layers; the MLM output layer (shared) turns the result into vocabulary logits."""

    def __init__(self, hidden_size: int, max_offset: int = 512, layer_norm_eps: float = 1e-12):
        super().__init__()
        self.position = nn.Embedding(max_offset, hidden_size)
        self.mlp = nn.Sequential(
            nn.Linear(3 * hidden_size, hidden_size),
            nn.GELU(),
            nn.LayerNorm(hidden_size, eps=layer_norm_eps),
            nn.Linear(hidden_size, hidden_size),
            nn.GELU(),
            nn.LayerNorm(hidden_size, eps=layer_norm_eps),
        )

    def forward(self, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """One vector per labelled position (`labels[labels != IGNORE_INDEX]` order) from the final hidden states."""
        rows, left, right, offset = span_boundaries(labels)
        offset = offset.clamp(max=self.position.num_embeddings - 1)  # offsets past the table share its last row
        return self.mlp(torch.cat([hidden[rows, left], hidden[rows, right], self.position(offset)], dim=-1))
