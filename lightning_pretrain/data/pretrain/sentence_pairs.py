"""`SentencePairCorpus`: BERT's pretraining pairs ``[CLS] A [SEP] B [SEP]`` for next-sentence (NSP) or ALBERT's
sentence-order (SOP) prediction, built from the document (blank-line) and sentence boundaries of the corpus.

A pair is two runs of whole sentences of one document, A then B, within `seq_len - 3` tokens
(`pair_drawing.make_pairs`, after google-research/bert's `create_instances_from_document`). Half are negatives
(label 1): for ``nsp`` B comes from another document, for ``sop`` A and B are swapped. Pairs are drawn once per seed
and cached as token offsets; the MLM masks on top are drawn per batch by the objective. Each item: ``input_ids``,
``token_type_ids``, ``attention_mask`` and ``pair_label``, padded to `seq_len`. Where and why this departs from
BERT's script: docs/design/data.md.
"""

from __future__ import annotations

import logging
import random
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from torchdata.stateful_dataloader import StatefulDataLoader
from transformers import PreTrainedTokenizerBase

from lightning_pretrain.data import cache, encoding
from lightning_pretrain.data import tokenizers as toks
from lightning_pretrain.data.contract import DataContract
from lightning_pretrain.data.loaders import check_val_interval, rank_and_world, stateful_loader
from lightning_pretrain.data.pretrain.corpus import PretrainCorpus
from lightning_pretrain.data.pretrain.pair_drawing import Task, make_pairs, tokenize_documents
from lightning_pretrain.errors import InputError

log = logging.getLogger(__name__)

FORMAT_VERSION = 3  # bump when the pair rule or the files change: old cache entries stop matching


class PairDataset(Dataset):
    """Pairs as padded model inputs, assembled per batch from the token array and the pair offsets."""

    def __init__(self, tokens: np.ndarray, pairs: np.ndarray, seq_len: int, cls_id: int, sep_id: int, pad_id: int):
        self.tokens, self.pairs, self.seq_len = tokens, pairs, seq_len
        self.cls_id, self.sep_id, self.pad_id = cls_id, sep_id, pad_id

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return self.__getitems__([i])[0]

    def __getitems__(self, idx: list[int]) -> list[dict[str, torch.Tensor]]:
        a0, a1, b0, b1, label = (c[:, None] for c in np.asarray(self.pairs[np.asarray(idx)]).T)
        la, lb = a1 - a0, b1 - b0
        pos = np.arange(self.seq_len)[None, :]
        in_a = (pos >= 1) & (pos < 1 + la)
        in_b = (pos >= 2 + la) & (pos < 2 + la + lb)
        src = np.where(in_a, a0 + pos - 1, np.where(in_b, b0 + pos - 2 - la, 0))
        ids = np.where(in_a | in_b, self.tokens[src].astype(np.int64), self.pad_id)
        rows = np.arange(len(ids))
        ids[:, 0] = self.cls_id
        ids[rows, 1 + la[:, 0]] = self.sep_id
        ids[rows, 2 + la[:, 0] + lb[:, 0]] = self.sep_id
        batch = {
            "input_ids": torch.from_numpy(ids),
            "token_type_ids": torch.from_numpy(((pos >= 2 + la) & (pos < 3 + la + lb)).astype(np.int64)),
            "attention_mask": torch.from_numpy(np.broadcast_to(pos < 3 + la + lb, ids.shape).astype(np.int64)),
            "pair_label": torch.from_numpy(label[:, 0].copy()),
        }
        return [dict(zip(batch, row)) for row in zip(*batch.values())]


