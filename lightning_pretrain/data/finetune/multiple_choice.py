"""`MultipleChoiceData`: a context and N candidate choices per row (COPA, ARC, PIQA, SWAG) with the index (or letter)
of the right one -> N (context, choice) pairs per example, padded per batch to `(batch, N, length)`.

The choices are N columns (COPA's choice1/choice2, SWAG's ending0..3) or one column holding a list (ARC's choices).
Every row of every split has the same N; a ragged row, an empty choice or a label beyond N is refused naming its
line. Splits come from files, a directory or the hub as for classification (`data/finetune/splits.py`).
"""

from __future__ import annotations

from dataclasses import dataclass

import datasets
import torch
from transformers import DataCollatorForMultipleChoice, PreTrainedTokenizerBase

from lightning_pretrain.data.contract import DataContract
from lightning_pretrain.data.finetune.base import FineTuneData
from lightning_pretrain.data.finetune.labels import _is_int, _short, is_missing, labelled
from lightning_pretrain.data.finetune.splits import Splits
from lightning_pretrain.data.sources import tables, validate
from lightning_pretrain.data.sources.records import describe
from lightning_pretrain.data.sources.tables import Column
from lightning_pretrain.errors import InputError

TASK = "multiple_choice"


def choice_index(value, n: int, offset: int, at: str, columns: tuple = ()) -> int:
    """The 0-based choice a label names: an integer id (minus `offset`), a letter (A = 0) or the name of a choice
    column (a hub ClassLabel's name, e.g. super_glue COPA's 'choice2'); -1 when unlabelled."""
    if is_missing(value):
        return -1
    text = value.strip() if isinstance(value, str) else value
    if len(columns) > 1 and text in [str(c) for c in columns]:
        index, shown = [str(c) for c in columns].index(text), f"column {text!r}"
    elif isinstance(text, str) and len(text) == 1 and text.isalpha():
        index, shown = ord(text.upper()) - ord("A"), f"letter {text!r}"
    elif _is_int(value):
        index, shown = int(float(value)) - offset, f"id {_short(value)}"
    else:
        raise InputError(f"{at}: label {_short(value)} is neither a choice id nor a letter (A, B, ...)")
    if not 0 <= index < n:
        hint = "; 1-based ids? set --data.label_offset 1" if index == n and offset == 0 and _is_int(value) else ""
        raise InputError(
            f"{at}: label {shown} is out of range: the row has {n} choices (ids {offset}.."
            f"{offset + n - 1} or letters A..{chr(ord('A') + n - 1)}{hint})"
        )
    return index


@dataclass
class ChoiceSplits(Splits):
    """`Splits` whose rows are a context, its N choices (and an optional text put before each choice) and a label."""

    choice_columns: tuple = ("choices",)
    choice_prefix_column: Column | None = None

    def rows(self, split: str) -> dict[str, list]:
        """{'context': [...], 'choices': [[N texts], ...], 'label': [...] (when labelled), 'where': [...]}."""
        if split == "val" and self.held_out():
            return self._holdout(self.rows("train_all"), "val")
        src = self._required("train" if split == "train_all" else split)
        if src.is_lines:
            raise InputError(
                f"{src.spec}: a .txt file has no choices; give a table with the context and choice columns"
            )
        where, table = src.describe(), src.read(self.header)

        def column(ref, option: str) -> str:
            found = tables.resolve_column(ref, table.columns)
            if found is None:
                raise InputError(
                    f"column {ref!r} not found in {where}; available: {', '.join(table.columns)} (set "
                    f"--data.{option} by name or 0-based index)"
                )
            return found

        blank_ok = split == "predict"
        context = column(self.text_column, "context_column")
        rows = {"context": validate.texts(table.values(context), context, where, table.where, blank_ok)}
        choices = self._choices(table, [column(c, "choice_columns") for c in self.choice_columns], where)
        if self.choice_prefix_column is not None:
            name = column(self.choice_prefix_column, "choice_prefix_column")
            prefix = validate.texts(table.values(name), name, where, table.where, True)
            choices = [[f"{p} {c}".strip() for c in row] for p, row in zip(prefix, choices)]
        rows["choices"] = choices
        label = tables.resolve_column(self.label_column, table.columns)
        if label is None and split in ("train", "train_all", "val"):
            raise InputError(
                f"label column {self.label_column!r} not found in {where}; available: "
                f"{', '.join(table.columns)} (set --data.label_column by name or 0-based index)"
            )
        if label is not None:
            rows["label"] = list(table.values(label))
        rows["where"] = list(table.where)
        if split == "train" and self.held_out():
            rows = self._holdout(rows, "train")
        if split == "train" and self.max_train_examples and self.max_train_examples < len(rows["context"]):
            pick = torch.randperm(len(rows["context"]), generator=torch.Generator().manual_seed(self.seed))
            rows = {k: [v[i] for i in sorted(pick[: self.max_train_examples].tolist())] for k, v in rows.items()}
        return rows

    @staticmethod
    def _choices(table, names: list[str], where: str) -> list[list[str]]:
        """Each row's choices: one column per choice, or one column of lists; the same number in every row."""
        if len(names) == 1:  # a list per row
            out = []
            for at, value in zip(table.where, table.values(names[0])):
                if not isinstance(value, (list, tuple)):
                    raise InputError(
                        f"{where} {at}: the choices column {names[0]!r} is {describe(value)}, not a list "
                        f"of choices (name one column per choice in --data.choice_columns)"
                    )
                out.append([_choice(c, f"{names[0]}[{i}]", where, at) for i, c in enumerate(value)])
        else:
            columns = [table.values(name) for name in names]
            out = [
                [_choice(col[r], name, where, at) for col, name in zip(columns, names)]
                for r, at in enumerate(table.where)
            ]
        n = len(out[0])
        for at, row in zip(table.where, out):
            if len(row) != n:
                raise InputError(
                    f"{where} {at}: {len(row)} choices, but {table.where[0]} has {n}; every row needs "
                    f"the same number of choices"
                )
        if n < 2:
            raise InputError(f"{where}: {n} choice per row; multiple choice needs two or more")
        return out


