"""StopGuard's step guard: a step with a NaN loss (injected by a test module) leaves the weights and the AdamW state
as they were and is counted, training goes on; `max_bad_steps` in a row stop the run with a loadable `last.ckpt`
of the last good weights; a loss spike is counted, not skipped; `train/grad_norm` is logged every step."""

from __future__ import annotations

import copy
import csv
import logging
from functools import partial

import lightning as L
import pytest
import torch
from lightning.pytorch.plugins.precision import MixedPrecision
from test_linear_cross_entropy import _Tok
from transformers import GPT2Config

from lightning_pretrain.callbacks.guard import NonFiniteLoss, StopGuard
from lightning_pretrain.data.contract import DataContract
from lightning_pretrain.errors import InputError
from lightning_pretrain.objectives import CausalLM


class Injected(CausalLM):
    """The test hook: the training loss of chosen micro-batches (batch_idx) is NaN, or ten times too large."""

    nan_batches: set[int] = set()
    nan_from: int | None = None
    spike_batches: set[int] = set()

    def training_loss(self, batch, batch_idx: int) -> torch.Tensor:
        loss = super().training_loss(batch, batch_idx)
        if batch_idx in self.nan_batches or (self.nan_from is not None and batch_idx >= self.nan_from):
            return loss * float("nan")
        return loss * 10 if batch_idx in self.spike_batches else loss


class Snapshots(L.Callback):
    """The weights and optimizer state at the start of every optimizer step (keyed by global_step) and at the end."""

    def __init__(self, accumulate: int):
        self.accumulate, self.weights, self.states = accumulate, {}, {}

    def snap(self, trainer, pl_module):
        self.weights[trainer.global_step] = {k: v.detach().clone() for k, v in pl_module.model.state_dict().items()}
        self.states[trainer.global_step] = copy.deepcopy(trainer.optimizers[0].state_dict()["state"])

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx % self.accumulate == 0:
            self.snap(trainer, pl_module)

    def on_train_end(self, trainer, pl_module):
        self.snap(trainer, pl_module)


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        same(a[k], b[k]) if isinstance(a[k], dict) else torch.equal(torch.as_tensor(a[k]), torch.as_tensor(b[k]))
        for k in a
    )


def fit(
    tmp_path,
    guard: StopGuard,
    steps: int,
    accumulate: int = 1,
    snapshots: Snapshots | None = None,
    optimizer=torch.optim.AdamW,
    plugins=None,
    **inject,
):
    torch.manual_seed(0)
    module = Injected(
        model=GPT2Config(n_embd=32, n_layer=1, n_head=2, n_positions=32),
        data=DataContract(_Tok()),
        warmup_steps=0,
        lr_schedule="constant",
        optimizer=optimizer,
    )
    for name, value in inject.items():
        setattr(module, name, value)
    snapshots = snapshots or Snapshots(accumulate)
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=steps,
        accumulate_grad_batches=accumulate,
        default_root_dir=tmp_path,
        logger=L.pytorch.loggers.CSVLogger(tmp_path, name="csv"),
        log_every_n_steps=1,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=[guard, snapshots],
        plugins=plugins,
    )
    blocks = torch.randint(3, 300, (4 * steps * accumulate, 16), generator=torch.Generator().manual_seed(1))
    try:
        trainer.fit(module, torch.utils.data.DataLoader(blocks, batch_size=4))
    finally:
        trainer.logger.finalize("done")
    return trainer, module, snapshots


def logged(trainer) -> list[dict]:
    with open(trainer.logger.experiment.metrics_file_path) as f:
        return list(csv.DictReader(f))


def test_a_nan_step_is_skipped_counted_and_training_goes_on(tmp_path):
    # accumulation 2: step 2's second micro-batch and step 4's first are NaN, each spoiling its whole step
    trainer, module, snap = fit(tmp_path, StopGuard(max_bad_steps=2), steps=7, accumulate=2, nan_batches={5, 8})
    assert trainer.global_step == 7 and trainer.callbacks[0].skipped_steps == 2
    for step in range(7):
        if step in (2, 4):  # the weights and every AdamW moment and step count are bit-identical across the step
            assert same(snap.weights[step], snap.weights[step + 1]) and same(snap.states[step], snap.states[step + 1])
        else:  # a good step moves every weight (negative control for the comparisons above)
            assert not same(snap.weights[step], snap.weights[step + 1])
    assert all(torch.isfinite(v).all() for v in module.model.state_dict().values())
    rows = [r for r in logged(trainer) if r.get("train/grad_norm")]
    assert [int(r["step"]) for r in rows] == list(range(7))  # every step, the skipped ones too (as nan)
    norms = [float(r["train/grad_norm"]) for r in rows]
    assert [s for s, n in enumerate(norms) if n != n] == [2, 4] and all(n > 0 for s, n in enumerate(norms) if n == n)
    assert [float(r["train/skipped_steps"]) for r in rows] == [0, 0, 1, 1, 2, 2, 2]


