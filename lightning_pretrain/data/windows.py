"""Accumulation-exact token windows: every training batch carries `window_tokens`, the label tokens of all batches
of its gradient-accumulation window on this rank, so a model can normalise its loss over the whole accumulated
(and, summed over ranks, global) batch instead of averaging per-batch means (transformers #35438).

Windows are the epoch's batches k*j .. k*j+k-1 (k = `accumulate_grad_batches`), as Lightning steps; the last may be
shorter, also where `limit_train_batches` ends the epoch. The totals come from per-example counts known up front, in
the sampler's order: `TokenWindows` is a resumable DistributedSampler (each rank its share) that pairs each index
with its batch's window total, `Windowed` fetches rows by those pairs, and `WindowCollate` adds the tensor.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler, default_collate

from lightning_pretrain import compat


def training_windows(trainer) -> dict:
    """`stateful_loader`'s window options for a DataModule's trainer: accumulate_grad_batches (1 outside a Trainer)
    and limit_train_batches (where Lightning ends an epoch early)."""
    return {
        "accumulate": int(getattr(trainer, "accumulate_grad_batches", 1) or 1),
        "limit_batches": getattr(trainer, "limit_train_batches", None),
    }


def window_totals(batch_tokens: Sequence[int], accumulate: int, run: int | None = None) -> np.ndarray:
    """For each batch, the sum of `batch_tokens` over its window: consecutive groups of `accumulate` batches from
    the first, cut where the epoch ends after `run` batches (the batches past it form windows of their own)."""
    tokens = np.asarray(batch_tokens, dtype=np.int64)
    n = len(tokens)
    run = n if run is None else min(run, n)
    b = np.arange(n)
    window = np.where(b < run, b // accumulate, -(-run // accumulate) + (b - run) // accumulate)
    sums = np.zeros(window.max() + 1 if n else 0, dtype=np.int64)
    np.add.at(sums, window, tokens)
    return sums[window]


class TokenWindows(DistributedSampler):
    """This rank's share of the epoch (shuffled by seed and epoch, as `DistributedSampler`), each index yielded as
    `(index, window_tokens of its batch)`. Resumes as torchdata's `StatefulDistributedSampler` does, with the same
    state (`{"yielded": n}`) kept here: the order is a function of seed and epoch, so the window totals after a
    resume are those of the uninterrupted epoch."""

    def __init__(
        self,
        dataset: Dataset,
        token_counts: Sequence[int],
        batch_size: int,
        accumulate: int = 1,
        *,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        limit_batches: int | float | None = None,
    ):
        super().__init__(dataset, num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed, drop_last=drop_last)
        if len(token_counts) != len(dataset):
            raise ValueError(f"token_counts has {len(token_counts)} entries for {len(dataset)} examples")
        if accumulate < 1:
            raise ValueError(f"accumulate must be at least 1, got {accumulate}")
        self.token_counts = np.asarray(token_counts, dtype=np.int64)
        self.batch_size, self.accumulate, self.limit_batches = batch_size, accumulate, limit_batches
        self.batch_drop_last = drop_last  # the loader's BatchSampler drops a short last batch exactly then
        self.yielded, self.resume_at = 0, None  # indices yielded this epoch; where a loaded state resumes it

    def state_dict(self) -> dict[str, Any]:
        return {"yielded": self.yielded}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("yielded", -1) < 0:
            raise ValueError(f"not a TokenWindows state: {state}")
        self.resume_at = state["yielded"]

    def _totals(self, order: list[int]) -> list[int]:
        """Window totals of the epoch's batches, as its BatchSampler will cut `order` into them."""
        n = len(order) // self.batch_size if self.batch_drop_last else -(-len(order) // self.batch_size)
        counts = self.token_counts[np.asarray(order[: n * self.batch_size], dtype=np.int64)]
        per_batch = np.add.reduceat(counts, np.arange(0, len(counts), self.batch_size)) if len(counts) else counts
        return window_totals(per_batch, self.accumulate, compat.train_batches_run(n, self.limit_batches)).tolist()

    def __iter__(self):
        self.yielded, self.resume_at = self.resume_at or 0, None  # resuming: skip what the epoch had yielded
        order = list(super().__iter__())  # the whole epoch's share: windows look ahead
        totals = self._totals(order)
        for position in range(self.yielded, len(order)):
            self.yielded += 1
            batch = position // self.batch_size
            yield order[position], totals[batch] if batch < len(totals) else 0  # (a dropped short batch: unused)


class Windowed(Dataset):
    """`dataset` indexed by `TokenWindows`' pairs: a batch of pairs fetches its rows and passes on the window total.
    Plain indices (a sampler Lightning put in its place: `--trainer.overfit_batches`) fetch rows with no total, and
    the loss falls back to normalising over each batch."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int] | int):
        return self.dataset[key[0] if isinstance(key, tuple) else key]

    def __getitems__(self, keys: list[tuple[int, int]] | list[int]) -> tuple[list, int | None]:
        windowed = bool(keys) and isinstance(keys[0], tuple)
        indices = [int(k[0]) if windowed else int(k) for k in keys]
        fetch = getattr(self.dataset, "__getitems__", None)
        rows = fetch(indices) if fetch else [self.dataset[i] for i in indices]
        return rows, int(keys[0][1]) if windowed else None


class WindowCollate:
    """Collate the rows with `collate_fn` (a mapping per batch) and add `window_tokens`, a 0-dim long tensor."""

    def __init__(self, collate_fn: Callable | None = None):
        self.collate_fn = collate_fn or default_collate

    def __call__(self, fetched: tuple[list, int | None]) -> dict:
        rows, total = fetched
        batch = self.collate_fn(rows)
        if not isinstance(batch, Mapping):
            raise TypeError(f"window_tokens need batches that are mappings, got {type(batch).__name__}")
        return batch if total is None else {**batch, "window_tokens": torch.tensor(total, dtype=torch.long)}
