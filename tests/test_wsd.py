"""`lr_schedule: wsd` (warmup-stable-decay): the LR at the phase boundaries for each decay shape against the closed
forms, bad options refused, and the decay of a stable-phase checkpoint resumed with a new total (its point)."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import FAST, REPO, cli, only_run_dir
from torch.optim.lr_scheduler import LambdaLR

from lightning_pretrain import optim
from lightning_pretrain.errors import InputError

PEAK = 0.5
SHAPES = {
    "linear": lambda p: 1.0 - p,
    "cosine": lambda p: 0.5 * (1.0 + math.cos(math.pi * p)),
    "1-sqrt": lambda p: 1.0 - math.sqrt(p),
}


def lrs(
    total: int, warmup: int, wsd: optim.WSD | None, schedule: str = "wsd", groups: list[dict] | None = None
) -> list[list[float]]:
    """The LR of each group at every optimizer step 0..total-1, as training sees it (set before the step)."""
    opt = torch.optim.SGD(groups or [{"params": [torch.nn.Parameter(torch.zeros(1))]}], lr=PEAK)
    sched = optim.scheduler_config(opt, schedule, warmup, total, wsd)["scheduler"]
    out = []
    for _ in range(total):
        out.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    return out


@pytest.mark.parametrize("min_lr_ratio", [0.0, 0.1])
@pytest.mark.parametrize("shape", SHAPES)
def test_lr_at_the_phase_boundaries(shape, min_lr_ratio):
    total, warmup, decay = 100, 10, 20  # decay_fraction 0.2: steps 80..99 decay
    got = [g[0] for g in lrs(total, warmup, optim.WSD(decay_shape=shape, min_lr_ratio=min_lr_ratio))]

    def at(factor: float) -> float:
        return PEAK * (min_lr_ratio + (1 - min_lr_ratio) * factor)

    assert got[0] == pytest.approx(at(0.0))  # warmup starts from the end value
    assert got[warmup // 2] == pytest.approx(at(0.5))
    assert got[warmup - 1] == pytest.approx(at((warmup - 1) / warmup)) and got[warmup - 1] < PEAK
    assert got[warmup : total - decay + 1] == [pytest.approx(PEAK)] * (total - decay - warmup + 1)  # stable
    first = total - decay + 1  # the first step below the peak
    assert got[first] == pytest.approx(at(SHAPES[shape](1 / decay))) and got[first] < PEAK
    assert got[total // 2 + 40] == pytest.approx(at(SHAPES[shape](10 / decay)))
    assert got[-1] == pytest.approx(at(SHAPES[shape]((decay - 1) / decay)))
    assert all(a > b for a, b in zip(got[total - decay :], got[first:]))  # strictly falling through the decay
    assert got[-1] > PEAK * min_lr_ratio  # the end value is reached at step `total`, after the last step


def test_the_shapes_differ_and_decay_steps_override_the_fraction():
    last = {shape: lrs(100, 0, optim.WSD(decay_shape=shape))[89][0] for shape in SHAPES}
    assert len({round(v, 9) for v in last.values()}) == 3  # the shape is passed on, not a fixed default
    got = [g[0] for g in lrs(100, 0, optim.WSD(decay_fraction=0.5, decay_steps=5, decay_shape="linear"))]
    assert got[:96] == [pytest.approx(PEAK)] * 96 and got[96] == pytest.approx(PEAK * 0.8)
    default = [g[0] for g in lrs(100, 0, None)]  # no `wsd` given (fine-tuning): 20% 1-sqrt decay
    assert default[80] == pytest.approx(PEAK) and default[81] == pytest.approx(PEAK * (1 - math.sqrt(1 / 20)))


def test_gradual_unfreezing_gates_the_wsd_shape():
    groups = [
        {"params": [torch.nn.Parameter(torch.zeros(1))]},
        {"params": [torch.nn.Parameter(torch.zeros(1))], "start_step": 50},
    ]
    got = lrs(100, 10, optim.WSD(decay_steps=10, decay_shape="linear"), groups=groups)
    assert [g[1] for g in got[:50]] == [0.0] * 50 and got[50][1] == pytest.approx(PEAK)
    assert got[95][1] == got[95][0] == pytest.approx(PEAK * 0.5)


@pytest.mark.parametrize(
    "options", [{"decay_fraction": 1.5}, {"decay_fraction": -0.1}, {"decay_steps": -1}, {"min_lr_ratio": 1.5}]
)
def test_bad_options_are_refused(options):
    with pytest.raises(InputError, match=f"wsd.{next(iter(options))}"):
        optim.WSD(**options)


@pytest.mark.parametrize(
    ("warmup", "wsd"),
    [(10, optim.WSD(decay_steps=95)), (0, optim.WSD(decay_steps=101)), (30, optim.WSD(decay_fraction=0.8))],
)
def test_decay_longer_than_the_run_is_refused(warmup, wsd):
    with pytest.raises(ValueError, match="exceed the run's 100 optimizer steps"):
        lrs(100, warmup, wsd)
    lrs(100, 0, optim.WSD(decay_fraction=1.0))  # the whole run decaying is allowed


def test_a_resumed_scheduler_takes_this_runs_total_and_decay_from_the_saved_step():
    """The state dict carries the step count, not the multipliers' arguments: the new run's total and decay win, from
    the first resumed step on (plain LambdaLR would run that step at the optimizer's restored, old LR)."""

    def make(total, decay, cls=None):
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=PEAK)
        sched = optim.scheduler_config(opt, "wsd", 5, total, optim.WSD(decay_steps=decay, decay_shape="linear"))
        sched = sched["scheduler"]
        if cls is not None:
            sched = cls(opt, sched.lr_lambdas)
        return opt, sched

    opt, sched = make(100, 0)  # a stable run, saved at step 60
    for _ in range(60):
        opt.step()
        sched.step()
    saved = opt.state_dict(), sched.state_dict()
    for cls, first in [(None, PEAK * 0.5), (LambdaLR, PEAK)]:  # LambdaLR: the negative control
        opt, sched = make(80, 40, cls)  # decay over 40..79: the resumed step 60 is half-way down
        opt.load_state_dict(saved[0])  # Lightning's order: the optimizer, then the scheduler
        sched.load_state_dict(saved[1])
        assert sched.last_epoch == 60 and opt.param_groups[0]["lr"] == pytest.approx(first)
        opt.step()
        sched.step()
        assert opt.param_groups[0]["lr"] == pytest.approx(PEAK * (1 - 21 / 40))


