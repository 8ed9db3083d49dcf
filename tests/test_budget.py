"""`--trainer.max_time` as a time budget (`TimeBudget`): the total steps fixed from the measured throughput (a fake
clock makes it exact), the LR schedule ending there, max_steps as a cap, a resume that keeps the recorded total and
replays the same LRs, bad budgets refused in one line, and one real (wall-clock) run."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys

import lightning as L
import pytest
import torch
from conftest import REPO, cli, only_run_dir
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_finetune_modes import classifier, sentiment_csv, tiny_backbone  # noqa: F401 (fixtures)

from lightning_pretrain import optim
from lightning_pretrain.callbacks import budget, budget_plan
from lightning_pretrain.errors import InputError
from lightning_pretrain.finetune import Full

# the fake clock: every training step takes DT seconds, every validation batch (sanity check included) VAL_DT
CLOCK = {"now": 0.0, "dt": 0.5, "val_dt": 0.5, "crash_at": None, "slow_at": None, "slow_dt": None}


class Crash(Exception):
    pass


class Tick(L.Callback):
    """Advances the fake clock as the run goes (before TimeBudget reads it: user callbacks come first), and crashes
    the run at step `crash_at` if asked (after the checkpoint of the step before)."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == CLOCK["crash_at"]:
            raise Crash(f"crashed at step {trainer.global_step}")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        slow = CLOCK["slow_at"] is not None and trainer.global_step > CLOCK["slow_at"]
        CLOCK["now"] += CLOCK["slow_dt"] if slow else CLOCK["dt"]

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        CLOCK["now"] += CLOCK["val_dt"]


@pytest.fixture(autouse=True)
def fake_clock(monkeypatch):
    CLOCK.update(now=1000.0, dt=0.5, val_dt=0.5, crash_at=None, slow_at=None, slow_dt=None)
    monkeypatch.setattr(budget, "clock", lambda: CLOCK["now"])


GPT = [
    "-c",
    str(REPO / "configs/pretrain/clm_tiny.yaml"),
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
]
BERT = [
    "-c",
    str(REPO / "configs/pretrain/mlm_tiny.yaml"),
    "--model.init_args.model.init_args.hidden_size",
    "32",
    "--model.init_args.model.init_args.num_hidden_layers",
    "1",
    "--model.init_args.model.init_args.num_attention_heads",
    "2",
    "--model.init_args.model.init_args.intermediate_size",
    "64",
    "--data.vocab_size",
    "300",
    "--data.seq_len",
    "32",
    "--data.batch_size",
    "4",
]
# one minute at 0.5 s/step, a validation (2 batches, 1 s) every 10 steps; steps 1-5 measured, inside the warmup of 6
BUDGET = [
    "--trainer.max_steps",
    "-1",
    "--trainer.max_time",
    "00:00:01:00",
    "--trainer.val_check_interval",
    "10",
    "--trainer.limit_val_batches",
    "2",
    "--trainer.log_every_n_steps",
    "1",
    "--trainer.enable_progress_bar",
    "false",
    "--trainer.enable_model_summary",
    "false",
    "--export.enabled",
    "false",
    "--trainer.callbacks+=test_budget.Tick",
    "--model.init_args.warmup_steps",
    "6",
    "--time_budget.skip_steps",
    "1",
    "--time_budget.measure_steps",
    "4",
    "--time_budget.reserve",
    "0.05",
]
# 60 x 0.95 - 1 s (the last validation) - 2.5 s (5 steps) = 53.5 s left, at 0.5 s + 1 s / 10 per step
EXPECTED = 5 + math.floor(53.5 / 0.6)


def args(model: list[str], workdir, corpus, name: str, *extra: str) -> list[str]:
    return ["fit", *model, "--data.source", str(corpus), *BUDGET, "--trainer.logger.init_args.name", name, *extra]


def scalars(run, tag_prefix: str) -> dict[int, float]:
    out = {}
    for events in sorted(run.glob("events.out.tfevents.*"), key=lambda p: p.stat().st_mtime):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
        acc.Reload()
        tag = next((t for t in acc.Tags()["scalars"] if t.startswith(tag_prefix)), None)
        if tag is not None:
            out.update({e.step: e.value for e in acc.Scalars(tag)})
    return out


