"""Exact resume: a training run killed with SIGKILL mid-epoch and resumed from its last checkpoint logs exactly the
per-step losses of an uninterrupted run (dropout on, CPU, one thread per process), for the cached and the streaming
corpus, in one process and under `ddp_spawn` with two."""

from __future__ import annotations

import os
import re
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
TINY = [
    "--model.init_args.model.init_args.n_embd",
    "32",
    "--model.init_args.model.init_args.n_layer",
    "1",
    "--model.init_args.model.init_args.n_head",
    "2",
    "--model.init_args.model.init_args.n_positions",
    "32",
    "--model.init_args.model.init_args.resid_pdrop",
    "0.1",
    "--model.init_args.model.init_args.attn_pdrop",
    "0.1",
    "--model.init_args.warmup_steps",
    "3",
    "--data.vocab_size",
    "300",
    "--data.seq_len",
    "32",
    "--trainer.val_check_interval",
    "7",
    "--trainer.limit_val_batches",
    "2",
    "--trainer.log_every_n_steps",
    "1",
    "--trainer.enable_progress_bar",
    "false",
    "--trainer.enable_model_summary",
    "false",
    "--trainer.logger.init_args.name",
    "resume",
    "--export.enabled",
    "false",
]

CORPUS_MODES = {
    # epoch-based, several epochs: crosses epoch boundaries after the resume, and `configure_optimizers` builds the
    # loader before the checkpoint is read (the Lightning #20550 order)
    "cached": [
        "-c",
        str(REPO / "configs/pretrain/clm_tiny.yaml"),
        *TINY,
        "--data.batch_size",
        "16",
        "--data.num_workers",
        "1",
        "--trainer.max_steps",
        "-1",
        "--trainer.max_epochs",
        "3",
        "--trainer.callbacks+=ModelCheckpoint",
        "--trainer.callbacks.save_last",
        "true",
        "--trainer.callbacks.every_n_train_steps",
        str(EVERY),
    ],
    # tokenized in a loader worker, endless stream cycling over the small corpus (several passes in the run)
    "streaming": [
        "-c",
        str(REPO / "configs/pretrain/clm_streaming_tiny.yaml"),
        *TINY,
        "--data.batch_size",
        "8",
        "--data.num_workers",
        "1",
        "--data.val_documents",
        "20",
        "--data.tokenizer_documents",
        "1000",
        "--data.shuffle_window",
        "16",
        "--trainer.max_steps",
        "45",
        "--trainer.callbacks.every_n_train_steps",
        str(EVERY),
    ],
}


