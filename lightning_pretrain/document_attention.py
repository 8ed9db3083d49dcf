"""Attention that keeps the documents (or examples) packed into one row apart, for any HF model.

A row's documents are told by its `position_ids`, which restart at 0 where each begins (the data publishes them:
`blocks.document_positions`, SFT packing). 'sdpa' and 'eager' get an explicit [B,1,L,L] mask built here,
block-diagonal (and causal for decoders); decoders under 'flash_attention_2/3' or 'flex_attention' get the position
ids alone, from which transformers derives the varlen boundaries / BlockMask itself (its `DataCollatorWithFlattening`
convention). Tests: a packed row's per-document logits equal each document run alone (tests/test_document_masking.py,
tests/test_causal_sft.py). The cost of the explicit mask on CPU: benchmarks/RESULTS.md ("Document masking").
"""

from __future__ import annotations

import torch

EXPLICIT_MASK = ("sdpa", "eager")  # implementations that take a 4D mask; the others find documents themselves


def document_mask(
    position_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, causal: bool = True
) -> torch.Tensor:
    """[B,1,L,L] bool, True where a query (row) may attend a key (column): a token of its own document (an earlier
    or the same one when `causal`). A document starts at each real token whose position id is 0; padding
    (`attention_mask` 0) attends only to itself, so no softmax row is empty, and nothing attends to padding."""
    real = torch.ones_like(position_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    document = ((position_ids == 0) & real).cumsum(-1)
    length = position_ids.shape[-1]
    allowed = (document[:, :, None] == document[:, None, :]) & real[:, :, None] & real[:, None, :]
    if causal:
        allowed &= torch.ones(length, length, dtype=torch.bool, device=position_ids.device).tril()
    return (allowed | torch.eye(length, dtype=torch.bool, device=allowed.device))[:, None]


def one_row(attn_implementation: str | None) -> bool:
    """Whether a batch's rows must be laid end to end as one row: transformers finds the documents of varlen
    flash attention from the position ids of a single row only (`_is_packed_sequence`); every row starts at
    position 0, so the row boundaries stay document boundaries."""
    return attn_implementation not in EXPLICIT_MASK


def document_inputs(
    position_ids: torch.Tensor,
    attn_implementation: str | None,
    causal: bool = True,
    dtype: torch.dtype = torch.float32,
    attention_mask: torch.Tensor | None = None,
    position_offset: int = 0,
) -> dict[str, torch.Tensor]:
    """The model's `position_ids` and `attention_mask` keyword arguments for rows of packed documents.

    'sdpa' takes the boolean mask, 'eager' the same as an additive float mask (its kernels add the mask to the
    scores); another implementation gets the position ids and no mask (decoders only: `check_implementation`), as
    one row when `one_row` says so (the caller lays its ids and labels out the same way). `position_offset`: where the model's positions start (RoBERTa's are counted from its padding id + 1).
    """
    inputs = {"position_ids": position_ids + position_offset if position_offset else position_ids}
    if one_row(attn_implementation):
        inputs["position_ids"] = inputs["position_ids"].reshape(1, -1)
        # transformers reads the documents off the positions only without a KV cache (its masking_utils)
        inputs["use_cache"] = False
    else:
        mask = document_mask(position_ids, attention_mask, causal)
        if attn_implementation == "eager":
            mask = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)
        inputs["attention_mask"] = mask
    return inputs


def check_implementation(attn_implementation: str | None, causal: bool) -> str | None:
    """Why packed documents cannot be kept apart with this attention implementation (None: they can). transformers
    derives document boundaries from position ids for decoders only; an encoder needs the explicit mask."""
    if causal or attn_implementation in EXPLICIT_MASK:
        return None
    return (
        f"keeping documents apart in a bidirectional model needs attn_implementation 'sdpa' or 'eager' "
        f"(an explicit block mask), not {attn_implementation!r}"
    )
