"""A time budget (`--trainer.max_time` without `--trainer.max_steps`) that ends with the LR schedule fully decayed.

Lightning's max_time stops a run wherever the clock runs out, mid-schedule. `TimeBudget` times the first optimizer
steps instead (inside the LR warmup, where the schedule does not depend on the run's length), fixes the run's total
steps from that throughput (validation included, a reserve kept for the end), sets `max_steps` to it and re-targets
the LR schedule to end there (`optim.retarget`). If the machine's speed then drifts (other work starts or ends) so
that the run would miss the budget's end by more than `replan_tolerance` of it, the rest is re-planned from the
recent throughput and the schedule's remainder stretched to the new end (`optim.stretch`). Totals and re-plans go
into the checkpoint: a resume replays the same schedule exactly; max_time is only a hard stop at `hard_stop` x. With `max_steps` (or `max_epochs`) as well, the
earlier end wins: the schedule ends at the smaller total.
"""

from __future__ import annotations

import logging
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Timer
from lightning.pytorch.core.saving import save_hparams_to_yaml
from lightning.pytorch.utilities import rank_zero_warn

from lightning_pretrain.callbacks.budget_plan import plan_steps, validation_estimate
from lightning_pretrain.callbacks.budget_replan import PROVISIONAL_STEPS, Replanning
from lightning_pretrain.errors import InputError

log = logging.getLogger(__name__)

clock = time.monotonic  # the tests replace it with a fake clock


def describe(seconds: float) -> str:
    return str(timedelta(seconds=round(seconds)))


