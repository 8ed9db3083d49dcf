"""A run that cannot go on stops safely: a non-finite training loss (checked before backward, so the weights are
still good) or a SIGTERM (preemption by SLURM, Kubernetes, ...) ends the run with a resumable checkpoint saved at
that point as `<checkpoints>/last.ckpt` (`--ckpt_path last` continues from it) and a non-zero exit with one line
that says what happened and where. No non-finite weights are ever exported (`HFExport` checks)."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException


class RunStopped(Exception):
    """The run cannot go on (not the user's input): the CLI prints it as one `error:` line and exits 1."""


class NonFiniteLoss(RunStopped):
    pass


def checkpoint_dir(trainer: L.Trainer) -> Path:
    callback = trainer.checkpoint_callback
    if isinstance(callback, ModelCheckpoint) and callback.dirpath:
        return Path(callback.dirpath)
    return Path(trainer.log_dir or trainer.default_root_dir) / "checkpoints"


class StopGuard(L.Callback):
    def __init__(self, finite_loss: bool = True, checkpoint_on_stop: bool = True):
        """
        Args:
            finite_loss: stop the run when the training loss is NaN or infinite, before its backward pass.
            checkpoint_on_stop: on a SIGTERM or a non-finite loss, save a resumable `last.ckpt` before exiting.
        """
        self.finite_loss, self.checkpoint_on_stop = finite_loss, checkpoint_on_stop

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor) -> None:
        if not self.finite_loss:
            return
        bad = not bool(torch.isfinite(loss.detach()).all())
        if trainer.world_size > 1:  # every rank stops together, or the others hang in the next collective
            bad = trainer.strategy.reduce_boolean_decision(bad, all=False)
        if bad:
            loop = trainer.fit_loop
            raise NonFiniteLoss(f"the training loss became {loss.item()} at step {trainer.global_step} (epoch "
                                f"{trainer.current_epoch}, batch {loop.epoch_loop.batch_idx}); lower the learning "
                                f"rate, add warmup or gradient clipping (--trainer.gradient_clip_val 1.0)")

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, (SIGTERMException, NonFiniteLoss)) or trainer.state.fn != "fit":
            return
        exception.step = trainer.global_step
        if self.checkpoint_on_stop:
            path = checkpoint_dir(trainer) / "last.ckpt"
            trainer.save_checkpoint(path)  # a collective: every rank is here (SIGTERM is broadcast, see above)
            exception.checkpoint = path
