"""`SquadData`: extractive question answering from SQuAD-format JSON (SQuAD 1.1 and 2.0, TyDi QA GoldP, MLQA).

Contexts are cut into windows of `max_length` tokens (question first; neighbours share `doc_stride` context tokens:
the fast tokenizer's overflowing tokens and offset mapping). A training row is a window labelled with its answer's
first and last token, or token 0 ([CLS]) when there is no answer or the window does not hold all of it; an evaluation
row is a whole question (its windows, context-token character offsets, gold answers), so one batch holds all its best
span needs. Which input is refused and which only counted: `squad_json.read_squad`.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from itertools import groupby

import datasets
import torch
from torch.nn.utils.rnn import pad_sequence
from transformers import PreTrainedTokenizerBase

from lightning_pretrain.data.contract import DataContract
from lightning_pretrain.data.finetune.base import FineTuneData
from lightning_pretrain.data.finetune.splits import holdout
from lightning_pretrain.data.finetune.squad_json import read_squad
from lightning_pretrain.data.sources.text import content_digest
from lightning_pretrain.errors import InputError

WINDOW_KEYS = ("input_ids", "token_type_ids", "offsets", "start_positions", "end_positions")  # (labels last)


def span_labels(offsets: list[list[int]], text: str, start: int | None) -> tuple[int, int]:
    """First and last token of the answer `text` at character `start` (less surrounding whitespace) in a window whose
    context tokens have `offsets` (other tokens [-1, -1]); (0, 0), the no-answer position, when there is no answer
    (`start` None) or the window's context does not hold all of it."""
    context = [i for i, (s, _) in enumerate(offsets) if s >= 0]
    if start is None or not context:
        return 0, 0
    first, end = start + len(text) - len(text.lstrip()), start + len(text.rstrip())
    if offsets[context[0]][0] > first or offsets[context[-1]][1] < end:
        return 0, 0
    inside = [i for i in context if offsets[i][0] < end and offsets[i][1] > first]
    return (inside[0], inside[-1]) if inside else (0, 0)


@dataclass
class SquadFiles:
    """Each split's SQuAD JSON files (a list for training); with no validation file, `val_fraction` of the training
    questions."""

    files: dict
    val_fraction: float
    seed: int
    max_train_examples: int | None
    drop_bad_answers: bool

    def paths(self, split: str) -> list[str]:
        """The split's files ('train_all': training before the hold-out; predict: else test's); [] when none."""
        split = "train" if split == "train_all" else split
        given = self.files.get(split) or (self.files.get("test") if split == "predict" else None) or []
        paths = [os.path.abspath(os.path.expanduser(p)) for p in ([given] if isinstance(given, str) else given)]
        for p, path in zip([given] if isinstance(given, str) else given, paths):
            if not os.path.isfile(path):
                raise InputError(f"--data.{split}_file: file not found: {p}")
        return paths

    def held_out(self) -> bool:
        return not self.paths("val") and bool(self.paths("train"))

    def identity(self, split: str) -> str:  # changes whenever the split's questions could (a cache key part)
        if split == "val" and self.held_out():
            return f"holdout:{self.identity('train_all')}:{self.val_fraction}:{self.seed}"
        if not self.paths(split):
            raise InputError(f"no {split} data: pass --data.{split}_file")
        files = ",".join(f"{os.path.basename(p)}:{content_digest(p)}" for p in self.paths(split))
        return files + (
            f":minus-holdout:{self.val_fraction}:{self.seed}" if split == "train" and self.held_out() else ""
        )

    def rows(self, split: str) -> tuple[dict[str, list], Counter]:
        """The split's questions as columns (`read_squad`'s, pooled over its files) and their counts."""
        if split == "val" and self.held_out():
            cols, counts = self.rows("train_all")
            return holdout(cols, "val", self.val_fraction, self.seed, str(self.paths("train")), "question"), counts
        parts = [read_squad(path, split != "predict", self.drop_bad_answers) for path in self.paths(split)]
        cols = {k: [v for part, _ in parts for v in part[k]] for k in parts[0][0]}
        counts = sum((n for _, n in parts), Counter())
        if not cols["id"]:
            raise InputError(f"{' + '.join(self.paths(split))} holds no question")
        counts["duplicate_ids"] = len(cols["id"]) - len(set(cols["id"]))
        if split == "train" and self.held_out():
            cols = holdout(cols, "train", self.val_fraction, self.seed, str(self.paths("train")), "question")
        if split == "train" and self.max_train_examples and self.max_train_examples < len(cols["id"]):
            pick = torch.randperm(len(cols["id"]), generator=torch.Generator().manual_seed(self.seed))
            cols = {k: [v[i] for i in sorted(pick[: self.max_train_examples].tolist())] for k, v in cols.items()}
        return cols, counts


