"""Only `fit` owns a run directory: validate/test after a (resumed) fit never write into it, fit never writes into
an existing run unless it resumes it, and a run refused for bad input leaves no empty `version_N` behind."""

from __future__ import annotations

import io
import json
from contextlib import redirect_stderr

import pytest
import torch
from conftest import FAST, REPO, cli
from test_guard import TINY_GPT2

CLM = ["-c", str(REPO / "configs/pretrain/clm_tiny.yaml")]


def snapshot(run) -> dict:
    return {
        str(p.relative_to(run)): (p.stat().st_mtime_ns, p.read_bytes() if p.name == "config.yaml" else None)
        for p in sorted(run.rglob("*"))
        if p.is_file()
    }


def test_validate_with_a_fit_runs_config_writes_a_fresh_version(workdir, tiny_corpus):
    data = ["--data.source", str(tiny_corpus)]
    cli("fit", *CLM, *FAST, *TINY_GPT2, *data)
    runs = workdir / "logs" / "clm_tiny"
    fit_run = runs / "version_0"
    (first,) = (fit_run / "checkpoints").glob("epoch=*.ckpt")
    cli(
        "fit",
        *CLM,
        *FAST,
        *TINY_GPT2,
        *data,
        "--trainer.max_steps",
        "6",
        "--ckpt_path",
        str(first),
        "--trainer.logger.init_args.version",
        "0",
    )  # resumed in its own directory: its config.yaml pins version 0
    assert not (runs / "version_1").exists()
    before = snapshot(fit_run)
    ckpt = max((fit_run / "checkpoints").glob("epoch=*.ckpt"), key=lambda f: f.stat().st_mtime)
    cli("validate", "-c", str(fit_run / "config.yaml"), "--ckpt_path", str(ckpt))
    assert snapshot(fit_run) == before  # config.yaml, events and checkpoints of the fit run untouched
    metrics = json.loads((runs / "version_1" / "validate_metrics.json").read_text())
    assert metrics["global_step"] == torch.load(ckpt, weights_only=True)["global_step"] > 0

    err = io.StringIO()
    with redirect_stderr(err), pytest.raises(SystemExit) as exit_info:  # a fresh fit with the pinned config
        cli("fit", "-c", str(fit_run / "config.yaml"))
    assert exit_info.value.code == 2 and "already holds a run" in err.getvalue()
    assert snapshot(fit_run) == before


def test_a_run_refused_after_its_directory_was_made_leaves_none_behind(workdir, tiny_corpus):
    err = io.StringIO()
    with redirect_stderr(err), pytest.raises(SystemExit) as exit_info:
        cli("fit", *CLM, *FAST, *TINY_GPT2, "--data.source", str(tiny_corpus), "--data.seq_len", "64")
    assert exit_info.value.code == 2 and "larger than the model's 32 positions" in err.getvalue()
    assert not list((workdir / "logs" / "clm_tiny").glob("version_*"))
