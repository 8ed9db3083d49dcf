"""The prompts of a `predict` batch, apart from any objective: how a message names one prompt (`describe_prompt`),
the refusal of a prompt longer than the model's positions (`check_prompt_lengths`), and token ids padded into the
model's inputs (`padded_prompts`). `PretrainingModule.check_prompts` and `pad_prompts` apply them to its model.
"""

from __future__ import annotations

import torch

from lightning_pretrain.errors import InputError


def describe_prompt(example_id: int, text: str) -> str:
    """`prompt 3 ('The quick brown…')`, for messages about one prompt of a predict file."""
    return f"prompt {example_id} ({text if len(text) <= 40 else text[:40] + '…'!r})"


def check_prompt_lengths(ids: list[list[int]], batch: dict, limit: int | None, new_tokens: int = 0) -> None:
    """Refuse a prompt that does not fit `limit` positions (None: any fits) with `new_tokens` generated after it."""
    for seq, i, text in zip(ids, batch["example_id"].tolist(), batch["text"]):
        if limit is not None and len(seq) + new_tokens > limit:
            raise InputError(
                f"{describe_prompt(i, text)} is {len(seq)} tokens"
                + (f", plus {new_tokens} new ones" if new_tokens else "")
                + f": more than the model's {limit} "
                f"positions; shorten it"
                + (" or lower --model.init_args.generation.max_new_tokens" if new_tokens else "")
            )


def padded_prompts(
    ids: list[list[int]], pad_id: int, device: torch.device, left: bool = False
) -> dict[str, torch.Tensor]:
    """`input_ids` and `attention_mask` on `device`, padded right (or left, for decoder-only generation, so that
    every prompt ends where generation begins)."""
    width = max(map(len, ids))
    rows = [[pad_id] * (width - len(s)) + s if left else s + [pad_id] * (width - len(s)) for s in ids]
    mask = [[0] * (width - len(s)) + [1] * len(s) if left else [1] * len(s) + [0] * (width - len(s)) for s in ids]
    return {"input_ids": torch.tensor(rows, device=device), "attention_mask": torch.tensor(mask, device=device)}