def expected_lrs(total: int, peak: float, schedule: str = "cosine", wsd: optim.WSD | None = None) -> list[float]:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=peak)
    sched = optim.scheduler_config(opt, schedule, 6, total, wsd)["scheduler"]
    out = []
    for _ in range(total + 1):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out  # the LR of steps 0..total-1, then the end value


def last_checkpoint(run) -> dict:
    return torch.load(max(run.glob("checkpoints/*.ckpt"), key=lambda p: p.stat().st_mtime), weights_only=True)


@pytest.mark.parametrize("extra", [[], ["--trainer.max_steps", "500"]], ids=["max_time", "max_steps_beyond"])
def test_the_total_is_fixed_from_the_throughput_and_the_schedule_ends_there(workdir, tiny_corpus, caplog, extra):
    caplog.set_level("INFO", logger="lightning_pretrain")
    cli(*args(GPT, workdir, tiny_corpus, "budget", *extra))
    run = only_run_dir(workdir, "budget")
    assert (
        f"time budget 0:01:00: 0.5 s/step measured over steps 1-5 + 1 s per validation, the schedule ends at "
        f"step {EXPECTED}"
    ) in caplog.text
    assert scalars(run, "train/budget_steps") == {5: EXPECTED}
    assert "total_steps: " + str(EXPECTED) in (run / "hparams.yaml").read_text()
    ckpt = last_checkpoint(run)
    assert ckpt["global_step"] == EXPECTED and ckpt["lr_schedulers"][0]["last_epoch"] == EXPECTED
    assert ckpt["callbacks"]["TimeBudget"]["total_steps"] == EXPECTED
    assert [g["lr"] for g in ckpt["optimizer_states"][0]["param_groups"]] == [0.0, 0.0]  # cosine's end value
    # every step's LR is that of a schedule built for EXPECTED steps from the start (the measured ones included)
    got = scalars(run, "lr-AdamW")
    want = expected_lrs(EXPECTED, 2e-3)
    assert sorted(got) == list(range(EXPECTED)) and [got[s] for s in range(EXPECTED)] == pytest.approx(want[:-1])


def test_another_objective_and_wsd_decay_to_their_end_value(workdir, tiny_corpus):
    wsd = optim.WSD(decay_fraction=0.5, decay_shape="linear", min_lr_ratio=0.1)
    cli(
        *args(
            BERT,
            workdir,
            tiny_corpus,
            "budget_mlm",
            "--model.init_args.lr_schedule",
            "wsd",
            "--model.init_args.wsd.decay_fraction",
            "0.5",
            "--model.init_args.wsd.decay_shape",
            "linear",
            "--model.init_args.wsd.min_lr_ratio",
            "0.1",
            "--trainer.max_time",
            "00:00:00:20",
        )
    )
    run = only_run_dir(workdir, "budget_mlm")
    total = 5 + math.floor((20 * 0.95 - 1 - 2.5) / 0.6)
    ckpt = last_checkpoint(run)
    assert ckpt["global_step"] == total and ckpt["callbacks"]["TimeBudget"]["total_steps"] == total
    assert ckpt["optimizer_states"][0]["param_groups"][0]["lr"] == pytest.approx(2e-3 * 0.1)  # min_lr_ratio
    got = scalars(run, "lr-AdamW")
    assert [got[s] for s in range(total)] == pytest.approx(expected_lrs(total, 2e-3, "wsd", wsd)[:-1])


def test_max_steps_before_the_budget_ends_the_run_and_the_schedule(workdir, tiny_corpus, caplog):
    caplog.set_level("INFO", logger="lightning_pretrain")
    cli(*args(GPT, workdir, tiny_corpus, "capped", "--trainer.max_steps", "30"))
    run = only_run_dir(workdir, "capped")
    assert (
        f"the schedule ends at step 30 (--trainer.max_steps / max_epochs end the run first; the budget allows "
        f"{EXPECTED})" in caplog.text
    )
    ckpt = last_checkpoint(run)
    assert ckpt["global_step"] == 30 and ckpt["optimizer_states"][0]["param_groups"][0]["lr"] == 0.0


