"""Completion-only causal-LM examples (SFT): chat conversations rendered as prompt + completion, token ids and labels
per example, rows packed from whole examples (first-fit), and the batches: right-padded training rows, plus
left-padded prompts for `generate` when evaluating.

Labels are unshifted (HF's causal-LM convention: the model shifts) and -100 on prompt tokens, on padding and on the
first token of every example, so no label is ever predicted across a packed boundary and the labelled tokens are
exactly the completion tokens a model predicts (the counts `window_tokens` sums).
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import datasets
import torch
from jinja2.exceptions import TemplateError
from torch.utils.data import Dataset
from transformers import PreTrainedTokenizerBase

from lightning_pretrain.data.contract import IGNORE_INDEX
from lightning_pretrain.data.sources.records import describe
from lightning_pretrain.errors import InputError

CHUNK = 2000  # texts per tokenizer call


def _ids(tokenizer: PreTrainedTokenizerBase, texts: list[str], special: bool) -> list[list[int]]:
    out: list[list[int]] = []
    for start in range(0, len(texts), CHUNK):
        out += tokenizer(texts[start : start + CHUNK], add_special_tokens=special)["input_ids"]
    return out


def encode(
    tokenizer: PreTrainedTokenizerBase, rows: dict[str, list], max_length: int, chat: bool, where: str
) -> tuple[datasets.Dataset, dict]:
    """`rows` ('prompt', 'completion' unless predicting) tokenized: the prompt with the tokenizer's special tokens
    (a rendered chat template holds its own), the completion without, then EOS. A completion is cut to fit
    `max_length` after its prompt; an example whose prompt alone fills it is dropped (counted in the metadata)."""
    prompts = _ids(tokenizer, rows["prompt"], special=not chat)
    columns = {
        "example_id": list(range(len(prompts))),
        "prompt": rows["prompt"],
        "prompt_length": [len(p) for p in prompts],
    }
    if "completion" not in rows:  # predict: prompts only
        longest = max(map(len, prompts))
        meta = {"rows": len(prompts), "dropped": 0, "truncated": 0, "longest": longest, "longest_prompt": longest}
        return datasets.Dataset.from_dict({**columns, "input_ids": prompts}), meta
    keep, ids, labels, truncated = [], [], [], 0
    for i, (p, c) in enumerate(zip(prompts, _ids(tokenizer, rows["completion"], special=False))):
        if len(p) >= max_length:
            continue
        c = c + [tokenizer.eos_token_id]
        if len(p) + len(c) > max_length:
            truncated += 1
            c = c[: max_length - len(p)]
        keep.append(i)
        ids.append(p + c)
        row = [IGNORE_INDEX] * len(p) + c
        row[0] = IGNORE_INDEX  # the first token of an example is never a label: nothing of its own example precedes it
        labels.append(row)
    if not keep:
        raise InputError(
            f"{where}: every prompt has max_length={max_length} tokens or more, so no completion token "
            f"fits: raise --data.max_length"
        )
    columns = {k: [v[i] for i in keep] for k, v in {**columns, "completion": rows["completion"]}.items()}
    counts = [sum(t != IGNORE_INDEX for t in row) for row in labels]
    columns.update(input_ids=ids, labels=labels, length=list(map(len, ids)), label_tokens=counts)
    meta = {
        "rows": len(keep),
        "dropped": len(prompts) - len(keep),
        "truncated": truncated,
        "longest": max(map(len, ids)),
        "longest_prompt": max(columns["prompt_length"]),
        "label_tokens": sum(counts),
    }
    return datasets.Dataset.from_dict(columns), meta


def render_chat(tokenizer: PreTrainedTokenizerBase, messages, where: str, labelled: bool) -> tuple[str, str | None]:
    """A conversation (list of {"role", "content"}; a JSON string from CSV/TSV) as (prompt: every message before
    the final assistant one, rendered with the chat template and its generation prompt; that final message, or None
    when unlabelled rows end elsewhere)."""
    if isinstance(messages, str):  # a CSV/TSV cell
        try:
            messages = json.loads(messages)
        except ValueError:
            pass
    messages = messages.tolist() if hasattr(messages, "tolist") else messages  # (parquet: numpy arrays)
    if (
        not isinstance(messages, list)
        or not messages
        or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in messages
        )
    ):
        raise InputError(
            f"{where}: the messages column holds {describe(messages)}, not a non-empty list of "
            f'{{"role": ..., "content": ...}} objects with string values'
        )
    answered = messages[-1]["role"] == "assistant"
    if labelled and not answered:
        raise InputError(
            f"{where}: the conversation does not end with an assistant message, the completion to "
            f'learn; end each one with {{"role": "assistant", "content": ...}}'
        )
    if labelled and not messages[-1]["content"].strip():
        raise InputError(f"{where}: the final assistant message is empty; every example needs its completion")
    turns = messages[:-1] if answered else messages
    if not turns:
        raise InputError(f"{where}: the conversation has no message before its assistant answer to prompt with")
    try:
        prompt = tokenizer.apply_chat_template(turns, add_generation_prompt=True, tokenize=False)
    except TemplateError as e:
        raise InputError(f"{where}: the chat template refused the conversation: {e}") from e
    return prompt, messages[-1]["content"] if answered else None


def first_fit(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Rows of example indices: each example, in dataset order, goes to the first row with room for it. A segment
    tree over the rows' free space finds that row in O(log n) (unopened rows are free, after the opened ones)."""
    size = 1
    while size < max(len(lengths), 1):
        size *= 2
    free = [capacity] * (2 * size)
    rows: list[list[int]] = []
    for example, n in enumerate(lengths):
        node = 1
        while node < size:
            node = 2 * node if free[2 * node] >= n else 2 * node + 1
        if node - size == len(rows):
            rows.append([])
        rows[node - size].append(example)
        free[node] -= n
        while node > 1:
            node //= 2
            free[node] = max(free[2 * node], free[2 * node + 1])
    return rows


