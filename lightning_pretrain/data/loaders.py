"""The one stateful loader every DataModule uses (exact mid-epoch resume, also under DDP), and dynamic padding."""

from __future__ import annotations

import atexit
import multiprocessing
import multiprocessing.util  # noqa: F401 (registers its exit handler before ours)
import signal
import time
from collections.abc import Callable, Sequence

import torch
from torch.utils.data import Dataset, IterableDataset, Sampler
from torchdata.stateful_dataloader import StatefulDataLoader
from torchdata.stateful_dataloader.sampler import StatefulDistributedSampler
from transformers import DataCollatorWithPadding, PreTrainedTokenizerBase

from lightning_pretrain.data.windows import TokenWindows, WindowCollate, Windowed
from lightning_pretrain.errors import InputError


def stateful_loader(
    dataset: Dataset | IterableDataset,
    batch_size: int,
    *,
    shuffle: bool = False,
    num_workers: int = 0,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    collate_fn: Callable | None = None,
    drop_last: bool = False,
    token_counts: Sequence[int] | None = None,
    accumulate: int = 1,
    limit_batches: int | float | None = None,
    sampler: Sampler | None = None,
) -> StatefulDataLoader:
    """Batches of `dataset`, this rank's share of them under DDP.

    StatefulDataLoader: Lightning checkpoints its position, so a mid-epoch resume continues with the exact next batch
    instead of restarting the epoch (a plain DataLoader cannot). An IterableDataset shards and orders itself: no
    sampler, no shuffle.
    `token_counts` (label tokens per example) adds `window_tokens` to every batch (a mapping): the tokens of its
    window of `accumulate` batches on this rank (data/windows.py; `windows.training_windows(trainer)` gives
    `accumulate` and `limit_batches`). Its sampler is then a `TokenWindows` also on one device, shuffled by seed and
    epoch (Lightning sets the epoch). A `sampler` of the caller's (a data mixture's) orders the rows instead,
    already for this rank: it must be resumable (`state_dict`) for an exact resume.
    """
    iterable = isinstance(dataset, IterableDataset)
    if (iterable or shuffle or token_counts is not None) and sampler is not None:
        raise ValueError("a sampler orders a map-style dataset by itself: no shuffle, token_counts or iterable")
    if iterable and shuffle:
        raise ValueError("an IterableDataset orders itself: shuffle must be False")
    if sampler is None and token_counts is not None:
        if iterable:
            raise ValueError("window_tokens need a map-style dataset: an IterableDataset has no known order")
        sampler = TokenWindows(
            dataset,
            token_counts,
            batch_size,
            accumulate,
            rank=rank,
            world_size=world_size,
            shuffle=shuffle,
            seed=seed,
            drop_last=drop_last,
            limit_batches=limit_batches,
        )
        dataset, collate_fn = Windowed(dataset), WindowCollate(collate_fn)
    elif sampler is None and world_size > 1 and not iterable:
        # Our own resumable DistributedSampler: given torchdata's RandomSampler, Lightning would wrap it in a
        # DistributedSamplerWrapper whose inner order depends on how often it was iterated, which no checkpoint holds
        sampler = StatefulDistributedSampler(
            dataset, num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed, drop_last=drop_last
        )
    loader = StatefulDataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle if sampler is None and not iterable else None,
        sampler=sampler,
        drop_last=drop_last,
        collate_fn=collate_fn,
        num_workers=num_workers,
        worker_init_fn=_ignore_sigterm if num_workers > 0 else None,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=num_workers > 0,
        generator=torch.Generator().manual_seed(seed),
    )
    # Exact resume: loaders draw the workers' base seed from a generator of their own, never from the global RNG
    # (a resumed run skips the sanity check and starts its validation workers later, which would shift dropout's
    # random stream), and not from the shuffling sampler's either: sharing it, torchdata's saved sampler state
    # misses those draws and the epoch *after* a mid-epoch resume would be shuffled differently.
    loader.generator = torch.Generator().manual_seed(seed + 1)
    return loader


def _ignore_sigterm(worker_id: int) -> None:
    # SLURM and Kubernetes signal every process of a job: the training process stops at the next batch boundary
    # with a checkpoint (callbacks/guard.py), which a worker dying first would turn into a crash mid-step. Workers
    # still end with their loader (done event), when the training process is gone (torch's parent watchdog), or
    # when it exits (`_end_workers`).
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


@atexit.register  # after multiprocessing.util's own exit handler (imported above), so it runs before it
def _end_workers(grace: float = 0.5) -> None:
    """At exit, multiprocessing SIGTERMs the daemonic children (loader workers) and joins them with no time limit;
    workers that ignore SIGTERM would keep a process that exits with its loader still open (an error raised
    mid-epoch, whose traceback holds the loader) waiting forever. Those still running after `grace` are killed."""
    # torch's loader SIGCHLD handler would raise inside `join` on the workers killed here, leaving the others
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    children = [p for p in multiprocessing.active_children() if p.daemon]
    for p in children:
        p.terminate()
    deadline = time.monotonic() + grace
    for p in children:
        p.join(max(0.0, deadline - time.monotonic()))
        if p.is_alive():
            p.kill()
            p.join(5)


def check_loader_options(num_workers: int, seed: int | None = None, **counts: int | None) -> None:
    """Refuse a batch size (or another count) below 1, a negative number of workers or a seed outside numpy's range
    (every shuffle and split draws from it), in one line naming it."""
    if seed is not None and not 0 <= seed < 2**32:
        raise InputError(f"--data.seed must be in [0, 2**32 - 1], got {seed}")
    for name, count in counts.items():
        if count is not None and count < 1:
            raise InputError(f"{name} must be at least 1, got {count}")
    if num_workers < 0:
        raise InputError(f"num_workers must be 0 (load in the training process) or more, got {num_workers}")


def check_val_interval(trainer, loader, what: str) -> None:
    """An integer `val_check_interval` beyond the batches of an epoch fails in Lightning with a traceback (and when
    allowed, with `check_val_every_n_epoch=None`, validation waits for later epochs): refuse it here in one line."""
    interval = getattr(trainer, "val_check_interval", None)
    per_epoch = getattr(trainer, "check_val_every_n_epoch", None) is not None
    if not isinstance(interval, int) or isinstance(interval, bool) or not per_epoch:
        return
    if not getattr(trainer, "limit_val_batches", 1):  # validation is off
        return
    batches, limit = len(loader), getattr(trainer, "limit_train_batches", None)
    if isinstance(limit, int) and not isinstance(limit, bool):
        batches = min(batches, limit)
    elif isinstance(limit, float):
        batches = int(batches * limit)
    if 0 < batches < interval:
        raise InputError(
            f"val_check_interval={interval} is beyond the {batches} training batches of {what}, so "
            f"validation would never run: set --trainer.val_check_interval {batches} or less, or a "
            f"fraction of the epoch (e.g. 0.5)"
        )


def rank_and_world(trainer) -> tuple[int, int]:
    """(global rank, world size) of the trainer a DataModule is attached to; (0, 1) outside a Trainer."""
    return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)


class DynamicPadding:
    """Pad each batch to its own longest sequence (not to max_length); text fields travel along as lists."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase):
        self.pad = DataCollatorWithPadding(tokenizer, return_tensors="pt")

    def __call__(self, rows: list[dict]) -> dict:
        rows = [dict(r) for r in rows]
        texts = {k: [r.pop(k) for r in rows] for k in ("text", "text_pair") if k in rows[0]}
        return {**self.pad(rows), **texts}
