"""`TokenTagging`: words with one IOB tag each (named entities) -> sub-token batches for a token classifier.

Splits are CoNLL-style column files or JSON lines (`data/finetune/tag_files.py`; IOB1 becomes IOB2). A word's tag id
goes to its first sub-token, the word's other sub-tokens get -100 (no loss, no score). Sentences longer than
`max_length` tokens are truncated, counted and warned about; every word's tag also travels as `tags`, so the entity
metrics count every word of the file: one cut off (or without any sub-token) counts as predicted O. Each split is
tokenized once into a hash-keyed cache entry; predict splits keep the text and each word's character span.
"""

from __future__ import annotations

import logging

import datasets
import torch
from transformers import DataCollatorForTokenClassification, PreTrainedTokenizerBase
from transformers.trainer_pt_utils import DistributedLengthGroupedSampler

from lightning_pretrain.data.contract import IGNORE_INDEX, DataContract
from lightning_pretrain.data.finetune.base import FineTuneData
from lightning_pretrain.data.finetune.labels import check_label_names
from lightning_pretrain.data.finetune.tag_files import TAG, Scheme, TagSplits, tag_vocabulary
from lightning_pretrain.data.loaders import rank_and_world, stateful_loader
from lightning_pretrain.errors import InputError

log = logging.getLogger(__name__)


