"""Runs that cannot go on stop safely: SIGTERM (preemption) and a non-finite loss end with one `error:` line, a
non-zero exit and a resumable checkpoint; a resume after SIGTERM continues with exactly the same losses; nothing
non-finite is exported; every finished run reports its final validation."""

from __future__ import annotations

import io
import json
import os
import signal
import time
from contextlib import redirect_stderr

import pytest
import torch
from conftest import FAST, REPO, cli, only_run_dir
from test_resume import CORPUS_MODES, EVERY, corpus, events_files, finish, launch, train_losses  # noqa: F401

TINY_GPT2 = [
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


def test_sigterm_saves_a_resumable_checkpoint_and_the_resume_is_exact(tmp_path, corpus):  # noqa: F811
    args = [*CORPUS_MODES["cached"], "--data.source", str(corpus)]
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    run_a, run_b = (tmp_path / d / "logs" / "resume" / "version_0" for d in "ab")
    uninterrupted = launch(tmp_path / "a", *args)
    stopped = launch(tmp_path / "b", *args)
    deadline = time.monotonic() + 300
    while not list((run_b / "checkpoints").glob(f"*step={EVERY}.ckpt")):  # well into the run
        assert stopped.poll() is None and time.monotonic() < deadline, "the run ended before it could be stopped"
        time.sleep(0.01)
    os.killpg(stopped.pid, signal.SIGTERM)  # what SLURM / Kubernetes send before preemption
    out, _ = stopped.communicate(timeout=120)
    assert stopped.returncode == 128 + signal.SIGTERM, out[-3000:]
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "stopped by SIGTERM at step" in errors[0] and "last.ckpt" in errors[0], out[-3000:]
    assert "Traceback" not in out
    stopped_at = torch.load(run_b / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    assert stopped_at >= EVERY and not (run_b / "hf").exists()
    finish(uninterrupted)

    finish(launch(tmp_path / "b", *args, "--ckpt_path", "last"))
    expected, got = train_losses(events_files(run_a)[-1]), train_losses(events_files(run_b)[-1])
    assert min(got) == stopped_at and max(got) == max(expected)
    assert {s: expected[s] for s in got} == got  # bit-identical losses after the SIGTERM resume


def test_non_finite_steps_in_a_row_stop_the_run_keep_a_checkpoint_and_export_nothing(workdir, tiny_corpus):
    """An LR of 1e6 breaks the model after its first step: the following steps are skipped (the guard, on by
    default), and `--stop_guard.max_bad_steps` of them in a row end the run with exit 1 and the last good weights.
    (tests/test_loss_guard.py tests the skipping itself.)"""
    err = io.StringIO()
    with redirect_stderr(err), pytest.raises(SystemExit) as exit_info:
        cli(
            "fit",
            "-c",
            str(REPO / "configs/pretrain/clm_tiny.yaml"),
            *FAST,
            *TINY_GPT2,
            "--data.source",
            str(tiny_corpus),
            "--model.init_args.warmup_steps",
            "0",
            "--model.init_args.optimizer.init_args.lr",
            "1e6",
            "--trainer.max_steps",
            "8",
            "--stop_guard.max_bad_steps",
            "2",
        )
    assert exit_info.value.code == 1
    errors = [line for line in err.getvalue().splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "2 optimizer step(s) in a row had a non-finite" in errors[0], err.getvalue()
    assert "last.ckpt" in errors[0] and "Traceback" not in err.getvalue()
    run = only_run_dir(workdir, "clm_tiny")
    assert not (run / "hf").exists() and not (run / "metrics.json").exists()
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["callbacks"]["StopGuard"]["skipped_steps"] == 2 and ckpt["global_step"] < 8
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())


def test_a_run_that_ends_between_validations_still_reports_final_metrics(workdir, tiny_corpus):
    cli(
        "fit",
        "-c",
        str(REPO / "configs/pretrain/clm_tiny.yaml"),
        *FAST,
        *TINY_GPT2,
        "--data.source",
        str(tiny_corpus),
        "--trainer.max_steps",
        "3",
    )  # validation every 2 steps: none at step 3 by itself
    run = only_run_dir(workdir, "clm_tiny")
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["step"] == 3 and metrics["global_step"] == 3 and metrics["val/loss"] > 0
    assert (run / "hf" / "model.safetensors").stat().st_mode & 0o044  # readable by others under umask 022
