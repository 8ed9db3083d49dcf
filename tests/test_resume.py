"""Exact resume: a training run killed with SIGKILL mid-epoch and resumed from its last checkpoint logs exactly the
per-step losses of an uninterrupted run (dropout on, CPU, one thread per process), for the cached and the streaming
corpus, in one process and under `ddp_spawn` with two."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import ENGLISH, REPO

from lightning_pretrain.callbacks.resume import ResumeState
from lightning_pretrain.errors import InputError

EVERY = 5  # checkpoint interval in optimizer steps

# a 1-layer GPT-2 with dropout, so the losses depend on the restored RNG streams as well as on the data position
TINY = ["-c", str(REPO / "configs/pretrain/clm_tiny.yaml"),
        "--model.init_args.model.init_args.n_embd", "32", "--model.init_args.model.init_args.n_layer", "1",
        "--model.init_args.model.init_args.n_head", "2", "--model.init_args.model.init_args.n_positions", "32",
        "--model.init_args.model.init_args.resid_pdrop", "0.1", "--model.init_args.model.init_args.attn_pdrop", "0.1",
        "--model.init_args.warmup_steps", "3",
        "--trainer.val_check_interval", "7", "--trainer.limit_val_batches", "2", "--trainer.log_every_n_steps", "1",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        "--trainer.logger.init_args.name", "resume", "--export.enabled", "false",
        "--trainer.callbacks+=ModelCheckpoint", "--trainer.callbacks.every_n_train_steps", str(EVERY),
        "--trainer.callbacks.save_last", "true"]

CORPUS_MODES = {
    # epoch-based, several epochs: crosses epoch boundaries after the resume, and `configure_optimizers` builds the
    # loader before the checkpoint is read (the Lightning #20550 order)
    "cached": ["--data.class_path", "lightning_pretrain.data.PretrainCorpus", "--data.vocab_size", "300",
               "--data.seq_len", "32", "--data.batch_size", "16", "--data.num_workers", "1",
               "--trainer.max_steps", "-1", "--trainer.max_epochs", "3"],
}


@pytest.fixture
def corpus(tmp_path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text("\n\n".join(f"{ENGLISH[i % len(ENGLISH)]} Paragraph {i} has {i * 7 % 13} extra words."
                                for i in range(300)) + "\n")
    return path


def launch(workdir: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    # a session of its own, so the kill takes ddp_spawn's worker processes down with the launcher
    return subprocess.Popen([sys.executable, "-m", "lightning_pretrain", "fit", *args], cwd=workdir, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def finish(proc: subprocess.Popen, timeout: float = 300) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-4000:]
    return out


def kill_after_first_checkpoint(proc: subprocess.Popen, run: Path, timeout: float = 300) -> None:
    """SIGKILL the whole run as soon as `last.ckpt` exists: mid-epoch, right after (or while) writing a checkpoint."""
    last = run / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + timeout
    while not last.exists():
        assert proc.poll() is None, f"the run ended before its first checkpoint:\n{proc.stdout.read()[-4000:]}"
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.01)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stdout.close()


def train_losses(events_file: Path) -> dict[int, float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(events_file), size_guidance={"scalars": 0})
    acc.Reload()
    return {e.step: e.value for e in acc.Scalars("train/loss")}


def events_files(run: Path) -> list[Path]:
    return sorted(run.glob("events.out.tfevents.*"), key=lambda p: p.stat().st_mtime)


def check_kill_and_resume(tmp_path: Path, args: list[str]) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    run_a = tmp_path / "a" / "logs" / "resume" / "version_0"
    run_b = tmp_path / "b" / "logs" / "resume" / "version_0"
    uninterrupted = launch(tmp_path / "a", *args)
    killed = launch(tmp_path / "b", *args)
    kill_after_first_checkpoint(killed, run_b)
    finish(uninterrupted)

    # the checkpoint loads with torch's default weights_only=True (our hparams, RNG and loader states included)
    ckpt = torch.load(run_b / "checkpoints" / "last.ckpt", weights_only=True)
    resumed_from = ckpt["global_step"]
    assert resumed_from >= EVERY and ckpt["resume_state"]["ranks"][0]["loaders"], "no mid-run loader state saved"

    out = finish(launch(tmp_path / "b", *args, "--ckpt_path", "last"))
    assert "Restored all states" in out, out[-3000:]
    assert not (tmp_path / "b" / "logs" / "resume" / "version_1").exists(), "`last` must continue the killed run"

    expected = train_losses(events_files(run_a)[-1])
    got = train_losses(events_files(run_b)[-1])  # the resumed process's own events file
    assert min(got) == resumed_from and max(got) == max(expected)
    assert {s: expected[s] for s in got} == got  # bit-identical float32 losses, every step after the resume


@pytest.mark.parametrize("mode", CORPUS_MODES)
def test_kill_and_resume_single_process(tmp_path, corpus, mode):
    check_kill_and_resume(tmp_path, [*TINY, *CORPUS_MODES[mode], "--data.source", str(corpus)])


def test_resume_on_another_world_size_is_refused_clearly():
    checkpoint = {"resume_state": {"world_size": 2, "ranks": [{"rng": None, "loaders": []}] * 2},
                  "loops": {"fit_loop": {"state_dict": {"combined_loader": [{}]}}}}
    trainer = SimpleNamespace(world_size=1, global_rank=0, state=SimpleNamespace(fn="fit"))
    with pytest.raises(InputError, match="written by 2 process.*this run has 1"):
        ResumeState().on_load_checkpoint(trainer, None, checkpoint)
    ResumeState(allow_world_size_change=True).on_load_checkpoint(trainer, None, checkpoint)
    assert "combined_loader" not in checkpoint["loops"]["fit_loop"]["state_dict"]  # restarts its data instead
