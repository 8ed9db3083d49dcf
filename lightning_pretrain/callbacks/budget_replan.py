"""What the time budget (`TimeBudget`, budget.py) does to the LR schedule: the first total (`optim.retarget`); then,
every few steps, the throughput again: a run that would miss the budget's end by more than `replan_tolerance` of it
gets a new total and the rest of its schedule stretched to end there (`optim.stretch`: taken steps keep their LRs).
The re-plans are recorded, so a resume replays the same schedule."""

from __future__ import annotations

import lightning as L

from lightning_pretrain import optim
from lightning_pretrain.callbacks import progress
from lightning_pretrain.callbacks.budget_plan import replanned_total, validation_estimate

# max_steps and the schedule's total until the budget fixes them: the steps taken under it lie within the warmup,
# where the LR does not depend on the total
PROVISIONAL_STEPS = 10**9


class Replanning:
    """What `TimeBudget` does to the LR schedule: fix its total, stretch it on drift, replay both on resume (it reads
    the budget's state: `total_steps`, `replans`, its clock marks)."""

    def _apply(self, trainer: L.Trainer, total: int, taken: int) -> None:
        """max_steps and every LR schedule end at `total`; the first `taken` steps' LRs must not change."""
        for config in trainer.lr_scheduler_configs:
            optim.retarget(config.scheduler, total, taken_steps=taken)
        trainer.fit_loop.epoch_loop.max_steps = total
        progress.refresh(trainer)  # our bars say `N steps` from the fixed total on

    def _replan_on_drift(self, trainer: L.Trainer, step: int, now: float) -> None:
        """Every `measure_steps` steps (at least 5% of the run): the recent throughput; a re-plan when it moves the
        run's end more than `replan_tolerance` of the budget away from the budget's end."""
        every = max(self.measure_steps, self.total_steps // 20)
        if self.replan_tolerance is None or self._check is None or step - self._check[0] < every:
            return
        (s0, t0, v0), v1 = self._check, self._val_seconds()
        self._check = (step, now, v1)
        if self.total_steps - step < every or step >= trainer.max_steps:
            return  # the end is near: the hard stop is the safety net
        s_per_step = ((now - t0) - (v1 - v0)) / (step - s0)
        val_s, val_per_step = validation_estimate(trainer, s_per_step, self._val_runs, self._sanity_marks)
        elapsed = self._offset + now - self._start
        args = (self.budget, elapsed, step, self.total_steps, s_per_step, val_s, val_per_step, self.reserve)
        new = trainer.strategy.broadcast(replanned_total(*args, self.replan_tolerance), src=0)
        # never past max_steps / max_epochs given besides max_time (the trainer's own max_steps is now our total)
        new = new if new is None or self._cap is None else min(new, self._cap)
        if new is None or new == self.total_steps:
            return
        old = self.total_steps
        self._stretch(trainer, step, old, new)
        self.replans.append((step, old, new))
        self.total_steps, self.s_per_step = new, s_per_step
        self._log(
            trainer,
            f"time budget: {s_per_step:.3g} s/step over steps {s0}-{step}, the run would end "
            f"{abs(new - old) * s_per_step:.0f} s {'after' if new < old else 'before'} its budget: the schedule "
            f"now ends at step {new:,} (was {old:,}; the LR so far unchanged)",
        )
        for logger in trainer.loggers:
            logger.log_metrics({"train/budget_steps": new, "train/budget_s_per_step": s_per_step}, step=step)

    def _stretch(self, trainer: L.Trainer, at_step: int, old: int, new: int) -> None:
        for config in trainer.lr_scheduler_configs:
            optim.stretch(config.scheduler, at_step, old, new)
        trainer.fit_loop.epoch_loop.max_steps = new
        progress.refresh(trainer)

    def _replay(self, trainer: L.Trainer, cap: int | None) -> int:
        """A resume: the checkpoint's first total and its re-plans, in order (never measured again from scratch);
        a smaller `cap` (max_steps given on resume) ends it earlier. Returns the run's total."""
        self._apply(trainer, self.planned_steps, taken=0)
        for at_step, old, new in self.replans:
            self._stretch(trainer, at_step, old, new)
        if cap is not None and cap < self.total_steps:
            self._apply(trainer, cap, taken=0)
        return min(self.total_steps, cap or self.total_steps)
