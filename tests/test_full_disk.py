"""A full disk, for real: each run gets a small tmpfs (in a private user + mount namespace, so no root is needed)
and must end with one `error:` line, leaving no partial cache entry or checkpoint and every earlier checkpoint
intact. Skipped with the reason where the kernel allows no such namespace."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ENGLISH, REPO

QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


def on_small_disk(tmp_path: Path, size: str, args: list[str], env: dict | None = None) -> tuple[str, Path]:
    """Run `lightning-pretrain ARGS` with a `size` tmpfs at `tmp_path/disk`; returns its one error line and a copy
    of what the run left on that disk (the tmpfs disappears with its namespace)."""
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-rm", "true"]).returncode != 0:
        pytest.skip("cannot create a user + mount namespace here to mount a small tmpfs")
    disk, kept = tmp_path / "disk", tmp_path / "kept"
    disk.mkdir()
    script = tmp_path / "run.sh"
    script.write_text(
        f"mount -t tmpfs -o size={size} tmpfs {shlex.quote(str(disk))} || exit 99\n"
        f"{shlex.join([sys.executable, '-m', 'lightning_pretrain', *args])}\nrc=$?\n"
        f"cp -r {shlex.quote(str(disk))} {shlex.quote(str(kept))}\nexit $rc\n"
    )
    result = subprocess.run(
        ["unshare", "-rm", "sh", str(script)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
        timeout=600,
    )
    if result.returncode == 99:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr[-3000:]
    return errors[0], kept


def test_cache_build_on_a_full_disk_leaves_no_partial_entry(tmp_path):
    corpus = tmp_path / "corpus.txt"  # ~3 MB of varied text: its token blocks need more than the 1 MB disk
    corpus.write_text(
        "\n\n".join(
            f"{ENGLISH[i % 6]} Paragraph {i} counts {i * 7919 % 10007} and {i % 97} more." for i in range(24_000)
        )
        + "\n"
    )
    error, kept = on_small_disk(
        tmp_path,
        "1m",
        [
            "fit",
            "-c",
            str(REPO / "configs/pretrain/clm_tiny.yaml"),
            "--data.source",
            str(corpus),
            "--data.vocab_size",
            "300",
            *QUIET,
        ],
        {"LIGHTNING_PRETRAIN_CACHE": str(tmp_path / "disk" / "cache")},
    )
    assert "no space left on device" in error
    assert not [p for p in kept.rglob("*") if "partial" in p.name]
    for entry in (kept / "cache" / "blocks").glob("*"):
        assert (entry / "meta.json").exists()  # any entry present is a complete one


def test_checkpoint_write_on_a_full_disk_keeps_the_earlier_ones(tmp_path):
    model = [
        "--model.init_args.model.init_args.n_embd",
        "128",
        "--model.init_args.model.init_args.n_layer",
        "1",
        "--model.init_args.model.init_args.n_head",
        "2",
        "--model.init_args.model.init_args.n_positions",
        "32",
        "--model.init_args.warmup_steps",
        "1",
    ]
    ckpts = tmp_path / "disk" / "ckpt"
    # each checkpoint is ~3 MB (weights + AdamW state): two fit on the 7 MB disk, the third cannot be written
    error, kept = on_small_disk(
        tmp_path,
        "7m",
        [
            "fit",
            "-c",
            str(REPO / "configs/pretrain/clm_tiny.yaml"),
            "--data.vocab_size",
            "300",
            "--data.seq_len",
            "32",
            "--data.batch_size",
            "4",
            *model,
            "--trainer.max_steps",
            "10",
            "--trainer.val_check_interval",
            "50",
            "--trainer.limit_val_batches",
            "1",
            "--trainer.logger.init_args.save_dir",
            str(tmp_path / "disk"),
            *QUIET,
            "--trainer.callbacks+=ModelCheckpoint",
            "--trainer.callbacks.every_n_train_steps",
            "2",
            "--trainer.callbacks.save_top_k",
            "-1",
            "--trainer.callbacks.dirpath",
            str(ckpts),
        ],
    )
    assert "no space left on device" in error
    saved = sorted((kept / "ckpt").iterdir())
    assert saved and not [p for p in saved if "partial" in p.name], saved  # no half-written file left behind
    for ckpt in saved:
        assert torch.load(ckpt, weights_only=True)["global_step"] > 0  # each earlier checkpoint is whole
