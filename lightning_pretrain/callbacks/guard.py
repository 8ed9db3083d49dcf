"""A run that cannot go on stops safely. An optimizer step whose training loss or gradient norm is NaN or infinite
is skipped (its gradients dropped: the weights and optimizer state stay as they were) and counted; after
`max_bad_steps` such steps in a row, or on a SIGTERM (preemption by SLURM, Kubernetes, ...) or a Ctrl-C (SIGINT, handled
like SIGTERM), the run ends with a resumable checkpoint `<checkpoints>/last.ckpt` (`--ckpt_path last` continues from
it) and a non-zero exit with one line that says what happened and where. Loss spikes over the running mean are logged; `train/grad_norm` is logged
every step. No non-finite weights are ever exported (`HFExport` checks)."""

from __future__ import annotations

import logging
import math
import signal
import threading
from collections import deque
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.precision.amp import _optimizer_handles_unscaling
from lightning.pytorch.utilities.exceptions import SIGTERMException

from lightning_pretrain import compat
from lightning_pretrain.errors import InputError, RunStopped

log = logging.getLogger(__name__)


class NonFiniteLoss(RunStopped):
    pass


def checkpoint_dir(trainer: L.Trainer) -> Path:
    callback = trainer.checkpoint_callback
    if isinstance(callback, ModelCheckpoint) and callback.dirpath:
        return Path(callback.dirpath)
    return Path(trainer.log_dir or trainer.default_root_dir) / "checkpoints"


