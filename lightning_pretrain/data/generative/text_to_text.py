"""`TextToText`: source -> target pairs (translation, summarization, T5-style tasks) as dynamically padded batches.

A split is a table's source and target columns (a file, a directory's train/dev/test file or a hub split) or two
parallel plain-text files, one example per line (`train_file: train.en` with `train_target_file: train.de`): read
and checked by `data/pair_splits.py`. Sources get the optional task `prefix`; both sides end with the tokenizer's end
token (EOS, else SEP: its template's, or appended once) and are cut to their maximum length keeping it. Each split is
tokenized once into an atomic hash-keyed cache entry; labels are padded with -100, inputs with the pad id.
"""

from __future__ import annotations

import datasets
import torch
from transformers import PreTrainedTokenizerBase

from lightning_pretrain.data.contract import IGNORE_INDEX, DataContract
from lightning_pretrain.data.finetune.base import FineTuneData
from lightning_pretrain.data.generative.pair_splits import PairSplits
from lightning_pretrain.data.sources.tables import Column
from lightning_pretrain.errors import InputError


class TextToText(FineTuneData):
    cache_name = "text_to_text"
    no_data_hint = (
        "pass --data.train_file (a table, or parallel text with --data.train_target_file), or "
        "--data.source (a hub id or a directory)"
    )
    tokenizer_hint = ": the model's tokenizer directory (a run's export logs/<name>/version_N/hf holds one) or hub id"

    def __init__(
        self,
        train_target_file: str | None = None,
        val_target_file: str | None = None,
        test_target_file: str | None = None,
        source_column: Column = "source",
        target_column: Column = "target",
        prefix: str = "",
        drop_empty: bool = False,
        val_fraction: float = 0.05,
        max_source_length: int = 512,
        max_target_length: int = 128,
        **kwargs,
    ):
        """
        Args:
            train_target_file: makes train_file parallel text: line i of this file is the target of line i there
                (e.g. train.en / train.de); both files must have the same number of lines.
            val_target_file: the targets of a plain-text val_file, line by line.
            test_target_file: the targets of a plain-text test_file, line by line.
            source_column: column of the source text: a name, a 0-based index (header-less CSV/TSV), or
                'column.key' for a field of a dict column (hub translation sets: 'translation.en').
            target_column: column of the target text (same forms as source_column).
            prefix: task prefix prepended to every source before tokenization, e.g. 'translate English to German: '
                (the `source` text in batches and predictions excludes it).
            drop_empty: drop examples whose source or target is blank (a blank line of parallel text) instead of
                refusing them.
            val_fraction: share of the training examples held out for validation when there is no validation data.
            max_source_length: longest tokenized source (prefix and special tokens included); longer ones are cut,
                keeping their end token, and counted in the log.
            max_target_length: longest tokenized target (end token included); longer ones are cut likewise.
        """
        for name, value in (("max_source_length", max_source_length), ("max_target_length", max_target_length)):
            if value < 2:
                raise InputError(f"{name} must be at least 2 (a token and the end token), got {value}")
        super().__init__(val_fraction=val_fraction, **kwargs)
        self.resolve_header(source_column, target_column)
        self.inputs = PairSplits(
            self.source,
            self.files,
            {"train": train_target_file, "val": val_target_file, "test": test_target_file},
            self.hub_splits,
            source_column,
            target_column,
            self.header,
            drop_empty,
            self.val_fraction,
            self.seed,
            self.max_train_examples,
        )
        self.source_column, self.target_column = source_column, target_column
        self.prefix, self.drop_empty = prefix, drop_empty
        self.max_source_length, self.max_target_length = max_source_length, max_target_length

    # -- tokenizer and contract ---------------------------------------------------------------------------------
    def configure_tokenizer(self, tok: PreTrainedTokenizerBase) -> None:
        """Texts end with EOS, else SEP; one without a pad token pads with it (padding is masked, labels use -100)."""
        if tok.eos_token_id is None and tok.sep_token_id is None:
            raise InputError(f"tokenizer '{self.tokenizer_spec}' has neither an EOS nor a SEP token to end texts with")
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token if tok.eos_token is not None else tok.sep_token

    @property
    def end_id(self) -> int:
        """The token every source and target ends with: EOS (T5, BART, GPT), else SEP (BERT's template)."""
        tok = self.tokenizer
        return tok.eos_token_id if tok.eos_token_id is not None else tok.sep_token_id

    def measure(self) -> dict:
        """The longest tokenized source / target of the training data (train and val); without training data, of
        val and the predict sources (predict_file, else the test split's), so an unlabelled test table is not read
        for targets. With no targets anywhere, `max_target_length`."""
        names = (
            ["train", "val"]
            if self.inputs.present("train")
            else [s for s in ("val", "predict") if self.inputs.present(s)]
        )
        if not names:
            raise InputError("no data found: the --data.source directory has no train/dev/test file")
        metas = [self._entry(s)[1] for s in names]
        targets = [m["longest_target"] for m in metas if m.get("longest_target")]
        return {
            "max_length": max(m["longest_source"] for m in metas),
            "max_target_length": max(targets) if targets else self.max_target_length,
        }

    @property
    def contract(self) -> DataContract:
        """The tokenizer and the longest tokenized source / target (`measure`)."""
        facts = self.measured()
        return DataContract(self.tokenizer, task="text_to_text", **facts)

    # -- tokenized splits ---------------------------------------------------------------------------------------
    def cache_parts(self, split: str) -> tuple:
        return (
            self.source_column,
            self.target_column,
            self.prefix,
            self.drop_empty,
            self.max_source_length,
            self.max_target_length,
        )

    def summary(self, meta: dict) -> str:
        return (
            f"{meta['rows']} examples ({meta['truncated_sources']} sources cut to {self.max_source_length} "
            f"tokens, {meta.get('truncated_targets', 0)} targets to {self.max_target_length})"
        )

    def encode(self, split: str) -> tuple[datasets.Dataset, dict]:
        rows = self.inputs.rows(split)
        ids, cut = self._tokenize([self.prefix + s for s in rows["source"]], self.max_source_length, False)
        meta = {"rows": len(ids), "truncated_sources": cut, "longest_source": max(map(len, ids))}
        columns = {"input_ids": ids, "example_id": list(range(len(ids))), "source": rows["source"]}
        if "target" in rows:
            labels, cut = self._tokenize(rows["target"], self.max_target_length, True)
            meta.update(truncated_targets=cut, longest_target=max(map(len, labels)))
            # label tokens per example: what the accumulation window's token count is summed from
            columns.update(labels=labels, n_labels=[len(x) for x in labels], target=rows["target"])
        return datasets.Dataset.from_dict(columns), meta

    def _tokenize(self, texts: list[str], limit: int, target: bool) -> tuple[list[list[int]], int]:
        """Token ids ending with exactly one end token (the template's, else appended), cut to `limit` keeping it;
        targets as `text_target` (tokenizers with target-specific processing), and the number cut."""
        end, out, cut = self.end_id, [], 0
        for start in range(0, len(texts), 2000):
            part = texts[start : start + 2000]
            ids_only = {"return_attention_mask": False, "return_token_type_ids": False}  # (built per batch)
            enc = self.tokenizer(text_target=part, **ids_only) if target else self.tokenizer(part, **ids_only)
            for x in enc["input_ids"]:
                x = x if x and x[-1] == end else [*x, end]
                if len(x) > limit:
                    x, cut = [*x[: limit - 1], end], cut + 1
                out.append(x)
        return out, cut

    # -- loaders ------------------------------------------------------------------------------------------------
    def collate(self, train: bool) -> PadPairs:
        return PadPairs(self.tokenizer.pad_token_id)

    def train_dataloader(self):
        rows = self.splits["train"]  # batches carry `window_tokens`: the label tokens of their accumulation window
        return self.windowed_loader(rows, rows["n_labels"], "examples")


class PadPairs:
    """A batch padded to its own longest source and target: input_ids with the pad id (attention_mask 0 there),
    labels with -100 exactly on padding; `example_id` as a tensor, `source` / `target` texts as lists."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, rows: list[dict]) -> dict:
        batch = {
            "input_ids": _pad([r["input_ids"] for r in rows], self.pad_id),
            "attention_mask": _pad([[1] * len(r["input_ids"]) for r in rows], 0),
        }
        if "labels" in rows[0]:
            batch["labels"] = _pad([r["labels"] for r in rows], IGNORE_INDEX)
        batch["example_id"] = torch.tensor([r["example_id"] for r in rows], dtype=torch.long)
        return {**batch, **{k: [r[k] for r in rows] for k in ("source", "target") if k in rows[0]}}


def _pad(seqs: list[list[int]], value: int) -> torch.Tensor:
    out = torch.full((len(seqs), max(map(len, seqs))), value, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.tensor(s, dtype=torch.long)
    return out