def test_a_resume_keeps_the_recorded_total_and_replays_the_same_lrs(workdir, tiny_corpus, caplog):
    """Crashed at step 50 (last.ckpt of step 47), resumed at a clock 10x slower: no new measurement, the same LR at
    every step, the same last step as the uninterrupted run."""
    caplog.set_level("INFO", logger="lightning_pretrain")
    assert EXPECTED == 2 * 47  # a checkpoint every 47 steps: one mid-run, one at the end
    ckpts = [
        "--trainer.callbacks+=ModelCheckpoint",
        "--trainer.callbacks.every_n_train_steps",
        "47",
        "--trainer.callbacks.save_last",
        "true",
    ]
    cli(*args(GPT, workdir, tiny_corpus, "whole", *ckpts))
    whole = only_run_dir(workdir, "whole")

    CLOCK["crash_at"] = 50
    with pytest.raises(Crash):
        cli(*args(GPT, workdir, tiny_corpus, "crashed", *ckpts))
    crashed = only_run_dir(workdir, "crashed")
    saved = torch.load(crashed / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 47 and saved["callbacks"]["TimeBudget"]["total_steps"] == EXPECTED

    CLOCK.update(crash_at=None, dt=5.0)  # measuring again would fix a total about 10x smaller
    caplog.clear()
    # (re-planning on drift off: with it, a 10x slower machine re-plans, test_a_drift_in_speed_replans_the_rest)
    cli(
        *args(
            GPT,
            workdir,
            tiny_corpus,
            "crashed",
            *ckpts,
            "--ckpt_path",
            "last",
            "--time_budget.replan_tolerance",
            "null",
        )
    )
    assert only_run_dir(workdir, "crashed") == crashed  # `last` continued the crashed run's directory
    assert f"the schedule ends at step {EXPECTED} (the checkpoint's total; not measured again)" in caplog.text
    assert "measured over" not in caplog.text
    end = torch.load(crashed / "checkpoints" / "last.ckpt", weights_only=True)
    assert end["global_step"] == last_checkpoint(whole)["global_step"] == EXPECTED
    assert end["optimizer_states"][0]["param_groups"][0]["lr"] == 0.0
    want, got = scalars(whole, "lr-AdamW"), scalars(crashed, "lr-AdamW")
    assert sorted(got) == sorted(want) == list(range(EXPECTED))
    assert got == want  # the same float at every step, before and after the resume


@pytest.mark.parametrize("slow_dt", [1.0, 0.25], ids=["slower", "faster"])
def test_a_drift_in_speed_replans_the_rest_and_a_resume_replays_it(workdir, tiny_corpus, caplog, slow_dt):
    """After step 30 the machine is 2x slower (the first plan would overrun the minute by ~45%) or 2x faster (it
    would end ~30% early): the rest is re-planned, the LRs before the re-plan are the first plan's, the LR keeps
    falling and reaches the schedule's end value at the new last step, and the run ends within the budget's
    tolerance. A crash after the re-plan, resumed from the step-47 checkpoint, replays the same LR at every step and
    ends at the same step."""
    caplog.set_level("INFO", logger="lightning_pretrain")
    ckpts = ["--trainer.callbacks+=ModelCheckpoint", "--trainer.callbacks.every_n_train_steps", "47"]
    ckpts += ["--trainer.callbacks.save_last", "true"]
    CLOCK.update(slow_at=30, slow_dt=slow_dt)
    cli(*args(GPT, workdir, tiny_corpus, "drift", *ckpts))
    # (+1: the sanity check, outside the budget as in Lightning)
    assert 60 * 0.85 + 1 <= CLOCK["now"] - 1000.0 <= 60 * 1.05 + 1
    run = only_run_dir(workdir, "drift")
    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["callbacks"]["TimeBudget"]
    assert state["planned_steps"] == EXPECTED and state["replans"], state
    at, old, _ = state["replans"][0]
    last = state["replans"][-1][2]
    assert old == EXPECTED and 30 < at < 47 and at < last and (last < EXPECTED) == (slow_dt > 0.5), state
    assert f"the schedule now ends at step {last}" in caplog.text
    got = scalars(run, "lr-AdamW")
    assert sorted(got) == list(range(last))  # the run ended at the re-planned step
    # the LRs are the first plan's, stretched at each recorded re-plan; the schedule's end value at the last step
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2e-3)
    sched, want = optim.scheduler_config(opt, "cosine", 6, EXPECTED)["scheduler"], []
    replans = list(state["replans"])
    for step in range(last + 1):
        while replans and replans[0][0] == step:
            optim.stretch(sched, *replans.pop(0))
        want.append(opt.param_groups[0]["lr"])
        opt.step(), sched.step()
    assert [got[s] for s in range(last)] == pytest.approx(want[:last]) and want[last] == pytest.approx(0.0, abs=1e-12)
    assert [got[s] for s in range(at + 1)] == pytest.approx(expected_lrs(EXPECTED, 2e-3)[: at + 1])
    after_warmup = [got[s] for s in range(6, last)]
    assert all(a >= b for a, b in zip(after_warmup, after_warmup[1:]))

    CLOCK.update(now=1000.0, crash_at=60)
    with pytest.raises(Crash):
        cli(*args(GPT, workdir, tiny_corpus, "drift_crashed", *ckpts))
    crashed = only_run_dir(workdir, "drift_crashed")
    CLOCK.update(crash_at=None)
    cli(*args(GPT, workdir, tiny_corpus, "drift_crashed", *ckpts, "--ckpt_path", "last"))
    assert scalars(crashed, "lr-AdamW") == got  # the same float at every step, before and after the resume


