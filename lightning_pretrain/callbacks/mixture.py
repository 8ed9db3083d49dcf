"""`MixtureLog`: what a data mixture (`--data.sources`) actually fed the model: the cumulative proportion of each
source's samples, `train/mixture/<name>`, and its epochs (streaming: completed passes), `train/epochs/<name>`,
summed over ranks and continued across a resume; and, with exhaustion='stop', the end of the run when a source ran
out. It reads what the data module publishes (`mixture_state`: names, epochs, the spent source); a no-op for
batches without "mixture_source" (any other data)."""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
import torch

from lightning_pretrain import compat
from lightning_pretrain.data.pretrain.mixture import MixtureState

log = logging.getLogger(__name__)


class MixtureLog(L.Callback):
    def __init__(self):
        """Logs the realised mixture of a `--data.sources` run (nothing to configure)."""
        self._base: torch.Tensor | None = None  # global counts of the run before a resume
        self._local: torch.Tensor | None = None  # this rank's counts since it started
        self._total: torch.Tensor | None = None  # global counts at the last batch
        self._epochs: torch.Tensor | None = None  # epochs of each source, as last read
        self._names: tuple[str, ...] | None = None  # the sources' names, in `mixture_source` id order

    @staticmethod
    def _state(trainer, counts: torch.Tensor | None) -> MixtureState | None:
        """What the data module publishes of its mixture after `counts` samples of each source (None: no mixture)."""
        publish = getattr(trainer.datamodule, "mixture_state", None)
        if publish is None:
            return None
        loaders = compat.train_loaders(trainer)
        return publish(None if counts is None else counts.tolist(), loaders[0] if loaders else None)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not (isinstance(batch, dict) and "mixture_source" in batch):
            return
        if self._names is None:
            state = self._state(trainer, None)
            if state is None:
                return
            self._names = state.names
        k = len(self._names)
        if self._local is None:
            self._local = torch.zeros(k, dtype=torch.float64)
        self._local += torch.bincount(batch["mixture_source"].detach().cpu(), minlength=k).double()
        counts = self._local
        if trainer.world_size > 1:
            counts = trainer.strategy.reduce(counts.to(pl_module.device), reduce_op="sum").cpu()
        total = counts if self._base is None else counts + self._base
        self._total = total
        if self._epochs is None or trainer.global_step % max(trainer.log_every_n_steps, 1) == 0:
            # streaming reads the passes out of the loader's state: refreshed at the logging cadence, not per step
            epochs = torch.tensor(self._state(trainer, total).epochs, dtype=torch.float64)
            if trainer.world_size > 1:  # streaming: each rank its own passes
                epochs = trainer.strategy.reduce(epochs.to(pl_module.device), reduce_op="mean").cpu()
            self._epochs = epochs
        epochs = self._epochs
        share = total / total.sum()
        metrics = {
            **{f"train/mixture/{n}": float(share[i]) for i, n in enumerate(self._names)},
            **{f"train/epochs/{n}": float(epochs[i]) for i, n in enumerate(self._names)},
        }
        pl_module.log_dict(metrics, on_step=True, on_epoch=False)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        state = self._state(trainer, self._total)
        if state is not None and state.exhausted is not None and not trainer.should_stop:
            samples = int(self._total.sum()) if self._total is not None else 0
            log.info(
                "data mixture: source '%s' ran out after %d samples; exhaustion='stop' ends the run",
                state.exhausted,
                samples,
            )
            # else Lightning would start another epoch on the spent mixture (an empty one, again and again)
            trainer.should_stop = True

    def state_dict(self) -> dict[str, Any]:
        return {"counts": None if self._total is None else self._total.tolist()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("counts") is not None:
            self._base = torch.tensor(state["counts"], dtype=torch.float64)