def lr_log(run) -> dict[int, float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = {}
    for events in sorted(run.glob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
        acc.Reload()
        tag = next(t for t in acc.Tags()["scalars"] if t.startswith("lr-AdamW"))  # the decayed group (pg1)
        out.update({e.step: e.value for e in acc.Scalars(tag)})
    return out


def test_cli_decays_a_stable_phase_checkpoint_with_a_new_total(workdir, tiny_corpus):
    """Train warmup + stable for 6 steps, then resume the checkpoint with 10 steps and a 4-step linear decay: the LR
    holds the peak through the resumed step 6 and falls from step 7, as in one 10-step run of that schedule."""
    tiny = [
        "fit",
        "-c",
        str(REPO / "configs/pretrain/clm_tiny.yaml"),
        *FAST,
        "--data.source",
        str(tiny_corpus),
        "--model.init_args.model.init_args.n_embd",
        "32",
        "--model.init_args.model.init_args.n_layer",
        "1",
        "--model.init_args.model.init_args.n_head",
        "2",
        "--model.init_args.model.init_args.n_positions",
        "32",
        "--data.vocab_size",
        "300",
        "--data.seq_len",
        "32",
        "--data.batch_size",
        "4",
        "--trainer.val_check_interval",
        "100",
        "--trainer.limit_val_batches",
        "1",
        "--export.enabled",
        "false",
        "--trainer.logger.init_args.name",
        "wsd",
        "--model.init_args.lr_schedule",
        "wsd",
    ]
    cli(*tiny, "--trainer.max_steps", "6", "--model.init_args.wsd.decay_steps", "0")
    stable = only_run_dir(workdir, "wsd")
    ckpt = next(stable.glob("checkpoints/*.ckpt"))
    assert torch.load(ckpt, weights_only=True)["global_step"] == 6
    cli(
        *tiny,
        "--ckpt_path",
        str(ckpt),
        "--trainer.max_steps",
        "10",
        "--model.init_args.wsd.decay_steps",
        "4",
        "--model.init_args.wsd.decay_shape",
        "linear",
    )
    decayed = only_run_dir(workdir, "wsd")
    assert decayed != stable

    peak = lr_log(stable)[5]
    assert lr_log(stable)[0] == 0.0 and lr_log(stable)[2] == pytest.approx(peak)  # warmup 2, then stable
    got = lr_log(decayed)  # steps 6..9 (Lightning logs them one lower after a checkpoint saved at the run's end)
    assert [got[s] for s in sorted(got)] == pytest.approx([peak, peak * 0.75, peak * 0.5, peak * 0.25])
    end = torch.load(next(decayed.glob("checkpoints/*.ckpt")), weights_only=True)
    assert end["global_step"] == 10 and end["lr_schedulers"][0]["last_epoch"] == 10
    assert not {"warmup_steps", "lr_schedule", "wsd"} & set(end["hyper_parameters"])
