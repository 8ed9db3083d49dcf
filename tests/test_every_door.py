"""Issue 24's classes, each at its root: every console script ends bad input in one `error:` line and exit 2 (one
handler, entry.py); cut checkpoints of any size are refused before anything of a run changes; Ctrl-C saves a
resumable checkpoint in fit and is one line elsewhere; no non-finite model is exported or evaluated; run folders and
prediction files of earlier work are never overwritten; `--trainer.logger false` works; SFT predict refuses a prompt
longer than the model's positions."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
import tomllib
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
import torch
from conftest import ENGLISH, FAST, REPO
from test_evaluate_harness import tiny_causal  # noqa: F401 (fixture)
from test_guard import TINY_GPT2

CLM = ["-c", str(REPO / "configs/pretrain/clm_tiny.yaml"), *FAST, *TINY_GPT2]


def call(main, *args: str) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of a console script's main, in process."""
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            status = main(list(args)) or 0
        except SystemExit as e:
            status = e.code
    return status, out.getvalue(), err.getvalue()


def refused(result: tuple[int, str, str], says: str) -> str:
    status, out, err = result
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert status == 2, err[-3000:]
    assert len(errors) == 1 and "Traceback" not in out + err and "usage:" not in err, err[-3000:]
    assert says in errors[0], errors[0]
    return errors[0]


def snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


def scripts() -> dict:
    import importlib

    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    return {
        name: getattr(importlib.import_module(target.split(":")[0]), target.split(":")[1])
        for name, target in declared.items()
    }


