"""Exact resume: a run resumed from a checkpoint draws the batches and losses an uninterrupted run would have.

Lightning checkpoints the model, optimizer, schedule, loops and rank 0's train-loader position. `ResumeState` adds
what it misses: every rank's global RNG states and loader states (gathered into the checkpoint's `resume_state`),
applied in `on_train_start` right before the first resumed batch (sampler epoch, loader state, fresh iterator, RNG
last), which also covers Lightning #20550. A checkpoint of another world size is refused unless
`allow_world_size_change`. Why each gap matters: docs/design/resume.md.
"""

from __future__ import annotations

import random
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_warn
from torchdata.stateful_dataloader import StatefulDataLoader

from lightning_pretrain import compat
from lightning_pretrain.errors import InputError

KEY = "resume_state"


def rng_states() -> dict[str, Any]:
    """Global RNG states as tensors and plain Python values, so the checkpoint loads with `weights_only=True`."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    states = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": {
            "name": name,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    random.setstate(states["python"])
    n = states["numpy"]
    np.random.set_state(
        (n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
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
        saved = compat.loader_state_workers(state)
        if saved != dl.num_workers:
            raise InputError(
                f"the checkpoint's train loader ran {saved} worker process(es) and this run's has "
                f"{dl.num_workers}: resume with the same --data.num_workers (a streaming corpus's "
                f"shards depend on it)"
            )


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
                    f"each rank's data restarting at the beginning of the epoch / stream"
                )
            loop_state.pop("combined_loader", None)
            rank_zero_warn(
                f"resuming a {state['world_size']}-process checkpoint on {trainer.world_size} processes: "
                f"data positions and RNG streams start afresh"
            )
            return
        mine = state["ranks"][trainer.global_rank]
        # this rank's loader state is applied in on_train_start, not by Lightning (see there): take it out of the loops
        loop_state.pop("combined_loader", None)
        self._loader_states = mine["loaders"]
        self._rng_to_restore = mine["rng"] if self.rng else None

    def on_train_start(self, trainer, pl_module) -> None:
        fit_loop = trainer.fit_loop
        loaders = compat.train_loaders(trainer)
        if self._loader_states and loaders is not None:
            # Lightning applies a checkpoint's loader state inside `setup_data` and iterates at once, before the loop
            # sets the sampler epoch (a DistributedSampler then replays epoch 0's order in any later epoch), and not
            # at all when the loader was built early for `estimated_stepping_batches` (Lightning #20550, our
            # configure_optimizers). Here, the last hook before the first batch: epoch first, state, fresh iterator.
            for dl in loaders:
                compat.set_sampler_epoch(dl, fit_loop.epoch_progress.current.processed)
            check_workers(loaders, self._loader_states)
            compat.load_train_loader_states(trainer, self._loader_states)
        self._loader_states = None
        if self._rng_to_restore is not None:
            # last, after the sanity check and the loaders' start-up have drawn whatever they draw
            set_rng_states(self._rng_to_restore)
            self._rng_to_restore = None
