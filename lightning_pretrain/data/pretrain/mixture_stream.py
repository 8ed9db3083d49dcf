"""The streaming side of a data mixture (`--data.sources` with StreamingCorpus): one `BlockStream` per source,
interleaved per worker by seeded weighted draws (`MixtureStream`); its state is each stream's state and the number of
draws, and a source's epochs are its stream's completed passes. The cached side and the shared pieces: mixture.py.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset

from lightning_pretrain.data.pretrain.mixture import CHUNK, Exhaustion

log = logging.getLogger(__name__)


class MixtureStream(IterableDataset):
    """Blocks of several `BlockStream`s (built for this rank) interleaved by seeded weighted draws, per worker (each
    stream reads the worker's own shard). State: each stream's state and the number of draws so far."""

    def __init__(
        self,
        streams: Sequence,
        weights: np.ndarray,
        names: Sequence[str],
        seed: int = 0,
        exhaustion: Exhaustion = "repeat",
        length: int | None = None,
    ):
        self.streams, self.weights, self.names = list(streams), np.asarray(weights, float), list(names)
        self.seed, self.exhaustion, self.length = seed, exhaustion, length
        self._start: dict[str, Any] | None = None
        self._cursor: dict[str, Any] | None = None

    def __len__(self) -> int:
        if self.length is None:
            raise TypeError("an endless stream has no length")
        return self.length

    def state_dict(self) -> dict[str, Any]:
        # each stream's state is taken when asked (torchdata asks once per batch), not copied at every block
        if self._cursor is None:
            return copy.deepcopy(self._start or {})
        return {**self._cursor, "streams": [st.state_dict() for st in self.streams]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._start = copy.deepcopy(state) or None

    def __iter__(self) -> Iterator[tuple[torch.Tensor, int]]:
        start, self._cursor = self._start or {}, None
        for stream, state in zip(self.streams, start.get("streams") or [{}] * len(self.streams)):
            stream.load_state_dict(state)  # (until drawn from, a stream reports this start state)
        iters = [iter(s) for s in self.streams]
        shard, _ = self.streams[0].shard()
        n, exhausted = int(start.get("draws", 0)), start.get("exhausted")
        chunk = None
        while exhausted is None:
            if chunk != n // CHUNK:
                chunk = n // CHUNK
                src = np.random.default_rng([self.seed, 2, shard, chunk]).choice(
                    len(self.weights), CHUNK, p=self.weights
                )
            s = int(src[n % CHUNK])
            if self.exhaustion == "stop" and self.streams[s].passes >= 1:
                exhausted = s  # its next block would begin its second pass
                log.info(
                    "data mixture: source '%s' ran out (one pass of shard %d) after %d blocks of that shard; "
                    "exhaustion='stop' ends the run",
                    self.names[s],
                    shard,
                    n,
                )
            else:
                block = next(iters[s])
                n += 1
            self._cursor = {"draws": n, "exhausted": exhausted}
            if exhausted is None:
                yield block, s


def stream_states(loader) -> list[dict]:
    """The `MixtureStream` states (one per worker) inside a StatefulDataLoader's state."""
    found, todo = [], [loader.state_dict()]
    while todo:
        node = todo.pop()
        if isinstance(node, dict):
            if "draws" in node and "streams" in node:
                found.append(node)
            else:
                todo.extend(node.values())
    return found


def stream_passes(loader, k: int) -> list[float]:
    """Completed passes of each source, over this rank's workers (the fewest)."""
    states = stream_states(loader)
    if not states:
        return [0.0] * k
    return [float(min(st["streams"][s].get("pass", 0) for st in states)) for s in range(k)]


def first_exhausted(loader) -> int | None:
    return next((st["exhausted"] for st in stream_states(loader) if st.get("exhausted") is not None), None)
