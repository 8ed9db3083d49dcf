"""`PretrainCorpus`: raw text in, batches of packed token blocks out (and, for `predict`, the untokenized prompts of
`predict_file`: sources/prompts.py). Each source (one, or the several of a weighted mixture) is a `CachedSource`: its
documents split into train / val and packed once into a cache entry of its own. It knows nothing of objectives."""

from __future__ import annotations

import functools
import logging
import time
from functools import cached_property
from pathlib import Path

import numpy as np
from torch.utils.data import ConcatDataset
from torchdata.stateful_dataloader import StatefulDataLoader
from transformers import PreTrainedTokenizerBase

from lightning_pretrain.data import cache, encoding
from lightning_pretrain.data import tokenizers as toks
from lightning_pretrain.data.loaders import check_val_interval, rank_and_world, stateful_loader
from lightning_pretrain.data.pretrain import blocks
from lightning_pretrain.data.pretrain.base import PretrainData
from lightning_pretrain.data.pretrain.mixture import MixtureBlocks, MixtureSampler, run_length
from lightning_pretrain.data.sources.text import TextSource
from lightning_pretrain.errors import InputError

log = logging.getLogger(__name__)


class CachedSource:
    """One source of a `PretrainCorpus`: its documents split into train / val (the shared `val_source`, else a
    seeded `val_fraction` of its own), their identity, and their blocks in the cache (`prepare`, then `open`)."""

    def __init__(
        self,
        spec: str,
        source: TextSource,
        val_spec: str | None,
        val_source: TextSource | None,
        val_fraction: float,
        seed: int,
        cache_root: Path,
    ):
        self.spec, self.source, self.val_spec, self.val_source = spec, source, val_spec, val_source
        self.val_fraction, self.seed, self.cache_root = val_fraction, seed, cache_root
        self.train_blocks: np.ndarray | None = None
        self.val_blocks: np.ndarray | None = None

    @cached_property
    def splits(self):
        """{'train': Dataset, 'val': Dataset} of documents (loaded only on a cache miss)."""
        with cache.rooted(self.cache_root):  # file digests are remembered under this cache
            return self._load_splits()

    def _load_splits(self):
        ds = self.source.load().filter(lambda b: [bool(t and t.strip()) for t in b["text"]], batched=True)
        if len(ds) == 0:
            raise InputError(f"corpus '{self.spec}' is empty (no non-blank text)")
        if self.val_source is not None:
            val = self.val_source.load().filter(lambda b: [bool(t and t.strip()) for t in b["text"]], batched=True)
            if len(val) == 0:
                raise InputError(f"validation corpus '{self.val_spec}' is empty (no non-blank text)")
            return {"train": ds, "val": val}
        if len(ds) < 2:
            raise InputError(
                f"corpus '{self.spec}' has a single document: nothing to hold out for validation; pass "
                f"--data.val_source"
            )
        split = ds.train_test_split(test_size=self.val_fraction, seed=self.seed, shuffle=True)
        return {"train": split["train"], "val": split["test"]}

    def texts(self, split: str, batch: int = 1000):
        """The texts of `split`, in batches."""
        for rows in self.splits[split].iter(batch_size=batch):
            yield rows["text"]

    @cached_property
    def identity(self) -> list[str]:
        # a local source's identity hashes every byte of it: once per process, not once per cache lookup
        with cache.rooted(self.cache_root):  # file digests are remembered under this cache
            val = self.val_source.identity() if self.val_source else f"holdout:{self.val_fraction}:{self.seed}"
            return [self.source.identity(), val]

    def entry(self, tokenizer: PreTrainedTokenizerBase, seq_len: int) -> Path:
        key = cache.cache_key("blocks", blocks.FORMAT_VERSION, *self.identity, toks.fingerprint(tokenizer), seq_len)
        return self.cache_root / "blocks" / key

    def prepare(self, tokenizer: PreTrainedTokenizerBase, seq_len: int) -> None:
        """Tokenize and pack both splits into the cache, unless a complete entry is there."""
        sep, dtype = toks.document_separator(tokenizer), blocks.token_dtype(len(tokenizer))

        def build(tmp: Path) -> dict:
            meta = {"seq_len": seq_len, "dtype": dtype.str, "splits": {}}
            for split in ("train", "val"):
                t0 = time.perf_counter()
                progress = encoding.Progress(f"tokenizing the {split} split")
                ids = encoding.encode_batches(tokenizer, self.texts(split), progress)
                n = blocks.write_blocks(tmp / f"{split}.bin", ids, sep, seq_len, dtype)
                meta["splits"][split] = {"n_blocks": n, "seconds": round(time.perf_counter() - t0, 3)}
                if n == 0:
                    raise InputError(
                        f"the {split} split has fewer than seq_len={seq_len} tokens: it yields no "
                        f"block; use a larger corpus, a smaller seq_len"
                        f"{' or a larger val_fraction' if split == 'val' else ''}"
                    )
            return meta

        entry, reused = cache.get_or_build(self.entry(tokenizer, seq_len), build, functools.partial(complete, seq_len))
        log.info("%s token blocks at %s", "reusing" if reused else "built", entry)

    def open(self, tokenizer: PreTrainedTokenizerBase, seq_len: int) -> None:
        """Map both splits' blocks (`train_blocks`, `val_blocks`), built here when `prepare` ran elsewhere."""
        entry = self.entry(tokenizer, seq_len)
        meta = cache.lookup(entry, functools.partial(complete, seq_len))
        if meta is None:  # prepare_data is skipped when Trainer(prepare_data_per_node=False) on non-zero ranks
            self.prepare(tokenizer, seq_len)
            meta = cache.read_meta(entry)
        for split in ("train", "val"):
            arr = blocks.open_blocks(entry / f"{split}.bin", meta["splits"][split]["n_blocks"], seq_len, meta["dtype"])
            setattr(self, f"{split}_blocks", arr)