@pytest.mark.parametrize("name", sorted(scripts()))
def test_every_console_script_says_a_usage_error_in_one_line(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    main = scripts()[name]
    refused(call(main, "--no_such_option", "1"), "")
    if name != "lightning-pretrain":  # (lightning-pretrain: no subcommand is a usage error too)
        refused(call(main), "required")
    else:
        refused(call(main), "subcommand")
    assert not any(tmp_path.iterdir()), list(tmp_path.iterdir())


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """One trained tiny GPT-2 run (logs/clm_tiny/version_0) with a `last.ckpt`, and a corpus."""
    from lightning_pretrain.cli import main

    root = tmp_path_factory.mktemp("door")
    (root / "corpus.txt").write_text("\n\n".join(f"{ENGLISH[i % 6]} Paragraph {i}." for i in range(300)) + "\n")
    cwd = os.getcwd()
    os.chdir(root)
    try:
        status, _, err = call(main, "fit", *CLM, "--data.source", str(root / "corpus.txt"))
    finally:
        os.chdir(cwd)
    assert status == 0, err[-3000:]
    run = root / "logs" / "clm_tiny" / "version_0"
    (ckpt,) = (run / "checkpoints").glob("*.ckpt")
    (run / "checkpoints" / "last.ckpt").write_bytes(ckpt.read_bytes())
    return run


def test_fit_resuming_a_cut_checkpoint_changes_nothing_of_the_run(run, monkeypatch):
    from lightning_pretrain.cli import main

    root = run.parents[2]
    monkeypatch.chdir(root)
    last = run / "checkpoints" / "last.ckpt"
    whole = last.read_bytes()
    try:
        for size in (30_000, len(whole) // 2):  # torch's zip reader: "[Errno 22] Invalid argument" / a RuntimeError
            last.write_bytes(whole[:size])
            before = snapshot(run)
            refused(
                call(main, "fit", *CLM, "--data.source", str(root / "corpus.txt"), "--ckpt_path", "last"),
                "not a readable checkpoint",
            )
            assert snapshot(run) == before  # config.yaml not rewritten, no events file added
            for command in ("validate", "test"):
                refused(
                    call(main, command, *CLM, "--data.source", str(root / "corpus.txt"), "--ckpt_path", str(last)),
                    "not a readable checkpoint",
                )
    finally:
        last.write_bytes(whole)
    assert sorted(p.name for p in run.parent.iterdir()) == ["version_0"]  # no refused run left a folder


@pytest.mark.parametrize(
    "name,version",
    [
        ("other", "../clm_tiny/version_0"),
        ("clm_tiny", "./version_0"),
        ("clm_tiny", "0"),
        ("x/..", "version_0/../version_0"),
    ],
)
def test_a_logger_version_resolving_into_an_earlier_run_is_refused(run, monkeypatch, name, version):
    from lightning_pretrain.cli import main

    root = run.parents[2]
    monkeypatch.chdir(root)
    before = snapshot(run)
    refused(
        call(
            main,
            "fit",
            *CLM,
            "--data.source",
            str(root / "corpus.txt"),
            "--trainer.logger.init_args.name",
            name if name != "x/.." else "clm_tiny/x/..",
            "--trainer.logger.init_args.version",
            version,
        ),
        "already holds a run",
    )
    assert snapshot(run) == before


def test_a_refused_predict_leaves_the_predictions_file_whole(run, monkeypatch, tmp_path):
    from lightning_pretrain.cli import main

    root = run.parents[2]
    monkeypatch.chdir(tmp_path)
    earlier = tmp_path / "predictions.jsonl"
    earlier.write_text('{"id": 0, "generation": "earlier work"}\n')
    long = tmp_path / "long.txt"
    long.write_text(" ".join(ENGLISH) + "\n")
    args = [
        "predict",
        *CLM,
        "--data.source",
        str(root / "corpus.txt"),
        "--ckpt_path",
        str(run / "checkpoints" / "last.ckpt"),
        "--model.init_args.predictions_file",
        str(earlier),
    ]
    refused(call(main, *args, "--data.predict_file", str(long)), "positions")
    assert earlier.read_text() == '{"id": 0, "generation": "earlier work"}\n'
    short = tmp_path / "short.txt"
    short.write_text("The quick\nA packed\n")
    status, _, err = call(
        main, *args, "--data.predict_file", str(short), "--model.init_args.generation", "{max_new_tokens: 2}"
    )
    assert status == 0, err[-3000:]
    assert [json.loads(line)["id"] for line in earlier.read_text().splitlines()] == [0, 1]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no partial file left


def test_logger_false_runs_get_their_own_folder(run, monkeypatch, tmp_path):
    from lightning_pretrain.cli import main

    monkeypatch.chdir(tmp_path)
    corpus = run.parents[2] / "corpus.txt"
    for _ in range(2):
        status, _, err = call(main, "fit", *CLM, "--data.source", str(corpus), "--trainer.logger", "false")
        assert status == 0 and "error" not in err, err[-3000:]
    for version in ("version_0", "version_1"):
        assert json.loads((tmp_path / "logs" / version / "metrics.json").read_text())["global_step"] == 4
        assert (tmp_path / "logs" / version / "hf" / "model.safetensors").is_file()


@pytest.mark.parametrize(
    "args,says",
    [
        (["--trainer.accumulate_grad_batches", "0"], "accumulate_grad_batches must be at least 1"),
        (["--trainer.max_steps", "0"], "max_steps 0 trains nothing"),
        (["--trainer.gradient_clip_val", "-1"], "gradient_clip_val must be a finite number >= 0"),
        (["--stop_guard.spike_rtol", "nan"], "spike_rtol"),
        (["--export.metrics_file", "../elsewhere.json"], "plain name inside the run directory"),
        (["--trainer.logger.init_args.version", "x", "--trainer.logger.init_args.name", "../../.."], ""),
        # found by the long fuzz run: an HF config's sizes given on the command line, outputs our code does not
        # read, TensorBoard's untyped options, null where the type has none, Lightning's "hpc" without one
        (["--model.init_args.model.init_args.n_head", "-1"], "n_head=-1: sizes and counts must be at least 1"),
        (["--model.init_args.model.init_args.return_dict", "false"], "leave return_dict at the default"),
        (["--model.init_args.model.init_args.output_hidden_states", "true"], "output_hidden_states at the default"),
        (["--trainer.logger.init_args.purge_step", "a b"], "purge_step must be a whole number >= 0"),
        (["--trainer.logger.init_args.max_queue", "0"], "max_queue must be a whole number >= 1"),
        (["--model.init_args.warmup_steps", "null"], "--model.init_args.warmup_steps cannot be null: it takes int"),
        (["--ckpt_path", "hpc"], "--ckpt_path hpc: no hpc_ckpt_*.ckpt in"),
        (["--ckpt_path", "best"], "--ckpt_path best names the best checkpoint of a fit run in the same process"),
        (["--trainer.logger.init_args.sub_dir", "/elsewhere"], "sub_dir must be a folder name inside the run"),
        (["--trainer.val_check_interval", "0"], "val_check_interval must be > 0"),
        (["--model.init_args.model.init_args.is_encoder_decoder", "true"], "is_encoder_decoder=True: it is GPT2Config"),
        (["--data.init_args.seed", "-1"], "--data.seed must be in [0, 2**32 - 1], got -1"),
        # refused after the data was built: the cache folder this run made goes too
        (["--data.init_args.cache_dir", "new_cache", "--trainer.gradient_clip_algorithm", "bogus"], "bogus is invalid"),
    ],
)
def test_settings_that_make_no_sense_are_refused(run, monkeypatch, tmp_path, args, says):
    from lightning_pretrain.cli import main

    monkeypatch.chdir(tmp_path)
    result = call(main, "fit", *CLM, "--data.source", str(run.parents[2] / "corpus.txt"), *args)
    if says:
        refused(result, says)
        assert not any(tmp_path.iterdir()), list(tmp_path.rglob("*"))
    else:  # a logger folder outside the run tree is the user's choice: it trains (and must not crash)
        assert result[0] in (0, 2), result[2][-3000:]


def test_nothing_writes_into_an_earlier_run(run, monkeypatch, tmp_path):
    """A cache inside a run folder, predictions over a run's records, a logger sub_dir naming the run: refused,
    the run unchanged (found by the long fuzz run: predict rewrote an earlier run's config.yaml)."""
    from lightning_pretrain.cli import main

    monkeypatch.chdir(tmp_path)
    before = snapshot(run)
    args = ["predict", *CLM, "--data.source", str(run.parents[2] / "corpus.txt")]
    args += [
        "--ckpt_path",
        str(run / "checkpoints" / "last.ckpt"),
        "--data.predict_file",
        str(run.parents[2] / "corpus.txt"),
    ]
    refused(call(main, *args, "--data.init_args.cache_dir", str(run / "hf")), "is inside the run folder")
    refused(call(main, *args, "--model.init_args.predictions_file", str(run / "config.yaml")), "is a record of the run")
    refused(call(main, *args, "--trainer.logger.init_args.sub_dir", str(run)), "sub_dir must be a folder name")
    assert snapshot(run) == before
    assert not any(tmp_path.iterdir()), list(tmp_path.rglob("*"))


def test_options_left_unused_by_other_options_are_said_in_one_line(run, monkeypatch, tmp_path):
    from lightning_pretrain.cli import main

    monkeypatch.chdir(tmp_path)
    corpus = str(run.parents[2] / "corpus.txt")
    status, _, err = call(main, "fit", *CLM, "--data.source", corpus, "--model.init_args.wsd.decay_fraction", "0.5")
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    expected = (
        "warning: --model.init_args.wsd is not used: lr_schedule is 'cosine' (set --model.init_args.lr_schedule wsd"
    )
    assert status == 0 and len(warnings) == 1 and warnings[0].startswith(expected), err[-3000:]


# -- export and eval ------------------------------------------------------------------------------------------------
def test_export_refuses_cut_and_non_finite_checkpoints_and_never_overwrites(run, tmp_path):
    from lightning_pretrain.export import main

    last = run / "checkpoints" / "last.ckpt"
    for size in (30_000, last.stat().st_size // 2):
        (tmp_path / f"cut{size}.ckpt").write_bytes(last.read_bytes()[:size])
        refused(call(main, str(tmp_path / f"cut{size}.ckpt"), "--out", str(tmp_path / "a")), "not a readable")
    state = torch.load(last, weights_only=True)
    names = [k for k in state["state_dict"] if k.startswith("model.")][:2]
    for k in names:
        state["state_dict"][k] = torch.full_like(state["state_dict"][k], float("nan"))
    torch.save(state, tmp_path / "nan.ckpt")
    line = refused(call(main, str(tmp_path / "nan.ckpt"), "--out", str(tmp_path / "a")), "non-finite weights")
    assert f"2 of {sum(1 for k in state['state_dict'] if k.startswith('model.'))} tensors" in line, line
    (tmp_path / "file").write_text("x")
    refused(call(main, str(last), "--out", str(tmp_path / "file")), "is a file")
    refused(call(main, str(last), "--out", str(run)), "already holds files")
    assert not (tmp_path / "a").exists()
    status, _, err = call(main, str(last), "--out", str(tmp_path / "a"))
    assert status == 0 and (tmp_path / "a" / "model.safetensors").is_file(), err[-2000:]
    # outside its run's checkpoints/ folder a checkpoint has no tokenizer beside it: an export without one would not
    # tokenize (transformers builds an empty tokenizer), so it is refused unless --tokenizer names one
    (tmp_path / "moved.ckpt").write_bytes(last.read_bytes())
    refused(call(main, str(tmp_path / "moved.ckpt"), "--out", str(tmp_path / "b")), "no tokenizer for")
    status, _, err = call(
        main, str(tmp_path / "moved.ckpt"), "--out", str(tmp_path / "b"), "--tokenizer", str(run / "tokenizer")
    )
    assert status == 0 and (tmp_path / "b" / "tokenizer.json").is_file(), err[-2000:]


def test_a_continuation_merged_into_the_context_is_scored_not_asserted(monkeypatch):
    """A small BPE vocabulary can encode context + continuation into the context's tokens alone (lm-eval asserts
    on the empty continuation): the context's last token is scored instead; an empty context gets the prefix."""
    from lm_eval.models.huggingface import HFLM

    from lightning_pretrain.evaluate.hflm import LiveHFLM

    seen = []
    monkeypatch.setattr(HFLM, "_loglikelihood_tokens", lambda self, requests, **kw: seen.extend(requests))
    lm = object.__new__(LiveHFLM)
    monkeypatch.setattr(LiveHFLM, "max_length", 8, raising=False)
    monkeypatch.setattr(LiveHFLM, "prefix_token_id", 0, raising=False)
    lm._loglikelihood_tokens([("a", [5, 6, 7], []), ("b", [], [9]), ("c", [1], [2, 3])])
    assert seen == [("a", [5, 6], [7]), ("b", [0], [9]), ("c", [1], [2, 3])]


def broken_copy(src: Path, dst: Path, how: str) -> Path:
    import shutil

    shutil.copytree(src, dst)
    weights = (dst / "model.safetensors").read_bytes()
    if how == "zero_heads":
        config = json.loads((dst / "config.json").read_text())
        (dst / "config.json").write_text(json.dumps({**config, "n_head": 0}))
    elif how == "cut_weights":
        (dst / "model.safetensors").write_bytes(weights[: len(weights) // 3])
    elif how == "not_safetensors":
        (dst / "model.safetensors").write_bytes(os.urandom(len(weights)))
    elif how == "nan":
        from safetensors.torch import load_file, save_file

        tensors = load_file(dst / "model.safetensors")
        save_file(
            {k: v.fill_(float("nan")) if i < 3 else v for i, (k, v) in enumerate(tensors.items())},
            dst / "model.safetensors",
            metadata={"format": "pt"},
        )
    return dst


@pytest.mark.parametrize(
    "args,says",
    [
        (["--device", "gpu"], "--device gpu is not a torch device"),
        (["--seed", "-1"], "--seed must be in"),
        (["--seed", str(2**40)], "--seed must be in"),
        (["--model", "zero_heads"], "could not load model"),
        (["--model", "cut_weights"], "could not load model"),
        (["--model", "not_safetensors"], "could not load model"),
        (["--model", "nan"], "3 of"),
        (["--num_fewshot", "4"], "--num_fewshot 4: task lp_three has 3 examples to draw shots from"),
    ],
)
def test_eval_refuses_in_one_line(tiny_causal, tmp_path, monkeypatch, args, says):  # noqa: F811
    from lightning_pretrain.evaluate.cli import main

    _, _, hf_dir = tiny_causal
    monkeypatch.chdir(tmp_path)
    (tmp_path / "text.txt").write_text("the cat sat on a mat.\n")
    common = ["--bpb_file", str(tmp_path / "text.txt"), "--device", "cpu", "--output_dir", str(tmp_path / "out" / "x")]
    rows = [{"query": f"Q{i}:", "choices": [" a", " b"], "gold": 0} for i in range(3)]
    (tmp_path / "three.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if args[0] == "--num_fewshot":  # lm-eval draws shots + 1 from the pool and drops the scored document
        common += ["--tasks", str(tmp_path / "three.jsonl")]
    if args[0] == "--model":
        args = [*common, "--model", str(broken_copy(hf_dir, tmp_path / args[1], args[1]))]
    else:
        args = [*common, "--model", str(hf_dir), *args]
    refused(call(main, *args), says)
    assert not (tmp_path / "out").exists()  # the output folder it made is gone again


def test_ctrl_c_in_eval_is_one_line(tiny_causal, tmp_path, monkeypatch):  # noqa: F811
    from lightning_pretrain.evaluate import rolling
    from lightning_pretrain.evaluate.cli import main

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt  # what Python makes of a SIGINT while scoring

    monkeypatch.setattr(rolling, "score_text", interrupted)
    (tmp_path / "text.txt").write_text("the cat sat on a mat.\n")
    status, _, err = call(
        main,
        "--model",
        str(tiny_causal[2]),
        "--bpb_file",
        str(tmp_path / "text.txt"),
        "--device",
        "cpu",
        "--output_dir",
        str(tmp_path / "out"),
    )
    assert (
        status == 130
        and [line for line in err.splitlines() if line.startswith("error:")]
        == ["error: interrupted (Ctrl-C) before anything was saved"]
        and "Traceback" not in err
    ), err[-3000:]
    assert not (tmp_path / "out").exists()


# -- Ctrl-C in fit ---------------------------------------------------------------------------------------------------
def test_ctrl_c_in_fit_saves_a_resumable_checkpoint(run, tmp_path):
    corpus = run.parents[2] / "corpus.txt"
    base = [sys.executable, "-m", "lightning_pretrain", "fit", *CLM, "--data.source", str(corpus)]
    args = [*base, "--trainer.max_steps", "100000", "--trainer.val_check_interval", "50"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    run_dir = tmp_path / "logs" / "clm_tiny" / "version_0"
    deadline = time.monotonic() + 300
    while not list(run_dir.glob("events.out.tfevents.*")) or not (run_dir / "tokenizer").is_dir():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0][-3000:]
        time.sleep(0.05)
    time.sleep(2)  # a few steps in
    proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
    out, _ = proc.communicate(timeout=180)
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert proc.returncode == 130 and len(errors) == 1 and "Traceback" not in out, out[-3000:]
    assert "stopped by Ctrl-C (SIGINT) at step" in errors[0] and "last.ckpt" in errors[0], errors[0]
    step = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    assert step > 0 and not (run_dir / "hf").exists()
    resumed = subprocess.run(
        [*base, "--trainer.max_steps", str(step + 2), "--ckpt_path", "last"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((run_dir / "metrics.json").read_text())["global_step"] == step + 2


# -- SFT predict ----------------------------------------------------------------------------------------------------
def test_sft_predict_refuses_a_prompt_longer_than_the_positions(tiny_causal, tmp_path, monkeypatch):  # noqa: F811
    from lightning_pretrain.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "prompts.txt").write_text("a short one\n" + " ".join(["the cat sat on a mat"] * 40) + "\n")
    before = (tmp_path / "prompts.txt").read_text()
    refused(
        call(
            main,
            "predict",
            "-c",
            str(REPO / "configs/finetune/sft_tiny.yaml"),
            "--model.model",
            str(tiny_causal[2]),
            "--data.train_file",
            "null",
            "--data.val_file",
            "null",
            "--data.predict_file",
            str(tmp_path / "prompts.txt"),
            "--data.max_length",
            "64",
            "--trainer.enable_progress_bar",
            "false",
        ),
        "more than the model's 64 positions",
    )
    assert (tmp_path / "prompts.txt").read_text() == before
    assert not (tmp_path / "logs").exists() or not any((tmp_path / "logs").rglob("*.jsonl"))


def test_glue_refuses_in_one_line_before_its_first_run(tmp_path, monkeypatch):
    from lightning_pretrain.finetune.glue import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "glue" / "RTE").mkdir(parents=True)
    (tmp_path / "afile").write_text("x")
    base = [
        "--backbone",
        str(tmp_path / "nope"),
        "--tasks",
        "rte",
        "--in_process",
        "--glue_dir",
        str(tmp_path / "glue"),
    ]
    refused(call(main, *base, "--out", str(tmp_path / "afile")), "is (or lies below) a file")
    refused(call(main, *base, "--tasks", "cola", "rte"), "has no folder CoLA")
    # a task's run refuses its input: its one line, and the suite stops there (the next task would fail alike)
    refused(call(main, *base, "--out", "runs", "--data.no_such_option", "1"), "no_such_option")
    assert not (tmp_path / "runs").exists()


def test_sft_fit_refuses_a_validation_prompt_too_long_before_training(tiny_causal, tmp_path, monkeypatch):  # noqa: F811
    """Validation generates from every prompt: one too long for the positions is refused when the model is built,
    not at the first validation after training began (which left a trained run folder behind; fuzz finding)."""
    from lightning_pretrain.cli import main

    monkeypatch.chdir(tmp_path)
    rows = [{"prompt": "a short one", "completion": " yes"}] * 8
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    long = {"prompt": " ".join(["the cat sat on a mat"] * 4), "completion": " no"}
    (tmp_path / "val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [*rows[:3], long]))
    args = ["fit", "-c", str(REPO / "configs/finetune/sft_tiny.yaml"), "--model.model", str(tiny_causal[2])]
    args += ["--data.train_file", str(tmp_path / "train.jsonl"), "--data.val_file", str(tmp_path / "val.jsonl")]
    args += ["--data.max_length", "64", "--data.eval_batch_size", "1", "--trainer.max_steps", "2"]
    args += ["--trainer.enable_progress_bar", "false"]  # the long prompt: beyond the sanity check's 2 batches
    args += ["--model.init_args.generation", "{max_new_tokens: 40}", "--data.max_train_examples", "null"]
    refused(call(main, *args), "the longest val prompt is")
    assert not (tmp_path / "logs").exists(), list((tmp_path / "logs").rglob("*"))


def test_a_checkpoint_of_another_module_class_is_refused(run, monkeypatch, tmp_path):
    """LightningCLI swaps in the class a checkpoint names: an SFT or MLM command given a causal-LM checkpoint would
    run the wrong module on its data (a KeyError deep in predict, found by the fuzz run). Refused in one line."""
    from lightning_pretrain.cli import main

    monkeypatch.chdir(tmp_path)
    args = [
        "predict",
        "-c",
        str(REPO / "configs/pretrain/mlm_tiny.yaml"),
        "--data.source",
        str(run.parents[2] / "corpus.txt"),
    ]
    line = refused(call(main, *args, "--ckpt_path", str(run / "checkpoints" / "last.ckpt")), "was written by")
    assert "lightning_pretrain.objectives.CausalLM" in line and "MaskedLM" in line, line
    assert not any(tmp_path.iterdir())


def test_a_refused_run_takes_its_cache_entries_out_of_a_folder_of_the_users(run, monkeypatch, tmp_path):
    """`--data.cache_dir` naming a folder that holds the user's own files: a run refused after the data was built
    (a trainer setting) removes the entries it wrote there, and leaves the user's files (fuzz run, seed 5)."""
    from lightning_pretrain.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "keep.txt").write_text("the user's\n")
    args = ["fit", *CLM, "--data.source", str(run.parents[2] / "corpus.txt"), "--data.init_args.cache_dir", "mine"]
    refused(call(main, *args, "--trainer.gradient_clip_algorithm", "bogus"), "bogus is invalid")
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["keep.txt"]
    status, _, err = call(main, *args)  # the same run, accepted, keeps its cache
    assert status == 0 and any((tmp_path / "mine").rglob("*.json")), err[-2000:]