class SentencePairCorpus(PretrainCorpus):
    """Sentence pairs for NSP / SOP: PretrainCorpus's options (an example is a padded pair; one source, no mixture)
    plus the pair task."""

    def __init__(
        self,
        task: Task = "nsp",
        short_seq_prob: float = 0.1,
        dupe_factor: int = 1,
        tokenizer: str = "wordpiece",
        **kwargs,
    ):
        """
        Args:
            task: 'nsp' (BERT: B is the next segment or one from another document) or 'sop' (ALBERT: the two
                consecutive segments in order or swapped). Label 1 marks the negative half.
            short_seq_prob: probability that a document's pairs target a random length below seq_len (BERT: 0.1),
                so the model also sees short inputs.
            dupe_factor: independent draws of pairs over the training text (BERT: 10): more variety per epoch of a
                small corpus, at the cost of 40 bytes per pair of cache.
            tokenizer: 'wordpiece', 'bpe' or 'unigram' to train one on the training text, or a local tokenizer
                directory / hub id of a pretrained fast tokenizer; it needs CLS, SEP and PAD tokens.
        """
        super().__init__(tokenizer=tokenizer, **kwargs)
        if self.mixed:
            raise InputError("sentence pairs are drawn from one source: pass --data.source, not --data.sources")
        if task not in ("nsp", "sop"):
            raise InputError(f"task must be 'nsp' or 'sop', got {task!r}")
        if self.seq_len < 5:
            raise InputError(f"seq_len must be at least 5 for [CLS] A [SEP] B [SEP], got {self.seq_len}")
        if not 0.0 <= short_seq_prob <= 1.0 or dupe_factor < 1:
            raise InputError("need 0 <= short_seq_prob <= 1 and dupe_factor >= 1")
        self.task, self.short_seq_prob, self.dupe_factor = task, short_seq_prob, dupe_factor
        self.train_pairs: PairDataset | None = None
        self.val_pairs: PairDataset | None = None

    @property
    def cache_entry(self) -> Path:
        key = cache.cache_key(
            "pairs",
            FORMAT_VERSION,
            *self.parts[0].identity,
            toks.fingerprint(self.tokenizer),
            self.seq_len,
            self.task,
            self.short_seq_prob,
            self.dupe_factor,
            self.seed,
        )
        return self.cache_root / "pairs" / key

    def describe(self, tokenizer: PreTrainedTokenizerBase) -> DataContract:
        """The tokenizer, the pair length and the pair task."""
        return DataContract(tokenizer, seq_len=self.seq_len, task=self.task)

    def _special_ids(self) -> tuple[int, int, int]:
        tok = self.tokenizer
        ids = (tok.cls_token_id, tok.sep_token_id, tok.pad_token_id)
        if None in ids:
            raise InputError(
                "sentence pairs need a tokenizer with CLS, SEP and PAD tokens ('wordpiece', 'bpe' or "
                "'unigram' have them)"
            )
        return ids

    def prepare_data(self) -> None:
        """Tokenize both splits by sentence and draw the pairs once (rank 0); later runs reuse the cache."""
        if self.predicting:  # prompts, no pairs (PretrainCorpus.predict_dataloader)
            return
        self._special_ids()

        def build(tmp: Path) -> dict:
            meta = {"seq_len": self.seq_len, "task": self.task, "splits": {}}
            for n, split in enumerate(("train", "val")):
                t0 = time.perf_counter()
                docs = tokenize_documents(
                    self.tokenizer,
                    self.parts[0].texts(split),
                    encoding.Progress(f"tokenizing the {split} split", items="sentences"),
                )
                draws = self.dupe_factor if split == "train" else 1
                pairs = np.concatenate(
                    [
                        make_pairs(
                            docs,
                            self.seq_len - 3,
                            self.task,
                            random.Random(self.seed * 1000 + 100 * n + k),
                            self.short_seq_prob,
                        )
                        for k in range(draws)
                    ]
                )
                if len(pairs) == 0:
                    raise InputError(
                        f"the {split} split yields no sentence pair (it needs documents of two or more "
                        f"sentences{' in at least two documents' if self.task == 'nsp' else ''})"
                    )
                np.save(tmp / f"{split}.tokens.npy", docs.tokens)
                np.save(tmp / f"{split}.pairs.npy", pairs)
                meta["splits"][split] = {
                    "n_pairs": len(pairs),
                    "n_docs": docs.n_docs,
                    "n_sentences": len(docs.sentence_starts) - 1,
                    "n_tokens": len(docs.tokens),
                    "negative_fraction": round(float(pairs[:, 4].mean()), 4),
                    "seconds": round(time.perf_counter() - t0, 3),
                }
            return meta

        entry, reused = cache.get_or_build(self.cache_entry, build, self._entry_is_complete)
        log.info("%s %s pairs at %s", "reusing" if reused else "built", self.task, entry)

    def _entry_is_complete(self, entry: Path, meta: dict) -> bool:
        try:
            return meta["seq_len"] == self.seq_len and all(
                np.load(entry / f"{s}.pairs.npy", mmap_mode="r").shape == (info["n_pairs"], 5)
                and np.load(entry / f"{s}.tokens.npy", mmap_mode="r").shape == (info["n_tokens"],)
                for s, info in meta["splits"].items()
            )
        except (KeyError, OSError, ValueError):
            return False

    def setup(self, stage: str | None = None) -> None:
        if stage == "predict":
            return
        entry = self.cache_entry
        if cache.lookup(entry, self._entry_is_complete) is None:
            self.prepare_data()
        for split in ("train", "val"):
            dataset = PairDataset(
                np.load(entry / f"{split}.tokens.npy", mmap_mode="r"),
                np.load(entry / f"{split}.pairs.npy", mmap_mode="r"),
                self.seq_len,
                *self._special_ids(),
            )
            setattr(self, f"{split}_pairs", dataset)

    def _pair_loader(self, dataset: PairDataset, shuffle: bool) -> StatefulDataLoader:
        rank, world_size = rank_and_world(self.trainer)
        return stateful_loader(
            dataset,
            self.batch_size,
            shuffle=shuffle,
            drop_last=shuffle,
            num_workers=self.num_workers,
            seed=self.seed,
            rank=rank,
            world_size=world_size,
        )

    def train_dataloader(self):
        if len(self.train_pairs) < self.batch_size:
            raise InputError(
                f"the training split has {len(self.train_pairs)} sentence pairs, fewer than one batch of "
                f"{self.batch_size}; lower batch_size, raise dupe_factor or use more text"
            )
        loader = self._pair_loader(self.train_pairs, shuffle=True)
        check_val_interval(self.trainer, loader, f"an epoch ({len(self.train_pairs)} sentence pairs)")
        return loader

    def val_dataloader(self):
        return self._pair_loader(self.val_pairs, shuffle=False)
