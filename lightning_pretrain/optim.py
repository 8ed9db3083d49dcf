"""Parameter groups and the per-step learning-rate schedule shared by every objective and fine-tuning mode."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from functools import partial
from typing import Literal

import torch
from torch.optim.lr_scheduler import LambdaLR
from transformers import get_scheduler, get_wsd_schedule

from lightning_pretrain.errors import InputError

Schedule = Literal["cosine", "linear", "constant", "wsd"]


@dataclass(frozen=True)
class WSD:
    """Warmup-stable-decay (`lr_schedule: wsd`): warmup, the peak LR held, then a decay over the run's last steps.

    Its point: a stable-phase checkpoint resumed with a new `trainer.max_steps` decays from there (the schedule
    options are not saved as hyperparameters, so the command line's values win).

    Args:
        decay_fraction: fraction of the run's optimizer steps spent decaying (its last ones).
        decay_steps: decay over exactly the last N optimizer steps (overrides decay_fraction).
        decay_shape: 'linear', 'cosine' or '1-sqrt' (1 - sqrt(progress): Hägele et al. 2024).
        min_lr_ratio: the LR the decay ends at (and warmup starts from), as a fraction of the peak.
    """

    decay_fraction: float = 0.2
    decay_steps: int | None = None
    decay_shape: Literal["linear", "cosine", "1-sqrt"] = "1-sqrt"
    min_lr_ratio: float = 0.0

    def __post_init__(self):
        if not 0.0 <= self.decay_fraction <= 1.0:
            raise InputError(f"wsd.decay_fraction must be in [0, 1], got {self.decay_fraction}")
        if self.decay_steps is not None and self.decay_steps < 0:
            raise InputError(f"wsd.decay_steps must be >= 0, got {self.decay_steps}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise InputError(f"wsd.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")

    def num_decay_steps(self, total_steps: int) -> int:
        return self.decay_steps if self.decay_steps is not None else round(self.decay_fraction * total_steps)


def decay_groups(
    named_params: Iterable[tuple[str, torch.nn.Parameter]], weight_decay: float | None = None, **group_options
) -> list[dict]:
    """Split trainable parameters into a decayed group (matrices, embeddings) and an undecayed one.

    Biases and normalisation scales are the 1-D parameters of every HF architecture; decaying them only pulls
    LayerNorm/RMSNorm gains towards zero (the nanoGPT / BERT rule). `weight_decay=None` keeps the optimizer's own
    value for the decayed group. Frozen parameters are left out, so they cost no optimizer state.
    """
    decay, no_decay = [], []
    for _, p in named_params:
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, **group_options}, {"params": no_decay, "weight_decay": 0.0, **group_options}]
    if weight_decay is not None:
        groups[0]["weight_decay"] = weight_decay
    return [g for g in groups if g["params"]]


def scheduler_config(
    optimizer: torch.optim.Optimizer,
    schedule: Schedule,
    warmup_steps: int | None,
    total_steps: int | float,
    wsd: WSD | None = None,
    warmup_ratio: float = 0.0,
) -> dict:
    """Linear warmup then cosine/linear decay (or constant, or `wsd`'s stable phase and late decay), stepped every
    optimizer step, as Lightning expects. The step-`s` LR is the peak times the schedule at `s`; a decay over `D`
    steps of a `T`-step run starts at step `T - D` (still the peak) and reaches its end value at step `T`.

    A parameter group with a `start_step` key keeps LR 0 until that step, then follows the shared schedule (gradual
    unfreezing: every group exists from step 0, so the optimizer, the scheduler and DDP agree on them throughout,
    also after a resume, and the schedule is a pure function of the step).

    `warmup_steps=None` warms up over `warmup_ratio` of the total. The scheduler keeps how to rebuild its
    multipliers for another total: `retarget` (the time budget's).
    """
    starts = [group.get("start_step", 0) for group in optimizer.param_groups]
    build = partial(schedule_lambdas, starts, schedule, warmup_steps, wsd=wsd, warmup_ratio=warmup_ratio)
    return {
        "scheduler": _ResumableLambdaLR(optimizer, build(total_steps), rebuild=build),
        "interval": "step",
        "frequency": 1,
    }


def schedule_lambdas(
    starts: list[int],
    schedule: Schedule,
    warmup_steps: int | None,
    total_steps: int | float,
    wsd: WSD | None = None,
    warmup_ratio: float = 0.0,
) -> list:
    """The per-group LR multipliers (functions of the step) of `scheduler_config`, for groups starting at `starts`;
    ValueError for a run they do not fit."""
    if total_steps == float("inf"):
        raise ValueError(
            "the LR schedule needs a finite run: set trainer.max_steps, trainer.max_epochs or "
            "trainer.max_time (a time budget)"
        )
    if warmup_steps is None:
        warmup_steps = round(warmup_ratio * total_steps)
    if not 0 <= warmup_steps <= total_steps:
        raise ValueError(
            f"warmup_steps={warmup_steps} must be between 0 and the run's {int(total_steps)} optimizer "
            f"steps (the LR would never reach its peak); lower --model.warmup_steps"
        )
    if schedule == "wsd":
        wsd = wsd or WSD()
        decay = wsd.num_decay_steps(int(total_steps))
        if warmup_steps + decay > total_steps:
            raise ValueError(
                f"wsd: warmup_steps={warmup_steps} + {decay} decay steps exceed the run's "
                f"{int(total_steps)} optimizer steps; lower --model.warmup_steps or the wsd decay"
            )
        sched = get_wsd_schedule(
            _stand_in(),
            num_warmup_steps=warmup_steps,
            num_decay_steps=decay,
            num_training_steps=int(total_steps),
            decay_type=wsd.decay_shape,
            min_lr_ratio=wsd.min_lr_ratio,
        )
    else:
        name = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}[schedule]
        sched = get_scheduler(name, _stand_in(), num_warmup_steps=warmup_steps, num_training_steps=int(total_steps))
    # LambdaLR takes one multiplier per group: the shared shape, gated by the group's start
    return [partial(_from_step, sched.lr_lambdas[0], start) if start else sched.lr_lambdas[0] for start in starts]


def _stand_in() -> torch.optim.Optimizer:
    """An optimizer for HF's schedule constructors to build their multipliers on (a LambdaLR sets the LR of the
    optimizer it is given: never the run's, which may be mid-run)."""
    return torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)


def retarget(scheduler: LambdaLR, total_steps: int, taken_steps: int = 0) -> None:
    """Point `scheduler_config`'s scheduler at a run of `total_steps` optimizer steps (the time budget fixes the
    total mid-run): its multipliers become those it would have had if built for that total, and the current LR
    follows at once. The `taken_steps` steps already taken must keep their multipliers (ValueError otherwise, as
    for a total the warmup or decay does not fit): the LR is then the new schedule's at every step of the run."""
    rebuild = getattr(scheduler, "rebuild", None)
    if rebuild is None:
        raise ValueError(f"{type(scheduler).__name__} cannot change its total; use optim.scheduler_config")
    lambdas = rebuild(total_steps)
    for i, (old, new) in enumerate(zip(scheduler.lr_lambdas, lambdas, strict=True)):
        changed = next(
            (s for s in range(taken_steps) if not math.isclose(old(s), new(s), rel_tol=1e-9, abs_tol=1e-12)), None
        )
        if changed is not None:
            raise ValueError(
                f"the LR schedule of a {total_steps}-step run differs at step {changed} (group {i}), "
                f"which was already taken: the first {taken_steps} steps must not depend on the "
                f"total (lie within the warmup)"
            )
    scheduler.lr_lambdas = lambdas
    scheduler.apply_current_lr()


def stretch(scheduler: LambdaLR, at_step: int, old_total: int, new_total: int) -> None:
    """Re-time the rest of a running schedule, from `at_step` on, to end at `new_total` instead of `old_total` (the
    time budget re-plans when the machine's speed drifts): step `t > at_step` takes the multiplier the schedule had
    at `at_step + (t - at_step) * (old_total - at_step) / (new_total - at_step)`. Taken steps keep their LRs, the LR
    stays continuous, and the schedule still reaches its end value (fully decayed) at the new last step."""
    if not at_step < min(old_total, new_total):
        raise ValueError(f"cannot stretch a {old_total}-step schedule at step {at_step} to end at {new_total}")
    scale = (old_total - at_step) / (new_total - at_step)
    scheduler.lr_lambdas = [partial(_stretched, fn, at_step, scale) for fn in scheduler.lr_lambdas]
    scheduler.apply_current_lr()


def _stretched(shape, at_step: int, scale: float, step: int) -> float:
    return shape(step) if step <= at_step else shape(at_step + (step - at_step) * scale)


class _ResumableLambdaLR(LambdaLR):
    """LambdaLR whose LR after `load_state_dict` is this run's schedule at the checkpoint's step.

    The multipliers are `functools.partial`s, whose arguments a state dict does not carry: a resume keeps the step
    count and takes this run's total and decay (WSD's decay from a stable-phase checkpoint). But the optimizer's
    restored LR is the old schedule's, and plain LambdaLR would use it for the first resumed step. `rebuild(total)`
    makes the multipliers for another total (`retarget`); it is not part of the state dict.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, lr_lambdas, rebuild=None):
        self.rebuild = rebuild
        super().__init__(optimizer, lr_lambdas)

    def state_dict(self) -> dict:
        state = super().state_dict()
        state.pop("rebuild", None)
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        self.apply_current_lr()

    def apply_current_lr(self) -> None:
        """Set every group's LR to the schedule's at the current step."""
        for group, base, fn in zip(self.optimizer.param_groups, self.base_lrs, self.lr_lambdas, strict=True):
            if isinstance(group["lr"], torch.Tensor):  # a tensor LR (capturable optimizers) is updated in place
                group["lr"].fill_(base * fn(self.last_epoch))
            else:
                group["lr"] = base * fn(self.last_epoch)
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]


def _from_step(shape, start: int, step: int) -> float:
    return shape(step) if step >= start else 0.0


def build_optimizer(factory, groups: list[dict]) -> torch.optim.Optimizer:
    """The configured optimizer over `groups`; its own argument checks (a negative LR, betas outside [0, 1)) become
    one-line errors."""
    try:
        return factory(groups)
    except ValueError as e:
        raise ValueError(f"optimizer: {e} (check --model.optimizer)") from e


def finetune_optimizers(module) -> dict:
    """Fine-tuning's `configure_optimizers` for a task module (its `model`, `trainability`, `optimizer`,
    `lr_schedule`, `warmup_steps`, `warmup_ratio`): the optimizer over the trainability policy's groups (a group's
    LR is the optimizer's times its `lr_scale`: layer-wise decay) and the per-step schedule."""
    total_steps = module.trainer.estimated_stepping_batches
    groups = module.trainability.param_groups(module.model, module.trainer)
    try:
        if not any(g["params"] for g in groups):
            raise ValueError("the fine-tuning mode leaves no parameter to train")
        opt = build_optimizer(module.optimizer, groups)
        for g in opt.param_groups:
            g["lr"] = g["lr"] * g.get("lr_scale", 1.0)
        # warmup_steps None: warmup_ratio of the total (also of one a time budget fixes later); an endless run is
        # refused by scheduler_config, with the reason. `lr_schedule: wsd` with WSD's defaults: the fine-tuning
        # modules take no `wsd` option
        sched = scheduler_config(
            opt, module.lr_schedule, module.warmup_steps, total_steps, warmup_ratio=module.warmup_ratio
        )
        return {"optimizer": opt, "lr_scheduler": sched}
    except ValueError as e:
        raise InputError(str(e)) from e
