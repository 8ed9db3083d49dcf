"""Tagged sentences from files: CoNLL-style columns (whitespace-separated, the word first, the tag in a chosen
column, a blank line between sentences, `-DOCSTART-` lines skipped) or JSON lines of `{"tokens": [...], "tags":
[...]}` (a `{"text": ...}` record is split at whitespace, for predict); IOB1 tags become IOB2. `TagSplits` locates
each split (a file, or a directory's train/dev/test or CoNLL-2003 eng.train/eng.testa/eng.testb file) and refuses bad
input in one line naming the file and line.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal

import torch

from lightning_pretrain.data.finetune.splits import holdout
from lightning_pretrain.data.sources import records
from lightning_pretrain.data.sources.text import content_digest
from lightning_pretrain.errors import InputError

Scheme = Literal["iob1", "iob2", "auto"]
# file names that name a split in a directory (CoNLL-2003 ships eng.train / eng.testa / eng.testb)
SPLIT_NAMES = {
    "train": ("train", "eng.train"),
    "val": ("dev", "validation", "valid", "val", "eng.testa"),
    "test": ("test", "eng.testb"),
}
SUFFIXES = ("", ".txt", ".conll", ".iob", ".bio", ".tsv", ".jsonl", ".json")
TAG = re.compile(r"^(?:O|[BI]-\S+)$")


def is_json(path: str) -> bool:
    return Path(path).suffix.lower() in (".jsonl", ".json")


def read_columns(path: str, tag_column: int, want_tags: bool) -> dict[str, list]:
    """Sentences of a column file: {'words', 'tags' (when the file has a tag column and `want_tags`), 'at'} where
    `at` holds each word's place ("line 17") for messages. Every line must have as many columns as the first; a file
    of one column holds words only (untagged)."""
    records.check_encoding(path)
    out: dict[str, list] = {"words": [], "tags": [], "at": []}
    width = first = None
    words: list[str] = []
    tags: list[str] = []
    at: list[str] = []

    def flush():
        if words:
            out["words"].append(list(words))
            out["tags"].append(list(tags))
            out["at"].append(list(at))
            words.clear(), tags.clear(), at.clear()

    with open(path, encoding="utf-8-sig") as fh:
        for n, line in enumerate(fh, 1):
            cols = line.split()
            if not cols or cols[0] == "-DOCSTART-":
                flush()
                continue
            if width is None:
                width, first = len(cols), n
                if width > 1 and not (-width <= tag_column < width and tag_column % width != 0):
                    raise InputError(
                        f"{path} line {n}: {width} columns, so --data.tag_column {tag_column} is not a "
                        f"tag column (0-based, negative from the end; column 0 is the word)"
                    )
            elif len(cols) != width:
                raise InputError(
                    f"{path} line {n}: {len(cols)} column{'s' if len(cols) != 1 else ''} where line "
                    f"{first} has {width} (columns are separated by whitespace: a word cannot hold a "
                    f"space, and every line of a sentence needs every column)"
                )
            words.append(cols[0])
            tags.append(cols[tag_column] if width > 1 else "")
            at.append(f"line {n}")
    flush()
    if not out["words"]:
        raise InputError(
            f"{path} holds no sentence (no line with a word; sentences are lines of 'word ... tag' "
            f"columns separated by blank lines)"
        )
    if width == 1 or not want_tags:
        del out["tags"]
    return out


def read_json(
    path: str, tokens_field: str, tags_field: str, want_tags: bool, labels: list[str] | None
) -> dict[str, list]:
    """Sentences of a JSON lines file: {'words', 'tags' (when tagged), 'at', and 'text' / 'spans' for records
    given as text}. Integer tags are ids into `labels`."""
    out: dict[str, list] = {"words": [], "tags": [], "at": [], "text": [], "spans": []}
    tagged = None
    for where, record in records.records(path)[1]:
        place = f"{path} {where}"
        words = record.get(tokens_field)
        if words is None and isinstance(record.get("text"), str) and not want_tags:
            matches = list(re.finditer(r"\S+", record["text"]))
            words = [m.group() for m in matches]
            out["text"].append(record["text"])
            out["spans"].append([list(m.span()) for m in matches])
        elif not isinstance(words, list) or not words:
            raise InputError(
                f"{place}: {tokens_field!r} is {records.describe(words) if words != [] else 'empty'}; "
                f"each record needs a non-empty list of words (set --data.tokens_field)"
            )
        for i, w in enumerate(words):
            if not isinstance(w, str) or not w.strip():
                raise InputError(f"{place}: {tokens_field}[{i}] is {records.describe(w)}, not a word")
        has_tags = tags_field in record and want_tags
        if tagged is not None and has_tags != tagged:
            raise InputError(
                f"{place}: {'a' if has_tags else 'no'} {tags_field!r} field, unlike the records "
                f"before it: tag every sentence or none"
            )
        tagged = has_tags
        if has_tags:
            out["tags"].append(_tags(record[tags_field], len(words), labels, place, tags_field))
        out["words"].append(words)
        out["at"].append([f"{where} ({tokens_field}[{i}])" for i in range(len(words))])
    if not tagged:
        del out["tags"]
    if not out["text"]:
        del out["text"], out["spans"]
    elif len(out["text"]) != len(out["words"]):
        raise InputError(f"{path}: give every record as {tokens_field!r} or every record as 'text', not a mixture")
    return out


def _tags(tags, n: int, labels: list[str] | None, place: str, field: str) -> list[str]:
    if not isinstance(tags, list) or len(tags) != n:
        what = f"{len(tags)} tags" if isinstance(tags, list) else records.describe(tags)
        raise InputError(f"{place}: {field!r} is {what} for {n} words; give one tag per word")
    out = []
    for i, t in enumerate(tags):
        if isinstance(t, int) and not isinstance(t, bool):
            if not labels or not 0 <= t < len(labels):
                raise InputError(
                    f"{place}: {field}[{i}] is the id {t}; integer tags index --data.labels "
                    f"({'unset' if not labels else f'{len(labels)} names'})"
                )
            t = labels[t]
        if not isinstance(t, str):
            raise InputError(f"{place}: {field}[{i}] is {records.describe(t)}, not a tag")
        out.append(t)
    return out


def to_iob2(tags: list[str], at: list[str], scheme: Scheme, where: str) -> tuple[list[str], bool]:
    """`tags` in IOB2, and whether any I- tag began an entity (IOB1). IOB1 (CoNLL-2003's files) writes I-X also for
    an entity's first word and B-X only where two entities of one type touch; IOB2 begins every entity with B-X.
    scheme 'iob2' refuses an I- tag that begins an entity; 'iob1' and 'auto' turn it into B- (a no-op on IOB2)."""
    out, iob1, prev = [], False, "O"
    for i, t in enumerate(tags):
        if not TAG.match(t):
            raise InputError(
                f"{where} {at[i]}: tag {t!r} is not O, B-TYPE or I-TYPE (IOB tags; is --data.tag_column "
                f"the tag column?)"
            )
        if t.startswith("I-") and prev[2:] != t[2:]:
            if scheme == "iob2":
                raise InputError(
                    f"{where} {at[i]}: {t} follows {prev}, so the tags are not IOB2 (every entity "
                    f"begins with B-); for IOB1 files such as CoNLL-2003's set --data.scheme iob1 or auto"
                )
            iob1, t = True, "B-" + t[2:]
        out.append(t)
        prev = t
    return out, iob1


def tag_vocabulary(tags: list[list[str]]) -> list[str]:
    """IOB2 tag names in id order: O, then B- and I- of each entity type, types sorted."""
    types = sorted({t[2:] for sent in tags for t in sent if t != "O"})
    return ["O"] + [f"{p}-{k}" for k in types for p in "BI"]


class TagSplits:
    """The sentences of 'train', 'val', 'test' and 'predict', from `files` (one per split) or `source` (a
    directory); the held-out validation sentences and the seeded training subset."""

    def __init__(
        self,
        source: str | None,
        files: dict[str, str | None],
        tag_column: int,
        tokens_field: str,
        tags_field: str,
        scheme: Scheme,
        labels: list[str] | None,
        val_fraction: float,
        seed: int,
        max_train_examples: int | None,
    ):
        if source and not os.path.isdir(os.path.expanduser(source)):
            raise InputError(
                f"--data.source {source} is not a directory: token tagging reads local files (CoNLL "
                f"columns or JSON lines); give a directory or --data.train_file / --data.val_file"
            )
        self.source, self.files, self.tag_column, self.scheme = source, files, tag_column, scheme
        self.tokens_field, self.tags_field, self.labels = tokens_field, tags_field, labels
        self.val_fraction, self.seed, self.max_train_examples = val_fraction, seed, max_train_examples

    def source_of(self, split: str) -> str | None:
        """The file of `split`, or None when there is none."""
        if self.files.get(split):
            path = os.path.abspath(os.path.expanduser(self.files[split]))
            if not os.path.isfile(path):
                raise InputError(f"--data.{split}_file: file not found: {self.files[split]}")
            return path
        if split == "predict":
            return self.source_of("test")
        if not self.source:
            return None
        found = (
            os.path.join(os.path.expanduser(self.source), name + suffix)
            for name in SPLIT_NAMES[split]
            for suffix in SUFFIXES
        )
        return next((os.path.abspath(p) for p in found if os.path.isfile(p)), None)

    def held_out(self) -> bool:
        return self.source_of("val") is None and self.source_of("train") is not None

    def _required(self, split: str) -> str:
        path = self.source_of(split)
        if path is None:
            raise InputError(
                f"no {split} data: pass --data.{split}_file or a --data.source directory with a {split} "
                f"file ({', '.join(SPLIT_NAMES.get(split, ('test',)))})"
            )
        return path

    def identity(self, split: str) -> str:
        if split == "val" and self.held_out():
            return f"holdout:{self.identity('train_all')}:{self.val_fraction}"
        path = self._required("train" if split == "train_all" else split)
        suffix = f":minus-holdout:{self.val_fraction}" if split == "train" and self.held_out() else ""
        return f"file:{Path(path).name}:{content_digest(path)}{suffix}"

    def describe(self, split: str) -> str:
        if split == "val" and self.held_out():
            return f"held-out validation sentences of {self.source_of('train')}"
        return self.source_of(split) or split

    def rows(self, split: str) -> dict[str, list]:
        """{'words', 'tags' (IOB2, when tagged), 'at', 'text' and 'spans' (text records)} of one split, and 'iob1':
        whether IOB1 tags were converted."""
        if split == "val" and self.held_out():
            return holdout(
                self.rows("train_all"), "val", self.val_fraction, self.seed, self.describe("train"), "sentence"
            )
        path = self._required("train" if split == "train_all" else split)
        want_tags = split != "predict"
        rows = (
            read_json(path, self.tokens_field, self.tags_field, want_tags, self.labels)
            if is_json(path)
            else read_columns(path, self.tag_column, want_tags)
        )
        if "tags" in rows:
            converted = [to_iob2(t, a, self.scheme, path) for t, a in zip(rows["tags"], rows["at"])]
            rows["tags"] = [t for t, _ in converted]
            rows["iob1"] = [iob1 for _, iob1 in converted]
        if split == "train" and self.held_out():
            rows = holdout(rows, "train", self.val_fraction, self.seed, path, "sentence")
        if split == "train" and self.max_train_examples and self.max_train_examples < len(rows["words"]):
            pick = torch.randperm(len(rows["words"]), generator=torch.Generator().manual_seed(self.seed))
            rows = {k: [v[i] for i in sorted(pick[: self.max_train_examples].tolist())] for k, v in rows.items()}
        return rows
