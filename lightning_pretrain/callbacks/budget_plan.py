"""The arithmetic of a time budget (`TimeBudget` in budget.py): how many optimizer steps fit in what is left of it,
and what periodic validation costs per step. Pure functions of numbers and the trainer's settings (no clock, no
state), so the budget callback keeps only the measuring and the re-targeting, and benchmarks can plan the same way.
"""

from __future__ import annotations

import math

import lightning as L
from lightning.pytorch.utilities import rank_zero_warn

from lightning_pretrain import compat


def plan_steps(
    budget: float,
    elapsed: float,
    taken: int,
    s_per_step: float,
    val_s: float = 0.0,
    val_per_step: float = 0.0,
    reserve: float = 0.03,
) -> int:
    """The run's total optimizer steps: the `taken` ones plus as many as fit in what is left of `budget` seconds
    after `elapsed`, each costing `s_per_step` and `val_per_step` validations of `val_s` seconds, with `reserve` of
    the budget and one more validation kept for the end (the last validation, checkpoint and export)."""
    left = budget * (1.0 - reserve) - val_s - elapsed
    per_step = max(s_per_step + val_per_step * val_s, 1e-9)
    return taken + max(0, math.floor(left / per_step))


def replanned_total(
    budget: float,
    elapsed: float,
    step: int,
    total: int,
    s_per_step: float,
    val_s: float,
    val_per_step: float,
    reserve: float,
    tolerance: float,
) -> int | None:
    """A new total for a run at `step` of `total` whose recent throughput is `s_per_step`, or None while the planned
    end stays within `tolerance` x the budget of the budget's end (at least one more step is always planned)."""
    new = max(plan_steps(budget, elapsed, step, s_per_step, val_s, val_per_step, reserve), step + 1)
    per_step = s_per_step + val_per_step * val_s
    return new if abs(new - total) * per_step > tolerance * budget else None


def validations_per_step(trainer: L.Trainer, s_per_step: float) -> float:
    """How many validation runs an optimizer step brings on average (Lightning's `val_check_interval` logic)."""
    if not trainer.enable_validation:
        return 0.0
    interval_s = compat.val_check_time_interval(trainer)  # val_check_interval given as a time
    if interval_s:
        return s_per_step / interval_s
    every = trainer.val_check_batch
    if every is None or every == float("inf"):
        return 0.0  # an endless epoch: validated only when it ends
    batches, per_epoch = trainer.num_training_batches, trainer.check_val_every_n_epoch
    per_batch = 1 / every if per_epoch is None or batches == float("inf") else (batches // every) / batches / per_epoch
    return per_batch * trainer.accumulate_grad_batches


def validation_estimate(
    trainer: L.Trainer, s_per_step: float, val_runs: list[float], sanity_marks: list[float]
) -> tuple[float, float]:
    """(seconds per validation run, validation runs per optimizer step): the mean of the timed `val_runs`, else
    estimated from the sanity check's batch end times `sanity_marks` (its first batch left out)."""
    per_step = validations_per_step(trainer, s_per_step)
    if not trainer.enable_validation:
        return 0.0, 0.0
    if val_runs:
        return sum(val_runs) / len(val_runs), per_step
    batches = sum(trainer.num_val_batches or [float("inf")])
    marks = sanity_marks
    if len(marks) >= 2 and batches != float("inf"):
        # the sanity check's batches after its first (which starts the loader and warms up eval)
        per_batch = (marks[-1] - marks[1]) / (len(marks) - 2) if len(marks) >= 3 else marks[1] - marks[0]
        return per_batch * batches, per_step
    if per_step:
        rank_zero_warn(
            "time budget: the validation time could not be measured (no sanity check and no "
            "validation among the measured steps), so it is left to --time_budget.reserve"
        )
    return 0.0, per_step
