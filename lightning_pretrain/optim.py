"""Parameter groups and the per-step learning-rate schedule shared by every objective and fine-tuning mode."""

from __future__ import annotations

from collections.abc import Iterable
from functools import partial
from typing import Literal

import torch
from torch.optim.lr_scheduler import LambdaLR
from transformers import get_scheduler

from lightning_pretrain.errors import InputError

Schedule = Literal["cosine", "linear", "constant"]


def decay_groups(named_params: Iterable[tuple[str, torch.nn.Parameter]], weight_decay: float | None = None,
                 **group_options) -> list[dict]:
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


def scheduler_config(optimizer: torch.optim.Optimizer, schedule: Schedule, warmup_steps: int,
                     total_steps: int | float) -> dict:
    """Linear warmup then cosine/linear decay (or constant), stepped every optimizer step, as Lightning expects.

    A parameter group with a `start_step` key keeps LR 0 until that step, then follows the shared schedule (gradual
    unfreezing: every group exists from step 0, so the optimizer, the scheduler and DDP agree on them throughout,
    also after a resume, and the schedule is a pure function of the step).
    """
    if total_steps == float("inf"):
        raise ValueError("the LR schedule needs a finite run: set trainer.max_steps or trainer.max_epochs")
    if not 0 <= warmup_steps <= total_steps:
        raise ValueError(f"warmup_steps={warmup_steps} must be between 0 and the run's {int(total_steps)} optimizer "
                         f"steps (the LR would never reach its peak); lower --model.warmup_steps")
    name = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}[schedule]
    sched = get_scheduler(name, optimizer, num_warmup_steps=warmup_steps, num_training_steps=int(total_steps))
    starts = [group.get("start_step", 0) for group in optimizer.param_groups]
    if any(starts):  # LambdaLR takes one multiplier per group: the shared shape, gated by the group's start
        sched = LambdaLR(optimizer, [partial(_from_step, sched.lr_lambdas[0], start) for start in starts])
    return {"scheduler": sched, "interval": "step", "frequency": 1}


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
        warmup_steps = module.warmup_steps
        if warmup_steps is None:  # an endless run is refused by scheduler_config, with the reason
            warmup_steps = round(module.warmup_ratio * total_steps) if total_steps != float("inf") else 0
        return {"optimizer": opt, "lr_scheduler": scheduler_config(opt, module.lr_schedule, warmup_steps, total_steps)}
    except ValueError as e:
        raise InputError(str(e)) from e