"""`SFTData`: prompt/completion pairs (columns, or a chat `messages` column rendered with the tokenizer's chat
template) -> causal-LM rows whose labels are the completion only, optionally packed several whole examples a row.

Splits come from `data/splits.py` as for classification; each is tokenized once into a hash-keyed cache entry.
Labels are unshifted (the model shifts) and -100 on prompt tokens, padding and every example's first token, so the
labelled tokens are exactly the predicted completion tokens; training batches carry `window_tokens`
(data/windows.py). Packing (first-fit in dataset order, once; rows shuffled per epoch) restarts position ids per
example. Evaluation batches add the prompts left-padded for `generate`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import datasets
import torch
from transformers import PreTrainedTokenizerBase

from lightning_pretrain.data.contract import DataContract
from lightning_pretrain.data.finetune.base import FineTuneData
from lightning_pretrain.data.finetune.splits import Splits
from lightning_pretrain.data.generative.completions import CompletionBatches, Packed, encode, first_fit, render_chat
from lightning_pretrain.data.sources import validate
from lightning_pretrain.data.sources.tables import Column, resolve_column
from lightning_pretrain.errors import InputError

log = logging.getLogger(__name__)


class SFTData(FineTuneData):
    cache_name = "sft"

    def __init__(
        self,
        prompt_column: Column = "prompt",
        completion_column: Column = "completion",
        messages_column: Column | None = None,
        prompt_template: str | None = None,
        chat_template: str | None = None,
        max_length: int = 512,
        pack: bool = False,
        batch_size: int = 8,
        **kwargs,
    ):
        """
        Args:
            prompt_column: column of the prompt: a name, or a 0-based index (header-less CSV/TSV files).
            completion_column: column of the completion to learn (an EOS token is appended).
            messages_column: column of chat conversations (lists of {"role", "content"}; a JSON string in CSV/TSV)
                instead of prompt/completion columns: the prompt is every message before the final assistant one,
                rendered with the tokenizer's chat template and its generation prompt; the completion is that
                final message.
            prompt_template: format of a prompt column's text, with '{prompt}' (e.g. 'Review: {prompt}\\nSentiment:').
            chat_template: a Jinja chat template for tokenizers without one (it is saved with the tokenizer).
            max_length: longest row in tokens. A completion is cut to fit after its prompt; an example whose prompt
                alone fills max_length is dropped (the count is logged).
            pack: concatenate whole examples into rows of max_length (first-fit in dataset order; no example is
                split; position ids restart per example) instead of one padded example per row. Training only.
            batch_size: training rows per batch on each device.
        """
        if max_length < 2:
            raise InputError(f"max_length must be at least 2, got {max_length}")
        if prompt_template is not None and not _formats_prompts(prompt_template, messages_column):
            raise InputError(
                "--data.prompt_template formats a prompt column: '{prompt}' marks where the prompt goes "
                "and other braces are doubled ('{{'); chat messages are rendered by the chat template"
            )
        super().__init__(batch_size=batch_size, **kwargs)
        self.resolve_header(prompt_column, completion_column, messages_column)
        self.inputs = Splits(
            self.source,
            self.files,
            self.hub_splits,
            header=self.header,
            val_fraction=self.val_fraction,
            seed=self.seed,
            max_train_examples=self.max_train_examples,
        )
        self.prompt_column, self.completion_column, self.messages_column = (
            prompt_column,
            completion_column,
            messages_column,
        )
        self.prompt_template, self.chat_template = prompt_template, chat_template
        self.max_length, self.pack = max_length, pack
        self._packed_rows: list[list[int]] = []  # packed training rows: their example indices
        self._warned: set[str] = set()  # splits whose dropped examples were logged

    # -- tokenizer and contract ---------------------------------------------------------------------------------
    def configure_tokenizer(self, tok: PreTrainedTokenizerBase) -> None:
        """An EOS ends every completion; pad defaults to EOS; `chat_template` if given."""
        if tok.eos_token_id is None:
            raise InputError(f"tokenizer '{self.tokenizer_spec}' has no EOS token, which ends every completion")
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        if self.chat_template:
            tok.chat_template = self.chat_template
        if self.messages_column is not None and not tok.chat_template:
            raise InputError(
                f"tokenizer '{self.tokenizer_spec}' has no chat template to render the messages "
                f"column with: pass --data.chat_template (a Jinja template) or prompt/completion columns"
            )

    def measure(self) -> dict:
        """The row length: max_length when packing, else the longest training or validation example (max_length
        without training data); and each evaluated split's longest prompt, so that a model too short for it plus the
        generated tokens is refused before training, not at its first validation."""
        longest = self.max_length
        has_train = self.inputs.source_of("train") is not None
        if not self.pack and has_train:
            longest = max(self._entry(split)[1]["longest"] for split in ("train", "val"))
        generated = [s for s in ("val", "test", "predict") if self.inputs.source_of(s) or (s == "val" and has_train)]
        return {"max_length": longest, "longest_prompts": {s: self._entry(s)[1]["longest_prompt"] for s in generated}}

    @property
    def contract(self) -> DataContract:
        """The tokenizer and the row length (`measure`)."""
        facts = self.measured()
        return DataContract(self.tokenizer, task="sft", **facts)

    # -- raw rows -----------------------------------------------------------------------------------------------
    def _rows(self, split: str) -> dict[str, list]:
        """{'prompt': rendered prompts, 'completion' (all but predict), 'where'} of one split."""
        if split == "val" and self.inputs.held_out():
            return self._subset(self._rows("train_all"), "val")
        src = self.inputs.source_of("train" if split == "train_all" else split)
        where, table, labelled = src.describe(), src.read(self.header), split != "predict"
        if src.is_lines:
            if labelled:
                raise InputError(f"{src.spec}: a .txt file holds prompts only; it can only be a --data.predict_file")
            rows = {"prompt": validate.texts(table.values("text"), "text", where, table.where, False)}
            if self.messages_column is not None:  # a chat model: each line is a user message
                rows["prompt"] = [
                    render_chat(self.tokenizer, [{"role": "user", "content": t}], where, False)[0]
                    for t in rows["prompt"]
                ]
            elif self.prompt_template:  # prompts as the model was trained on them
                rows["prompt"] = [self.prompt_template.format(prompt=p) for p in rows["prompt"]]
        elif self.messages_column is not None:
            pairs = [
                render_chat(self.tokenizer, m, f"{where} {w}", labelled)
                for m, w in zip(table.values(self._column(self.messages_column, table, where, "messages")), table.where)
            ]
            rows = {"prompt": [p for p, _ in pairs], **({"completion": [c for _, c in pairs]} if labelled else {})}
        else:
            prompts = validate.texts(
                table.values(self._column(self.prompt_column, table, where, "prompt")),
                str(self.prompt_column),
                where,
                table.where,
                False,
            )
            rows = {
                "prompt": [self.prompt_template.format(prompt=p) for p in prompts] if self.prompt_template else prompts
            }
            if labelled:
                column = self._column(self.completion_column, table, where, "completion")
                rows["completion"] = validate.texts(table.values(column), column, where, table.where, False)
        rows["where"] = list(table.where)
        if split == "train" and self.inputs.held_out():
            rows = self._subset(rows, "train")
        if split == "train" and self.max_train_examples and self.max_train_examples < len(rows["prompt"]):
            rows = self._subset(rows, "sample")
        return rows

    def _column(self, ref: Column, table, where: str, what: str) -> str:
        found = resolve_column(ref, table.columns)
        if found is None:
            raise InputError(
                f"{what} column {ref!r} not found in {where}; available: {', '.join(table.columns)} "
                f"(set --data.{what}_column by name or 0-based index)"
            )
        return found

    def _subset(self, rows: dict[str, list], part: str) -> dict[str, list]:
        """The held-out validation rows ('val') or the rest ('train'), or the seeded training sample ('sample'),
        drawn as TextClassification draws them."""
        n = len(rows["prompt"])
        order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed)).tolist()
        if part == "sample":
            return {k: [v[i] for i in sorted(order[: self.max_train_examples])] for k, v in rows.items()}
        n_val = max(1, round(n * self.val_fraction))
        if n_val >= n:
            raise InputError(
                f"{self.inputs.describe('train')} has {n} row(s): too few to hold out "
                f"val_fraction={self.val_fraction} for validation; pass --data.val_file"
            )
        keep = sorted(order[:n_val] if part == "val" else order[n_val:])
        return {k: [v[i] for i in keep] for k, v in rows.items()}

    # -- tokenized splits ---------------------------------------------------------------------------------------
    def cache_parts(self, split: str) -> tuple:
        chat = self.messages_column is not None
        return (
            self.prompt_column,
            self.completion_column,
            self.messages_column,
            self.prompt_template,
            self.tokenizer.chat_template if chat else None,
            self.val_fraction,
            self.max_length,
            "longest_prompt",  # metadata that older caches lack
        )

    def encode(self, split: str) -> tuple[datasets.Dataset, dict]:
        rows, where = self._rows(split), self.inputs.describe(split)
        return encode(self.tokenizer, rows, self.max_length, self.messages_column is not None, where)

    def summary(self, meta: dict) -> str:
        return f"{meta['rows']} examples ({meta['truncated']} completions cut to max_length={self.max_length})"

    def _entry(self, split: str) -> tuple[Path, dict]:
        entry, meta = super()._entry(split)
        if meta["dropped"] and split not in self._warned:
            self._warned.add(split)
            log.warning(
                "dropped %d examples of the %s split whose prompt alone fills max_length=%d (no completion "
                "token fits); raise --data.max_length to keep them",
                meta["dropped"],
                split,
                self.max_length,
            )
        return entry, meta

    # -- Lightning hooks and loaders ----------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        super().setup(stage)
        if self.pack and "train" in self.splits:
            self._packed_rows = first_fit(self.splits["train"]["length"], self.max_length)

    def collate(self, train: bool) -> CompletionBatches:
        return CompletionBatches(self.tokenizer.pad_token_id, generation=not train)

    def train_dataloader(self):
        examples = self.splits["train"]
        counts = list(examples["label_tokens"])
        if self.pack:
            rows, counts = Packed(examples, self._packed_rows), [sum(counts[i] for i in r) for r in self._packed_rows]
        else:
            rows = examples.select_columns(["input_ids", "labels"])
        return self.windowed_loader(rows, counts, "packed rows" if self.pack else "examples")


def _formats_prompts(template: str, messages_column: Column | None) -> bool:
    try:
        return messages_column is None and "{prompt}" in template and template.format(prompt="") is not None
    except (KeyError, IndexError, ValueError):
        return False
