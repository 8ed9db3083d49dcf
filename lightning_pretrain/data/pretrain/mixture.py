"""Weighted data mixtures (`--data.sources`): batches drawn from several sources in given proportions.

Cached (PretrainCorpus): each source has its own cache entry and validation hold-out; `MixtureSampler` draws the
training order as a pure function of (seed, global sample index), so its resumable state is a few counts.
Streaming (StreamingCorpus): one `BlockStream` per source, interleaved per worker by seeded draws (mixture_stream.py).
A source that runs out is repeated (epochs per source) or ends the run (`exhaustion`). Rows are `(block, source)`;
`BlockCollate` turns them into a batch with `"mixture_source"`; the corpus publishes a `MixtureState` for the log
(callbacks/mixture.py). In detail: docs/design/data.md.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler

from lightning_pretrain.data.sources import text as srcs
from lightning_pretrain.errors import InputError

log = logging.getLogger(__name__)

Exhaustion = Literal["repeat", "stop"]
CHUNK = 4096  # draws per seeded generator: the source of sample i depends only on (seed, i // CHUNK)


@dataclass
class MixtureSource:
    """One entry of `--data.sources`.

    Args:
        source: any source form `--data.source` takes ('builtin', a file/directory/glob, a hub id).
        weight: its share of the training samples (> 0; the weights are normalised).
        name: short name in the logs (`train/mixture/<name>`); default: derived from `source`.
    """

    source: str
    weight: float = 1.0
    name: str | None = None


@dataclass(frozen=True)
class MixtureState:
    """What a data mixture publishes for its log (`PretrainData.mixture_state`, read by callbacks/mixture.py)."""

    names: tuple[str, ...]  # each source's name in the logs, in the order of the batches' `mixture_source` ids
    epochs: tuple[float, ...]  # each source's epochs so far (streaming: completed passes over this rank's shards)
    exhausted: str | None = None  # the source that ran out (exhaustion='stop'), None while none has


def default_name(spec: str) -> str:
    """'builtin' -> builtin; a path -> its file stem; a hub id 'org/set:cfg@split' -> set_cfg."""
    if spec == "builtin":
        return "builtin"
    if srcs.looks_local(spec):
        stem = Path(spec.rstrip("/*")).stem or "local"
    else:
        dataset_id, config, _ = srcs.parse_hub(spec)
        stem = dataset_id.split("/")[-1] + (f"_{config}" if config else "")
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", stem)


def check_sources(entries: Sequence[MixtureSource | dict]) -> tuple[list[MixtureSource], list[str], np.ndarray]:
    """(entries, unique names, normalised weights); bad input -> one InputError line."""
    entries = [e if isinstance(e, MixtureSource) else MixtureSource(**e) for e in entries]
    if not entries:
        raise InputError("data.sources is empty: give at least one {source, weight}")
    for e in entries:
        if not (e.weight > 0 and np.isfinite(e.weight)):
            raise InputError(f"data.sources: the weight of '{e.source}' must be a finite number > 0, got {e.weight}")
    given = [e.name for e in entries if e.name]
    dupes = sorted({n for n in given if given.count(n) > 1})
    if dupes:
        raise InputError(f"data.sources: duplicate name(s) {', '.join(dupes)}: give each source its own name")
    names, taken = [], set(given)
    for e in entries:  # defaults made unique with a suffix: two files both called train.txt
        name = e.name or default_name(e.source)
        if not e.name:
            base, k = name, 1
            while name in taken:
                k += 1
                name = f"{base}_{k}"
            taken.add(name)
        names.append(name)
    weights = np.array([e.weight for e in entries], dtype=np.float64)
    return entries, names, weights / weights.sum()


def draws(seed: int, weights: np.ndarray, chunk: int) -> np.ndarray:
    """Source index of the global samples chunk*CHUNK ... (chunk+1)*CHUNK - 1: seeded independent draws."""
    return np.random.default_rng([seed, 0, chunk]).choice(len(weights), size=CHUNK, p=weights)


def epoch_order(seed: int, source: int, epoch: int, size: int) -> np.ndarray:
    """The order of one source's samples in its `epoch`-th pass."""
    return np.random.default_rng([seed, 1, source, epoch]).permutation(size)


# -- cached corpora -----------------------------------------------------------------------------------------------
class MixtureBlocks(Dataset):
    """The blocks of all sources under one index (source k's rows follow source k-1's); a row is (block, source)."""

    def __init__(self, arrays: Sequence[np.ndarray]):
        self.arrays = list(arrays)
        self.offsets = np.concatenate([[0], np.cumsum([len(a) for a in self.arrays])])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def locate(self, i: int) -> tuple[int, int]:
        s = int(np.searchsorted(self.offsets, i, side="right")) - 1
        return s, int(i - self.offsets[s])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        s, j = self.locate(i)
        return torch.from_numpy(self.arrays[s][j].astype(np.int64)), s