def _choice(value, name: str, where: str, at: str) -> str:
    if not isinstance(value, str):
        raise InputError(f"{where} {at}: the choice {name!r} is {describe(value)}, not text")
    if not value.strip():
        raise InputError(f"{where} {at}: the choice {name!r} is empty; every choice needs its text")
    return value


class ChoicePadding:
    """`DataCollatorForMultipleChoice` (choices padded to the batch's longest) with the example ids and texts
    travelling along, and unlabelled batches (predict) allowed."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase):
        self.pad = DataCollatorForMultipleChoice(tokenizer, return_tensors="pt")

    def __call__(self, rows: list[dict]) -> dict:
        rows = [dict(r) for r in rows]
        texts = {k: [r.pop(k) for r in rows] for k in ("context", "choices") if k in rows[0]}
        ids = torch.tensor([r.pop("example_id") for r in rows])
        unlabelled = "labels" not in rows[0]
        for r in rows if unlabelled else ():
            r["labels"] = -1
        batch = self.pad(rows)
        if unlabelled:
            del batch["labels"]
        return {**batch, "example_id": ids, **texts}


class MultipleChoiceData(FineTuneData):
    cache_name = "multiple_choice"
    tokenizer_hint = " (the CLI uses --model.backbone by default)"

    def __init__(
        self,
        context_column: Column = "context",
        choice_columns: list[Column] | None = None,
        label_column: Column = "label",
        choice_prefix_column: Column | None = None,
        label_offset: int = 0,
        max_length: int = 128,
        **kwargs,
    ):
        """
        Args:
            context_column: column of the text every choice continues or answers (COPA's premise and question,
                ARC's question, PIQA's goal, SWAG's sent1).
            choice_columns: one column per choice (e.g. [choice1, choice2], [ending0, ending1, ending2, ending3]), or
                a single column holding each row's list of choices (default [choices]).
            label_column: column of the right choice: a 0-based id (see label_offset), a letter (A = the first) or
                the name of its choice column.
            choice_prefix_column: a column whose text goes before every choice (SWAG's sent2, the ending's start).
            label_offset: subtracted from integer labels, e.g. 1 for 1-based ids.
            max_length: longest tokenized (context, choice) pair (truncated longest-first); batches are padded only
                to their own longest pair.
        """
        if max_length < 2:
            raise InputError(f"max_length must be at least 2, got {max_length}")
        choice_columns = list(choice_columns or ["choices"])
        super().__init__(**kwargs)
        self.resolve_header(context_column, *choice_columns, label_column, choice_prefix_column)
        self.inputs = ChoiceSplits(
            self.source,
            self.files,
            self.hub_splits,
            context_column,
            None,
            label_column,
            self.header,
            self.val_fraction,
            self.seed,
            self.max_train_examples,
            choice_columns=tuple(choice_columns),
            choice_prefix_column=choice_prefix_column,
        )
        self.context_column, self.choice_columns, self.label_column = context_column, choice_columns, label_column
        self.choice_prefix_column, self.label_offset, self.max_length = choice_prefix_column, label_offset, max_length

    def configure_tokenizer(self, tok: PreTrainedTokenizerBase) -> None:
        if tok.pad_token is None:
            if tok.eos_token is None:
                raise InputError(f"tokenizer '{self.tokenizer_spec}' has neither a pad nor an EOS token to pad with")
            tok.pad_token = tok.eos_token

    def measure(self) -> dict:
        """N, the choices per row, of the first split there is (training, else validation, test, predict)."""
        split = next((s for s in ("train", "val", "test", "predict") if self.inputs.source_of(s) is not None), "train")
        return {"num_choices": self._entry(split)[1]["num_choices"]}

    @property
    def contract(self) -> DataContract:
        """What the multiple-choice model needs: tokenizer, the task, one label name per choice position ('0',
        '1', ...: `measure`) and the longest pair."""
        n = self.measured()["num_choices"]
        return DataContract(
            self.tokenizer, max_length=self.max_length, task=TASK, label_names=tuple(str(i) for i in range(n))
        )

    # -- tokenized splits ---------------------------------------------------------------------------------------
    def cache_parts(self, split: str) -> tuple:
        return (
            self.context_column,
            tuple(self.choice_columns),
            self.label_column,
            self.choice_prefix_column,
            self.label_offset,
            self.max_length,
        )

    def summary(self, meta: dict) -> str:
        return (
            f"{meta['rows']} examples of {meta['num_choices']} choices ({meta['truncated']} pairs truncated to "
            f"{self.max_length} tokens)"
        )

    def encode(self, split: str) -> tuple[datasets.Dataset, dict]:
        rows, where = self.inputs.rows(split), self.inputs.describe(split)
        n = len(rows["choices"][0])
        meta: dict = {"rows": len(rows["context"]), "num_choices": n, "labelled": "label" in rows}
        columns: dict[str, list] = {}
        if "label" in rows:
            targets = [
                choice_index(v, n, self.label_offset, f"{where} {at}", tuple(self.choice_columns))
                for v, at in zip(rows["label"], rows["where"])
            ]
            meta["labelled"] = labelled(
                rows["label"], targets, "classification", split in ("test", "predict"), where, rows["where"]
            )
            if meta["labelled"]:
                columns["labels"] = targets
        enc: dict[str, list] = {}
        for start in range(0, len(rows["context"]), 500):  # N pairs per row, tokenized flat, regrouped per row
            part = slice(start, start + 500)
            firsts = [c for c, choices in zip(rows["context"][part], rows["choices"][part]) for _ in choices]
            seconds = [choice for choices in rows["choices"][part] for choice in choices]
            out = self.tokenizer(firsts, seconds, truncation=True, max_length=self.max_length)
            for k, v in out.items():
                enc.setdefault(k, []).extend(v[i : i + n] for i in range(0, len(v), n))
        meta["truncated"] = sum(1 for row in enc["input_ids"] for ids in row if len(ids) >= self.max_length)
        columns = {**enc, **columns, "example_id": list(range(len(rows["context"])))}
        if split == "predict":  # predictions are written next to their texts
            columns.update(context=rows["context"], choices=rows["choices"])
        return datasets.Dataset.from_dict(columns), meta

    # -- Lightning hooks ----------------------------------------------------------------------------------------
    def check_split(self, split: str, meta: dict) -> None:
        if split == "test" and not meta["labelled"]:
            raise InputError(
                f"the test split ({self.inputs.describe('test')}) has no labels: `test` needs them; use "
                f"`predict` for unlabelled rows, or pass a labelled --data.test_file"
            )
        n = self.facts["num_choices"] if self.facts else self.measure()["num_choices"]
        if meta["num_choices"] != n:
            raise InputError(
                f"{self.inputs.describe(split)} has {meta['num_choices']} choices per row, but the model "
                f"was built for {n}; every split needs the same number of choices"
            )

    def collate(self, train: bool) -> ChoicePadding:
        return ChoicePadding(self.tokenizer)
