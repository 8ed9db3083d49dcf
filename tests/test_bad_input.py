"""Every bad input ends with one clear `error:` line and exit status 2 — never a traceback wall."""

import subprocess
import sys

import pytest
from conftest import FAST, cli
from transformers import BertConfig, BertForMaskedLM

CLM = ["fit", "-c", "configs/pretrain/clm_tiny.yaml", *FAST]
MLM = ["fit", "-c", "configs/pretrain/mlm_tiny.yaml", *FAST]


@pytest.fixture
def in_repo(monkeypatch, tmp_path):
    from conftest import REPO

    monkeypatch.chdir(REPO)
    return tmp_path


def expect_error(capsys, args, *needles):
    with pytest.raises(SystemExit) as exit_info:
        cli(*args, "--trainer.logger", "false")
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("error: "), err
    assert "Traceback" not in "\n".join(err)
    for needle in needles:
        assert needle in err[-1], err[-1]


def test_missing_file(capsys, in_repo):
    expect_error(capsys, [*CLM, "--data.source", str(in_repo / "nope.txt")], "file not found", "nope.txt")


def test_empty_corpus(capsys, in_repo):
    (in_repo / "empty.txt").write_text("\n\n   \n")
    expect_error(capsys, [*CLM, "--data.source", str(in_repo / "empty.txt")], "is empty")


def test_missing_column(capsys, in_repo):
    (in_repo / "a.jsonl").write_text('{"body": "some text"}\n{"body": "more text"}\n')
    expect_error(capsys, [*CLM, "--data.source", str(in_repo / "a.jsonl")], "column 'text' not found", "body")


def test_binary_file(capsys, in_repo):
    (in_repo / "blob.txt").write_bytes(bytes(range(256)) * 100)
    expect_error(capsys, [*CLM, "--data.source", str(in_repo / "blob.txt")], "looks binary")


def test_non_utf8_file(capsys, in_repo):
    (in_repo / "latin1.txt").write_bytes("café au lait, crème brûlée\n\nnaïve façade\n".encode("latin-1") * 50)
    expect_error(capsys, [*CLM, "--data.source", str(in_repo / "latin1.txt")], "not valid UTF-8")


def test_seq_len_beyond_model_positions(capsys, in_repo, tiny_corpus):
    expect_error(
        capsys, [*CLM, "--data.source", str(tiny_corpus), "--data.seq_len", "256"], "seq_len=256", "128 positions"
    )


def test_tokenizer_model_vocabulary_mismatch(capsys, in_repo, tiny_corpus):
    small = in_repo / "small_bert"
    BertForMaskedLM(
        BertConfig(vocab_size=100, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    ).save_pretrained(small)
    expect_error(
        capsys,
        [*MLM, "--data.source", str(tiny_corpus), "--data.vocab_size", "300", "--model.model", str(small)],
        "vocabulary mismatch",
        "100",
    )


def test_unknown_tokenizer(capsys, in_repo, tiny_corpus):
    expect_error(
        capsys,
        [*CLM, "--data.source", str(tiny_corpus), "--data.tokenizer", str(in_repo / "no_tok")],
        "could not load tokenizer",
    )


def test_console_script_exit_status_and_single_line(in_repo):
    """The installed entry point, as a user runs it."""
    proc = subprocess.run(
        [sys.executable, "-m", "lightning_pretrain", *CLM, "--data.source", "/no/such/file.txt"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == "error: file not found: /no/such/file.txt"
    assert "Traceback" not in proc.stderr


# -- found by the long fuzz run (benchmarks/fuzz_cli.py --draws 2000) --------------------------------------------------
@pytest.mark.parametrize(
    "args, needles",
    [
        (["--data.val_fraction", "null"], ["--data.init_args.val_fraction cannot be null: it takes float"]),
        (["--trainer.accelerator", "tpu"], ["these trainer settings cannot be built", "torch_xla"]),
    ],
    ids=["null_for_a_number_jsonargparse_instantiates", "accelerator_without_its_package"],
)
def test_values_refused_while_building_are_one_line(in_repo, tiny_corpus, args, needles):
    # a fresh process: Lightning's loggers keep handlers on the streams of earlier in-process runs
    out = subprocess.run(
        [sys.executable, "-m", "lightning_pretrain", *CLM, "--data.source", str(tiny_corpus), *args],
        capture_output=True,
        text=True,
        env={**__import__("os").environ, "OMP_NUM_THREADS": "1"},
    )
    err = out.stderr.strip().splitlines()
    assert out.returncode == 2 and err[-1].startswith("error: "), out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    assert all(n in err[-1] for n in needles), err[-1]


@pytest.mark.parametrize("out", ["", "."])
def test_export_to_no_folder_of_its_own_is_refused(tmp_path, monkeypatch, capsys, out):
    from lightning_pretrain.export import main

    monkeypatch.chdir(tmp_path)  # an empty folder: "" and "." would otherwise pass as "new or empty"
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "missing.ckpt"), "--out", out])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "names no folder of its own" in err[0], err