class MixtureSampler(DistributedSampler):
    """This rank's share of the one global mixture sequence, endless ('repeat') or until a source runs out ('stop').

    Global sample i comes from source `draws(seed, i // CHUNK)[i % CHUNK]`; the c-th sample of source s is row
    `epoch_order(seed, s, c // size_s)[c % size_s]`. The sequence advances in rounds of `batch_size` x world
    samples, rank r taking positions r, r + world, ... of each: one batch per rank per round, so all ranks stop
    together. State: (next global index, per-source counts), at round boundaries, which are batch boundaries.
    A DistributedSampler (the class only) so Lightning does not wrap it in one of its own under DDP."""

    def __init__(
        self,
        dataset: MixtureBlocks,
        weights: np.ndarray,
        batch_size: int,
        *,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        exhaustion: Exhaustion = "repeat",
        names: Sequence[str] | None = None,
        length: int | None = None,
    ):
        super().__init__(dataset, num_replicas=world_size, rank=rank, shuffle=False, seed=seed)
        self.sizes = np.diff(dataset.offsets).astype(np.int64)
        self.offsets, self.weights, self.batch_size = dataset.offsets, np.asarray(weights, float), batch_size
        self.exhaustion, self.names = exhaustion, list(names or range(len(self.sizes)))
        self.round = batch_size * world_size
        self.index, self.counts, self.exhausted = 0, np.zeros(len(self.sizes), np.int64), None
        self._resume: dict | None = None
        self._draws: tuple[int, np.ndarray] | None = None
        self._orders: dict[tuple[int, int], np.ndarray] = {}
        self.length, self.stop_at, self.stops = length, None, None
        if exhaustion == "stop":
            rounds, self.stops = self.stop_rounds()
            self.stop_at = rounds * self.round  # the global index where the run ends
            self.length = rounds * batch_size if length is None else min(length, rounds * batch_size)

    def __len__(self) -> int:
        if self.length is None:
            raise TypeError("an endless mixture has no length")
        return self.length

    def sources_of(self, start: int, n: int) -> np.ndarray:
        """Sources of global samples start ... start + n - 1."""
        out = []
        for chunk in range(start // CHUNK, (start + n - 1) // CHUNK + 1):
            if self._draws is None or self._draws[0] != chunk:
                self._draws = (chunk, draws(self.seed, self.weights, chunk))
            lo, hi = max(start, chunk * CHUNK) - chunk * CHUNK, min(start + n, (chunk + 1) * CHUNK) - chunk * CHUNK
            out.append(self._draws[1][lo:hi])
        return np.concatenate(out)

    def stop_rounds(self) -> tuple[int, int]:
        """(whole rounds before the first source would run out, that source) ('stop'): known up front."""
        counts, rounds = np.zeros(len(self.sizes), np.int64), 0
        while True:  # a chunk of rounds at a time
            n = max(1, CHUNK // self.round) * self.round
            per_round = np.stack(
                [
                    np.bincount(
                        self.sources_of(rounds * self.round + k * self.round, self.round), minlength=len(self.sizes)
                    )
                    for k in range(n // self.round)
                ]
            )
            cum = counts + np.cumsum(per_round, axis=0)
            over = np.nonzero((cum > self.sizes).any(axis=1))[0]
            if len(over):
                return rounds + int(over[0]), int(np.argmax(cum[over[0]] - self.sizes > 0))
            counts, rounds = cum[-1], rounds + len(per_round)

    def _order(self, s: int, epoch: int) -> np.ndarray:
        key = (s, epoch)
        if key not in self._orders:
            self._orders = {k: v for k, v in self._orders.items() if k[0] != s}  # one epoch per source in memory
            self._orders[key] = epoch_order(self.seed, s, epoch, int(self.sizes[s]))
        return self._orders[key]

    def __iter__(self) -> Iterator[int]:
        if self._resume is not None:
            self.index, self.counts = self._resume["index"], np.asarray(self._resume["counts"], np.int64)
            self.exhausted, self._resume = self._resume.get("exhausted"), None
        while self.exhausted is None:
            src = self.sources_of(self.index, self.round)
            # each sample's count within its source: the source's count so far plus its rank among the round's
            nth = np.empty(self.round, np.int64)
            for s in np.unique(src):
                where = np.nonzero(src == s)[0]
                nth[where] = self.counts[s] + np.arange(len(where))
            if self.exhaustion == "stop" and (nth >= self.sizes[src]).any():
                s = int(src[np.nonzero(nth >= self.sizes[src])[0][0]])
                self.exhausted = s
                return
            mine = np.arange(self.rank, self.round, self.num_replicas)
            rows = [
                int(
                    self.offsets[src[k]]
                    + self._order(int(src[k]), int(nth[k] // self.sizes[src[k]]))[nth[k] % self.sizes[src[k]]]
                )
                for k in mine
            ]
            # the state after this round, already while its batch is drawn: torchdata reads it at the batch's end
            self.index += self.round
            self.counts = self.counts + np.bincount(src, minlength=len(self.sizes))
            yield from rows

    @property
    def ran_out(self) -> int | None:
        """The source that ended a 'stop' run, once the sequence reached its end (prefetching included)."""
        return self.stops if self.stop_at is not None and self.index >= self.stop_at else None

    def state_dict(self) -> dict[str, Any]:
        return {"index": int(self.index), "counts": [int(c) for c in self.counts], "exhausted": self.exhausted}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._resume = dict(state)


def run_length(trainer, batch_size: int, exhaustion: Exhaustion) -> int | None:
    """Samples this rank draws in the run (the loader's reported size): max_steps x accumulate x batch_size."""
    if trainer is None:
        return None
    if trainer.max_steps < 0:
        if exhaustion == "repeat":
            raise InputError(
                "a data mixture with exhaustion='repeat' is endless: set trainer.max_steps (the run's "
                "length), or exhaustion='stop'"
            )
        return None
    return trainer.max_steps * trainer.accumulate_grad_batches * batch_size