class TimeBudget(Replanning, L.Callback):
    def __init__(
        self,
        measure_steps: int = 20,
        skip_steps: int = 2,
        reserve: float = 0.03,
        hard_stop: float = 1.5,
        replan_tolerance: float | None = 0.05,
    ):
        """
        Args:
            measure_steps: optimizer steps timed to measure the throughput, after `skip_steps`; both must lie within
                `--model.warmup_steps` (there the LR does not depend on the run's total). Only with
                `--trainer.max_time`.
            skip_steps: first optimizer steps not timed (start-up: compilation, allocator and data loader warm-up).
            reserve: fraction of the budget kept free at the end (the last validation, checkpoint and HF export,
                timing noise). The time of periodic validation is measured (or estimated from the sanity check)
                and budgeted besides.
            hard_stop: once the total is fixed, `max_time` stops the run only at this multiple of the budget: a
                safety net for a run far slower than measured (it then ends before its LR schedule does).
            replan_tolerance: once the total is fixed, the throughput is measured again every `measure_steps` steps
                (at least 5% of the run); when the run would end more than this fraction of the budget before or
                after the budget's end, the remaining steps are re-planned and the rest of the LR schedule
                stretched to end there (taken steps keep their LRs). null: the first total stays.
        """
        if measure_steps < 1 or skip_steps < 0:
            raise InputError(
                f"--time_budget.measure_steps must be at least 1 and skip_steps at least 0, got "
                f"{measure_steps} and {skip_steps}"
            )
        if not 0.0 <= reserve < 1.0:
            raise InputError(f"--time_budget.reserve must be in [0, 1), got {reserve}")
        if replan_tolerance is not None and not replan_tolerance > 0:
            raise InputError(
                f"--time_budget.replan_tolerance must be > 0 (or null: no re-planning), got {replan_tolerance}"
            )
        if hard_stop < 1.0:
            raise InputError(f"--time_budget.hard_stop must be at least 1 (a multiple of the budget), got {hard_stop}")
        self.measure_steps, self.skip_steps = measure_steps, skip_steps
        self.reserve, self.hard_stop, self.replan_tolerance = reserve, hard_stop, replan_tolerance
        self.total_steps: int | None = None  # fixed once measured (and re-planned); what the checkpoint keeps
        self.planned_steps: int | None = None  # the first total, which the re-plans stretch
        self.replans: list[tuple[int, int, int]] = []  # (at step, old total, new total)
        self._check: tuple[int, float, float] | None = None  # (step, clock, validation seconds) of the last check
        self._cap: int | None = None  # the run's own end (max_steps / max_epochs given besides max_time)
        self.s_per_step: float | None = None
        self.measured: tuple[int, int] | None = None
        self.budget: float | None = None  # seconds, from the trainer's max_time (its Timer)
        self._timer: Timer | None = None
        self._active = False
        self._offset = 0.0  # training time before this process (a resume of a checkpoint written while measuring)
        self._start: float | None = None
        self._window: tuple[int, int] | None = None
        self._marks: dict[int, tuple[float, float]] = {}  # step -> (clock, validation seconds so far)
        self._last_step = -1
        self._val_started: float | None = None
        self._val_runs: list[float] = []
        self._sanity_marks: list[float] = []

    # -- state ----------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        if not self._active and self.total_steps is None:
            return {}
        elapsed = self._offset + (clock() - self._start if self._start is not None else 0.0)
        return {
            "total_steps": self.total_steps,
            "budget_s": self.budget,
            "s_per_step": self.s_per_step,
            "measured_steps": list(self.measured) if self.measured else None,
            "elapsed_s": elapsed,
            "planned_steps": self.planned_steps,
            "replans": [list(r) for r in self.replans],
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.total_steps = state_dict.get("total_steps")
        self.s_per_step = state_dict.get("s_per_step")
        self.measured = tuple(state_dict["measured_steps"]) if state_dict.get("measured_steps") else None
        self._offset = state_dict.get("elapsed_s") or 0.0
        self.planned_steps = state_dict.get("planned_steps") or self.total_steps
        self.replans = [tuple(r) for r in state_dict.get("replans") or []]
        if self.total_steps is not None and self._timer is not None:
            self._hard_stop_only()  # before the Timer's own check at fit start

    # -- set-up ---------------------------------------------------------------------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self._timer = next((cb for cb in trainer.callbacks if isinstance(cb, Timer)), None)
        self._active = self._timer is not None and self._timer._duration is not None
        if not self._active:
            return
        if self.budget is None:
            self.budget = self._timer._duration
        if trainer.max_steps == -1 and trainer.max_epochs in (-1, None):
            # configure_optimizers needs a finite total (and a streaming corpus a max_steps) before one is measured
            trainer.fit_loop.epoch_loop.max_steps = PROVISIONAL_STEPS

    def _hard_stop_only(self) -> None:
        self._timer._duration = self.hard_stop * self.budget

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._active:
            return
        cap = trainer.estimated_stepping_batches  # max_steps / max_epochs given besides max_time
        cap = self._cap = None if cap >= PROVISIONAL_STEPS else int(cap)  # before max_steps becomes the total
        for config in trainer.lr_scheduler_configs:
            if getattr(config.scheduler, "rebuild", None) is None:
                raise InputError(
                    f"--trainer.max_time as a time budget re-targets the LR schedule, and "
                    f"{type(config.scheduler).__name__} cannot be (use optim.scheduler_config); set "
                    f"--trainer.max_steps instead"
                )
        if self.total_steps is not None:  # a resume: the checkpoint's schedule, never measured again from scratch
            total = self.total_steps = self._replay(trainer, cap)
            self._hard_stop_only()
            self._start = clock()
            self._check = (trainer.global_step, self._start, self._val_seconds())
            self._log(
                trainer,
                f"time budget {describe(self.budget)}: the schedule ends at step {total:,} (the "
                f"checkpoint's total; not measured again)",
            )
            return
        first = trainer.global_step
        window = (first + self.skip_steps, first + self.skip_steps + self.measure_steps)
        if cap is not None and cap <= window[1]:
            self._active = False  # the run ends before it could be measured: max_time stays Lightning's plain stop
            return
        warmup = getattr(pl_module, "warmup_steps", None)
        if isinstance(warmup, int) and getattr(pl_module, "lr_schedule", None) != "constant" and window[1] > warmup:
            raise InputError(
                f"the time budget (--trainer.max_time) measures the throughput over optimizer steps "
                f"{window[0]}-{window[1]}, which must lie within the LR warmup (there the schedule does "
                f"not depend on the run's length), but --model.warmup_steps is {warmup}: raise it to "
                f"at least {window[1]}, or lower --time_budget.measure_steps / skip_steps"
            )
        if self._offset >= self.budget:
            raise InputError(
                f"--trainer.max_time {describe(self.budget)} is already spent ({describe(self._offset)} "
                f"of training in the checkpoint); raise it to continue"
            )
        self._hard_stop_only()  # the budget itself is watched here, step by step, until the total is fixed
        self._window, self._start, self._marks = window, clock(), {}
        self._last_step = first
        if self.skip_steps == 0:
            self._marks[first] = (self._start, self._val_seconds())

    # -- measuring ------------------------------------------------------------------------------------------------
    def _val_seconds(self) -> float:
        return sum(self._val_runs)

    def on_sanity_check_start(self, trainer, pl_module) -> None:
        self._sanity_marks = [clock()]

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if trainer.sanity_checking and self._active and self.total_steps is None:
            self._sanity_marks.append(clock())

    def on_validation_start(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self._val_started = clock()

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking and self._val_started is not None:
            self._val_runs.append(clock() - self._val_started)
            self._val_started = None

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        step = trainer.global_step
        if not self._active or step == self._last_step:
            return  # (a micro-batch of an accumulated step)
        self._last_step = step
        now = clock()
        if self.total_steps is not None:
            self._replan_on_drift(trainer, step, now)
            return
        if self._window is None:
            return
        start, end = self._window
        if step == start or step == end:
            self._marks[step] = (now, self._val_seconds())
        if step == end:
            self._fix_total(trainer, pl_module, now)
        elif trainer.strategy.broadcast(self._offset + now - self._start >= self.budget, src=0):
            raise InputError(
                f"--trainer.max_time {describe(self.budget)} ran out at step {step}, before the time "
                f"budget had measured the throughput (steps {start}-{end}); raise --trainer.max_time "
                f"or lower --time_budget.measure_steps / skip_steps"
            )

    def _fix_total(self, trainer: L.Trainer, pl_module, now: float) -> None:
        start, end = self._window
        (t0, v0), (t1, v1) = self._marks[start], self._marks[end]
        s_per_step = ((t1 - t0) - (v1 - v0)) / (end - start)
        val_s, val_per_step = validation_estimate(trainer, s_per_step, self._val_runs, self._sanity_marks)
        elapsed = self._offset + now - self._start
        budget_total = plan_steps(self.budget, elapsed, end, s_per_step, val_s, val_per_step, self.reserve)
        # rank 0's measurement decides for every rank (they must stop at the same step)
        s_per_step, val_s, budget_total = trainer.strategy.broadcast((s_per_step, val_s, budget_total), src=0)
        measured = f"{s_per_step:.3g} s/step measured over steps {start}-{end}"
        if budget_total <= end:
            raise InputError(
                f"--trainer.max_time {describe(self.budget)} is too short for a time budget: measuring "
                f"the throughput ({measured}) took {elapsed:.0f} s and leaves no step besides the "
                f"reserve for the end; raise --trainer.max_time"
            )
        cap = trainer.estimated_stepping_batches
        total = budget_total if cap >= PROVISIONAL_STEPS else min(budget_total, int(cap))
        try:
            self._apply(trainer, total, taken=end)
        except ValueError as e:
            advice = (
                "; a warmup_ratio's warmup follows the total: set --model.warmup_steps instead"
                if getattr(pl_module, "warmup_steps", 0) is None
                else "; or raise --trainer.max_time"
            )
            raise InputError(
                f"the time budget {describe(self.budget)} allows {total:,} optimizer steps ({measured}): {e}{advice}"
            ) from e
        self.total_steps, self.s_per_step, self.measured = total, s_per_step, (start, end)
        self.planned_steps, self._check = total, (end, now, self._val_seconds())
        validation = f" + {val_s:.3g} s per validation" if val_s and val_per_step else ""
        first = (
            f" (--trainer.max_steps / max_epochs end the run first; the budget allows {budget_total:,})"
            if total < budget_total
            else ""
        )
        self._log(
            trainer,
            f"time budget {describe(self.budget)}: {measured}{validation}, the schedule ends at step {total:,}{first}",
        )
        for logger in trainer.loggers:
            logger.log_metrics(
                {"train/budget_steps": total, "train/budget_s_per_step": s_per_step}, step=trainer.global_step
            )

    def _log(self, trainer: L.Trainer, message: str) -> None:
        """Say `message` once, and record the total in the run's `hparams.yaml` (TensorBoard and CSV loggers: their
        hparams are a dict that Lightning writes once, at the start)."""
        if not trainer.is_global_zero:
            return
        log.info(message)
        record = {"total_steps": self.total_steps, "budget_s": self.budget, "s_per_step": self.s_per_step}
        if self.replans:
            record["replans"] = [list(r) for r in self.replans]
        for logger in trainer.loggers:
            hparams, log_dir = getattr(logger, "hparams", None), getattr(logger, "log_dir", None)
            if isinstance(hparams, dict) and log_dir and Path(log_dir).is_dir():
                hparams["time_budget"] = record
                save_hparams_to_yaml(Path(log_dir) / "hparams.yaml", hparams)

    def on_train_end(self, trainer: L.Trainer, pl_module) -> None:
        if self._active and self.total_steps is not None and trainer.global_step < trainer.max_steps:
            rank_zero_warn(
                f"time budget: the run stopped at step {trainer.global_step}, before its schedule's end at "
                f"step {trainer.max_steps} (the hard stop at {self.hard_stop}x the budget, or another "
                f"callback); its LR is not fully decayed"
            )