@pytest.mark.parametrize("max_bad_steps", [1, 3])
def test_bad_steps_in_a_row_stop_the_run_with_the_last_good_weights(tmp_path, max_bad_steps):
    with pytest.raises(NonFiniteLoss, match=f"{max_bad_steps} optimizer step\\(s\\) in a row .* before step 2") as e:
        fit(tmp_path, StopGuard(max_bad_steps=max_bad_steps), steps=8, nan_from=2, snapshots=(snap := Snapshots(1)))
    assert e.value.checkpoint.name == "last.ckpt" and e.value.checkpoint.parent.name == "checkpoints"
    ckpt = torch.load(e.value.checkpoint, weights_only=True)
    assert ckpt["global_step"] == 2 + max_bad_steps - 1  # stopped inside the last bad step
    assert ckpt["callbacks"]["StopGuard"]["skipped_steps"] == max_bad_steps
    saved = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items()}  # the weights before the first NaN
    assert same(saved, snap.weights[2]) and not same(saved, snap.weights[1])
    assert same(ckpt["optimizer_states"][0]["state"], snap.states[2])
    fresh = Injected(model=GPT2Config(n_embd=32, n_layer=1, n_head=2, n_positions=32), data=DataContract(_Tok()))
    fresh.load_state_dict(ckpt["state_dict"])  # strict


def test_without_skipping_the_nan_reaches_the_weights(tmp_path):
    """Negative control: the guard off, the same injected NaN makes every weight NaN and nothing stops the run."""
    trainer, module, _ = fit(tmp_path, StopGuard(skip_non_finite=False), steps=4, nan_batches={2})
    assert trainer.global_step == 4 and trainer.callbacks[0].skipped_steps == 0
    assert all(torch.isnan(v).all() for k, v in module.model.state_dict().items() if k.endswith("wte.weight"))


def test_a_loss_spike_is_counted_and_logged_not_skipped(tmp_path, caplog):
    guard = StopGuard(spike_window=3, spike_rtol=0.5, spike_atol=0.0)
    with caplog.at_level(logging.WARNING, logger="lightning_pretrain"):
        trainer, _, snap = fit(tmp_path, guard, steps=8, spike_batches={6})
    assert guard.loss_spikes == 1 and guard.skipped_steps == 0  # random tokens: no other step is a spike
    assert not same(snap.weights[6], snap.weights[7])
    assert [r.getMessage() for r in caplog.records if "loss spike" in r.getMessage()][0].startswith("step 6:")
    assert [float(r["train/loss_spikes"]) for r in logged(trainer) if r.get("train/loss_spikes")] == [0] * 6 + [1, 1]
    resumed = StopGuard(spike_window=3)  # what a checkpoint carries continues in a resumed run
    resumed.load_state_dict(torch.load(_saved(guard, tmp_path), weights_only=True))
    assert resumed.loss_spikes == 1 and list(resumed.recent) == list(guard.recent) and len(resumed.recent) == 3


def _saved(guard: StopGuard, tmp_path):
    torch.save(guard.state_dict(), tmp_path / "guard.pt")
    return tmp_path / "guard.pt"


def fp16(init_scale: float) -> MixedPrecision:
    return MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu", init_scale=init_scale))


def test_fp16_loss_scaling_skips_nan_steps_with_fused_and_plain_adamw_and_its_own_overflows_are_not_counted(tmp_path):
    norms = {}
    for fused in (False, True):  # a fused AdamW unscales inside its step: the guard's gradients are still scaled
        trainer, _, snap = fit(
            tmp_path / str(fused),
            StopGuard(max_bad_steps=2),
            steps=5,
            nan_batches={2},
            plugins=[fp16(2.0**8)],
            optimizer=partial(torch.optim.AdamW, fused=fused),
        )
        assert trainer.callbacks[0].skipped_steps == 1 and trainer.precision_plugin.scaler.get_scale() == 2.0**7
        assert same(snap.weights[2], snap.weights[3]) and same(snap.states[2], snap.states[3])
        assert not same(snap.weights[3], snap.weights[4])
        norms[fused] = [float(r["train/grad_norm"]) for r in logged(trainer) if r.get("train/grad_norm")]
    assert norms[True][:2] == pytest.approx(norms[False][:2], rel=1e-5) and 0 < norms[False][0] < 100  # unscaled
    # a scale that overflows the fp16 gradients: the scaler skips those steps and lowers the scale, the guard
    # neither counts them nor stops the run (max_bad_steps 1 would, at once)
    trainer, _, _ = fit(tmp_path / "overflow", StopGuard(max_bad_steps=1), steps=3, plugins=[fp16(2.0**40)])
    assert trainer.global_step == 3 and trainer.callbacks[0].skipped_steps == 0
    assert trainer.precision_plugin.scaler.get_scale() < 2.0**40


def test_nonsense_settings_are_refused():
    with pytest.raises(InputError, match="max_bad_steps must be at least 1"):
        StopGuard(max_bad_steps=0)
    with pytest.raises(InputError, match="must be finite and not negative"):
        StopGuard(spike_rtol=-1)