def complete(seq_len: int, entry: Path, meta: dict) -> bool:
    """Whether a blocks entry holds every block its metadata promises."""
    itemsize = np.dtype(meta.get("dtype", "<u2")).itemsize
    try:
        return meta["seq_len"] == seq_len and all(
            (entry / f"{s}.bin").stat().st_size == info["n_blocks"] * seq_len * itemsize
            for s, info in meta["splits"].items()
        )
    except (KeyError, OSError):
        return False


class PretrainCorpus(PretrainData):
    def __init__(self, val_fraction: float = 0.05, **kwargs):
        """
        Args:
            val_fraction: fraction of documents held out for validation when `val_source` is unset (of each source,
                in a mixture).
        """
        super().__init__(**kwargs)
        if not 0.0 < val_fraction < 1.0 and self.val_source is None:
            raise InputError(f"val_fraction must be in (0, 1), got {val_fraction}")
        self.val_fraction = val_fraction
        self.parts = [
            CachedSource(spec, text, self.val_spec, self.val_source, val_fraction, self.seed, self.cache_root)
            for spec, text in zip(self.specs, self.inputs)
        ]

    def training_texts(self):
        return (t for part in self.parts for batch in part.texts("train") for t in batch)

    def training_identity(self) -> list[str]:
        return [i for part in self.parts for i in part.identity]

    @property
    def cache_entry(self) -> Path:
        """The cache entry of the (first) source's blocks."""
        return self.parts[0].entry(self.tokenizer, self.seq_len)

    @property
    def train_blocks(self) -> np.ndarray | None:
        """The training blocks of a single source (a mixture's: each source's `parts[i].train_blocks`)."""
        return None if self.mixed else self.parts[0].train_blocks

    @property
    def val_blocks(self) -> np.ndarray | None:
        """The validation blocks of a single source (a mixture's: each source's `parts[i].val_blocks`)."""
        return None if self.mixed else self.parts[0].val_blocks

    def prepare_data(self) -> None:
        """Tokenize and pack both splits once (rank 0); later runs with the same settings reuse the cache."""
        if self.predicting:  # prompts are read as they are, no block is needed
            return
        for part in self.parts:
            part.prepare(self.tokenizer, self.seq_len)

    def setup(self, stage: str | None = None) -> None:
        if stage == "predict":
            return
        for part in self.parts:
            part.open(self.tokenizer, self.seq_len)

    # -- loaders ------------------------------------------------------------------------------------------------
    def _loader(self, dataset, shuffle: bool, **kwargs) -> StatefulDataLoader:
        rank, world_size = rank_and_world(self.trainer)
        return stateful_loader(
            dataset,
            self.batch_size,
            shuffle=shuffle,
            drop_last=shuffle,
            collate_fn=self.collate,
            num_workers=self.num_workers,
            seed=self.seed,
            rank=rank,
            world_size=world_size,
            **kwargs,
        )

    def train_dataloader(self):
        if self.mixed:
            return self._mixture_loader()
        train = self.train_blocks
        if len(train) < self.batch_size:
            raise InputError(
                f"the training split has {len(train)} blocks of {self.seq_len} tokens, fewer than one "
                f"batch of {self.batch_size}; lower batch_size or seq_len"
            )
        loader = self._loader(blocks.BlockDataset(train), shuffle=True)
        check_val_interval(self.trainer, loader, f"an epoch ({len(train)} blocks of {self.seq_len} tokens)")
        return loader

    def _mixture_loader(self) -> StatefulDataLoader:
        rank, world_size = rank_and_world(self.trainer)
        dataset = MixtureBlocks([p.train_blocks for p in self.parts])
        sampler = MixtureSampler(
            dataset,
            self.weights,
            self.batch_size,
            seed=self.seed,
            rank=rank,
            world_size=world_size,
            exhaustion=self.exhaustion,
            names=self.names,
            length=run_length(self.trainer, self.batch_size, self.exhaustion),
        )
        loader = stateful_loader(
            dataset,
            self.batch_size,
            sampler=sampler,
            drop_last=True,
            collate_fn=self.collate,
            num_workers=self.num_workers,
            seed=self.seed,
        )
        check_val_interval(self.trainer, loader, "this mixture run")
        return loader

    def val_dataloader(self):
        if not self.mixed:
            return self._loader(blocks.BlockDataset(self.val_blocks), shuffle=False)
        # every source's held-out blocks; a shared val_source once
        held_out = [blocks.BlockDataset(p.val_blocks) for p in (self.parts[:1] if self.val_source else self.parts)]
        return self._loader(ConcatDataset(held_out), shuffle=False)

    def source_epochs(self, counts, loader=None) -> list[float]:
        return [c / len(p.train_blocks) for c, p in zip(counts or [0] * len(self.parts), self.parts)]

    def exhausted_source(self, loader) -> int | None:
        sampler = getattr(loader, "sampler", None)
        return sampler.ran_out if isinstance(sampler, MixtureSampler) else None
