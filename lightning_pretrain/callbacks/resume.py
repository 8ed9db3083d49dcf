"""Exact resume: a run resumed from a checkpoint draws the batches and losses an uninterrupted run would have.

Lightning checkpoints the model, optimizer, LR schedule, loop counters and the state of rank 0's train loader
(a torchdata `StatefulDataLoader` knows its position mid-epoch). Three gaps remain, and `ResumeState` closes them:

1. **RNG streams.** The global torch / numpy / python generators are not saved, so dropout draws other masks after
   a resume and the losses drift apart from the first step on.
2. **Per-rank data positions.** Only rank 0 writes the checkpoint, so under DDP every rank would get rank 0's loader
   state. Harmless for a `DistributedSampler` (all ranks count the same), wrong for a streaming corpus whose ranks
   read different documents.
3. **When the loader state is applied.** Lightning loads it inside `setup_data` and iterates at once, before the
   loop sets the sampler epoch (a `DistributedSampler` resumed in epoch 2 would replay epoch 0's order), and not
   at all when `configure_optimizers` reads `trainer.estimated_stepping_batches` (ours do, for the LR schedule)
   in an epoch-based run: the loader was built before the checkpoint was read (Lightning #20550) and the resumed
   epoch restarts at its first batch.

On save, every rank's RNG states and loader states are gathered into the checkpoint (key `resume_state`). On load,
each rank takes its own entry and applies it in `on_train_start`, right before the first resumed batch: sampler
epoch, loader state, a fresh loader iterator, and the RNG states last. A checkpoint written by a different
number of processes is refused with a clear error (its per-rank positions cannot be mapped onto other ranks)
unless `allow_world_size_change` is set.
"""

from __future__ import annotations

import random
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.fabric.utilities.data import _set_sampler_epoch
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_warn
from torchdata.stateful_dataloader import StatefulDataLoader

from lightning_pretrain.errors import InputError

KEY = "resume_state"


def rng_states() -> dict[str, Any]:
    """Global RNG states as tensors and plain Python values, so the checkpoint loads with `weights_only=True`."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    states = {"torch": torch.get_rng_state(), "python": random.getstate(),
              "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                        "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    random.setstate(states["python"])
    n = states["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    if "cuda" in states and torch.cuda.is_available() and len(states["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(states["cuda"])


def gather(trainer: L.Trainer, local: Any) -> list[Any]:
    """`local` of every rank, in rank order (called by all ranks together, as checkpoint saving is)."""
    if trainer.world_size == 1 or not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return [local]
    out: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(out, local)
    return out


def check_workers(loaders: list, states: list[dict[str, Any]]) -> None:
    """A torchdata loader state fits only a loader with as many workers (else a bare AssertionError deep inside)."""
    stateful = [dl for dl in loaders if isinstance(dl, StatefulDataLoader)]
    for dl, state in zip(stateful, states):
        snapshot = state.get("_snapshot")
        saved = snapshot["_main_snapshot"]["_num_workers"] if snapshot else 0
        if saved != dl.num_workers:
            raise InputError(f"the checkpoint's train loader ran {saved} worker process(es) and this run's has "
                             f"{dl.num_workers}: resume with the same --data.num_workers (a streaming corpus's "
                             f"shards depend on it)")


def fit_loop_state(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """The fit loop's own entries, where Lightning keeps the train loaders' states (`combined_loader`)."""
    return checkpoint.get("loops", {}).get("fit_loop", {}).get("state_dict", {})


class ResumeState(L.Callback):
    def __init__(self, rng: bool = True, allow_world_size_change: bool = False):
        """
        Args:
            rng: save and restore the global torch/numpy/python (and CUDA) RNG states of every rank, so dropout and
                any other global randomness continue exactly where the checkpoint left them.
            allow_world_size_change: resume a checkpoint written by a different number of processes anyway; the
                per-rank data positions and RNG streams are then dropped: each rank restarts its loader at the
                beginning of the current epoch (a streaming corpus at the beginning of its stream) and the run is
                no longer a replay of the uninterrupted one.
        """
        self.rng = rng
        self.allow_world_size_change = allow_world_size_change
        self._rng_to_restore: dict[str, Any] | None = None
        self._loader_states: list[dict[str, Any]] | None = None

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        loader_states = fit_loop_state(checkpoint).get("combined_loader")
        local = {"rng": rng_states() if self.rng else None, "loaders": loader_states}
        checkpoint[KEY] = {"world_size": trainer.world_size, "ranks": gather(trainer, local)}

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get(KEY)
        if state is None or trainer.state.fn != TrainerFn.FITTING:
            return  # a checkpoint written without this callback: Lightning's own restore only
        loop_state = fit_loop_state(checkpoint)
        if state["world_size"] != trainer.world_size:
            if not self.allow_world_size_change:
                raise InputError(
                    f"the checkpoint was written by {state['world_size']} process(es) and this run has "
                    f"{trainer.world_size}: exact resume needs the same number (devices x nodes). Resume with "
                    f"{state['world_size']}, or pass --resume_state.allow_world_size_change true to continue with "
                    f"each rank's data restarting at the beginning of the epoch / stream")
            loop_state.pop("combined_loader", None)
            rank_zero_warn(f"resuming a {state['world_size']}-process checkpoint on {trainer.world_size} processes: "
                           f"data positions and RNG streams start afresh")
            return
        mine = state["ranks"][trainer.global_rank]
        # this rank's loader state is applied in on_train_start, not by Lightning (see there): take it out of the loops
        loop_state.pop("combined_loader", None)
        self._loader_states = mine["loaders"]
        self._rng_to_restore = mine["rng"] if self.rng else None

    def on_train_start(self, trainer, pl_module) -> None:
        fit_loop = trainer.fit_loop
        if self._loader_states and fit_loop._combined_loader is not None:
            # Lightning applies a checkpoint's loader state inside `setup_data` and iterates at once, before the loop
            # sets the sampler epoch (a DistributedSampler then replays epoch 0's order in any later epoch), and not
            # at all when the loader was built early for `estimated_stepping_batches` (Lightning #20550, our
            # configure_optimizers). Here, the last hook before the first batch: epoch first, state, fresh iterator.
            for dl in fit_loop._combined_loader.flattened:
                _set_sampler_epoch(dl, fit_loop.epoch_progress.current.processed)
            check_workers(fit_loop._combined_loader.flattened, self._loader_states)
            fit_loop._combined_loader._load_state_dicts(self._loader_states)
            iter(fit_loop._data_fetcher)
        self._loader_states = None
        if self._rng_to_restore is not None:
            # last, after the sanity check and the loaders' start-up have drawn whatever they draw
            set_rng_states(self._rng_to_restore)
            self._rng_to_restore = None
