"""UniLM's four self-attention mask kinds as pure functions: their ids (`KINDS`), each row's [B,1,L,L] boolean mask
for its kind and seq2seq source length, the segment ids that mark a seq2seq target, the mask in the form the
model's attention takes (sdpa: boolean, eager: additive), and the encoders whose layers take such a 4D mask as it
is. Kept apart from unilm.py, whose objective draws the kinds and masks the tokens.
"""

from __future__ import annotations

import torch
from transformers import PretrainedConfig

from lightning_pretrain.errors import InputError

KINDS = ("bidirectional", "left_to_right", "right_to_left", "seq2seq")  # index = the kind's id
BIDIRECTIONAL, LEFT_TO_RIGHT, RIGHT_TO_LEFT, SEQ2SEQ = range(len(KINDS))
# encoders whose layers take a ready [B,1,L,L] mask as it is (transformers' masking_utils returns a 4D mask unchanged)
MODEL_TYPES = ("bert", "roberta", "xlm-roberta", "camembert")


def attention_masks(kinds: torch.Tensor, source_lengths: torch.Tensor, length: int) -> torch.Tensor:
    """[B,1,L,L] bool, True where query i (row) may attend key j (column), for each row's kind: bidirectional all
    True; left-to-right j <= i; right-to-left j >= i; seq2seq with source length s: j < s for a source query
    (i < s), j <= i for a target query, i.e. j < max(s, i + 1). Right padding needs nothing more: a real query never
    sees a later position in the causal kinds, and every padding query sees itself (no empty softmax row)."""
    i = torch.arange(length, device=kinds.device)[:, None]
    j = torch.arange(length, device=kinds.device)[None, :]
    kind, s = kinds[:, None, None], source_lengths[:, None, None]
    allowed = torch.where(kind == LEFT_TO_RIGHT, j <= i, j < torch.maximum(s, i + 1))  # seq2seq otherwise
    allowed = torch.where(kind == RIGHT_TO_LEFT, j >= i, allowed)
    return torch.where(kind == BIDIRECTIONAL, True, allowed)[:, None]


def segment_ids(kinds: torch.Tensor, source_lengths: torch.Tensor, length: int) -> torch.Tensor:
    """[B,L] token type ids: 1 on a seq2seq example's target, 0 everywhere else (BERT's two segment embeddings)."""
    target = torch.arange(length, device=kinds.device)[None, :] >= source_lengths[:, None]
    return (target & (kinds[:, None] == SEQ2SEQ)).long()


def model_mask(allowed: torch.Tensor, attn_implementation: str, dtype: torch.dtype) -> torch.Tensor:
    """The 4D mask as the model's attention takes it: sdpa the boolean one, eager an additive one (its kernel adds
    the mask to the scores)."""
    if attn_implementation == "eager":
        return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(
            ~allowed, torch.finfo(dtype).min
        )
    return allowed


def check_model_type(config: PretrainedConfig) -> None:
    if config.model_type not in MODEL_TYPES:
        raise InputError(
            f"UniLM trains a BERT-family encoder that takes 4D attention masks ({', '.join(MODEL_TYPES)}"
            f"); got model type '{config.model_type}': use transformers.BertConfig or RobertaConfig"
        )
