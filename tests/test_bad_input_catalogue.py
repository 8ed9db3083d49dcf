"""The bad-input catalogue: hostile files, labels, options, checkpoints and folders, each run through the CLI's
entry point. Every case must exit with its status (2 for the user's input), print exactly one `error:` line and
no traceback, and leave the cache and the logs as they were: no new run directory, no partial file, no file
that existed before changed."""

from __future__ import annotations

import io
import os
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import torch
from conftest import ENGLISH, REPO
from test_finetune_modes import NEGATIVE, POSITIVE, tiny_backbone  # noqa: F401 (fixture)

QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
         "--trainer.max_steps", "2", "--trainer.val_check_interval", "1", "--trainer.limit_val_batches", "1",
         "--model.init_args.warmup_steps", "0"]
TINY = ["--model.init_args.model.init_args.n_embd", "32", "--model.init_args.model.init_args.n_layer", "1",
        "--model.init_args.model.init_args.n_head", "2", "--data.vocab_size", "300", "--data.seq_len", "32",
        "--data.batch_size", "4"]


def config(name: str) -> list[str]:
    return ["-c", str(REPO / "configs" / name)]


def clm(w: Path, *extra: str) -> list[str]:
    return ["fit", *config("pretrain/clm_tiny.yaml"), *QUIET, *TINY, "--data.source", str(w / "corpus.txt"), *extra]


def mlm(w: Path, *extra: str) -> list[str]:
    return ["fit", *config("pretrain/mlm_tiny.yaml"), *QUIET, "--model.init_args.model.init_args.hidden_size", "32",
            "--model.init_args.model.init_args.num_attention_heads", "2", "--data.vocab_size", "300",
            "--data.seq_len", "32", "--data.batch_size", "4", "--data.source", str(w / "corpus.txt"), *extra]


def sst2(w: Path, train: str, *extra: str, val: str | None = None) -> list[str]:
    return ["fit", *config("finetune/sst2.yaml"), *config("finetune/modes/full.yaml"), *QUIET[:-2],
            "--model.backbone", str(w / "backbone"), "--data.source", "null", "--data.train_file", str(w / train),
            "--data.val_file", str(w / (val or train)), "--data.text_column", "text", "--data.label_column", "label",
            "--data.batch_size", "4", *extra]


def write(w: Path, name: str, content: str | bytes) -> str:
    path = w / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return name


def labelled(rows: int = 16) -> str:
    return "".join(f'"{(POSITIVE if i % 2 else NEGATIVE)[i % 6]} {i}",{"positive" if i % 2 else "negative"}\n'
                   for i in range(rows))


@dataclass
class Case:
    name: str
    args: Callable[[Path], list[str]]
    says: str  # a piece of the error line
    status: int = 2