class TokenTagging(FineTuneData):
    cache_name = "token_tags"
    no_data_hint = (
        "pass --data.source (a directory of train/dev/test or eng.train/eng.testa files) or "
        "--data.train_file / --data.val_file"
    )
    tokenizer_hint = " (the CLI uses --model.backbone by default)"

    def __init__(
        self,
        tag_column: int = -1,
        tokens_field: str = "tokens",
        tags_field: str = "tags",
        scheme: Scheme = "auto",
        labels: list[str] | None = None,
        max_length: int = 256,
        group_by_length: bool = False,
        **kwargs,
    ):
        """
        Args:
            tag_column: column of the tag in column files, 0-based (column 0 is the word), negative from the end;
                default the last (CoNLL-2003: `word POS chunk NER`).
            tokens_field: JSON lines: the field holding a sentence's list of words.
            tags_field: JSON lines: the field holding its list of tags (names, or integer ids into `labels`).
            scheme: the files' tag scheme: 'iob1' (CoNLL-2003: I-X also begins an entity) is converted to IOB2,
                'iob2' is checked (an entity that begins with I- is refused), 'auto' converts what needs it.
            labels: IOB2 tag names in id order (e.g. [O, B-PER, I-PER, ...]); a tag outside them is refused.
                Default: O, then B- and I- of each entity type of the training split, types sorted.
            max_length: longest tokenized sentence, specials included; longer ones are truncated (counted and
                warned about; their cut words count as predicted O). Batches are padded to their longest sentence.
            group_by_length: training batches of sentences of similar length (transformers' length-grouped
                sampler: shuffled, then sorted within groups of 50 batches), so less padding is computed; CoNLL-2003
                pads 2.6x the real tokens in shuffled batches of 32.
        """
        if max_length < 3:
            raise InputError(f"max_length must be at least 3, got {max_length}")
        check_label_names(labels)
        bad = next((name for name in labels or () if not TAG.match(str(name))), None)
        if bad is not None:
            raise InputError(f"--data.labels: {bad!r} is not O, B-TYPE or I-TYPE; name the IOB2 tags")
        super().__init__(**kwargs)
        if self.header is not None or any(self.hub_splits.values()):
            raise InputError(
                "token tagging reads local files: --data.header and --data.{train,val,test}_split "
                "do not apply (column files have no header line; hub datasets are not read)"
            )
        self.labels = [str(n) for n in labels] if labels else None
        self.inputs = TagSplits(
            self.source,
            self.files,
            tag_column,
            tokens_field,
            tags_field,
            scheme,
            self.labels,
            self.val_fraction,
            self.seed,
            self.max_train_examples,
        )
        self.tag_column, self.tokens_field, self.tags_field = tag_column, tokens_field, tags_field
        self.scheme, self.max_length, self.group_by_length = scheme, max_length, group_by_length

    # -- labels -------------------------------------------------------------------------------------------------
    @property
    def label_names(self) -> list[str]:
        """Tag names in id order: `labels`, else inferred from the training split."""
        return list(self.labels) if self.labels else self._entry("train")[1]["label_names"]

    @property
    def contract(self) -> DataContract:
        return DataContract(
            self.tokenizer, max_length=self.max_length, task="token_classification", label_names=tuple(self.label_names)
        )

    # -- tokenized splits ---------------------------------------------------------------------------------------
    def cache_parts(self, split: str) -> tuple:
        return (
            self.tag_column,
            self.tokens_field,
            self.tags_field,
            self.scheme,
            self.labels,
            None if split in ("train", "predict") else self.label_names,
            self.max_length,
        )

    def summary(self, meta: dict) -> str:
        return (
            f"{meta['rows']} sentences, {meta['words']} words ({meta['truncated']} sentences truncated to "
            f"{self.max_length} tokens, {meta['unseen']} words without a sub-token)"
            + (f"; IOB1 tags converted to IOB2 in {meta['iob1']} sentences" if meta.get("iob1") else "")
        )

    def encode(self, split: str) -> tuple[datasets.Dataset, dict]:
        rows, where = self.inputs.rows(split), self.inputs.describe(split)
        n = len(rows["words"])
        meta: dict = {
            "rows": n,
            "words": sum(map(len, rows["words"])),
            "labelled": "tags" in rows,
            "iob1": sum(rows.get("iob1", ())),
        }
        if split in ("train", "val") and not meta["labelled"]:
            raise InputError(
                f"{where} has no tags: {split} sentences need them (a column file needs a tag column; "
                f"JSON lines a {self.tags_field!r} field)"
            )
        columns: dict[str, list] = {"example_id": list(range(n))}
        if meta["labelled"]:
            names = self.labels or (tag_vocabulary(rows["tags"]) if split == "train" else self.label_names)
            meta["label_names"] = names
            columns["tags"] = self._tag_ids(rows, names, where)
        enc: dict[str, list] = {"input_ids": [], "attention_mask": [], "word_ids": []}
        if "token_type_ids" in self.tokenizer.model_input_names:
            enc["token_type_ids"] = []
        for start in range(0, n, 2000):
            try:
                part = self.tokenizer(
                    rows["words"][start : start + 2000],
                    is_split_into_words=True,
                    truncation=True,
                    max_length=self.max_length,
                )
            except ValueError as e:  # e.g. a byte-level BPE tokenizer loaded without add_prefix_space
                raise InputError(f"tokenizer '{self.tokenizer_spec}' cannot encode split words: {e}") from e
            word_ids = [[-1 if w is None else w for w in part.word_ids(i)] for i in range(len(part["input_ids"]))]
            for k, values in enc.items():
                values.extend(word_ids if k == "word_ids" else part[k])
        seen = [len(set(w) - {-1}) for w in enc["word_ids"]]
        meta["unseen"] = sum(len(words) - s for words, s in zip(rows["words"], seen))
        meta["truncated"] = sum(
            1
            for ids, words, s in zip(enc["input_ids"], rows["words"], seen)
            if len(ids) >= self.max_length and s < len(words)
        )
        if meta["labelled"]:
            columns["labels"] = [first_subtoken_labels(w, t) for w, t in zip(enc["word_ids"], columns["tags"])]
        if split == "predict":  # entities are written as character spans of the text
            texts = rows.get("text") or [" ".join(words) for words in rows["words"]]
            columns.update(text=texts, spans=rows.get("spans") or [word_spans(words) for words in rows["words"]])
        columns = {**enc, **columns}
        if split in ("val", "test"):  # scored in length order (scores do not depend on it): batches pad little
            order = sorted(range(n), key=lambda i: len(columns["input_ids"][i]))
            columns = {k: [v[i] for i in order] for k, v in columns.items()}
        return datasets.Dataset.from_dict(columns), meta

    def _tag_ids(self, rows: dict[str, list], names: list[str], where: str) -> list[list[int]]:
        index = {name: i for i, name in enumerate(names)}
        out = []
        for tags, at in zip(rows["tags"], rows["at"]):
            missing = next((i for i, t in enumerate(tags) if t not in index), None)
            if missing is not None:
                given = "--data.labels" if self.labels else "the training split's tags"
                raise InputError(
                    f"{where} {at[missing]}: tag {tags[missing]!r} (as IOB2) is not one of {given} "
                    f"{names}{'' if self.labels else '; name every tag with --data.labels'}"
                )
            out.append([index[t] for t in tags])
        return out

    # -- Lightning hooks ----------------------------------------------------------------------------------------
    def check_split(self, split: str, meta: dict) -> None:
        if split == "test" and not meta["labelled"]:
            raise InputError(
                f"the test split ({self.inputs.describe('test')}) has no tags: `test` needs them; use "
                f"`predict` for untagged sentences"
            )
        if meta["truncated"] or meta["unseen"]:
            log.warning(
                "%s split: %d of %d sentences are longer than max_length=%d tokens and were truncated; %d "
                "words have no sub-token (scored and predicted as O; raise --data.max_length)",
                split,
                meta["truncated"],
                meta["rows"],
                self.max_length,
                meta["unseen"],
            )

    def collate(self, train: bool) -> TagPadding:
        return TagPadding(self.tokenizer)

    def train_dataloader(self):
        if not self.group_by_length:
            return super().train_dataloader()
        rows = self.splits["train"]
        rank, world_size = rank_and_world(self.trainer)
        # its order is a function of (seed, epoch) alone (Lightning sets the epoch), so the stateful loader resumes
        # mid-epoch by replaying it; a DistributedSampler, so Lightning keeps it under DDP (each rank its share)
        sampler = DistributedLengthGroupedSampler(
            self.batch_size,
            lengths=[len(ids) for ids in rows["input_ids"]],
            num_replicas=world_size,
            rank=rank,
            seed=self.seed,
        )
        return stateful_loader(
            rows,
            self.batch_size,
            num_workers=self.num_workers,
            seed=self.seed,
            collate_fn=self.collate(True),
            sampler=sampler,
        )


