"""A first run's console: no advertising tips, no deprecations raised inside libraries, no `Total FLOPs: 0` — and
the filters are narrow: the same message from another module, or another message, still shows."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

from conftest import REPO

from lightning_pretrain.quiet import KNOWN_WARNINGS, quiet_known_noise


def test_the_main_jobs_console_shows_only_what_concerns_the_run(tiny_corpus, tmp_path):
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "lightning_pretrain",
            "fit",
            "-c",
            str(REPO / "configs/pretrain/clm_tiny.yaml"),
            "--data.source",
            str(tiny_corpus),
            "--data.vocab_size",
            "400",
            "--data.seq_len",
            "32",
            "--data.batch_size",
            "4",
            "--trainer.max_steps",
            "3",
            "--trainer.val_check_interval",
            "3",
            "--trainer.limit_val_batches",
            "1",
            "--model.init_args.warmup_steps",
            "1",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "LIGHTNING_PRETRAIN_CACHE": str(tmp_path / "cache")},
    )
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-2000:]
    for noise in (
        "Tip:",
        "litlogger",
        "litmodels",
        "set_vital",
        "LeafSpec",
        "Total FLOPs",
        "Writing model shards",
        "already configured with model summary",
    ):
        assert noise not in out, f"{noise!r} in the console:\n{out[-3000:]}"
    assert "Training FLOPs per token" in out and "GPT2LMHeadModel" in out  # the summary itself is still there


def test_the_filters_silence_one_message_from_one_module():
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        quiet_known_noise()
        for message, category, module in KNOWN_WARNINGS:
            text = message.replace("\\", "")
            origin = module.replace("\\", "") + ".somewhere"
            warnings.warn_explicit(text, category, "x.py", 1, module=origin, registry={})  # silenced
            warnings.warn_explicit(text, category, "x.py", 1, module="my_own_code", registry={})  # shows
            warnings.warn_explicit("something new", category, "x.py", 1, module=origin, registry={})  # shows
    assert len(seen) == 2 * len(KNOWN_WARNINGS)
    assert all(w.message.args[0] == "something new" or w.filename == "x.py" for w in seen)
    assert sum(str(w.message) == "something new" for w in seen) == len(KNOWN_WARNINGS)