class StopGuard(L.Callback):
    def __init__(
        self,
        skip_non_finite: bool = True,
        max_bad_steps: int = 5,
        spike_window: int = 50,
        spike_rtol: float = 0.5,
        spike_atol: float = 1.0,
        checkpoint_on_stop: bool = True,
    ):
        """
        Args:
            skip_non_finite: skip an optimizer step whose training loss (of any of its accumulated micro-batches, on
                any rank) or total gradient norm is NaN or infinite: its gradients are dropped, so neither the
                weights nor the optimizer state change (the step still counts for the step number and the LR
                schedule); counted as `train/skipped_steps`. Under fp16 loss scaling a non-finite gradient with a
                finite loss is left to the scaler (it skips the step and lowers the scale). False: nothing is
                skipped and nothing stops the run (the weights become NaN).
            max_bad_steps: stop the run after this many skipped steps in a row (1: at the first), with `last.ckpt`
                holding the weights from before the first of them.
            spike_window: log a loss spike (a warning and `train/loss_spikes`; the step is not skipped) when a
                step's loss rises above its predecessor's and exceeds the mean of the last `spike_window` finite
                step losses by more than both `spike_rtol` x that mean and `spike_atol`; looked for once the window
                is full. 0: no spike detection.
            spike_rtol: relative excess over the running mean that makes a spike.
            spike_atol: absolute excess (in loss units, nats) that makes a spike.
            checkpoint_on_stop: on a SIGTERM or too many non-finite steps, save a resumable `last.ckpt` before
                exiting.
        """
        if max_bad_steps < 1:
            raise InputError(
                f"--stop_guard.max_bad_steps must be at least 1 (1: stop at the first skipped step), "
                f"got {max_bad_steps}"
            )
        if (
            spike_window < 0
            or not (math.isfinite(spike_rtol) and spike_rtol >= 0)
            or not (math.isfinite(spike_atol) and spike_atol >= 0)
        ):  # NaN compares false: it would turn detection off
            raise InputError(
                f"--stop_guard.spike_window, spike_rtol and spike_atol must be finite and not negative, "
                f"got {spike_window}, {spike_rtol}, {spike_atol}"
            )
        self.skip_non_finite, self.max_bad_steps, self.checkpoint_on_stop = (
            skip_non_finite,
            max_bad_steps,
            checkpoint_on_stop,
        )
        self.spike_window, self.spike_rtol, self.spike_atol = spike_window, spike_rtol, spike_atol
        # what the checkpoint keeps, so a resume continues the counts and the running mean
        self.skipped_steps = self.bad_in_a_row = self.loss_spikes = 0
        self.recent: deque[float] = deque(maxlen=spike_window or None)
        self.last_loss: float | None = None
        # the optimizer step being accumulated: sum of its micro-batch losses (Lightning divides each by
        # accumulate_grad_batches, so the sum is the step's mean) and whether any was non-finite; device tensors
        self._loss: torch.Tensor | None = None
        self._bad: torch.Tensor | None = None
        self.stop_signal: str | None = None  # "SIGINT" once a Ctrl-C asked the run to stop
        self._previous_sigint = None

    # -- Ctrl-C: the same graceful stop as SIGTERM ------------------------------------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.stop_signal = None
        if stage == "fit" and threading.current_thread() is threading.main_thread():
            self._previous_sigint = signal.signal(signal.SIGINT, self._on_sigint)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self._previous_sigint is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, self._previous_sigint)
            self._previous_sigint = None

    def _on_sigint(self, signum, frame) -> None:
        """Hand a Ctrl-C to Lightning's SIGTERM handler (it stops the loops at the next step, on every rank, and
        `on_exception` saves last.ckpt); before the loops have one (setup, data preparation), or at a second Ctrl-C,
        stop at once."""
        on_sigterm, again = signal.getsignal(signal.SIGTERM), self.stop_signal == "SIGINT"
        self.stop_signal = "SIGINT"
        if again or not callable(on_sigterm):
            raise KeyboardInterrupt
        on_sigterm(signal.SIGTERM, frame)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._loss = self._bad = None

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor) -> None:
        # a bad micro-batch spoils its whole accumulation window; decided at the optimizer step (no host sync here)
        loss = loss.detach().float().sum()
        bad = ~torch.isfinite(loss)
        self._loss, self._bad = (loss, bad) if self._loss is None else (self._loss + loss, self._bad | bad)

    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        device = trainer.strategy.root_device
        loss, bad_loss, self._loss, self._bad = self._loss, self._bad, None, None
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        norm = grad_norm(grads, device)
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        if (
            scaler is not None
            and _optimizer_handles_unscaling(optimizer)
            and compat.grad_scaler_scale(scaler) is not None
        ):
            norm = norm / compat.grad_scaler_scale(
                scaler
            )  # fused optimizers unscale inside their step: these gradients are scaled
        zero = torch.zeros((), device=device)
        flags = torch.stack(
            [
                zero if bad_loss is None else bad_loss.float(),
                (~torch.isfinite(norm)).float(),
                zero if loss is None else loss,
            ]
        )
        if trainer.world_size > 1:  # every rank decides alike (or the others hang in the next collective)
            flags = trainer.strategy.reduce(flags, reduce_op="sum")
        # the one host sync of the step
        bad_loss, bad_norm, loss_sum, norm_value = torch.cat([flags, norm.reshape(1).float()]).tolist()
        step_loss = None if loss is None else loss_sum / trainer.world_size
        pl_module.log("train/grad_norm", norm_value, on_step=True, on_epoch=False)
        skip = self.skip_non_finite and (bad_loss > 0 or (bad_norm > 0 and scaler is None))
        if skip:
            if scaler is not None and _optimizer_handles_unscaling(optimizer):
                # a fused optimizer's GradScaler checks the gradients inside its step (and insists it did): NaN
                # gradients make it skip the step and lower the scale
                for grad in grads:
                    grad.fill_(float("nan"))
            else:
                # torch optimizers leave a parameter without a gradient alone (a GradScaler that unscaled before this
                # hook has seen any overflow already, and skips; otherwise its step is a no-op too)
                optimizer.zero_grad(set_to_none=True)
            self.skipped_steps += 1
            self.bad_in_a_row += 1
            if trainer.is_global_zero:
                log.warning(
                    f"step {trainer.global_step}: skipped (training loss {step_loss}, gradient norm "
                    f"{norm_value}); {self.bad_in_a_row} in a row, {self.skipped_steps} in all"
                )
        else:
            self.bad_in_a_row = 0
            if step_loss is not None and math.isfinite(step_loss):
                self.check_spike(trainer, step_loss)
        pl_module.log_dict(
            {"train/skipped_steps": float(self.skipped_steps), "train/loss_spikes": float(self.loss_spikes)},
            on_step=True,
            on_epoch=False,
        )
        if skip and self.bad_in_a_row >= self.max_bad_steps:
            loop, first = trainer.fit_loop, trainer.global_step - self.bad_in_a_row + 1
            raise NonFiniteLoss(
                f"{self.bad_in_a_row} optimizer step(s) in a row had a non-finite training loss or gradient norm "
                f"and were skipped (steps {first}-{trainer.global_step}, the last in epoch {trainer.current_epoch}, "
                f"batch {loop.epoch_loop.batch_idx}: loss {step_loss}, gradient norm {norm_value}), so the weights "
                f"are still those before step {first}; lower the learning rate, add warmup or gradient clipping "
                f"(--trainer.gradient_clip_val 1.0), or check the data (--stop_guard.max_bad_steps sets how many "
                f"in a row are tolerated)"
            )

    def check_spike(self, trainer: L.Trainer, loss: float) -> None:
        """Fabric's `SpikeDetection` rule (lightning/fabric/utilities/spike.py) on plain floats, per optimizer step
        and on the loss averaged over ranks: it raises on a spike, keeps a torchmetrics running mean that syncs on
        every compute, and counts a fall far below the mean as a spike too (abs); here a spike is only logged and
        it enters the running mean, so a lasting shift of the loss is reported once, not at every step."""
        if self.spike_window and len(self.recent) == self.spike_window and self.last_loss is not None:
            mean = sum(self.recent) / len(self.recent)
            excess = loss - mean
            if loss > self.last_loss and excess >= self.spike_rtol * mean and excess >= self.spike_atol:
                self.loss_spikes += 1
                if trainer.is_global_zero:
                    log.warning(
                        f"step {trainer.global_step}: loss spike {loss:.4g}, running mean {mean:.4g} of "
                        f"the last {len(self.recent)} steps ({self.loss_spikes} spikes in all)"
                    )
        if self.spike_window:
            self.recent.append(loss)
        self.last_loss = loss

    def state_dict(self) -> dict[str, Any]:
        return {
            "skipped_steps": self.skipped_steps,
            "bad_in_a_row": self.bad_in_a_row,
            "loss_spikes": self.loss_spikes,
            "recent": list(self.recent),
            "last_loss": self.last_loss,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.skipped_steps = state_dict["skipped_steps"]
        self.bad_in_a_row = state_dict["bad_in_a_row"]
        self.loss_spikes = state_dict["loss_spikes"]
        self.recent = deque(state_dict["recent"], maxlen=self.spike_window or None)  # the window may have changed
        self.last_loss = state_dict["last_loss"]

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, (SIGTERMException, NonFiniteLoss)) or trainer.state.fn != "fit":
            return
        exception.step = trainer.global_step
        exception.signal_name = self.stop_signal or "SIGTERM"
        if self.checkpoint_on_stop:
            path = checkpoint_dir(trainer) / "last.ckpt"
            trainer.save_checkpoint(path)  # a collective: every rank is here (Lightning broadcasts a SIGTERM, and the
            # non-finite decision is reduced over ranks)
            exception.checkpoint = path


def grad_norm(grads: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    """The total 2-norm of `grads` (0 when there are none), without a host sync."""
    if not grads:
        return torch.zeros((), device=device)
    norm = torch.nn.utils.get_total_norm(grads)
    if hasattr(norm, "full_tensor"):  # FSDP2: a DTensor of per-shard partial norms; this all-reduces them
        norm = norm.full_tensor()
    return norm