@pytest.fixture
def corpus(tmp_path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text(
        "\n\n".join(f"{ENGLISH[i % len(ENGLISH)]} Paragraph {i} has {i * 7 % 13} extra words." for i in range(300))
        + "\n"
    )
    return path


_PORTS: set[int] = set()


def free_port() -> int:
    """A port no other launch of this module got: two ddp_spawn runs started at once each let Lightning pick a free
    port, and both can pick the same one (EADDRINUSE in the second)."""
    import socket

    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _PORTS:
            _PORTS.add(port)
            return port


def launch(workdir: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "MASTER_PORT": str(free_port())}
    # a session of its own, so the kill takes ddp_spawn's worker processes down with the launcher
    return subprocess.Popen(
        [sys.executable, "-m", "lightning_pretrain", "fit", *args],
        cwd=workdir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def finish(proc: subprocess.Popen, timeout: float = 300) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-4000:]
    return out


def kill_after_checkpoint(proc: subprocess.Popen, run: Path, min_step: int, timeout: float = 300) -> None:
    """SIGKILL the whole run once it saved the checkpoint of step `min_step` (or later): mid-epoch, right after or
    while writing a checkpoint."""
    folder = run / "checkpoints"
    deadline = time.monotonic() + timeout

    def saved() -> bool:
        last = folder / "last.ckpt"
        steps = [p for p in folder.glob("*step=*.ckpt") if int(re.search(r"step=(\d+)", p.name)[1]) >= min_step]
        try:  # last.ckpt is written after the step's own file
            return bool(steps) and last.stat().st_mtime_ns >= max(p.stat().st_mtime_ns for p in steps)
        except FileNotFoundError:  # a file rotated away meanwhile
            return False

    while not saved():
        assert proc.poll() is None, f"the run ended before its checkpoint:\n{proc.stdout.read()[-4000:]}"
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


def check_kill_and_resume(tmp_path: Path, args: list[str], kill_after_step: int = EVERY) -> dict:
    """Uninterrupted run vs. the same run killed after a checkpoint and resumed: identical losses. Returns the
    checkpoint the resume started from."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    run_a = tmp_path / "a" / "logs" / "resume" / "version_0"
    run_b = tmp_path / "b" / "logs" / "resume" / "version_0"
    started = [launch(tmp_path / "a", *args), launch(tmp_path / "b", *args)]
    uninterrupted, killed = started
    try:
        kill_after_checkpoint(killed, run_b, kill_after_step)
        # the checkpoint loads with torch's default weights_only=True (our hparams, RNG and loader states included)
        ckpt = torch.load(run_b / "checkpoints" / "last.ckpt", weights_only=True)
        resumed_from = ckpt["global_step"]
        assert resumed_from >= kill_after_step and ckpt["resume_state"]["ranks"][0]["loaders"], (
            "no mid-run loader state saved"
        )
        # the resume starts while the uninterrupted run finishes: its start-up overlaps that run's last steps
        started.append(launch(tmp_path / "b", *args, "--ckpt_path", "last"))
        finish(uninterrupted)
        out = finish(started[-1])
    finally:  # a failed check leaves no run behind (each has a session of its own: ddp_spawn's ranks go with it)
        for proc in started:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    assert "Restored all states" in out, out[-3000:]
    assert not (tmp_path / "b" / "logs" / "resume" / "version_1").exists(), "`last` must continue the killed run"

    expected = train_losses(events_files(run_a)[-1])
    got = train_losses(events_files(run_b)[-1])  # the resumed process's own events file
    assert min(got) == resumed_from and max(got) == max(expected)
    assert {s: expected[s] for s in got} == got  # bit-identical float32 losses, every step after the resume
    return ckpt


@pytest.mark.parametrize("mode", CORPUS_MODES)
def test_kill_and_resume_single_process(tmp_path, corpus, mode):
    check_kill_and_resume(tmp_path, [*CORPUS_MODES[mode], "--data.source", str(corpus)])


@pytest.mark.slow
@pytest.mark.parametrize("mode", CORPUS_MODES)
def test_kill_and_resume_ddp_spawn_two_processes(tmp_path, corpus, mode):
    """Each rank resumes its own data position and RNG streams: the cached corpus in its second epoch (11 steps
    each; a DistributedSampler's order depends on the epoch), the streaming one with each rank on its own shard."""
    ddp = ["--trainer.strategy", "ddp_spawn", "--trainer.devices", "2"]
    if mode == "cached":
        ddp += ["--data.batch_size", "32"]
    ckpt = check_kill_and_resume(
        tmp_path,
        [*CORPUS_MODES[mode], "--data.source", str(corpus), *ddp],
        kill_after_step=3 * EVERY if mode == "cached" else EVERY,
    )
    assert len(ckpt["resume_state"]["ranks"]) == 2
    if mode == "cached":
        assert ckpt["epoch"] >= 1


def test_resume_on_another_world_size_is_refused_clearly():
    checkpoint = {
        "resume_state": {"world_size": 2, "ranks": [{"rng": None, "loaders": []}] * 2},
        "loops": {"fit_loop": {"state_dict": {"combined_loader": [{}]}}},
    }
    trainer = SimpleNamespace(world_size=1, global_rank=0, state=SimpleNamespace(fn="fit"))
    with pytest.raises(InputError, match="written by 2 process.*this run has 1"):
        ResumeState().on_load_checkpoint(trainer, None, checkpoint)
    ResumeState(allow_world_size_change=True).on_load_checkpoint(trainer, None, checkpoint)
    assert "combined_loader" not in checkpoint["loops"]["fit_loop"]["state_dict"]  # restarts its data instead


def test_resume_with_another_number_of_loader_workers_is_refused_clearly():
    from torchdata.stateful_dataloader import StatefulDataLoader

    from lightning_pretrain.callbacks.resume import check_workers

    def state(workers: int) -> dict:
        loader = StatefulDataLoader(list(range(8)), batch_size=2, num_workers=workers)
        next(iter(loader))
        return loader.state_dict()

    check_workers([StatefulDataLoader(list(range(8)), num_workers=0)], [state(0)])
    with pytest.raises(InputError, match="ran 1 worker.*has 0.*same --data.num_workers"):
        check_workers([StatefulDataLoader(list(range(8)), num_workers=0)], [state(1)])