class SquadData(FineTuneData):
    cache_name = "squad"
    no_data_hint = "pass --data.train_file / --data.val_file (SQuAD JSON; several training files as a list)"
    tokenizer_hint = " (the CLI uses --model.backbone by default)"

    def __init__(
        self,
        train_file: str | list[str] | None = None,
        max_length: int = 384,
        doc_stride: int = 128,
        max_question_length: int = 64,
        drop_bad_answers: bool = False,
        **kwargs,
    ):
        """
        Args:
            train_file: a training SQuAD JSON file, or a list of them, pooled (e.g. TyDi QA GoldP's and SQuAD 2.0).
            max_length: tokens per window (question, context part and special tokens); a longer context becomes
                several overlapping windows. The eval batch size counts questions, each with all its windows.
            doc_stride: context tokens that consecutive windows of one context share (the tokenizer's `stride`).
            max_question_length: questions are cut to their first this many tokens (counted in the log).
            drop_bad_answers: drop answers that are blank or do not match the context at their answer_start (a
                question left without any is skipped), counted in the log, instead of refusing the file.
        """
        if max_question_length < 1 or doc_stride < 0:  # the rest is checked against the tokenizer's specials
            raise InputError(
                f"max_question_length must be >= 1 and doc_stride >= 0, got {max_question_length} and {doc_stride}"
            )
        super().__init__(train_file=train_file, **kwargs)
        if self.source:
            raise InputError(
                f"--data.source {self.source}: SquadData reads SQuAD JSON files; give them as "
                f"--data.train_file / val_file / test_file / predict_file"
            )
        self.inputs = SquadFiles(self.files, self.val_fraction, self.seed, self.max_train_examples, drop_bad_answers)
        self.max_length, self.doc_stride, self.max_question_length = max_length, doc_stride, max_question_length

    def configure_tokenizer(self, tok: PreTrainedTokenizerBase) -> None:
        """A window must hold the longest question, the specials and more context than the windows share."""
        room = self.max_length - self.max_question_length - tok.num_special_tokens_to_add(pair=True)
        if room <= self.doc_stride:
            raise InputError(
                f"max_length={self.max_length} leaves {room} context tokens after a question of "
                f"{self.max_question_length} tokens and the special tokens: doc_stride must be smaller"
            )
        if tok.pad_token is None:
            raise InputError(f"tokenizer '{self.tokenizer_spec}' has no pad token (QA needs an encoder's tokenizer)")

    @property
    def contract(self) -> DataContract:  # the window length, not the longest window: read without tokenizing
        return DataContract(self.tokenizer, max_length=self.max_length, task="question_answering")

    # -- tokenized splits ---------------------------------------------------------------------------------------
    def cache_parts(self, split: str) -> tuple:  # training rows are windows, the others questions
        return (
            split == "train",
            self.max_length,
            self.doc_stride,
            self.max_question_length,
            self.inputs.drop_bad_answers,
        )

    def summary(self, meta: dict) -> str:
        counted = (
            "unanswerable",
            "questions_cut",
            "answers_outside_every_window",
            "duplicate_ids",
            "dropped_answers",
            "skipped_questions",
        )
        extra = "".join(f", {meta[k]} {k.replace('_', ' ')}" for k in counted if meta.get(k))
        return f"{meta['rows']} questions in {meta['windows']} windows of <= {self.max_length} tokens{extra}"

    def encode(self, split: str) -> tuple[datasets.Dataset, dict]:
        rows, counts = self.inputs.rows(split)
        labelled, n = split != "predict", len(rows["id"])
        win, cut = self._windows(rows, labelled)
        unanswerable = sum(not a for a in rows["answers"]) if labelled else 0
        lost = n - unanswerable - len({ex for ex, s in zip(win["example"], win.get("start_positions", ())) if s})
        meta = {
            "rows": n,
            "windows": len(win["example"]),
            "questions_cut": cut,
            **counts,
            "unanswerable": unanswerable,
            "answers_outside_every_window": lost if labelled else 0,
        }
        if split == "train":
            return datasets.Dataset.from_dict({k: win[k] for k in WINDOW_KEYS if k in win and k != "offsets"}), meta
        by_question = [[w for w, _ in ws] for _, ws in groupby(enumerate(win["example"]), key=lambda w: w[1])]
        columns = {"example_id": list(range(n)), **{k: rows[k] for k in ("id", "question", "context", "answers")}}
        columns.update({k: [[win[k][w] for w in ws] for ws in by_question] for k in WINDOW_KEYS if k in win})
        return datasets.Dataset.from_dict(columns), meta

    def _windows(self, rows: dict[str, list], labelled: bool) -> tuple[dict[str, list], int]:
        """Every window of every question (its question's index, ids, token types, context-token offsets, and when
        `labelled` the first gold answer's tokens), and how many questions were cut to `max_question_length`."""
        win: dict[str, list] = {k: [] for k in ("example", "input_ids", "offsets")}
        cut, limit = 0, self.max_question_length
        for lo in range(0, len(rows["id"]), 1000):
            part = [q.lstrip() for q in rows["question"][lo : lo + 1000]]  # SQuAD has questions with leading spaces
            for i, offsets in enumerate(
                self.tokenizer(part, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
            ):
                if len(offsets) > limit:
                    part[i], cut = part[i][: offsets[limit - 1][1]], cut + 1
            enc = self.tokenizer(
                part,
                rows["context"][lo : lo + 1000],
                truncation="only_second",
                max_length=self.max_length,
                stride=self.doc_stride,
                return_overflowing_tokens=True,
                return_offsets_mapping=True,
            )
            for w, ex in enumerate(enc["overflow_to_sample_mapping"]):
                ex += lo
                offsets = [
                    list(o) if s == 1 else [-1, -1] for o, s in zip(enc["offset_mapping"][w], enc.sequence_ids(w))
                ]
                win["example"].append(ex)
                win["input_ids"].append(enc["input_ids"][w])
                win["offsets"].append(offsets)
                if "token_type_ids" in enc:  # (DistilBERT's take none)
                    win.setdefault("token_type_ids", []).append(enc["token_type_ids"][w])
                if labelled:
                    answer = (rows["answers"][ex][0], rows["starts"][ex][0]) if rows["answers"][ex] else ("", None)
                    for key, position in zip(("start_positions", "end_positions"), span_labels(offsets, *answer)):
                        win.setdefault(key, []).append(position)
        return win, cut

    def collate(self, train: bool) -> QABatch:
        return QABatch(self.tokenizer.pad_token_id)


class QABatch:
    """Training rows are windows; evaluation rows are questions, their windows flattened in order (`window_example`:
    each window's row; texts as lists). Windows are padded to the longest: the pad id, attention_mask 0, offsets -1."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, rows: list[dict]) -> dict:
        nested = not isinstance(rows[0]["input_ids"][0], int)
        windows = {
            k: [w for r in rows for w in r[k]] if nested else [r[k] for r in rows] for k in WINDOW_KEYS if k in rows[0]
        }

        def pad(k: str, v: int) -> torch.Tensor:
            return pad_sequence([torch.tensor(x) for x in windows[k]], batch_first=True, padding_value=v)

        batch = {"input_ids": pad("input_ids", self.pad_id)}
        if "token_type_ids" in windows:
            batch["token_type_ids"] = pad("token_type_ids", 0)
        batch["attention_mask"] = (pad("input_ids", -1) != -1).long()
        batch.update({k: torch.tensor(windows[k]) for k in ("start_positions", "end_positions") if k in windows})
        if nested:
            batch["offsets"] = pad("offsets", -1)
            batch["window_example"] = torch.tensor([i for i, r in enumerate(rows) for _ in r["input_ids"]])
            batch["example_id"] = torch.tensor([r["example_id"] for r in rows])
            batch.update({k: [r[k] for r in rows] for k in ("id", "question", "context", "answers")})
        return batch