class Packed(Dataset):
    """Rows of whole examples (`rows`: example indices of `examples`) concatenated; position ids restart at each."""

    def __init__(self, examples: datasets.Dataset, rows: list[list[int]]):
        self.examples, self.rows = examples.select_columns(["input_ids", "labels"]), rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        part = self.examples[self.rows[i]]
        return {
            "input_ids": sum(part["input_ids"], []),
            "labels": sum(part["labels"], []),
            "position_ids": [p for ids in part["input_ids"] for p in range(len(ids))],
        }


class CompletionBatches:
    """Collate examples (or packed rows): `input_ids`, `attention_mask`, `labels`, `position_ids` right-padded (pad
    id, 0, -100, 0); with `generation`, also `prompt_input_ids` / `prompt_attention_mask` left-padded for
    `generate`, the `prompt` (and reference `completion`) texts and `example_id`. Prompt-only rows (predict) give
    the generation fields only."""

    def __init__(self, pad_id: int, generation: bool = False):
        self.pad_id, self.generation = pad_id, generation

    def __call__(self, rows: list[dict]) -> dict:
        batch: dict = {}
        if "labels" in rows[0]:
            width = max(len(r["input_ids"]) for r in rows)
            ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
            labels, mask, positions = torch.full_like(ids, IGNORE_INDEX), torch.zeros_like(ids), torch.zeros_like(ids)
            for i, r in enumerate(rows):
                n = len(r["input_ids"])
                ids[i, :n], labels[i, :n], mask[i, :n] = torch.tensor(r["input_ids"]), torch.tensor(r["labels"]), 1
                positions[i, :n] = torch.tensor(r["position_ids"]) if "position_ids" in r else torch.arange(n)
            batch = {"input_ids": ids, "attention_mask": mask, "labels": labels, "position_ids": positions}
        if self.generation:
            prompts = [r["input_ids"][: r["prompt_length"]] for r in rows]
            width = max(map(len, prompts))
            ids, mask = (
                torch.full((len(rows), width), self.pad_id, dtype=torch.long),
                torch.zeros(len(rows), width, dtype=torch.long),
            )
            for i, p in enumerate(prompts):
                ids[i, width - len(p) :], mask[i, width - len(p) :] = torch.tensor(p, dtype=torch.long), 1
            batch.update(
                prompt_input_ids=ids,
                prompt_attention_mask=mask,
                prompt=[r["prompt"] for r in rows],
                example_id=torch.tensor([r["example_id"] for r in rows]),
            )
            if "completion" in rows[0]:
                batch["completion"] = [r["completion"] for r in rows]
        return batch
