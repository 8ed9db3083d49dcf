"""`TextClassification`: labelled single texts or text pairs -> dynamically padded batches for a classifier.

Each split comes from `data/splits.py` (a file, a directory's train/dev/test file, or a hub split), its labels are
encoded by `data/labels.py`, and it is tokenized once with the backbone's tokenizer into an atomic hash-keyed cache
entry (like the pretraining corpus); batches are padded to their own longest example, never to `max_length`.
"""

from __future__ import annotations

import datasets
from transformers import PreTrainedTokenizerBase

from lightning_pretrain.data.contract import DataContract
from lightning_pretrain.data.finetune.base import FineTuneData
from lightning_pretrain.data.finetune.labels import Task, check_label_names, encode_labels, label_vocabulary, labelled
from lightning_pretrain.data.finetune.splits import Splits
from lightning_pretrain.data.loaders import DynamicPadding
from lightning_pretrain.data.sources.tables import Column
from lightning_pretrain.errors import InputError


class TextClassification(FineTuneData):
    cache_name = "downstream"
    tokenizer_hint = " (the CLI uses --model.backbone by default)"

    def __init__(
        self,
        text_column: Column = "text",
        text_pair_column: Column | None = None,
        label_column: Column = "label",
        task: Task = "classification",
        labels: list[str] | None = None,
        label_offset: int = 0,
        max_length: int = 128,
        **kwargs,
    ):
        """
        Args:
            text_column: column of the (first) text: a name, or a 0-based index (header-less CSV/TSV files).
            text_pair_column: column of the second text of a pair (NLI, paraphrase); unset for single texts.
            label_column: column of the label (class name, integer id, or a number for regression).
            task: 'classification' (cross-entropy over the classes) or 'regression' (one float target, MSE).
            labels: class names in id order (e.g. [negative, positive]); labels in the data may be these names or
                integer ids. Default: the sorted distinct training labels.
            label_offset: subtracted from integer labels, e.g. 1 for AG News's 1-based class column.
            max_length: longest tokenized input (pairs are truncated longest-first); batches are padded only to
                their own longest example.
        """
        if max_length < 2:
            raise InputError(f"max_length must be at least 2, got {max_length}")
        if task == "regression" and labels:
            raise InputError("--data.labels names classes, and a regression task has none")
        check_label_names(labels)
        super().__init__(**kwargs)
        self.resolve_header(text_column, text_pair_column, label_column)
        # where each split's rows come from (files, a directory, a hub dataset), read untokenized
        self.inputs = Splits(
            self.source,
            self.files,
            self.hub_splits,
            text_column,
            text_pair_column,
            label_column,
            self.header,
            self.val_fraction,
            self.seed,
            self.max_train_examples,
        )
        self.text_column, self.text_pair_column, self.label_column = text_column, text_pair_column, label_column
        self.task, self.labels, self.label_offset = task, labels, label_offset
        self.max_length = max_length

    def configure_tokenizer(self, tok: PreTrainedTokenizerBase) -> None:
        """GPT-style tokenizers without a pad token pad with EOS."""
        if tok.pad_token is None:
            if tok.eos_token is None:
                raise InputError(f"tokenizer '{self.tokenizer_spec}' has neither a pad nor an EOS token to pad with")
            tok.pad_token = tok.eos_token

    # -- labels -------------------------------------------------------------------------------------------------
    @property
    def label_names(self) -> list[str] | None:
        """Class names in id order (None for regression): `labels`, else inferred from the training split."""
        if self.task == "regression":
            return None
        if self.labels:
            return list(self.labels)
        return self._entry("train")[1]["label_names"]

    @property
    def num_labels(self) -> int:
        return 1 if self.task == "regression" else len(self.label_names)

    def measure(self) -> dict:
        """The class names (`label_names`: read from the training split when not given)."""
        names = self.label_names
        return {"label_names": tuple(names) if names is not None else None}

    @property
    def contract(self) -> DataContract:
        """What the classifier needs: tokenizer, task, label names (`measure`) and the longest example."""
        facts = self.measured()
        return DataContract(self.tokenizer, max_length=self.max_length, task=self.task, **facts)

    # -- tokenized splits ---------------------------------------------------------------------------------------
    def _names(self, split: str) -> list[str] | None:
        """The class names a split's labels are encoded with (the training split infers its own)."""
        return None if split == "train" or self.task == "regression" else self.label_names

    def cache_parts(self, split: str) -> tuple:
        return (
            self.text_column,
            self.text_pair_column,
            self.label_column,
            self.task,
            self.labels,
            self._names(split),
            self.label_offset,
            self.max_length,
        )

    def summary(self, meta: dict) -> str:
        return f"{meta['rows']} examples ({meta['truncated']} truncated to {self.max_length} tokens)"

    def encode(self, split: str) -> tuple[datasets.Dataset, dict]:
        rows, names, where = self.inputs.rows(split), self._names(split), self.inputs.describe(split)
        meta: dict = {"rows": len(rows["text"]), "labelled": "label" in rows}
        if split == "train" and self.task == "classification":
            names = list(self.labels) if self.labels else label_vocabulary(rows["label"], where, rows.get("where"))
            meta["label_names"] = names
        columns: dict[str, list] = {}
        if "label" in rows:
            targets = encode_labels(rows["label"], names, self.task, self.label_offset, where, rows.get("where"))
            # all rows labelled, or (test, predict: e.g. GLUE's test files, label -1) none; none is refused by test
            meta["labelled"] = labelled(
                rows["label"], targets, self.task, split in ("test", "predict"), where, rows.get("where")
            )
            if meta["labelled"]:
                columns["labels"] = targets
                if names:
                    meta["label_counts"] = {n: targets.count(i) for i, n in enumerate(names)}
        enc: dict[str, list] = {}
        pairs = rows.get("text_pair")
        for start in range(0, len(rows["text"]), 2000):
            stop = start + 2000
            part = self.tokenizer(
                rows["text"][start:stop],
                pairs[start:stop] if pairs else None,
                truncation=True,
                max_length=self.max_length,
            )
            for k, v in part.items():
                enc.setdefault(k, []).extend(v)
        meta["truncated"] = sum(1 for ids in enc["input_ids"] if len(ids) >= self.max_length)
        columns = {**enc, **columns, "example_id": list(range(len(rows["text"])))}
        if split == "predict":  # predictions are written next to their text
            columns.update({k: rows[k] for k in ("text", "text_pair") if k in rows})
        return datasets.Dataset.from_dict(columns), meta

    # -- Lightning hooks ----------------------------------------------------------------------------------------
    def check_split(self, split: str, meta: dict) -> None:
        if split == "test" and not meta["labelled"]:
            raise InputError(
                f"the test split ({self.inputs.describe('test')}) has no labels: `test` needs "
                f"them; use `predict` for unlabelled texts, or pass a labelled --data.test_file"
            )

    def collate(self, train: bool) -> DynamicPadding:
        return DynamicPadding(self.tokenizer)