CASES = [
    # -- options and configs ------------------------------------------------------------------------------------
    Case("unknown option", lambda w: clm(w, "--data.batch_sizee", "3"), "batch_sizee"),
    Case("option of the wrong type", lambda w: clm(w, "--data.batch_size", "abc"), "batch_size"),
    Case("config file missing", lambda w: ["fit", "-c", str(w / "nope.yaml")], "does not exist"),
    Case("unknown LR schedule", lambda w: clm(w, "--model.init_args.lr_schedule", "bogus"), "lr_schedule"),
    Case("negative learning rate", lambda w: clm(w, "--model.init_args.optimizer.init_args.lr", "-1"),
         "learning rate"),
    Case("warmup longer than the run", lambda w: clm(w, "--model.init_args.warmup_steps", "50"), "warmup_steps=50"),
    Case("seq_len beyond the model's positions", lambda w: clm(w, "--data.seq_len", "256"), "positions"),
    Case("seq_len of 1", lambda w: clm(w, "--data.seq_len", "1"), "seq_len must be at least 2"),
    Case("val_fraction above 1", lambda w: clm(w, "--data.val_fraction", "1.5"), "val_fraction"),
    Case("mlm_probability 0", lambda w: mlm(w, "--model.init_args.mlm_probability", "0"), "mlm_probability"),
    Case("noise density above 1", lambda w: ["fit", *config("pretrain/t5_tiny.yaml"), *QUIET, "--data.source",
                                            str(w / "corpus.txt"), "--model.init_args.noise_density", "1.5"],
         "noise_density"),
    Case("sentence-pair objective on plain blocks",
         lambda w: clm(w, "--model", "lightning_pretrain.objectives.SentencePairMLM", "--model.model",
                       "transformers.BertConfig"), "sentence pairs"),
    Case("classifier on a pretraining corpus",
         lambda w: ["fit", *config("pretrain/clm_tiny.yaml"), *QUIET, *TINY[6:], "--data.source",
                    str(w / "corpus.txt"), "--model", "lightning_pretrain.finetune.SequenceClassifier",
                    "--model.backbone", str(w / "backbone")], "classification data"),
    Case("pretrained model folder missing", lambda w: mlm(w, "--model.model", str(w / "no_model")),
         "could not load pretrained model"),
    Case("streaming corpus without max_steps",
         lambda w: ["fit", *config("pretrain/clm_streaming_tiny.yaml"), *QUIET[:4], "--trainer.max_steps", "-1",
                    "--trainer.max_epochs", "1", "--data.source", str(w / "corpus.txt"), "--data.vocab_size", "300"],
         "max_steps"),
    # -- corpus files -------------------------------------------------------------------------------------------
    Case("corpus missing", lambda w: clm(w, "--data.source", str(w / "missing.txt")), "file not found"),
    Case("empty corpus", lambda w: clm(w, "--data.source", str(w / write(w, "empty.txt", "\n \n"))), "empty"),
    Case("binary corpus", lambda w: clm(w, "--data.source", str(w / write(w, "b.txt", bytes(range(256)) * 64))),
         "binary"),
    Case("latin-1 corpus", lambda w: clm(w, "--data.source",
                                         str(w / write(w, "l.txt", "café crème\n\nnaïve\n".encode("latin-1") * 99))),
         "not valid UTF-8"),
    Case("jsonl without the text column",
         lambda w: clm(w, "--data.source", str(w / write(w, "a.jsonl", '{"body": "x y"}\n' * 20))), "column 'text'"),
    Case("malformed jsonl", lambda w: clm(w, "--data.source", str(w / write(w, "bad.jsonl", '{"text": "a"\n' * 20))),
         "bad.jsonl"),
    Case("hub dataset unreachable", lambda w: clm(w, "--data.source", "no-such-user/no-such-dataset"),
         "could not load hub dataset"),
    Case("tokenizer folder missing", lambda w: clm(w, "--data.tokenizer", str(w / "no_tok")), "tokenizer"),
    Case("cache_dir is a file", lambda w: clm(w, "--data.cache_dir", str(w / write(w, "afile", "x"))),
         "not a directory"),
    Case("logs folder is a file", lambda w: clm(w, "--trainer.logger.init_args.save_dir", str(w / write(w, "f", "x"))),
         "not a directory"),
    # -- fine-tuning data ---------------------------------------------------------------------------------------
    Case("label column missing", lambda w: sst2(w, write(w, "t.csv", "text,y\n" + labelled()[:0] + "a,b\n" * 8)),
         "label column"),
    Case("text column missing", lambda w: sst2(w, write(w, "t2.csv", "txt,label\n" + "a,positive\n" * 8)),
         "column 'text'"),
    Case("train file missing", lambda w: sst2(w, "nope.csv"), "not found"),
    # -- checkpoints --------------------------------------------------------------------------------------------
    Case("checkpoint missing", lambda w: ["validate", *clm(w)[1:], "--ckpt_path", str(w / "nope.ckpt")],
         "checkpoint not found"),
    Case("truncated checkpoint", lambda w: ["validate", *clm(w)[1:], "--ckpt_path", str(w / "truncated.ckpt")],
         "not a readable checkpoint"),
    Case("text file as checkpoint", lambda w: ["validate", *clm(w)[1:], "--ckpt_path", str(w / "corpus.txt")],
         "not a readable checkpoint"),
    Case("malicious pickle checkpoint", lambda w: ["validate", *clm(w)[1:], "--ckpt_path", str(w / "evil.ckpt")],
         "not a trusted checkpoint"),
    Case("checkpoint of another architecture",
         lambda w: ["validate", *mlm(w)[1:], "--ckpt_path", str(w / "clm.ckpt")], "does not fit this model"),
    Case("resume of another model size",
         lambda w: clm(w, "--model.init_args.model.init_args.n_embd", "64", "--ckpt_path", str(w / "clm.ckpt")),
         "does not fit this model"),
]


class Evil:
    def __reduce__(self):
        return os.system, ("touch PWNED",)


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_backbone) -> Path:  # noqa: F811
    """Files every case may point at, a trained checkpoint, and a warm cache (so a case's own changes show)."""
    from lightning_pretrain.cli import main

    w = tmp_path_factory.mktemp("world")
    (w / "corpus.txt").write_text("\n\n".join(f"{ENGLISH[i % 6]} Paragraph {i} adds {i * 7 % 13} words."
                                              for i in range(300)) + "\n")
    (w / "backbone").symlink_to(tiny_backbone)
    cwd = os.getcwd()
    os.chdir(w)
    try:
        with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
            main(clm(w, "--trainer.logger.init_args.name", "warm"))
    finally:
        os.chdir(cwd)
    (ckpt,) = (w / "logs" / "warm" / "version_0" / "checkpoints").glob("*.ckpt")
    (w / "clm.ckpt").write_bytes(ckpt.read_bytes())
    (w / "truncated.ckpt").write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    torch.save({"state_dict": Evil()}, w / "evil.ckpt")
    return w


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in root.rglob("*") if p.is_file()} if root.exists() else {}


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_ends_in_one_line(case: Case, world: Path, tmp_path, monkeypatch):
    from lightning_pretrain.cli import main

    monkeypatch.chdir(tmp_path)  # this case's logs/ land here
    cache = Path(os.environ["LIGHTNING_PRETRAIN_CACHE"])
    before = snapshot(cache)
    err = io.StringIO()
    with redirect_stderr(err), redirect_stdout(io.StringIO()), pytest.raises(SystemExit) as exit_info:
        main(case.args(world))
    text = err.getvalue()
    errors = [line for line in text.splitlines() if line.startswith("error:")]
    assert exit_info.value.code == case.status, text[-3000:]
    assert len(errors) == 1 and "Traceback" not in text, text[-3000:]
    assert case.says in errors[0], errors[0]
    assert not (tmp_path / "logs").exists() or not any((tmp_path / "logs").rglob("version_*")), "a run dir was left"
    after = snapshot(cache)
    assert {k: v for k, v in after.items() if k in before} == before, "a cache file changed"
    assert not [k for k in after if "partial" in k], "a partial cache entry was left"
    assert not (tmp_path / "PWNED").exists() and not (world / "PWNED").exists()