def first_subtoken_labels(word_ids: list[int], tag_ids: list[int]) -> list[int]:
    """Per token: the tag id of the word it begins, else -100 (specials, a word's later sub-tokens)."""
    out, prev = [], -1
    for w in word_ids:
        out.append(tag_ids[w] if w >= 0 and w != prev else IGNORE_INDEX)
        prev = w
    return out


def word_spans(words: list[str]) -> list[list[int]]:
    """[start, end) character spans of `words` in `' '.join(words)`."""
    spans, pos = [], 0
    for w in words:
        spans.append([pos, pos + len(w)])
        pos += len(w) + 1
    return spans


class TagPadding:
    """Pads inputs (pad id), `labels` (-100) and `word_ids` (-1) to the batch's longest sentence; the word-level
    `tags`, `text` and `spans` travel along as lists."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase):
        self.pad = DataCollatorForTokenClassification(tokenizer, return_tensors="pt")
        self.left = tokenizer.padding_side == "left"

    def __call__(self, rows: list[dict]) -> dict:
        rows = [dict(r) for r in rows]
        extras = {k: [r.pop(k) for r in rows] for k in ("word_ids", "tags", "text", "spans") if k in rows[0]}
        batch = self.pad(rows)
        length = batch["input_ids"].shape[1]
        fill = [[-1] * (length - len(w)) for w in extras["word_ids"]]
        batch["word_ids"] = torch.tensor([f + w if self.left else w + f for w, f in zip(extras.pop("word_ids"), fill)])
        return {**batch, **extras}