def test_stretch_keeps_taken_steps_and_ends_at_the_new_total():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = optim.scheduler_config(opt, "cosine", 5, 100)["scheduler"]
    seen = []
    for _ in range(40):
        seen.append(opt.param_groups[0]["lr"])
        opt.step(), sched.step()
    before = opt.param_groups[0]["lr"]
    optim.stretch(sched, 40, 100, 70)
    assert opt.param_groups[0]["lr"] == before  # continuous at the re-plan
    assert [sched.lr_lambdas[0](s) for s in range(40)] == pytest.approx(seen)
    for _ in range(30):
        opt.step(), sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="cannot stretch"):
        optim.stretch(sched, 70, 70, 80)


def refused(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as e:
        cli(*argv)
    assert e.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, errors
    return errors[0]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            ["--model.init_args.warmup_steps", "3"],
            r"measures the throughput over optimizer steps 1-5, which must lie "
            r"within the LR warmup.*warmup_steps is 3: raise it to at least 5",
        ),
        (
            ["--trainer.max_time", "00:00:00:02"],
            r"max_time 0:00:02 ran out at step 4, before the time budget had "
            r"measured the throughput \(steps 1-5\)",
        ),
        (
            ["--trainer.max_time", "00:00:00:04"],
            r"max_time 0:00:04 is too short for a time budget: measuring the "
            r"throughput \(0.5 s/step measured over steps 1-5\) took 2 s",
        ),
        (
            ["--model.init_args.warmup_steps", "50", "--trainer.max_time", "00:00:00:20"],
            r"time budget 0:00:20 allows 30 optimizer steps \(0.5 s/step measured over steps 1-5\): warmup_steps=50 must "
            r"be between 0 and the run's 30 optimizer steps",
        ),
        (["--time_budget.reserve", "1.5"], r"--time_budget.reserve must be in \[0, 1\), got 1.5"),
    ],
    ids=[
        "warmup_shorter_than_the_measurement",
        "out_of_time_while_measuring",
        "no_time_left_after_measuring",
        "warmup_longer_than_the_budget",
        "bad_option",
    ],
)
def test_impossible_budgets_are_one_error_line(workdir, tiny_corpus, capsys, extra, message):
    assert re.search(message, refused(capsys, *args(GPT, workdir, tiny_corpus, "bad", *extra)))


@pytest.mark.parametrize(
    ("warmup", "max_epochs", "outcome"),
    [
        (6, None, 5 + math.floor((60 * 0.95 - 2.5) / 0.5)),  # no validation: 0.5 s a step
        (None, 2, 16),  # a warmup_ratio is fine while max_epochs (2 x 8 batches) ends the run first
        (None, None, "a warmup_ratio's warmup follows the total: set --model.warmup_steps instead"),
    ],
    ids=["warmup_steps", "warmup_ratio_within_max_epochs", "warmup_ratio_refused"],
)
def test_fine_tuning_fixes_its_total_too(tiny_backbone, sentiment_csv, tmp_path, warmup, max_epochs, outcome):  # noqa: F811
    model, dm = classifier(tiny_backbone, sentiment_csv, Full(), tmp_path, schedule="linear")
    model.warmup_steps, model.warmup_ratio = warmup, 0.1
    trainer = L.Trainer(
        accelerator="cpu",
        max_time="00:00:01:00",
        max_epochs=max_epochs,
        logger=False,
        enable_checkpointing=False,
        limit_val_batches=0,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        callbacks=[Tick(), budget.TimeBudget(skip_steps=1, measure_steps=4, reserve=0.05)],
    )
    if isinstance(outcome, str):
        with pytest.raises(InputError, match=outcome):
            trainer.fit(model, dm)
        return
    trainer.fit(model, dm)
    assert trainer.global_step == outcome and trainer.lr_scheduler_configs[0].scheduler.last_epoch == outcome
    assert [g["lr"] for g in trainer.optimizers[0].param_groups] == [0.0] * len(trainer.optimizers[0].param_groups)


def test_retarget_rebuilds_the_schedule_for_a_new_total():
    """The unit: a scheduler built for 1e9 steps, retargeted after its warmup steps, is the 50-step schedule; a
    retarget that would change steps already taken is refused; the rebuild recipe stays out of the state dict."""

    def make(total):
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        return opt, optim.scheduler_config(opt, "wsd", 10, total, optim.WSD(decay_fraction=0.2))["scheduler"]

    opt, sched = make(budget.PROVISIONAL_STEPS)
    reference_opt, reference = make(50)
    for _ in range(8):
        opt.step(), sched.step(), reference_opt.step(), reference.step()
    optim.retarget(sched, 50, taken_steps=8)
    assert opt.param_groups[0]["lr"] == reference_opt.param_groups[0]["lr"]
    for _ in range(42):
        opt.step(), sched.step(), reference_opt.step(), reference.step()
        assert opt.param_groups[0]["lr"] == reference_opt.param_groups[0]["lr"]
    assert opt.param_groups[0]["lr"] == 0.0 and "rebuild" not in sched.state_dict()
    with pytest.raises(ValueError, match="differs at step 41"):  # a 55-step run decays from step 44, not 40
        optim.retarget(sched, 55, taken_steps=50)


def test_plan_counts_validation_and_the_reserve():
    assert budget_plan.plan_steps(100.0, 10.0, 20, 1.0) == 20 + 87  # 3% kept
    # a 4 s validation every 8 steps: 1.5 s a step, and one validation kept for the end
    assert budget_plan.plan_steps(100.0, 10.0, 20, 1.0, val_s=4.0, val_per_step=1 / 8, reserve=0.0) == 20 + 57
    with pytest.raises(InputError, match="reserve"):
        budget.TimeBudget(reserve=1.0)


def test_a_real_run_ends_at_its_budget_with_the_lr_decayed(tmp_path, tiny_corpus):
    """Wall clock, in a process of its own: 5 s of training, the last printed total (the measured one, or a re-plan's)
    is the run's last step, with the LR at its end value (the hard stop far away)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    argv = [
        "fit",
        *GPT,
        "--data.source",
        str(tiny_corpus),
        "--trainer.max_steps",
        "-1",
        "--trainer.max_time",
        "00:00:00:05",
        "--trainer.val_check_interval",
        "50",
        "--trainer.limit_val_batches",
        "2",
        "--trainer.enable_progress_bar",
        "false",
        "--export.enabled",
        "false",
        "--model.init_args.warmup_steps",
        "12",
        "--time_budget.measure_steps",
        "10",
        "--time_budget.hard_stop",
        "20",
        "--trainer.logger.init_args.name",
        "real",
    ]
    out = subprocess.run(
        [sys.executable, "-m", "lightning_pretrain", *argv],
        cwd=tmp_path,
        env=env,
        text=True,
        capture_output=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    found = re.search(
        r"time budget 0:00:05: [\d.e-]+ s/step measured over steps 2-12.*, the schedule ends at step "
        r"([\d,]+)",
        out.stdout + out.stderr,
    )
    assert found, (out.stdout + out.stderr)[-3000:]
    # a re-plan on drift (the load of a shared machine) moves the end: the last one said is the run's end
    replanned = re.findall(r"the schedule now ends at step ([\d,]+)", out.stdout + out.stderr)
    total = int((replanned[-1] if replanned else found[1]).replace(",", ""))
    ckpt = last_checkpoint(only_run_dir(tmp_path, "real"))
    assert total > 12 and ckpt["global_step"] == total and ckpt["callbacks"]["TimeBudget"]["total_steps"] == total
    assert ckpt["optimizer_states"][0]["param_groups"][0]["lr"] == 0.0
